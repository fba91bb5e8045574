"""Encodes the CUDA backend runs through torch rather than the fused kernel: GroupMax, TopK with k
above the fused kernel's limit, and float64. The dense pre-activations exist here, but only a
bounded block of rows at a time (about 2^25 of them), and the results follow the same contract:
sorted by value descending (NaN first, as torch.topk ranks it), ties to the lower latent.

Device-agnostic torch, so the CPU tests check it against the reference.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

_BUDGET = 2 ** 25          # pre-activation elements alive at once
_LATENT_BLOCK = 16384      # W_enc columns widened to the compute dtype at a time


def _row_blocks(n: int, d_sae: int) -> Iterator[slice]:
    step = max(1, _BUDGET // max(d_sae, 1))
    for r0 in range(0, n, step):
        yield slice(r0, min(n, r0 + step))


def preact(u: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """u @ W_enc + b_enc in u's dtype (fp32 products of 16-bit weights, not a 16-bit GEMM)."""
    d_sae = W_enc.shape[1]
    out = torch.empty(u.shape[0], d_sae, dtype=u.dtype, device=u.device)
    for l0 in range(0, d_sae, _LATENT_BLOCK):
        l1 = min(d_sae, l0 + _LATENT_BLOCK)
        out[:, l0:l1] = u @ W_enc[:, l0:l1].to(u.dtype)
    return out.add_(b_enc)


def _sorted(pre: Tensor) -> Tensor:
    """Latent order per row: value descending, ties (and NaNs) to the lower latent."""
    return torch.sort(pre, dim=1, descending=True, stable=True).indices


def _by_value(values: Tensor, idx: Tensor) -> Tuple[Tensor, Tensor]:
    """Codes listed by value descending, ties to the lower latent."""
    idx, perm = torch.sort(idx, dim=1)
    values = values.gather(1, perm)
    order = _sorted(values)
    return values.gather(1, order), idx.gather(1, order)


def encode_topk(u: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    n, d_sae = u.shape[0], W_enc.shape[1]
    values = u.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.int64, device=u.device)
    for rows in _row_blocks(n, d_sae):
        pre = preact(u[rows], W_enc, b_enc)
        idx = _sorted(pre)[:, :k]               # selected by pre-activation ...
        values[rows], indices[rows] = _by_value(pre.gather(1, idx).relu(), idx)   # ... listed by relu(pre)
    return values, indices


def encode_threshold(u: Tensor, W_enc: Tensor, b_enc: Tensor, threshold: Optional[Tensor],
                     compact_nonfinite: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    n, d_sae = u.shape[0], W_enc.shape[1]
    bar = torch.zeros_like(b_enc) if threshold is None else threshold
    parts, counts = [], torch.empty(n, dtype=torch.int64, device=u.device)
    for rows in _row_blocks(n, d_sae):
        pre = preact(u[rows], W_enc, b_enc)
        active = torch.isnan(pre) | ((pre > 0) & (pre > bar))
        if compact_nonfinite:
            # A row with a non-finite active latent keeps only the lowest such latent.
            bad = active & ~torch.isfinite(pre)
            first = torch.zeros_like(active).scatter_(1, bad.to(torch.uint8).argmax(1, keepdim=True), True)
            active = torch.where(bad.any(1, keepdim=True), first, active)
        count = active.sum(1)
        counts[rows] = count
        width = int(count.max()) if count.numel() else 0
        keyed = torch.where(active, pre, torch.full_like(pre, -float("inf")))
        idx = _sorted(keyed)[:, :width]
        parts.append((pre.gather(1, idx), idx, count))
    width = max((p[1].shape[1] for p in parts), default=0)
    values = u.new_zeros(n, width)
    indices = torch.full((n, width), -1, dtype=torch.int64, device=u.device)
    pos = torch.arange(width, device=u.device)
    for rows, (vals, idx, count) in zip(_row_blocks(n, d_sae), parts):
        w = idx.shape[1]
        keep = pos[:w] < count[:, None]
        values[rows, :w] = torch.where(keep, vals, torch.zeros_like(vals))
        indices[rows, :w] = torch.where(keep, idx, torch.full_like(idx, -1))
    return values, indices, counts


def encode_groupmax(u: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    n, d_sae = u.shape[0], W_enc.shape[1]
    group = d_sae // k
    values = u.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.int64, device=u.device)
    starts = torch.arange(0, d_sae, group, device=u.device)
    for rows in _row_blocks(n, d_sae):
        best = preact(u[rows], W_enc, b_enc).relu().unflatten(1, (k, group)).max(dim=2)  # first max wins
        order = _sorted(best.values)        # groups are in latent order, so ties go to the lower latent
        values[rows] = best.values.gather(1, order)
        indices[rows] = (best.indices + starts).gather(1, order)
    return values, indices
