"""The launch sequences of the CUDA ops: scratch buffers, kernel calls, read-backs, on inputs that
``cuda.py`` has already checked against the op contract.

Nothing here names a device or imports the kernel module: a ``Runtime`` says which module runs the
kernels and on what stream. ``cuda.py`` passes ``sae_native._cuda`` and torch's current stream;
the tests also pass the CPU emulator's build of the same kernel sources (tests/cuda_emu) with CPU
tensors, so every line below runs on a machine without a GPU too.

What differs from the CPU backend:
- With 16-bit weights, ``u = x - b_dec`` is rounded to the weights' dtype and multiplied on tensor
  cores with fp32 accumulation (as torch's own bf16 matmul does); fp32 weights use fp32 FMAs.
- GroupMax, TopK with k > ``cuda_plan.MAX_FUSED_K`` and float64 encode through torch
  (``cuda_dense.py``): same contract, dense pre-activations a bounded block of rows at a time.
- Synchronisation: the threshold encode reads its codes' width back (data-dependent, like
  ``torch.nonzero``); decode, steer_codes, sparse_dot and sparse_outer read back the kernels'
  count of out-of-range indices (and the steering ops of out-of-range clamp features) when
  ``Runtime.index_check``. TopK encode never synchronises.
- sparse_outer adds with atomics: weight gradients are not bitwise reproducible run to run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import cuda_dense, cuda_keys, cuda_plan
from ._checks import fail, features_reported, indices_reported
from ._dtypes import dtype_code

_TENSOR_CORE = (torch.bfloat16, torch.float16)
_FUSED_WEIGHTS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Runtime:
    lib: Any            # the kernel module: sae_native._cuda, or the emulator's build of it
    stream: int         # cudaStream_t as an integer (0: the legacy default stream)
    device: Callable[[int], cuda_plan.Device]  # the device the encode is planned for, by weight dtype code
    index_check: bool   # read back the kernels' out-of-range index reports (synchronises)
    poison: bool = False  # fill every buffer the kernels write with junk first (tests: unwritten shows)

    def empty(self, *shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A buffer for the kernels to fill: uninitialised, or with ``poison`` NaN / a large key."""
        t = torch.empty(*shape, dtype=dtype, device=device)
        if self.poison:
            t.fill_(float("nan") if dtype.is_floating_point else 0x5A5A5A5A5A5A5A5A)
        return t


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


class _IndexReport:
    """Two counters the kernels fill with out-of-range indices (how many, one example)."""

    def __init__(self, rt: Runtime, device: torch.device):
        self.t = torch.zeros(2, dtype=torch.int64, device=device) if rt.index_check else None

    @property
    def ptr(self) -> int:
        return _ptr(self.t)

    def raise_if_any(self, op: str, rows: int, what: str = "indices") -> None:
        if self.t is not None:
            count, example = self.t.tolist()  # synchronises
            (features_reported if what == "features" else indices_reported)(op, count, example, rows)


def _encoder_input(x: Tensor, b_dec: Optional[Tensor], W: Tensor) -> Tensor:
    """u = x - b_dec, in the weights' dtype when they are 16-bit (the tensor cores' operand)."""
    u = x - b_dec if b_dec is not None else x
    return u.to(W.dtype).contiguous() if W.dtype in _TENSOR_CORE else u.contiguous()


def _dense_input(x: Tensor, b_dec: Optional[Tensor], W: Tensor) -> Tensor:
    """The same u for the torch fallbacks, rounded the same way, in x's dtype."""
    return _encoder_input(x, b_dec, W).to(x.dtype)


def _weights(op: str, W_enc: Tensor, packed: Optional[Tensor]) -> Tensor:
    """W_enc row-major: the packed copy (``backends.PackedEncoder``) or W_enc made contiguous."""
    if packed is None:
        return W_enc.contiguous()
    if packed.shape != W_enc.shape or packed.dtype != W_enc.dtype or packed.device != W_enc.device \
            or not packed.is_contiguous():
        raise fail(op, f"packed must be W_enc made contiguous ({W_enc.dtype} {list(W_enc.shape)} on "
                       f"{W_enc.device}), got {packed.dtype} {list(packed.shape)} on {packed.device}")
    return packed


def _fused(T: torch.dtype, W: Tensor) -> bool:
    return T == torch.float32 and W.dtype in _FUSED_WEIGHTS and W.shape[1] < 2 ** 31


def _vec_ok(u: Tensor, W: Tensor) -> bool:
    d_in, d_sae = W.shape
    return W.dtype in _TENSOR_CORE and d_in % 8 == 0 and d_sae % 8 == 0 and \
        u.data_ptr() % 16 == 0 and W.data_ptr() % 16 == 0


