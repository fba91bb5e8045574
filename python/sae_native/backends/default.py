"""Pure-torch kernels of every op, for any device: what an MPS or XPU tensor runs (slowly, instead
of an error), and what the CUDA backend falls back to for GroupMax, TopK with k beyond its fused
kernel, and float64. The formulas are ``reference.py``'s; here they run on bounded blocks of rows
(about 2^25 pre-activations alive at once), never on all of ``[n, d_sae]``.

Like the native kernels, these never read an index or clamp feature out of range: such entries are
skipped and counted, and the count is raised on when the op's ``check`` asks for it.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .. import reference as ref
from .contract import (DecodeArgs, EncodeArgs, PackArgs, SparseDotArgs, SparseOuterArgs, SteerCodesArgs,
                       SteerThresholdArgs, features_reported, indices_reported)

_BUDGET = 2 ** 25          # elements of the largest temporary alive at once


def row_blocks(n: int, width: int) -> Iterator[slice]:
    """Row ranges whose ``rows x width`` temporaries stay within the budget."""
    step = max(1, _BUDGET // max(width, 1))
    for r0 in range(0, n, step):
        yield slice(r0, min(n, r0 + step))


def _u(a: EncodeArgs) -> Tensor:
    return a.x - a.b_dec if a.b_dec is not None else a.x


# ---- encode -------------------------------------------------------------------------------------------

def pack_encoder(a: PackArgs) -> Tensor:
    """Nothing to lay out: the torch kernels read W_enc as it is (an empty tensor says so)."""
    return a.W_enc.new_empty(0)


def _encode_k(a: EncodeArgs, u: Optional[Tensor], select) -> Tuple[Tensor, Tensor]:
    """k codes per row: ``select(pre, k)`` on each block of rows."""
    u = _u(a) if u is None else u
    n, d_sae = u.shape[0], a.W_enc.shape[1]
    values = u.new_empty(n, a.k)
    indices = torch.empty(n, a.k, dtype=torch.int64, device=u.device)
    for rows in row_blocks(n, d_sae):
        values[rows], indices[rows] = select(ref.preact(u[rows], a.W_enc, a.b_enc), a.k)
    return values, indices


def encode_topk(a: EncodeArgs, u: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``u`` (x - b_dec) may be given already rounded as a backend's kernels would round it."""
    return _encode_k(a, u, ref.topk_select)


