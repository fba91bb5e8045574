"""CPU kernels for the ops in ``sae_native._ops``: check the op contract, then hand raw pointers
and sizes to ``sae_native._C`` (which releases the GIL).

The contract checks (``_checks.py``) guard memory safety for anyone calling
``torch.ops.sae_native.*`` directly.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _C
from ._checks import OpChecks, features_reported, groupmax_k, indices_reported, topk_k
from ._dtypes import dtype_code
from .cpu_packing import check_packed, pack

_chk = OpChecks("cpu", "CPU")


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _indices_ok(op: str, report, rows: int) -> None:
    """The kernels skip latents outside [-1, rows) and count them; a non-zero count is an error.
    (Checking in the kernel rather than with torch reductions keeps torch's OpenMP threads,
    which spin for a while after each parallel op, off the cores our kernel is about to use.)"""
    count, example = report
    indices_reported(op, int(count), int(example), rows)


def _features_ok(op: str, report, d_sae: int) -> None:
    """The steering kernels skip clamp features outside [0, d_sae) and count them (they never
    trust the caller's check for memory safety); a non-zero count is an error."""
    count, example = report
    features_reported(op, int(count), int(example), d_sae)


def _packed(op: str, packed: Optional[Tensor], W_enc: Tensor) -> Tensor:
    if packed is None:
        return pack(W_enc)
    check_packed(op, packed, W_enc)
    return packed


def _encode_k(op: str, native, check_k, x, W_enc, b_enc, b_dec, k, packed):
    """TopK and GroupMax: k codes per row, written by `native` (_C.encode_topk / encode_groupmax)."""
    x, T, d_in, d_sae, b_enc, b_dec = _chk.encode_prologue(op, x, W_enc, b_enc, b_dec)
    check_k(op, k, d_sae)
    n = x.shape[0]
    values = torch.empty(n, k, dtype=T)
    indices = torch.empty(n, k, dtype=torch.int64)
    packed = _packed(op, packed, W_enc)
    native(dtype_code(T), dtype_code(W_enc.dtype), n, d_in, d_sae, x.data_ptr(), packed.data_ptr(),
           b_enc.data_ptr(), _ptr(b_dec), k, values.data_ptr(), indices.data_ptr())
    return values, indices


@torch.library.register_kernel("sae_native::encode_topk", "cpu")
def _encode_topk(x, W_enc, b_enc, b_dec, k, packed):
    return _encode_k("encode_topk", _C.encode_topk, topk_k, x, W_enc, b_enc, b_dec, k, packed)


@torch.library.register_kernel("sae_native::encode_groupmax", "cpu")
def _encode_groupmax(x, W_enc, b_enc, b_dec, k, packed):
    return _encode_k("encode_groupmax", _C.encode_groupmax, groupmax_k, x, W_enc, b_enc, b_dec, k, packed)


@torch.library.register_kernel("sae_native::encode_threshold", "cpu")
def _encode_threshold(x, W_enc, b_enc, b_dec, threshold, packed, compact_nonfinite=True):
    x, T, d_in, d_sae, b_enc, b_dec = _chk.encode_prologue("encode_threshold", x, W_enc, b_enc, b_dec)
    threshold = _chk.vector("encode_threshold", "threshold", threshold, d_sae, T)
    n = x.shape[0]
    packed = _packed("encode_threshold", packed, W_enc)
    result = _C.encode_threshold(dtype_code(T), dtype_code(W_enc.dtype), n, d_in, d_sae, x.data_ptr(),
                                 packed.data_ptr(), b_enc.data_ptr(), _ptr(b_dec), _ptr(threshold),
                                 bool(compact_nonfinite))
    width = result.max_count
    values = torch.empty(n, width, dtype=T)
    indices = torch.empty(n, width, dtype=torch.int64)
    counts = torch.empty(n, dtype=torch.int64)
    result.write(width, values.data_ptr(), indices.data_ptr(), counts.data_ptr())
    return values, indices, counts


@torch.library.register_kernel("sae_native::decode", "cpu")
def _decode(values, indices, W_dec, b_dec):
    values, indices, T, d_sae, d_in, b_dec = _chk.decode_weights("decode", values, indices, W_dec, b_dec)
    n, k = values.shape
    out = torch.empty(n, d_in, dtype=T)
    report = _C.combine_rows(dtype_code(T), dtype_code(W_dec.dtype), n, k, values.data_ptr(), indices.data_ptr(),
                             W_dec.data_ptr(), d_sae, d_in, W_dec.stride(0), W_dec.stride(1), _ptr(b_dec),
                             out.data_ptr())
    _indices_ok("decode", report, d_sae)
    return out


@torch.library.register_kernel("sae_native::sparse_dot", "cpu")
def _sparse_dot(g, indices, W):
    g, indices, T, rows, d = _chk.sparse_dot_inputs("sparse_dot", g, indices, W)
    n, k = indices.shape
    out = torch.empty(n, k, dtype=T)
    report = _C.dot_rows(dtype_code(T), dtype_code(W.dtype), n, k, g.data_ptr(), indices.data_ptr(), W.data_ptr(),
                         rows, d, W.stride(0), W.stride(1), out.data_ptr())
    _indices_ok("sparse_dot", report, rows)
    return out


@torch.library.register_kernel("sae_native::sparse_outer", "cpu")
def _sparse_outer(values, indices, g, rows, transposed):
    values, indices, g, T = _chk.sparse_outer_inputs("sparse_outer", values, indices, g, rows)
    n, k = values.shape
    d = g.shape[1]
    out = torch.zeros((d, rows) if transposed else (rows, d), dtype=T)
    row_stride, col_stride = (1, rows) if transposed else (d, 1)
    report = _C.scatter_rows(dtype_code(T), n, k, values.data_ptr(), indices.data_ptr(), g.data_ptr(), d,
                             out.data_ptr(), rows, row_stride, col_stride)
    _indices_ok("sparse_outer", report, rows)
    return out


@torch.library.register_kernel("sae_native::steer_threshold", "cpu")
def _steer_threshold(x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active):
    op = "steer_threshold"
    x, T, d_in, d_sae, b_enc, b_dec, threshold, features, targets, mode_code = _chk.steer_threshold_inputs(
        op, x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode)
    n, count = x.shape[0], features.shape[0]
    y = torch.empty_like(x)
    z = torch.empty(n, count, dtype=T)
    features_report = _C.steer_threshold(dtype_code(T), dtype_code(W_dec.dtype), n, d_in, d_sae, x.data_ptr(),
                       W_enc.data_ptr(), W_enc.stride(0), W_enc.stride(1), b_enc.data_ptr(), _ptr(threshold),
                       _ptr(b_dec), W_dec.data_ptr(), W_dec.stride(0), W_dec.stride(1), count,
                       features.data_ptr(), targets.data_ptr(), mode_code, bool(only_active),
                       y.data_ptr(), z.data_ptr())
    _features_ok(op, features_report, d_sae)
    return y, z


@torch.library.register_kernel("sae_native::steer_codes", "cpu")
def _steer_codes(x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error):
    op = "steer_codes"
    x, T, d_in, d_sae, values, indices, b_dec, features, targets, mode_code = _chk.steer_codes_inputs(
        op, x, values, indices, W_dec, b_dec, features, targets, mode)
    n, k = values.shape
    count = features.shape[0]
    y = torch.empty_like(x)
    z = torch.empty(n, count, dtype=T)
    report, features_report = _C.steer_codes(dtype_code(T), dtype_code(W_dec.dtype), n, d_in, d_sae, k, x.data_ptr(),
                            values.data_ptr(), indices.data_ptr(), W_dec.data_ptr(), W_dec.stride(0), W_dec.stride(1),
                            _ptr(b_dec), bool(keep_error), count, features.data_ptr(), targets.data_ptr(), mode_code,
                            bool(only_active), y.data_ptr(), z.data_ptr())
    _indices_ok(op, report, d_sae)
    _features_ok(op, features_report, d_sae)
    return y, z
