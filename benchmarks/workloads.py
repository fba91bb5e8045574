"""Shapes, random SAEs and the reference implementations the benchmarks time against.

Shapes (the CPU-speed issue's targets):
  A: N=2048, d_in=768,  d_sae=24576, k=32         (GPT-2-small-sized TopK SAE, a batch)
  B: N=4096, d_in=2304, d_sae=16384, jumprelu     (Gemma-2-2B-sized JumpReLU SAE, a batch)
  C: N=1,    d_in=2304, d_sae=65536, k=64         (one generation step, wide SAE)
References are used only when importable: faiss (IndexFlatIP.search), sparsify (eai-sparsify),
sae_lens; torch's dense path, bare matmul and embedding_bag are always there.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

import sae_native as sn

SHAPES = {
    "A": dict(N=2048, d_in=768, d_sae=24576, k=32, activation="topk"),
    "B": dict(N=4096, d_in=2304, d_sae=16384, k=None, activation="jumprelu"),
    "C": dict(N=1, d_in=2304, d_sae=65536, k=64, activation="topk"),
}


@dataclass
class Workload:
    N: int
    d_in: int
    d_sae: int
    k: Optional[int]
    activation: str
    x: torch.Tensor
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: Optional[torch.Tensor]

    def sae(self, dtype=torch.float32) -> sn.SAE:
        s = sn.SAE(self.W_enc, self.b_enc, self.W_dec, self.b_dec, activation=self.activation, k=self.k,
                   threshold=self.threshold)
        return s if dtype == torch.float32 else s.to(dtype=dtype)


def make_workload(name: str, seed: int = 0) -> Workload:
    s = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    d_in, d_sae = s["d_in"], s["d_sae"]
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    threshold = None
    b_enc = 0.1 * torch.randn(d_sae, generator=g)
    if s["activation"] == "jumprelu":
        # About 60 active latents per row, as trained JumpReLU SAEs have.
        b_enc -= 2.5
        threshold = 0.2 * torch.rand(d_sae, generator=g)
    return Workload(s["N"], d_in, d_sae, s["k"], s["activation"], torch.randn(s["N"], d_in, generator=g), W_enc,
                    b_enc, torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5, 0.1 * torch.randn(d_in, generator=g),
                    threshold)


# ---- references --------------------------------------------------------------------------------


def dense_encode(w: Workload) -> Callable[[], object]:
    """torch's dense path: topk(relu(x @ W_enc + b_enc)) or the JumpReLU formula."""
    if w.activation == "topk":
        return lambda: ((w.x - w.b_dec) @ w.W_enc + w.b_enc).relu().topk(w.k, dim=-1)

    def jump():
        pre = (w.x - w.b_dec) @ w.W_enc + w.b_enc
        return pre.relu() * (pre > w.threshold)
    return jump


def dense_encode_decode(w: Workload) -> Callable[[], object]:
    enc = dense_encode(w)
    if w.activation == "topk":
        def run():
            top = enc()
            z = torch.zeros(w.N, w.d_sae).scatter_(-1, top.indices, top.values)
            return z @ w.W_dec + w.b_dec
        return run
    return lambda: enc() @ w.W_dec + w.b_dec


def faiss_search(w: Workload) -> Optional[Callable[[], object]]:
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(sn.get_num_threads())
    index = faiss.IndexFlatIP(w.d_in)
    index.add(w.W_enc.t().contiguous().numpy())
    xq = (w.x - w.b_dec).numpy()
    return lambda: index.search(xq, w.k)


def sparsify_encode(w: Workload) -> Optional[Callable[[], object]]:
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        return None
    coder = SparseCoder(w.d_in, SparseCoderConfig(num_latents=w.d_sae, k=w.k), decoder=False)
    with torch.no_grad():
        coder.encoder.weight.copy_(w.W_enc.t())
        coder.encoder.bias.copy_(w.b_enc)
        coder.b_dec.copy_(w.b_dec)

    def run():
        with torch.no_grad():
            return coder.encode(w.x)
    return run


def saelens_encode(w: Workload) -> Optional[Callable[[], object]]:
    try:
        from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig
    except ImportError:
        return None
    if w.activation == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=w.d_in, d_sae=w.d_sae, k=w.k))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=w.d_in, d_sae=w.d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(w.W_enc)
        sae.b_enc.copy_(w.b_enc)
        sae.W_dec.copy_(w.W_dec)
        sae.b_dec.copy_(w.b_dec)
        if w.threshold is not None:
            sae.threshold.copy_(w.threshold)

    def run():
        with torch.no_grad():
            return sae.encode(w.x)
    return run


# ---- timing ------------------------------------------------------------------------------------


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each function, run A B C A B C ... so machine drift hits all alike."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return times


def median(v: List[float]) -> float:
    s = sorted(v)
    return s[len(s) // 2]