def encode_topk(rt: Runtime, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], k: int,
                packed: Optional[Tensor]):
    n, d_in = x.shape
    d_sae = W_enc.shape[1]
    T = x.dtype
    plan = cuda_plan.topk_plan(n, d_sae, k, rt.device(dtype_code(W_enc.dtype))) if _fused(T, W_enc) else None
    if plan is None or n == 0:
        return cuda_dense.encode_topk(_dense_input(x, b_dec, W_enc), W_enc, b_enc, k)
    W = _weights("encode_topk", W_enc, packed)
    u = _encoder_input(x, b_dec, W)
    cand = rt.empty(n, plan.candidates, dtype=torch.int64, device=x.device)   # uint64 keys
    rt.lib.encode_topk(dtype_code(W.dtype), n, d_in, d_sae, u.data_ptr(), W.data_ptr(), b_enc.data_ptr(), k,
                       plan.cap, plan.grid.chunk_latents, plan.grid.chunks, cand.data_ptr(), _vec_ok(u, W),
                       rt.stream)
    values = rt.empty(n, k, dtype=T, device=x.device)
    indices = rt.empty(n, k, dtype=torch.int64, device=x.device)
    rt.lib.sort_rows(n, cand.data_ptr(), plan.candidates, plan.candidates, 0, plan.sort_size, k, True,
                     values.data_ptr(), indices.data_ptr(), rt.stream)
    return values, indices


def encode_groupmax(rt: Runtime, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], k: int):
    return cuda_dense.encode_groupmax(_dense_input(x, b_dec, W_enc), W_enc, b_enc, k)


def encode_threshold(rt: Runtime, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor],
                     threshold: Optional[Tensor], packed: Optional[Tensor], compact_nonfinite: bool):
    n, d_in = x.shape
    d_sae = W_enc.shape[1]
    T = x.dtype
    grid = cuda_plan.threshold_grid(n, d_sae, rt.device(dtype_code(W_enc.dtype))) if _fused(T, W_enc) else None
    if grid is None or n == 0:
        return cuda_dense.encode_threshold(_dense_input(x, b_dec, W_enc), W_enc, b_enc, threshold,
                                           compact_nonfinite)
    W = _weights("encode_threshold", W_enc, packed)
    u = _encoder_input(x, b_dec, W)
    cap = cuda_plan.threshold_cap(d_sae)
    while True:
        counts = torch.zeros(n, dtype=torch.int64, device=x.device)
        hits = rt.empty(n, cap, dtype=torch.int64, device=x.device)   # uint64 keys
        # uint64 per row, all ones: no non-finite latent yet (the kernel keeps the lowest one)
        nonfinite = torch.full((n,), -1, dtype=torch.int64, device=x.device) if compact_nonfinite else None
        rt.lib.encode_threshold(dtype_code(W.dtype), n, d_in, d_sae, u.data_ptr(), W.data_ptr(), b_enc.data_ptr(),
                                _ptr(threshold), cap, grid.chunk_latents, grid.chunks, counts.data_ptr(),
                                hits.data_ptr(), _ptr(nonfinite), _vec_ok(u, W), rt.stream)
        width = int(counts.max())  # synchronises: the codes' width is the batch's largest count
        if width <= cap:
            break
        cap = width  # a row had more hits than the buffer held: once more, wide enough for all
    size = cuda_plan.next_pow2(width)
    if size > cuda_plan.SORT_MAX:
        values, indices = cuda_keys.sort_keys(hits, counts, width)
        return values.to(T), indices, counts
    values = rt.empty(n, width, dtype=T, device=x.device)
    indices = rt.empty(n, width, dtype=torch.int64, device=x.device)
    rt.lib.sort_rows(n, hits.data_ptr(), cap, width, counts.data_ptr(), size, width, False, values.data_ptr(),
                     indices.data_ptr(), rt.stream)
    return values, indices, counts


def _decode_into(rt: Runtime, out: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor,
                 b_dec: Optional[Tensor], report: _IndexReport) -> None:
    n, k = values.shape
    d_sae, d_in = W_dec.shape
    rt.lib.decode(dtype_code(values.dtype), dtype_code(W_dec.dtype), n, k, values.data_ptr(), indices.data_ptr(),
                  W_dec.data_ptr(), d_sae, d_in, W_dec.stride(0), W_dec.stride(1), _ptr(b_dec), out.data_ptr(),
                  report.ptr, rt.stream)


def decode(rt: Runtime, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor]) -> Tensor:
    out = rt.empty(values.shape[0], W_dec.shape[1], dtype=values.dtype, device=values.device)
    report = _IndexReport(rt, values.device)
    _decode_into(rt, out, values, indices, W_dec, b_dec, report)
    report.raise_if_any("decode", W_dec.shape[0])
    return out


def sparse_dot(rt: Runtime, g: Tensor, indices: Tensor, W: Tensor) -> Tensor:
    n, k = indices.shape
    rows, d = W.shape
    out = rt.empty(n, k, dtype=g.dtype, device=g.device)
    report = _IndexReport(rt, g.device)
    rt.lib.sparse_dot(dtype_code(g.dtype), dtype_code(W.dtype), n, k, g.data_ptr(), indices.data_ptr(),
                      W.data_ptr(), rows, d, W.stride(0), W.stride(1), out.data_ptr(), report.ptr, rt.stream)
    report.raise_if_any("sparse_dot", rows)
    return out


