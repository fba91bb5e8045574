"""Merging the shards' codes into the unsharded SAE's codes, exactly.

Each rank encodes its contiguous range of latents with the fused kernel; the ranks' candidates
arrive here in rank order, i.e. in latent order. Within one rank's block, entries of equal value
are already listed lower latent first (the kernel's rule), so one stable descending sort of the
concatenation lists ties to the lower global latent: the package's tie rule, and the codes are
bit-identical to the unsharded encode's (the pre-activations are the same fp32 numbers: a latent's
dot product does not depend on which other latents share the call).

TopK ranks candidates by pre-activation, not by its relu: a row with fewer than k positive
pre-activations in the whole SAE keeps its largest negative ones (as value 0). The kernel returns
only relu'd values, so for the zero-valued candidates the sender supplies the pre-activation as
the sort key (``zero_keys``).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ..reference import listed


def topk(keys: List[Tensor], values: List[Tensor], indices: List[Tensor], k: int) -> Tuple[Tensor, Tensor]:
    """The global top-k of per-rank candidates ``[N, c_r]`` (global indices; padding has key
    -inf): ``(values, indices) [N, k]`` listed by value descending, ties to the lower latent."""
    key, value, index = torch.cat(keys, 1), torch.cat(values, 1), torch.cat(indices, 1)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    return listed(value.gather(1, order), index.gather(1, order))


def threshold(values: List[Tensor], indices: List[Tensor], compact_nonfinite: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The union of per-rank threshold codes ``[N, w]`` (padding: index -1): ``(values, indices,
    counts)`` padded to the widest row, as encode_threshold returns them. ``compact_nonfinite``:
    a row with non-finite activations keeps only the lowest such latent of the whole SAE (each
    rank kept its own lowest)."""
    value, index = torch.cat(values, 1), torch.cat(indices, 1)
    valid = index >= 0
    if compact_nonfinite:
        bad = valid & ~torch.isfinite(value)
        rows = bad.any(1)
        if bool(rows.any()):
            big = torch.iinfo(torch.int64).max
            lowest = torch.where(bad, index, torch.full_like(index, big)).min(1, keepdim=True).values
            valid = torch.where(rows.unsqueeze(1), index == lowest, valid)
    counts = valid.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    key = torch.where(valid, value, torch.full_like(value, -float("inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :width]
    keep = torch.arange(width, device=value.device) < counts.unsqueeze(1)
    out_v = torch.where(keep, value.gather(1, order), torch.zeros((), dtype=value.dtype, device=value.device))
    out_i = torch.where(keep, index.gather(1, order), torch.full((), -1, dtype=index.dtype, device=index.device))
    return out_v, out_i, counts


def zero_keys(x_in: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, indices: Tensor,
              chunk: int = 4096) -> Tensor:
    """Sort keys for a rank's TopK candidates ``[N, c]`` (local indices): the value where it is
    positive (or NaN); the pre-activation, at most 0, where the relu made it 0. ``x_in`` is the
    encoder's input (x - b_dec where the SAE subtracts it)."""
    key = values.clone()
    rows, cols = (values == 0).nonzero(as_tuple=True)
    for s in range(0, rows.numel(), chunk):      # only such entries: rows with < k positive latents
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        f = indices[r, c]
        pre = (x_in[r] * W_enc[:, f].t().to(x_in.dtype)).sum(-1) + b_enc[f].to(x_in.dtype)
        key[r, c] = pre.clamp_max(0).to(key.dtype)
    return key
