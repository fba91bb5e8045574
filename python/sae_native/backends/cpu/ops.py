"""The CPU kernel of each op: the op's checked arguments (backends/contract.py) handed to
sae_native._C (csrc/), which releases the GIL and runs on the package's thread team.

The kernels report indices and clamp features outside their range (skipped, never read); reading
the report costs nothing here, so it is raised on whatever the op's ``check`` says.
"""
from __future__ import annotations



import torch
from torch import Tensor

from ... import _C
from .. import encode_paths, gemm_path
from .. import native_args as na
from ..contract import (DecodeArgs, EncodeArgs, PackArgs, SparseDotArgs, SparseOuterArgs, SteerCodesArgs,
                        SteerThresholdArgs, fail, features_reported, indices_reported)


def _reported(report, raise_fn, op: str, rows: int) -> None:
    count, example = report
    raise_fn(op, int(count), int(example), rows)


# ---- packing: W_enc in panels of _C.PANEL latents (csrc/pack.h) -------------------------------------------

def pack_encoder(a: PackArgs) -> Tensor:
    """W_enc [d_in, d_sae] as [ceil(d_sae / PANEL), d_in, PANEL], zero-padded: what the encode streams."""
    d_in, d_sae = a.W_enc.shape
    out = torch.empty(_C.packed_size(d_in, d_sae), dtype=a.W_enc.dtype)
    _C.pack_encoder(w=na.mat(_C, a.W_enc), out=out.data_ptr())
    return out


def _packed(op: str, a: EncodeArgs) -> Tensor:
    if a.packed is None:
        return pack_encoder(PackArgs(a.W_enc))
    size = _C.packed_size(*a.W_enc.shape)
    if a.packed.numel() != size:
        raise fail(op, f"packed must be pack_encoder(W_enc): {size} elements of {a.W_enc.dtype}, got "
                       f"{a.packed.numel()}")
    return a.packed


# ---- encode: the own fused kernels (csrc/encode.h) or MKL/oneDNN + the epilogue (gemm_path.py) -----------

def _encode_k(op: str, native, a: EncodeArgs):
    n = a.x.shape[0]
    values = torch.empty(n, a.k, dtype=a.x.dtype)
    indices = torch.empty(n, a.k, dtype=torch.int64)
    packed = _packed(op, a)   # (held here: the kernel reads it through a raw pointer)
    native(x=na.mat(_C, a.x), w=na.laid_out(_C, packed, a.W_enc), b_enc=a.b_enc.data_ptr(),
           b_dec=na.ptr(a.b_dec), k=a.k, values=values.data_ptr(), indices=indices.data_ptr())
    return values, indices


def _own_threshold(a: EncodeArgs):
    n = a.x.shape[0]
    packed = _packed("encode_threshold", a)
    result = _C.encode_threshold(x=na.mat(_C, a.x), w=na.laid_out(_C, packed, a.W_enc),
                                 b_enc=a.b_enc.data_ptr(), b_dec=na.ptr(a.b_dec), threshold=na.ptr(a.threshold),
                                 compact_nonfinite=a.compact_nonfinite)
    width = result.max_count
    values = torch.empty(n, width, dtype=a.x.dtype)
    indices = torch.empty(n, width, dtype=torch.int64)
    counts = torch.empty(n, dtype=torch.int64)
    result.write(width, values.data_ptr(), indices.data_ptr(), counts.data_ptr())
    return values, indices, counts


def _on_path(op: str, kind: str, own, a: EncodeArgs):
    """``a`` encoded by the own kernel or the GEMM path, as encode_paths picks. The choice's probe
    times the own kernel on W_enc packed once, as an SAE object holds it."""
    def prepared(probe: EncodeArgs) -> EncodeArgs:
        return probe if probe.packed is not None else probe._replace(packed=_packed(op, probe))
    return encode_paths.run("cpu", op, a, own, lambda b, blocking: gemm_path.encode(_C, kind, b, blocking),
                            context=f"isa={_C.cpu_isa()}|threads={_C.num_threads()}", prepare=prepared)