def sparse_outer(rt: Runtime, values: Tensor, indices: Tensor, g: Tensor, rows: int, transposed: bool) -> Tensor:
    n, k = values.shape
    d = g.shape[1]
    out = torch.zeros((d, rows) if transposed else (rows, d), dtype=values.dtype, device=g.device)
    row_stride, col_stride = (1, rows) if transposed else (d, 1)
    report = _IndexReport(rt, g.device)
    rt.lib.sparse_outer(dtype_code(values.dtype), n, k, values.data_ptr(), indices.data_ptr(), g.data_ptr(), d,
                        out.data_ptr(), rows, row_stride, col_stride, report.ptr, rt.stream)
    report.raise_if_any("sparse_outer", rows)
    return out


class _Clamp:
    """The clamped features' W_enc columns, b_enc / threshold entries and W_dec rows, gathered once
    per call by a kernel that skips (zeros) and reports features outside [0, d_sae)."""

    def __init__(self, rt: Runtime, T: torch.dtype, features: Tensor, W_dec: Tensor, report: _IndexReport,
                 W_enc: Optional[Tensor] = None, b_enc: Optional[Tensor] = None,
                 threshold: Optional[Tensor] = None):
        count = features.shape[0]
        d_sae, d_in = W_dec.shape
        dev = W_dec.device
        self.dec_rows = rt.empty(count, d_in, dtype=T, device=dev)
        self.enc_cols = rt.empty(count, d_in, dtype=T, device=dev) if W_enc is not None else None
        self.b_f = rt.empty(count, dtype=T, device=dev) if b_enc is not None else None
        self.thr_f = rt.empty(count, dtype=T, device=dev) if threshold is not None else None
        enc_rs, enc_cs = (W_enc.stride(0), W_enc.stride(1)) if W_enc is not None else (0, 0)
        rt.lib.gather_clamp(dtype_code(T), dtype_code(W_dec.dtype), d_in, d_sae, count, features.data_ptr(),
                            _ptr(W_enc), enc_rs, enc_cs, _ptr(b_enc), _ptr(threshold), W_dec.data_ptr(),
                            W_dec.stride(0), W_dec.stride(1), _ptr(self.enc_cols), _ptr(self.b_f),
                            _ptr(self.thr_f), self.dec_rows.data_ptr(), report.ptr, rt.stream)


def steer_threshold(rt: Runtime, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor,
                    b_dec: Optional[Tensor], threshold: Optional[Tensor], features: Tensor, targets: Tensor,
                    mode_code: int, only_active: bool):
    n, d_in = x.shape
    d_sae = W_dec.shape[0]
    T = x.dtype
    count = features.shape[0]
    y = rt.empty(*x.shape, dtype=x.dtype, device=x.device)
    z = rt.empty(n, count, dtype=T, device=x.device)
    report = _IndexReport(rt, x.device)
    g = _Clamp(rt, T, features, W_dec, report, W_enc, b_enc, threshold)
    rt.lib.steer_threshold(dtype_code(T), n, d_in, x.data_ptr(), _ptr(b_dec), count, features.data_ptr(), d_sae,
                           _ptr(g.enc_cols), _ptr(g.b_f), _ptr(g.thr_f), g.dec_rows.data_ptr(), targets.data_ptr(),
                           mode_code, bool(only_active), y.data_ptr(), z.data_ptr(), rt.stream)
    report.raise_if_any("steer_threshold", d_sae, "features")
    return y, z


def steer_codes(rt: Runtime, x: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor],
                features: Tensor, targets: Tensor, mode_code: int, only_active: bool, keep_error: bool):
    n, k = values.shape
    d_sae, d_in = W_dec.shape
    T = x.dtype
    count = features.shape[0]
    y = rt.empty(*x.shape, dtype=x.dtype, device=x.device)
    z = rt.empty(n, count, dtype=T, device=x.device)
    report = _IndexReport(rt, x.device)
    feature_report = _IndexReport(rt, x.device)
    g = _Clamp(rt, T, features, W_dec, feature_report)
    if keep_error:
        base = x
    else:  # y starts as the decoded codes (plus b_dec); the kernel adds the clamp's change in place
        _decode_into(rt, y, values, indices, W_dec, b_dec, report)
        base = y
    rt.lib.steer_codes(dtype_code(T), n, d_in, k, base.data_ptr(), values.data_ptr(), indices.data_ptr(), d_sae,
                       count, features.data_ptr(), targets.data_ptr(), g.dec_rows.data_ptr(), mode_code,
                       bool(only_active), y.data_ptr(), z.data_ptr(), report.ptr if keep_error else 0, rt.stream)
    report.raise_if_any("steer_codes", d_sae)
    feature_report.raise_if_any("steer_codes", d_sae, "features")
    return y, z
