"""CPU kernels for the ops in ``sae_native._ops``: check the op contract, then hand raw pointers
and sizes to ``sae_native._C`` (which releases the GIL).

The checks here guard memory safety for anyone calling ``torch.ops.sae_native.*`` directly; the
public API (``functional.py``) has already given friendlier errors for user input.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _C
from ._dtypes import PAIRS, dtype_code
from .cpu_packing import check_packed, pack
_MODES = {"set": 0, "scale": 1, "add": 2}


def _fail(op: str, msg: str) -> ValueError:
    return ValueError(f"sae_native::{op}: {msg}")


def _acts(op: str, name: str, t: Tensor, cols: Optional[int] = None) -> Tensor:
    """A 2-D float32/float64 CPU activation matrix, made contiguous."""
    if t.device.type != "cpu":
        raise _fail(op, f"{name} must be on the CPU, got {t.device}")
    if t.dtype not in PAIRS:
        raise _fail(op, f"{name} must be float32 or float64, got {t.dtype}")
    if t.dim() != 2 or (cols is not None and t.shape[1] != cols):
        want = f"[n, {cols}]" if cols is not None else "2-D"
        raise _fail(op, f"{name} must be {want}, got shape {list(t.shape)}")
    return t.contiguous()


def _weights(op: str, name: str, W: Tensor, T: torch.dtype, shape) -> None:
    if W.device.type != "cpu":
        raise _fail(op, f"{name} must be on the CPU, got {W.device}")
    if W.dtype not in PAIRS[T]:
        raise _fail(op, f"{name} must be one of {[str(d) for d in PAIRS[T]]} with {T} activations, got {W.dtype}")
    if tuple(W.shape) != tuple(shape):
        raise _fail(op, f"{name} must have shape {list(shape)}, got {list(W.shape)}")


def _vector(op: str, name: str, v: Optional[Tensor], n: int, T: torch.dtype) -> Optional[Tensor]:
    """An optional [n] vector as a contiguous T tensor (biases and thresholds are small)."""
    if v is None:
        return None
    if v.device.type != "cpu" or not v.is_floating_point() or tuple(v.shape) != (n,):
        raise _fail(op, f"{name} must be a floating CPU tensor of shape [{n}], got {v.dtype} {list(v.shape)} on {v.device}")
    return v.to(T).contiguous()


def _codes(op: str, values: Tensor, indices: Tensor) -> tuple:
    values = _acts(op, "values", values)
    if indices.dtype != torch.int64 or tuple(indices.shape) != tuple(values.shape) or indices.device.type != "cpu":
        raise _fail(op, f"indices must be an int64 CPU tensor shaped like values {list(values.shape)}, "
                        f"got {indices.dtype} {list(indices.shape)} on {indices.device}")
    return values, indices.contiguous()


def _clamp(op: str, features: Tensor, targets: Tensor, d_sae: int, T: torch.dtype, mode: str):
    if mode not in _MODES:
        raise _fail(op, f"mode must be one of {list(_MODES)}, got {mode!r}")
    if features.dtype != torch.int64 or features.dim() != 1:
        raise _fail(op, f"features must be a 1-D int64 tensor, got {features.dtype} {list(features.shape)}")
    if tuple(targets.shape) != tuple(features.shape):
        raise _fail(op, f"targets must have shape {list(features.shape)}, got {list(targets.shape)}")
    if features.numel() and (int(features.min()) < 0 or int(features.max()) >= d_sae):
        raise _fail(op, f"features must lie in [0, {d_sae}), got {features.tolist()}")
    return features.contiguous(), targets.to(T).contiguous(), _MODES[mode]


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _indices_ok(op: str, report, rows: int) -> None:
    """The kernels skip latents outside [-1, rows) and count them; a non-zero count is an error.
    (Checking in the kernel rather than with torch reductions keeps torch's OpenMP threads,
    which spin for a while after each parallel op, off the cores our kernel is about to use.)"""
    count, example = report
    if count:
        raise ValueError(f"sae_native::{op}: indices: expected latents in [0, d_sae={rows}) or -1 for padding, "
                         f"got {example} ({count} out of range)")


def _packed(op: str, packed: Optional[Tensor], W_enc: Tensor) -> Tensor:
    if packed is None:
        return pack(W_enc)
    check_packed(op, packed, W_enc)
    return packed


def _encode_prologue(op, x, W_enc, b_enc, b_dec):
    if W_enc.dim() != 2:
        raise _fail(op, f"W_enc must be [d_in, d_sae], got shape {list(W_enc.shape)}")
    d_in, d_sae = W_enc.shape
    x = _acts(op, "x", x, d_in)
    T = x.dtype
    _weights(op, "W_enc", W_enc, T, (d_in, d_sae))
    b_enc = _vector(op, "b_enc", b_enc, d_sae, T)
    if b_enc is None:
        raise _fail(op, "b_enc is required")
    b_dec = _vector(op, "b_dec", b_dec, d_in, T)
    return x, T, d_in, d_sae, b_enc, b_dec


@torch.library.register_kernel("sae_native::encode_topk", "cpu")
def _encode_topk(x, W_enc, b_enc, b_dec, k, packed):
    x, T, d_in, d_sae, b_enc, b_dec = _encode_prologue("encode_topk", x, W_enc, b_enc, b_dec)
    if not 1 <= k <= d_sae:
        raise _fail("encode_topk", f"k must be in [1, d_sae={d_sae}], got {k}")
    n = x.shape[0]
    values = torch.empty(n, k, dtype=T)
    indices = torch.empty(n, k, dtype=torch.int64)
    packed = _packed("encode_topk", packed, W_enc)
    _C.encode_topk(dtype_code(T), dtype_code(W_enc.dtype), n, d_in, d_sae, x.data_ptr(), packed.data_ptr(),
                   b_enc.data_ptr(), _ptr(b_dec), k, values.data_ptr(), indices.data_ptr())
    return values, indices


@torch.library.register_kernel("sae_native::encode_groupmax", "cpu")
def _encode_groupmax(x, W_enc, b_enc, b_dec, k, packed):
    x, T, d_in, d_sae, b_enc, b_dec = _encode_prologue("encode_groupmax", x, W_enc, b_enc, b_dec)
    if k < 1 or d_sae % k:
        raise _fail("encode_groupmax", f"k must divide d_sae={d_sae} (k groups of d_sae / k latents), got {k}")
    n = x.shape[0]
    values = torch.empty(n, k, dtype=T)
    indices = torch.empty(n, k, dtype=torch.int64)
    packed = _packed("encode_groupmax", packed, W_enc)
    _C.encode_groupmax(dtype_code(T), dtype_code(W_enc.dtype), n, d_in, d_sae, x.data_ptr(), packed.data_ptr(),
                       b_enc.data_ptr(), _ptr(b_dec), k, values.data_ptr(), indices.data_ptr())
    return values, indices


@torch.library.register_kernel("sae_native::encode_threshold", "cpu")
def _encode_threshold(x, W_enc, b_enc, b_dec, threshold, packed):
    x, T, d_in, d_sae, b_enc, b_dec = _encode_prologue("encode_threshold", x, W_enc, b_enc, b_dec)
    threshold = _vector("encode_threshold", "threshold", threshold, d_sae, T)
    n = x.shape[0]
    packed = _packed("encode_threshold", packed, W_enc)
    result = _C.encode_threshold(dtype_code(T), dtype_code(W_enc.dtype), n, d_in, d_sae, x.data_ptr(),
                                 packed.data_ptr(), b_enc.data_ptr(), _ptr(b_dec), _ptr(threshold))
    width = result.max_count
    values = torch.empty(n, width, dtype=T)
    indices = torch.empty(n, width, dtype=torch.int64)
    counts = torch.empty(n, dtype=torch.int64)
    result.write(width, values.data_ptr(), indices.data_ptr(), counts.data_ptr())
    return values, indices, counts


@torch.library.register_kernel("sae_native::decode", "cpu")
def _decode(values, indices, W_dec, b_dec):
    values, indices = _codes("decode", values, indices)
    T = values.dtype
    if W_dec.dim() != 2:
        raise _fail("decode", f"W_dec must be [d_sae, d_in], got shape {list(W_dec.shape)}")
    d_sae, d_in = W_dec.shape
    _weights("decode", "W_dec", W_dec, T, (d_sae, d_in))
    b_dec = _vector("decode", "b_dec", b_dec, d_in, T)
    n, k = values.shape
    out = torch.empty(n, d_in, dtype=T)
    report = _C.combine_rows(dtype_code(T), dtype_code(W_dec.dtype), n, k, values.data_ptr(), indices.data_ptr(),
                             W_dec.data_ptr(), d_sae, d_in, W_dec.stride(0), W_dec.stride(1), _ptr(b_dec),
                             out.data_ptr())
    _indices_ok("decode", report, d_sae)
    return out


@torch.library.register_kernel("sae_native::sparse_dot", "cpu")
def _sparse_dot(g, indices, W):
    if W.dim() != 2:
        raise _fail("sparse_dot", f"W must be 2-D, got shape {list(W.shape)}")
    rows, d = W.shape
    g = _acts("sparse_dot", "g", g, d)
    T = g.dtype
    _weights("sparse_dot", "W", W, T, (rows, d))
    if indices.dtype != torch.int64 or indices.dim() != 2 or indices.shape[0] != g.shape[0]:
        raise _fail("sparse_dot", f"indices must be int64 [{g.shape[0]}, k], got {indices.dtype} {list(indices.shape)}")
    indices = indices.contiguous()
    n, k = indices.shape
    out = torch.empty(n, k, dtype=T)
    report = _C.dot_rows(dtype_code(T), dtype_code(W.dtype), n, k, g.data_ptr(), indices.data_ptr(), W.data_ptr(),
                         rows, d, W.stride(0), W.stride(1), out.data_ptr())
    _indices_ok("sparse_dot", report, rows)
    return out


@torch.library.register_kernel("sae_native::sparse_outer", "cpu")
def _sparse_outer(values, indices, g, rows, transposed):
    values, indices = _codes("sparse_outer", values, indices)
    T = values.dtype
    g = _acts("sparse_outer", "g", g)
    if g.dtype != T or g.shape[0] != values.shape[0]:
        raise _fail("sparse_outer", f"g must be {T} [{values.shape[0]}, d], got {g.dtype} {list(g.shape)}")
    if rows < 0:
        raise _fail("sparse_outer", f"rows must be >= 0, got {rows}")
    n, k = values.shape
    d = g.shape[1]
    out = torch.zeros((d, rows) if transposed else (rows, d), dtype=T)
    row_stride, col_stride = (1, rows) if transposed else (d, 1)
    report = _C.scatter_rows(dtype_code(T), n, k, values.data_ptr(), indices.data_ptr(), g.data_ptr(), d,
                             out.data_ptr(), rows, row_stride, col_stride)
    _indices_ok("sparse_outer", report, rows)
    return out


def _steer_weights(op, x, W_enc, W_dec):
    if W_dec.dim() != 2:
        raise _fail(op, f"W_dec must be [d_sae, d_in], got shape {list(W_dec.shape)}")
    d_sae, d_in = W_dec.shape
    x = _acts(op, "x", x, d_in)
    _weights(op, "W_dec", W_dec, x.dtype, (d_sae, d_in))
    if W_enc is not None:
        _weights(op, "W_enc", W_enc, x.dtype, (d_in, d_sae))
        if W_enc.dtype != W_dec.dtype:
            raise _fail(op, f"W_enc and W_dec must share a dtype, got {W_enc.dtype} and {W_dec.dtype}")
    return x, x.dtype, d_in, d_sae


@torch.library.register_kernel("sae_native::steer_threshold", "cpu")
def _steer_threshold(x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active):
    op = "steer_threshold"
    x, T, d_in, d_sae = _steer_weights(op, x, W_enc, W_dec)
    b_enc = _vector(op, "b_enc", b_enc, d_sae, T)
    b_dec = _vector(op, "b_dec", b_dec, d_in, T)
    threshold = _vector(op, "threshold", threshold, d_sae, T)
    features, targets, mode_code = _clamp(op, features, targets, d_sae, T, mode)
    n, count = x.shape[0], features.shape[0]
    y = torch.empty_like(x)
    z = torch.empty(n, count, dtype=T)
    _C.steer_threshold(dtype_code(T), dtype_code(W_dec.dtype), n, d_in, d_sae, x.data_ptr(),
                       W_enc.data_ptr(), W_enc.stride(0), W_enc.stride(1), b_enc.data_ptr(), _ptr(threshold),
                       _ptr(b_dec), W_dec.data_ptr(), W_dec.stride(0), W_dec.stride(1), count,
                       features.data_ptr(), targets.data_ptr(), mode_code, bool(only_active),
                       y.data_ptr(), z.data_ptr())
    return y, z


@torch.library.register_kernel("sae_native::steer_codes", "cpu")
def _steer_codes(x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error):
    op = "steer_codes"
    x, T, d_in, d_sae = _steer_weights(op, x, None, W_dec)
    values, indices = _codes(op, values, indices)
    if values.dtype != T or values.shape[0] != x.shape[0]:
        raise _fail(op, f"values must be {T} with {x.shape[0]} rows, got {values.dtype} {list(values.shape)}")
    b_dec = _vector(op, "b_dec", b_dec, d_in, T)
    features, targets, mode_code = _clamp(op, features, targets, d_sae, T, mode)
    n, k = values.shape
    count = features.shape[0]
    y = torch.empty_like(x)
    z = torch.empty(n, count, dtype=T)
    report = _C.steer_codes(dtype_code(T), dtype_code(W_dec.dtype), n, d_in, d_sae, k, x.data_ptr(),
                            values.data_ptr(), indices.data_ptr(), W_dec.data_ptr(), W_dec.stride(0), W_dec.stride(1),
                            _ptr(b_dec), bool(keep_error), count, features.data_ptr(), targets.data_ptr(), mode_code,
                            bool(only_active), y.data_ptr(), z.data_ptr())
    _indices_ok("steer_codes", report, d_sae)
    return y, z