def encode_groupmax(a: EncodeArgs, u: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    return _encode_k(a, u, ref.groupmax_select)


def encode_threshold(a: EncodeArgs, u: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    u = _u(a) if u is None else u
    n, d_sae = u.shape[0], a.W_enc.shape[1]
    parts = [(rows, ref.threshold_select(ref.preact(u[rows], a.W_enc, a.b_enc), a.threshold, a.compact_nonfinite))
             for rows in row_blocks(n, d_sae)]
    width = max((p[0].shape[1] for _, p in parts), default=0)
    values = u.new_zeros(n, width)
    indices = torch.full((n, width), -1, dtype=torch.int64, device=u.device)
    counts = torch.zeros(n, dtype=torch.int64, device=u.device)
    for rows, (vals, idx, count) in parts:
        values[rows, :vals.shape[1]], indices[rows, :idx.shape[1]], counts[rows] = vals, idx, count
    return values, indices, counts


# ---- gathers and scatters over codes ---------------------------------------------------------------------

def _valid(indices: Tensor, rows: int, op: str, check: bool) -> Tensor:
    """Which entries name a row (padding -1 and out-of-range entries do not); raises on out-of-range
    entries when ``check``."""
    bad = (indices < -1) | (indices >= rows)
    if check and bool(bad.any()):
        indices_reported(op, int(bad.sum()), int(indices[bad][0]), rows)
    return (indices >= 0) & ~bad


def _gathered(W: Tensor, indices: Tensor, valid: Tensor, T: torch.dtype) -> Tensor:
    """W's rows at the valid indices as [*indices.shape, d] in T; zero rows elsewhere (never read)."""
    safe = torch.where(valid, indices, torch.zeros_like(indices))
    rows = W.index_select(0, safe.flatten()).to(T).view(*indices.shape, W.shape[1])
    return torch.where(valid[..., None], rows, torch.zeros_like(rows))


def decode(a: DecodeArgs) -> Tensor:
    n, k = a.values.shape
    d_sae, d_in = a.W_dec.shape
    T = a.values.dtype
    valid = _valid(a.indices, d_sae, "decode", a.check)
    out = torch.empty(n, d_in, dtype=T, device=a.values.device)
    for rows in row_blocks(n, k * d_in):
        v = torch.where(valid[rows], a.values[rows], torch.zeros_like(a.values[rows]))
        out[rows] = torch.einsum("rk,rkd->rd", v, _gathered(a.W_dec, a.indices[rows], valid[rows], T))
    return out if a.b_dec is None else out + a.b_dec


def sparse_dot(a: SparseDotArgs) -> Tensor:
    n, k = a.indices.shape
    valid = _valid(a.indices, a.W.shape[0], "sparse_dot", a.check)
    out = torch.empty(n, k, dtype=a.g.dtype, device=a.g.device)
    for rows in row_blocks(n, k * a.W.shape[1]):
        out[rows] = torch.einsum("rd,rkd->rk", a.g[rows], _gathered(a.W, a.indices[rows], valid[rows], a.g.dtype))
    return out


def sparse_outer(a: SparseOuterArgs) -> Tensor:
    """sparse_outer, and sparse_outer_add_ (a.out given: added to it in place)."""
    d = a.g.shape[1]
    valid = _valid(a.indices, a.rows, "sparse_outer" if a.out is None else "sparse_outer_add_", a.check)
    out = a.out if a.out is not None else torch.zeros(a.rows, d, dtype=a.g.dtype, device=a.g.device)
    r, j = valid.nonzero(as_tuple=True)
    out.index_add_(0, a.indices[r, j], a.values[r, j, None] * a.g[r])
    return out.t() if a.transposed else out


sparse_outer_add_ = sparse_outer


# ---- steering ------------------------------------------------------------------------------------------

def _features(c, d_sae: int, op: str, check: bool) -> Tuple[Tensor, Tensor]:
    """(features made safe to index with, which of them are real), raising on bad ones when ``check``."""
    ok = (c.features >= 0) & (c.features < d_sae)
    if check and not bool(ok.all()):
        features_reported(op, int((~ok).sum()), int(c.features[~ok][0]), d_sae)
    return torch.where(ok, c.features, torch.zeros_like(c.features)), ok


def _steered(base: Tensor, zf: Tensor, c, safe: Tensor, ok: Tensor, W_dec: Tensor) -> Tensor:
    delta = ref.clamp_terms(zf, c.targets, c.mode, c.only_active).delta
    delta = torch.where(ok, delta, torch.zeros_like(delta))          # a skipped feature adds nothing
    return base + delta @ W_dec.index_select(0, safe).to(base.dtype)


def steer_threshold(a: SteerThresholdArgs) -> Tuple[Tensor, Tensor]:
    c, T = a.clamp, a.x.dtype
    safe, ok = _features(c, a.W_dec.shape[0], "steer_threshold", a.check)
    u = a.x - a.b_dec if a.b_dec is not None else a.x
    pre = u @ a.W_enc.index_select(1, safe).to(T) + a.b_enc.index_select(0, safe)
    thr = a.threshold.index_select(0, safe) if a.threshold is not None else torch.zeros_like(pre[0])
    zf = torch.where(torch.isnan(pre) | ((pre > 0) & (pre > thr)), pre, torch.zeros_like(pre))
    zf = torch.where(ok, zf, torch.zeros_like(zf))
    return _steered(a.x, zf, c, safe, ok, a.W_dec), zf


def steer_codes(a: SteerCodesArgs) -> Tuple[Tensor, Tensor]:
    c = a.clamp
    d_sae = a.W_dec.shape[0]
    safe, ok = _features(c, d_sae, "steer_codes", a.check)
    valid = _valid(a.indices, d_sae, "steer_codes", a.check)
    match = (a.indices[..., None] == c.features) & valid[..., None] & ok           # [n, k, C]
    zf = torch.where(match, a.values[..., None], torch.zeros_like(a.values[..., None])).sum(1)
    if a.keep_error:
        base = a.x
    else:
        base = decode(DecodeArgs(a.values, a.indices, a.W_dec, a.b_dec, False))
    return _steered(base, zf, c, safe, ok, a.W_dec), zf
