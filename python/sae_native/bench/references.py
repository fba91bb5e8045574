"""Every implementation the benchmark times, per op: sae-native and the references.

A factory takes a prepared Case and returns a zero-argument callable, or raises Unavailable with the
reason (a peer not installed, a shape or dtype it does not handle). References: torch's dense path,
torch's bare matmul, embedding_bag, FAISS IndexFlatIP.search (no bias: the same GEMM and top-k),
SAELens and sparsify. Peers are imported only here and only when present.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import sae_native as sn
from .. import reference
from .workloads import Workload

OPS = ("encode", "decode", "steer")
STEER_VALUE = 10.0


class Unavailable(Exception):
    """This implementation cannot run here; the message says why."""


@dataclass
class Case:
    """A workload with what every implementation of every op needs, built once, outside timing."""
    w: Workload
    sae: sn.SAE
    codes: sn.SparseCodes
    feature: int
    dense_z: torch.Tensor  # the codes as a dense [N, d_sae] matrix (inputs of dense decode paths)
    compute_dtype: torch.dtype

    @classmethod
    def build(cls, w: Workload) -> "Case":
        sae = w.sae()
        codes = sae.encode(w.x)
        feature = int(codes.indices.flatten()[0]) if codes.indices.numel() else 0
        feature = max(feature, 0)
        dense = codes.to_dense().to(w.W_dec.dtype)
        return cls(w, sae, codes, feature, dense, w.W_enc.dtype)

    @property
    def xw(self) -> torch.Tensor:
        """x in the weights' dtype, as torch's own paths need it."""
        return self.w.x.to(self.compute_dtype)

    def unpadded_codes(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(indices, values in the weights' dtype) with threshold codes' -1 padding made index 0,
        value 0: embedding_bag and scatter take no negative index."""
        valid = self.codes.indices >= 0
        idx = torch.where(valid, self.codes.indices, torch.zeros_like(self.codes.indices))
        vals = torch.where(valid, self.codes.values, torch.zeros_like(self.codes.values))
        return idx, vals.to(self.compute_dtype)


def _no_grad(fn: Callable[..., object], *args) -> Callable[[], object]:
    """fn(*args) under no_grad, as a peer's inference runs."""
    def run():
        with torch.no_grad():
            return fn(*args)
    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- encode -----------------------------------------------------------------------------------

def _dense_encode(c: Case) -> Callable[[], object]:
    """The dense formula as a user writes it, in the weights' dtype (reference.dense)."""
    w, s = c.w, c.w.shape
    return lambda: reference.dense(c.xw, w.W_enc, w.b_enc, w.b_dec, s.activation, s.k, w.threshold,
                                   exact_ties=False)


def _faiss(c: Case) -> Callable[[], object]:
    try:
        import faiss
    except ImportError:
        raise Unavailable("faiss not installed (pip install faiss-cpu)") from None
    w = c.w
    if w.shape.activation != "topk":
        raise Unavailable("IndexFlatIP.search is a top-k search")
    if w.x.device.type != "cpu" or c.compute_dtype != torch.float32:
        raise Unavailable("faiss-cpu searches float32 on the CPU")
    faiss.omp_set_num_threads(sn.get_num_threads())
    index = faiss.IndexFlatIP(w.shape.d_in)
    index.add(w.W_enc.t().contiguous().numpy())
    xq = (w.x - w.b_dec).numpy()
    return lambda: index.search(xq, w.shape.k)


def _sparsify(c: Case) -> Callable[[], object]:
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        raise Unavailable("sparsify not installed (pip install eai-sparsify)") from None
    w = c.w
    if w.shape.activation != "topk":
        raise Unavailable("sparsify SAEs are TopK")
    coder = SparseCoder(w.shape.d_in, SparseCoderConfig(num_latents=w.shape.d_sae, k=w.shape.k),
                        device=w.x.device, dtype=c.compute_dtype, decoder=False)
    with torch.no_grad():
        coder.encoder.weight.copy_(w.W_enc.t())
        coder.encoder.bias.copy_(w.b_enc)
        coder.b_dec.copy_(w.b_dec)
    return _no_grad(coder.encode, c.xw)


def _saelens_model(c: Case):
    try:
        from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig
    except ImportError:
        raise Unavailable("sae_lens not installed (pip install sae-lens)") from None
    w, s = c.w, c.w.shape
    dtype = str(c.compute_dtype).replace("torch.", "")
    if s.activation == "topk":
        model = TopKSAE(TopKSAEConfig(d_in=s.d_in, d_sae=s.d_sae, k=s.k, dtype=dtype, device=str(w.x.device)))
    else:
        model = JumpReLUSAE(JumpReLUSAEConfig(d_in=s.d_in, d_sae=s.d_sae, dtype=dtype, device=str(w.x.device)))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(model, name).copy_(getattr(w, name))
        if w.threshold is not None:
            model.threshold.copy_(w.threshold)
    return model


def _saelens_encode(c: Case) -> Callable[[], object]:
    return _no_grad(_saelens_model(c).encode, c.xw)


