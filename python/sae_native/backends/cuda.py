"""CUDA kernels for the ops in ``sae_native._ops``: check the op contract (``_checks.py``), then
hand raw device pointers, sizes and torch's current stream to ``sae_native._cuda``. Every launch
is asynchronous on that stream; scratch buffers come from torch's caching allocator here.

What differs from the CPU:
- With 16-bit weights, ``u = x - b_dec`` is rounded to the weights' dtype and multiplied on tensor
  cores with fp32 accumulation (as torch's own bf16 matmul does); fp32 weights use fp32 FMAs.
- GroupMax, TopK with k > ``cuda_plan.MAX_FUSED_K`` and float64 encode through torch
  (``cuda_dense.py``): same contract, dense pre-activations a bounded block of rows at a time.
- Synchronisation: the threshold encode reads its codes' width back (data-dependent, like
  ``torch.nonzero``); decode, steer_codes, sparse_dot and sparse_outer read back the kernels'
  count of out-of-range indices, unless a CUDA graph is being captured or
  ``SAE_NATIVE_CUDA_INDEX_CHECK=0``. TopK encode and steer_threshold never synchronise.
- sparse_outer adds with atomics: weight gradients are not bitwise reproducible run to run.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

from .. import _cuda
from . import cuda_dense, cuda_keys, cuda_plan
from ._checks import OpChecks, fail, groupmax_k, indices_reported, topk_k
from ._dtypes import dtype_code

_chk = OpChecks("cuda", "CUDA")
_TENSOR_CORE = (torch.bfloat16, torch.float16)
_FUSED_WEIGHTS = (torch.float32, torch.bfloat16, torch.float16)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class _IndexReport:
    """Two device counters the kernels fill with out-of-range indices (how many, one example)."""

    def __init__(self, device: torch.device):
        check = os.environ.get("SAE_NATIVE_CUDA_INDEX_CHECK", "1") != "0"
        self.t = torch.zeros(2, dtype=torch.int64, device=device) if check and \
            not torch.cuda.is_current_stream_capturing() else None

    @property
    def ptr(self) -> int:
        return _ptr(self.t)

    def raise_if_any(self, op: str, rows: int) -> None:
        if self.t is not None:
            count, example = self.t.tolist()  # synchronises
            indices_reported(op, count, example, rows)


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


@torch.library.register_kernel("sae_native::encode_topk", "cuda")
def _encode_topk(x, W_enc, b_enc, b_dec, k, packed):
    op = "encode_topk"
    x, T, d_in, d_sae, b_enc, b_dec = _chk.encode_prologue(op, x, W_enc, b_enc, b_dec)
    topk_k(op, k, d_sae)
    n = x.shape[0]
    with torch.cuda.device(x.device):
        plan = cuda_plan.topk_plan(n, d_sae, k, _sm_count(x.device.index)) if _fused(T, W_enc) else None
        if plan is None or n == 0:
            return cuda_dense.encode_topk(_dense_input(x, b_dec, W_enc), W_enc, b_enc, k)
        W = _weights(op, W_enc, packed)
        u = _encoder_input(x, b_dec, W)
        cand = torch.empty(n, plan.candidates, dtype=torch.int64, device=x.device)   # uint64 keys
        stream = _stream(x.device)
        _cuda.encode_topk(dtype_code(W.dtype), n, d_in, d_sae, u.data_ptr(), W.data_ptr(), b_enc.data_ptr(), k,
                          plan.cap, plan.grid.chunk_latents, plan.grid.chunks, cand.data_ptr(), _vec_ok(u, W),
                          stream)
        values = torch.empty(n, k, dtype=T, device=x.device)
        indices = torch.empty(n, k, dtype=torch.int64, device=x.device)
        _cuda.sort_rows(n, cand.data_ptr(), plan.candidates, plan.candidates, 0, plan.sort_size, k, True,
                        values.data_ptr(), indices.data_ptr(), stream)
    return values, indices


@torch.library.register_kernel("sae_native::encode_groupmax", "cuda")
def _encode_groupmax(x, W_enc, b_enc, b_dec, k, packed):
    x, T, d_in, d_sae, b_enc, b_dec = _chk.encode_prologue("encode_groupmax", x, W_enc, b_enc, b_dec)
    groupmax_k("encode_groupmax", k, d_sae)
    with torch.cuda.device(x.device):
        return cuda_dense.encode_groupmax(_dense_input(x, b_dec, W_enc), W_enc, b_enc, k)


@torch.library.register_kernel("sae_native::encode_threshold", "cuda")
def _encode_threshold(x, W_enc, b_enc, b_dec, threshold, packed):
    op = "encode_threshold"
    x, T, d_in, d_sae, b_enc, b_dec = _chk.encode_prologue(op, x, W_enc, b_enc, b_dec)
    threshold = _chk.vector(op, "threshold", threshold, d_sae, T)
    _chk.same_device(op, x, threshold=threshold)
    n = x.shape[0]
    with torch.cuda.device(x.device):
        if not _fused(T, W_enc) or n == 0:
            return cuda_dense.encode_threshold(_dense_input(x, b_dec, W_enc), W_enc, b_enc, threshold)
        W = _weights(op, W_enc, packed)
        u = _encoder_input(x, b_dec, W)
        grid = cuda_plan.threshold_grid(n, d_sae, _sm_count(x.device.index))
        stream = _stream(x.device)
        cap = cuda_plan.threshold_cap(d_sae)
        while True:
            counts = torch.zeros(n, dtype=torch.int64, device=x.device)
            hits = torch.empty(n, cap, dtype=torch.int64, device=x.device)   # uint64 keys
            _cuda.encode_threshold(dtype_code(W.dtype), n, d_in, d_sae, u.data_ptr(), W.data_ptr(),
                                   b_enc.data_ptr(), _ptr(threshold), cap, grid.chunk_latents, grid.chunks,
                                   counts.data_ptr(), hits.data_ptr(), _vec_ok(u, W), stream)
            width = int(counts.max())  # synchronises: the codes' width is the batch's largest count
            if width <= cap:
                break
            cap = width  # a row had more hits than the buffer held: once more, wide enough for all
        size = cuda_plan.next_pow2(width)
        if size > cuda_plan.SORT_MAX:
            values, indices = cuda_keys.sort_keys(hits, counts, width)
            return values.to(T), indices, counts
        values = torch.empty(n, width, dtype=T, device=x.device)
        indices = torch.empty(n, width, dtype=torch.int64, device=x.device)
        _cuda.sort_rows(n, hits.data_ptr(), cap, width, counts.data_ptr(), size, width, False, values.data_ptr(),
                        indices.data_ptr(), stream)
    return values, indices, counts


@torch.library.register_kernel("sae_native::decode", "cuda")
def _decode(values, indices, W_dec, b_dec):
    values, indices, T, d_sae, d_in, b_dec = _chk.decode_weights("decode", values, indices, W_dec, b_dec)
    n, k = values.shape
    out = torch.empty(n, d_in, dtype=T, device=values.device)
    with torch.cuda.device(values.device):
        report = _IndexReport(values.device)
        _cuda.decode(dtype_code(T), dtype_code(W_dec.dtype), n, k, values.data_ptr(), indices.data_ptr(),
                     W_dec.data_ptr(), d_sae, d_in, W_dec.stride(0), W_dec.stride(1), _ptr(b_dec), out.data_ptr(),
                     report.ptr, _stream(values.device))
        report.raise_if_any("decode", d_sae)
    return out


@torch.library.register_kernel("sae_native::sparse_dot", "cuda")
def _sparse_dot(g, indices, W):
    g, indices, T, rows, d = _chk.sparse_dot_inputs("sparse_dot", g, indices, W)
    n, k = indices.shape
    out = torch.empty(n, k, dtype=T, device=g.device)
    with torch.cuda.device(g.device):
        report = _IndexReport(g.device)
        _cuda.sparse_dot(dtype_code(T), dtype_code(W.dtype), n, k, g.data_ptr(), indices.data_ptr(), W.data_ptr(),
                         rows, d, W.stride(0), W.stride(1), out.data_ptr(), report.ptr, _stream(g.device))
        report.raise_if_any("sparse_dot", rows)
    return out


@torch.library.register_kernel("sae_native::sparse_outer", "cuda")
def _sparse_outer(values, indices, g, rows, transposed):
    values, indices, g, T = _chk.sparse_outer_inputs("sparse_outer", values, indices, g, rows)
    n, k = values.shape
    d = g.shape[1]
    out = torch.zeros((d, rows) if transposed else (rows, d), dtype=T, device=g.device)
    row_stride, col_stride = (1, rows) if transposed else (d, 1)
    with torch.cuda.device(g.device):
        report = _IndexReport(g.device)
        _cuda.sparse_outer(dtype_code(T), n, k, values.data_ptr(), indices.data_ptr(), g.data_ptr(), d,
                           out.data_ptr(), rows, row_stride, col_stride, report.ptr, _stream(g.device))
        report.raise_if_any("sparse_outer", rows)
    return out


@torch.library.register_kernel("sae_native::steer_threshold", "cuda")
def _steer_threshold(x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active):
    op = "steer_threshold"
    x, T, d_in, d_sae, b_enc, b_dec, threshold, features, targets, mode_code = _chk.steer_threshold_inputs(
        op, x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode)
    n, count = x.shape[0], features.shape[0]
    y = torch.empty_like(x)
    z = torch.empty(n, count, dtype=T, device=x.device)
    with torch.cuda.device(x.device):
        # Only the clamped features' columns and rows, gathered once per call ([count, d_in]).
        enc_cols = W_enc[:, features].t().to(T).contiguous()
        dec_rows = W_dec[features].to(T).contiguous()
        b_f = b_enc[features].contiguous()
        thr_f = threshold[features].contiguous() if threshold is not None else None
        _cuda.steer_threshold(dtype_code(T), n, d_in, x.data_ptr(), _ptr(b_dec), count, enc_cols.data_ptr(),
                              b_f.data_ptr(), _ptr(thr_f), dec_rows.data_ptr(), targets.data_ptr(), mode_code,
                              bool(only_active), y.data_ptr(), z.data_ptr(), _stream(x.device))
    return y, z


@torch.library.register_kernel("sae_native::steer_codes", "cuda")
def _steer_codes(x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error):
    op = "steer_codes"
    x, T, d_in, d_sae, values, indices, b_dec, features, targets, mode_code = _chk.steer_codes_inputs(
        op, x, values, indices, W_dec, b_dec, features, targets, mode)
    n, k = values.shape
    count = features.shape[0]
    y = torch.empty_like(x)
    z = torch.empty(n, count, dtype=T, device=x.device)
    with torch.cuda.device(x.device):
        stream = _stream(x.device)
        dec_rows = W_dec[features].to(T).contiguous()
        report = _IndexReport(x.device)
        if keep_error:
            base = x
        else:  # y starts as the decoded codes (plus b_dec); the kernel adds the clamp's change in place
            _cuda.decode(dtype_code(T), dtype_code(W_dec.dtype), n, k, values.data_ptr(), indices.data_ptr(),
                         W_dec.data_ptr(), d_sae, d_in, W_dec.stride(0), W_dec.stride(1), _ptr(b_dec), y.data_ptr(),
                         report.ptr, stream)
            base = y
        _cuda.steer_codes(dtype_code(T), n, d_in, k, base.data_ptr(), values.data_ptr(), indices.data_ptr(), d_sae,
                          count, features.data_ptr(), targets.data_ptr(), dec_rows.data_ptr(), mode_code,
                          bool(only_active), y.data_ptr(), z.data_ptr(), report.ptr if keep_error else 0, stream)
        report.raise_if_any(op, d_sae)
    return y, z
