"""The contract of every op, checked once, in front of every device's kernel (``_ops.py`` runs these,
then the kernel ``registry.py`` picks).

Two kinds of check:
- **Structure** (shapes, dtypes, devices, k): always; reading tensor metadata costs nothing. A
  kernel relies on these for memory safety (it reads ``n x d`` of what it is told is ``n x d``).
- **Values** (index and clamp-feature ranges, distinct features, finite targets): only with the
  op's ``check`` argument. Reading values back from a GPU is a synchronisation, and the package's
  own calls (codes it just made, a clamp it parsed) pass ``check=False``. Kernels never trust
  values either way: an index or feature out of range is skipped, never read, and counted; with
  ``check`` the count is read and raised on (the CPU raises on it always: reading it is free).

Each function returns the op's arguments normalised (contiguous activations, biases as contiguous
vectors of the activations' dtype) as a record the kernels take.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._dtypes import PAIRS
from ..reference import MODES


def fail(op: str, msg: str) -> ValueError:
    return ValueError(f"sae_native::{op}: {msg}")


def indices_reported(op: str, count: int, example: int, rows: int) -> None:
    """Raises for what a kernel reported of indices outside [-1, rows): how many, and one of them."""
    if count:
        raise ValueError(f"sae_native::{op}: indices: expected latents in [0, d_sae={rows}) or -1 for padding, "
                         f"got {example} ({count} out of range)")


def features_reported(op: str, count: int, example: int, d_sae: int) -> None:
    """Raises for what a steering kernel reported of clamp features outside [0, d_sae)."""
    if count:
        raise ValueError(f"sae_native::{op}: features must lie in [0, {d_sae}) (d_sae), got {example} "
                         f"({count} out of range)")


# ---- the records the kernels take (each one's first field is on the device the op runs on) -------

def device_of(record) -> torch.device:
    """The device an op's checked arguments are on: that of the record's first tensor."""
    return record[0].device


class PackArgs(NamedTuple):
    W_enc: Tensor


class EncodeArgs(NamedTuple):
    x: Tensor                      # [n, d_in] contiguous, float32 / float64 (T)
    W_enc: Tensor                  # [d_in, d_sae], any strides
    b_enc: Tensor                  # [d_sae] contiguous, T
    b_dec: Optional[Tensor]        # [d_in] contiguous, T: subtracted from x first
    packed: Optional[Tensor]       # W_enc laid out by pack_encoder on this device, or None
    k: int = 0                     # topk / groupmax
    threshold: Optional[Tensor] = None   # [d_sae] contiguous, T (threshold encode; None: ReLU)
    compact_nonfinite: bool = True


class DecodeArgs(NamedTuple):
    values: Tensor                 # [n, k] contiguous, T
    indices: Tensor                # [n, k] contiguous int64
    W_dec: Tensor                  # [d_sae, d_in], any strides
    b_dec: Optional[Tensor]        # [d_in] contiguous, T
    check: bool


class SparseDotArgs(NamedTuple):
    g: Tensor                      # [n, d] contiguous, T
    indices: Tensor                # [n, k] contiguous int64
    W: Tensor                      # [rows, d], any strides
    check: bool


class SparseOuterArgs(NamedTuple):
    values: Tensor                 # [n, k] contiguous, T
    indices: Tensor                # [n, k] contiguous int64
    g: Tensor                      # [n, d] contiguous, T
    rows: int
    transposed: bool
    check: bool
    out: Optional[Tensor] = None   # sparse_outer_add_: [rows, d], T, rows or columns contiguous (added to)


class Clamp(NamedTuple):
    features: Tensor               # [C] contiguous int64
    targets: Tensor                # [C] contiguous, T
    mode: str
    only_active: bool


class SteerThresholdArgs(NamedTuple):
    x: Tensor
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Optional[Tensor]        # subtracted from x before encoding
    threshold: Optional[Tensor]
    clamp: Clamp
    check: bool


class SteerCodesArgs(NamedTuple):
    x: Tensor
    values: Tensor
    indices: Tensor
    W_dec: Tensor
    b_dec: Optional[Tensor]        # added to the decode (without keep_error)
    clamp: Clamp
    keep_error: bool
    check: bool


# ---- pieces ---------------------------------------------------------------------------------------

def _acts(op: str, name: str, t: Tensor, cols: Optional[int] = None) -> Tensor:
    """A 2-D float32/float64 activation matrix, made contiguous."""
    if not isinstance(t, Tensor):
        raise fail(op, f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in PAIRS:
        raise fail(op, f"{name} must be float32 or float64, got {t.dtype}")
    if t.dim() != 2 or (cols is not None and t.shape[1] != cols):
        want = f"[n, {cols}]" if cols is not None else "2-D"
        raise fail(op, f"{name} must be {want}, got shape {list(t.shape)}")
    return t.contiguous()


def _weights(op: str, name: str, W: Tensor, T: torch.dtype, shape) -> None:
    if W.dtype not in PAIRS[T]:
        raise fail(op, f"{name} must be one of {[str(d) for d in PAIRS[T]]} with {T} activations, got {W.dtype}")
    if tuple(W.shape) != tuple(shape):
        raise fail(op, f"{name} must have shape {list(shape)}, got {list(W.shape)}")


def _matrix(op: str, name: str, W: Tensor, what: str) -> None:
    if not isinstance(W, Tensor) or W.dim() != 2:
        raise fail(op, f"{name} must be {what}, got {list(W.shape) if isinstance(W, Tensor) else type(W).__name__}")


def _vector(op: str, name: str, v: Optional[Tensor], n: int, T: torch.dtype) -> Optional[Tensor]:
    """An optional [n] floating vector as a contiguous T tensor (biases and thresholds are small)."""
    if v is None:
        return None
    if not v.is_floating_point() or tuple(v.shape) != (n,):
        raise fail(op, f"{name} must be a floating tensor of shape [{n}], got {v.dtype} {list(v.shape)}")
    return v.to(T).contiguous()


def _codes(op: str, values: Tensor, indices: Tensor):
    values = _acts(op, "values", values)
    if indices.dtype != torch.int64 or tuple(indices.shape) != tuple(values.shape):
        raise fail(op, f"indices must be an int64 tensor shaped like values {list(values.shape)}, "
                       f"got {indices.dtype} {list(indices.shape)}")
    return values, indices.contiguous()


def _same_device(op: str, ref: Tensor, **tensors: Optional[Tensor]) -> None:
    """Every given tensor on ref's device (kernels read only their own device's memory)."""
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise fail(op, f"{name} must be on {ref.device} like the activations, got {t.device}")


def _clamp(op: str, features: Tensor, targets: Tensor, T: torch.dtype, mode: str, only_active: bool,
           check: bool) -> Clamp:
    if mode not in MODES:
        raise fail(op, f"mode must be one of {list(MODES)}, got {mode!r}")
    if features.dtype != torch.int64 or features.dim() != 1:
        raise fail(op, f"features must be a 1-D int64 tensor, got {features.dtype} {list(features.shape)}")
    if tuple(targets.shape) != tuple(features.shape) or not targets.is_floating_point():
        raise fail(op, f"targets must be a floating tensor of shape {list(features.shape)}, "
                       f"got {targets.dtype} {list(targets.shape)}")
    if check and features.numel():   # (the range is the kernels' to check: they skip and report)
        if features.numel() != torch.unique(features).numel():
            raise fail(op, f"features must be distinct, got {features.tolist()}")
        if not bool(torch.isfinite(targets).all()):
            raise fail(op, "targets must be finite")
    return Clamp(features.contiguous(), targets.to(T).contiguous(), mode, bool(only_active))


def topk_k(op: str, k: int, d_sae: int) -> None:
    if not 1 <= k <= d_sae:
        raise fail(op, f"k must be in [1, d_sae={d_sae}], got {k}")


def groupmax_k(op: str, k: int, d_sae: int) -> None:
    if k < 1 or d_sae % k:
        raise fail(op, f"k must divide d_sae={d_sae} (k groups of d_sae / k latents), got {k}")


# ---- one function per op ------------------------------------------------------------------------------

def pack_encoder(W_enc: Tensor) -> PackArgs:
    _matrix("pack_encoder", "W_enc", W_enc, "[d_in, d_sae]")
    if W_enc.dtype not in PAIRS[torch.float32] + PAIRS[torch.float64]:
        raise fail("pack_encoder", f"W_enc must be float32, float64, bfloat16 or float16, got {W_enc.dtype}")
    return PackArgs(W_enc)


def _encode(op: str, x, W_enc, b_enc, b_dec, packed) -> EncodeArgs:
    _matrix(op, "W_enc", W_enc, "[d_in, d_sae]")
    d_in, d_sae = W_enc.shape
    x = _acts(op, "x", x, d_in)
    T = x.dtype
    _weights(op, "W_enc", W_enc, T, (d_in, d_sae))
    if b_enc is None:
        raise fail(op, "b_enc is required")
    b_enc = _vector(op, "b_enc", b_enc, d_sae, T)
    b_dec = _vector(op, "b_dec", b_dec, d_in, T)
    if packed is not None and (packed.dtype != W_enc.dtype or not packed.is_contiguous()):
        raise fail(op, f"packed must be a contiguous {W_enc.dtype} tensor from pack_encoder(W_enc), "
                       f"got {packed.dtype}{'' if packed.is_contiguous() else ' (not contiguous)'}")
    _same_device(op, x, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec, packed=packed)
    return EncodeArgs(x, W_enc, b_enc, b_dec, packed)


def encode_topk(x, W_enc, b_enc, b_dec, k, packed) -> EncodeArgs:
    a = _encode("encode_topk", x, W_enc, b_enc, b_dec, packed)
    topk_k("encode_topk", k, W_enc.shape[1])
    return a._replace(k=k)


def encode_groupmax(x, W_enc, b_enc, b_dec, k, packed) -> EncodeArgs:
    a = _encode("encode_groupmax", x, W_enc, b_enc, b_dec, packed)
    groupmax_k("encode_groupmax", k, W_enc.shape[1])
    return a._replace(k=k)


def encode_threshold(x, W_enc, b_enc, b_dec, threshold, packed, compact_nonfinite) -> EncodeArgs:
    a = _encode("encode_threshold", x, W_enc, b_enc, b_dec, packed)
    threshold = _vector("encode_threshold", "threshold", threshold, W_enc.shape[1], a.x.dtype)
    _same_device("encode_threshold", a.x, threshold=threshold)
    return a._replace(threshold=threshold, compact_nonfinite=bool(compact_nonfinite))


def decode(values, indices, W_dec, b_dec, check) -> DecodeArgs:
    values, indices = _codes("decode", values, indices)
    T = values.dtype
    _matrix("decode", "W_dec", W_dec, "[d_sae, d_in]")
    _weights("decode", "W_dec", W_dec, T, W_dec.shape)
    b_dec = _vector("decode", "b_dec", b_dec, W_dec.shape[1], T)
    _same_device("decode", values, indices=indices, W_dec=W_dec, b_dec=b_dec)
    return DecodeArgs(values, indices, W_dec, b_dec, bool(check))


def sparse_dot(g, indices, W, check) -> SparseDotArgs:
    _matrix("sparse_dot", "W", W, "2-D")
    g = _acts("sparse_dot", "g", g, W.shape[1])
    _weights("sparse_dot", "W", W, g.dtype, W.shape)
    if indices.dtype != torch.int64 or indices.dim() != 2 or indices.shape[0] != g.shape[0]:
        raise fail("sparse_dot", f"indices must be int64 [{g.shape[0]}, k], got {indices.dtype} {list(indices.shape)}")
    _same_device("sparse_dot", g, indices=indices, W=W)
    return SparseDotArgs(g, indices.contiguous(), W, bool(check))


def _outer_inputs(op: str, values, indices, g):
    values, indices = _codes(op, values, indices)
    g = _acts(op, "g", g)
    if g.dtype != values.dtype or g.shape[0] != values.shape[0]:
        raise fail(op, f"g must be {values.dtype} [{values.shape[0]}, d], got {g.dtype} {list(g.shape)}")
    _same_device(op, values, indices=indices, g=g)
    return values, indices, g


def sparse_outer(values, indices, g, rows, transposed, check) -> SparseOuterArgs:
    values, indices, g = _outer_inputs("sparse_outer", values, indices, g)
    if rows < 0:
        raise fail("sparse_outer", f"rows must be >= 0, got {rows}")
    return SparseOuterArgs(values, indices, g, int(rows), bool(transposed), bool(check))


def sparse_outer_add_(out, values, indices, g, check) -> SparseOuterArgs:
    op = "sparse_outer_add_"
    values, indices, g = _outer_inputs(op, values, indices, g)
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise fail(op, f"out must be a 2-D tensor [rows, {g.shape[1]}], got "
                       f"{list(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    rows, d = out.shape
    if out.dtype != values.dtype or d != g.shape[1]:
        raise fail(op, f"out must be {values.dtype} [rows, {g.shape[1]}], got {out.dtype} {list(out.shape)}")
    # (rows or columns contiguous: no two elements share memory, so the kernel's adds never race)
    by_rows = out.stride(1) == 1 and (rows <= 1 or out.stride(0) >= d)
    by_cols = out.stride(0) == 1 and (d <= 1 or out.stride(1) >= rows)
    if not (by_rows or by_cols or out.numel() <= 1):
        raise fail(op, f"out must have contiguous rows or columns, got strides {tuple(out.stride())}")
    _same_device(op, values, out=out)
    return SparseOuterArgs(values, indices, g, int(rows), False, bool(check), out)


def _steer_weights(op: str, x, W_enc, W_dec):
    _matrix(op, "W_dec", W_dec, "[d_sae, d_in]")
    d_sae, d_in = W_dec.shape
    x = _acts(op, "x", x, d_in)
    _weights(op, "W_dec", W_dec, x.dtype, (d_sae, d_in))
    if W_enc is not None:
        _matrix(op, "W_enc", W_enc, "[d_in, d_sae]")
        _weights(op, "W_enc", W_enc, x.dtype, (d_in, d_sae))
        if W_enc.dtype != W_dec.dtype:
            raise fail(op, f"W_enc and W_dec must share a dtype, got {W_enc.dtype} and {W_dec.dtype}")
    _same_device(op, x, W_enc=W_enc, W_dec=W_dec)
    return x, d_in, d_sae


def steer_threshold(x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active,
                    check) -> SteerThresholdArgs:
    op = "steer_threshold"
    x, d_in, d_sae = _steer_weights(op, x, W_enc, W_dec)
    T = x.dtype
    b_enc = _vector(op, "b_enc", b_enc, d_sae, T)
    b_dec = _vector(op, "b_dec", b_dec, d_in, T)
    threshold = _vector(op, "threshold", threshold, d_sae, T)
    clamp = _clamp(op, features, targets, T, mode, only_active, check)
    _same_device(op, x, b_enc=b_enc, b_dec=b_dec, threshold=threshold, features=features, targets=targets)
    return SteerThresholdArgs(x, W_enc, b_enc, W_dec, b_dec, threshold, clamp, bool(check))


def steer_codes(x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error,
                check) -> SteerCodesArgs:
    op = "steer_codes"
    x, d_in, d_sae = _steer_weights(op, x, None, W_dec)
    T = x.dtype
    values, indices = _codes(op, values, indices)
    if values.dtype != T or values.shape[0] != x.shape[0]:
        raise fail(op, f"values must be {T} with {x.shape[0]} rows, got {values.dtype} {list(values.shape)}")
    b_dec = _vector(op, "b_dec", b_dec, d_in, T)
    clamp = _clamp(op, features, targets, T, mode, only_active, check)
    _same_device(op, x, values=values, indices=indices, b_dec=b_dec, features=features, targets=targets)
    return SteerCodesArgs(x, values, indices, W_dec, b_dec, clamp, bool(keep_error), bool(check))


CHECKS = {"pack_encoder": pack_encoder, "encode_topk": encode_topk, "encode_groupmax": encode_groupmax,
          "encode_threshold": encode_threshold, "decode": decode, "sparse_dot": sparse_dot,
          "sparse_outer": sparse_outer, "sparse_outer_add_": sparse_outer_add_, "steer_threshold": steer_threshold, "steer_codes": steer_codes}