# ---- decode -----------------------------------------------------------------------------------

def _embedding_bag(c: Case) -> Callable[[], object]:
    w = c.w
    idx, vals = c.unpadded_codes()
    return lambda: F.embedding_bag(idx, w.W_dec, per_sample_weights=vals, mode="sum") + w.b_dec


def _dense_decode(c: Case) -> Callable[[], object]:
    w = c.w
    idx, vals = c.unpadded_codes()
    return lambda: reference.decode(vals, idx, w.W_dec, w.b_dec)


def _saelens_decode(c: Case) -> Callable[[], object]:
    return _no_grad(_saelens_model(c).decode, c.dense_z)


# ---- steer (one feature set to STEER_VALUE, SAE error kept) ------------------------------------

def _dense_steer(c: Case) -> Callable[[], object]:
    w = c.w
    encode = _dense_encode(c)
    features = torch.tensor([c.feature], device=c.xw.device)
    targets = torch.tensor([STEER_VALUE], dtype=c.compute_dtype, device=c.xw.device)
    return lambda: reference.steer(c.xw, encode(), w.W_dec, w.b_dec, features, targets, "set", False, True)


def _saelens_steer(c: Case) -> Callable[[], object]:
    model, x, f = _saelens_model(c), c.xw, c.feature

    def run():
        with torch.no_grad():
            z = model.encode(x)
            error = x - model.decode(z)
            z[:, f] = STEER_VALUE
            return model.decode(z) + error
    return run


def _on_path(path: str) -> Callable[[Case], Callable[[], object]]:
    """sae-native's encode forced onto one path (own kernels or vendor GEMM + epilogue)."""
    def factory(c: Case) -> Callable[[], object]:
        def run():
            before = sn.set_encode_path(path)
            try:
                return c.sae.encode(c.w.x)
            finally:
                sn.set_encode_path(before)
        return run
    return factory


# sae-native's encode on each path, beside the automatic choice (named OURS + ":" + path).
PATHS = ("own", "gemm")

IMPLEMENTATIONS: Dict[str, List[Tuple[str, Callable[[Case], Callable[[], object]]]]] = {
    "encode": [("sae_native", lambda c: (lambda: c.sae.encode(c.w.x))),
               *((f"sae_native:{p}", _on_path(p)) for p in PATHS),
               ("dense", _dense_encode),
               ("matmul", lambda c: (lambda: c.xw @ c.w.W_enc)),
               ("faiss", _faiss),
               ("sparsify", _sparsify),
               ("sae_lens", _saelens_encode)],
    "decode": [("sae_native", lambda c: (lambda: c.sae.decode(c.codes))),
               ("embedding_bag", _embedding_bag),
               ("dense", _dense_decode),
               ("sae_lens", _saelens_decode)],
    "steer": [("sae_native", lambda c: (lambda: c.sae.steer(c.w.x, {c.feature: STEER_VALUE}))),
              ("dense", _dense_steer),
              ("sae_lens", _saelens_steer)],
}


def work(op: str, c: Case) -> Tuple[float, float]:
    """(flops, bytes) of the op's useful work, the same for every implementation, so GFLOP/s and
    GB/s compare throughput. encode: the GEMM and reading W_enc; decode: the gathered rows of
    W_dec; steer: what sae-native's algorithm needs (the encode for TopK, only the clamped
    feature's column and row for JumpReLU/ReLU)."""
    s = c.w.shape
    wsize = c.w.W_enc.element_size()
    xbytes = s.N * s.d_in * 4
    active = float(c.codes.counts.float().mean()) if s.N else 0.0
    if op == "encode":
        return 2.0 * s.N * s.d_in * s.d_sae, s.d_in * s.d_sae * wsize + xbytes
    if op == "decode":
        return 2.0 * s.N * active * s.d_in, s.N * active * s.d_in * wsize + xbytes
    if s.activation == "topk":
        return 2.0 * s.N * s.d_in * (s.d_sae + 1), s.d_in * s.d_sae * wsize + 2 * xbytes
    return 4.0 * s.N * s.d_in, 2 * s.d_in * wsize + 2 * xbytes


def reference_names() -> List[str]:
    """Every reference's name (all implementations but sae_native)."""
    names: List[str] = []
    for impls in IMPLEMENTATIONS.values():
        names += [n for n, _ in impls if not n.startswith("sae_native") and n not in names]
    return names


def callables(op: str, c: Case, refs: Optional[List[str]] = None) -> Tuple[Dict[str, Callable[[], object]], Dict[str, str]]:
    """The runnable implementations of `op` for this case (sae_native and the references in `refs`,
    all when None), and the skipped ones with reasons."""
    ready, skipped = {}, {}
    for name, factory in IMPLEMENTATIONS[op]:
        if refs is not None and not name.startswith("sae_native") and name not in refs:
            continue
        try:
            ready[name] = factory(c)
        except Unavailable as e:
            skipped[name] = str(e)
    return ready, skipped