def encode_topk(a: EncodeArgs):
    return _on_path("encode_topk", "topk", lambda b: _encode_k("encode_topk", _C.encode_topk, b), a)


def encode_groupmax(a: EncodeArgs):
    return _on_path("encode_groupmax", "groupmax", lambda b: _encode_k("encode_groupmax", _C.encode_groupmax, b), a)


def encode_threshold(a: EncodeArgs):
    return _on_path("encode_threshold", "threshold", _own_threshold, a)


# ---- gathers and scatters over codes -----------------------------------------------------------------------------

def decode(a: DecodeArgs) -> Tensor:
    d_sae, d_in = a.W_dec.shape
    out = torch.empty(a.values.shape[0], d_in, dtype=a.values.dtype)
    report = _C.decode(values=na.mat(_C, a.values), indices=na.mat(_C, a.indices), w=na.mat(_C, a.W_dec),
                       bias=na.ptr(a.b_dec), out=out.data_ptr())
    _reported(report, indices_reported, "decode", d_sae)
    return out


def sparse_dot(a: SparseDotArgs) -> Tensor:
    out = torch.empty(a.indices.shape, dtype=a.g.dtype)
    report = _C.sparse_dot(g=na.mat(_C, a.g), indices=na.mat(_C, a.indices), w=na.mat(_C, a.W), out=out.data_ptr())
    _reported(report, indices_reported, "sparse_dot", a.W.shape[0])
    return out


def sparse_outer(a: SparseOuterArgs) -> Tensor:
    """sparse_outer, and sparse_outer_add_ (a.out given: added to it in place)."""
    d = a.g.shape[1]
    out = a.out if a.out is not None else torch.zeros((d, a.rows) if a.transposed else (a.rows, d), dtype=a.g.dtype)
    rows_view = out.t() if a.transposed else out     # [rows, d], any strides
    report = _C.sparse_outer(values=na.mat(_C, a.values), indices=na.mat(_C, a.indices), g=na.mat(_C, a.g),
                             out=na.mat(_C, rows_view))
    _reported(report, indices_reported, "sparse_outer" if a.out is None else "sparse_outer_add_", a.rows)
    return out


# ---- steering ------------------------------------------------------------------------------------------------

def steer_threshold(a: SteerThresholdArgs):
    n, count = a.x.shape[0], a.clamp.features.shape[0]
    y = torch.empty_like(a.x)
    z = torch.empty(n, count, dtype=a.x.dtype)
    report = _C.steer_threshold(x=na.mat(_C, a.x), w_enc=na.mat(_C, a.W_enc), b_enc=a.b_enc.data_ptr(),
                                threshold=na.ptr(a.threshold), b_dec=na.ptr(a.b_dec), w_dec=na.mat(_C, a.W_dec),
                                clamp=na.clamp(_C, a.clamp), y=y.data_ptr(), z=z.data_ptr())
    _reported(report, features_reported, "steer_threshold", a.W_dec.shape[0])
    return y, z


def steer_codes(a: SteerCodesArgs):
    n, count = a.x.shape[0], a.clamp.features.shape[0]
    y = torch.empty_like(a.x)
    z = torch.empty(n, count, dtype=a.x.dtype)
    report, feature_report = _C.steer_codes(x=na.mat(_C, a.x), values=na.mat(_C, a.values),
                                            indices=na.mat(_C, a.indices), w_dec=na.mat(_C, a.W_dec),
                                            b_dec=na.ptr(a.b_dec), keep_error=a.keep_error,
                                            clamp=na.clamp(_C, a.clamp), y=y.data_ptr(), z=z.data_ptr())
    d_sae = a.W_dec.shape[0]
    _reported(report, indices_reported, "steer_codes", d_sae)
    _reported(feature_report, features_reported, "steer_codes", d_sae)
    return y, z


KERNELS = {"pack_encoder": pack_encoder, "encode_topk": encode_topk, "encode_groupmax": encode_groupmax,
           "encode_threshold": encode_threshold, "decode": decode, "sparse_dot": sparse_dot,
           "sparse_outer": sparse_outer, "sparse_outer_add_": sparse_outer, "steer_threshold": steer_threshold, "steer_codes": steer_codes}
