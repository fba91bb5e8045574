"""BatchTopK's selection (Bussmann et al. 2024): the B * k largest activations of a whole batch,
so a token may use more or fewer than k latents while the batch averages k.

It runs on the fused encode's candidates, never on a dense [B, d_sae] matrix: each row's top
``c`` activations (``c`` = 2k at first) come from the TopK kernel, and the batch's B * k largest
are chosen among those B * c candidates. That is exact unless a row had all ``c`` of its
candidates chosen (then its next one might have been chosen too): such rows are encoded again with
twice the candidates, until no row is cut short or a row holds every latent.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .kernel_weights import KernelWeights
from .parallel import Local


def select(values: Tensor, budget: int) -> Tensor:
    """The mask of the ``budget`` largest positive entries of ``values`` [B, c] (each row sorted
    descending, as the TopK kernel returns them). Ties at the cut go to the earlier row, then to
    the earlier column (the lower latent index, by the kernel's tie rule)."""
    flat = values.detach().flatten()
    budget = min(budget, flat.numel())
    if budget <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    cut = flat.topk(budget, sorted=False).values.min()
    above = flat > cut
    at = flat == cut
    # as many of the entries equal to the cut as the budget still holds, first ones first
    at &= torch.cumsum(at, 0) <= budget - int(above.sum())
    return ((above | at) & (flat > 0)).view_as(values)


def encode(x: Tensor, W_enc: Union[Tensor, KernelWeights], b_enc: Tensor, b_dec: Optional[Tensor], k: float,
           dp: Optional[Local] = None) -> Tuple[Tensor, Tensor]:
    """BatchTopK codes of ``x`` [B, d_in]: ``(values, indices)`` [B, c] with the unchosen entries'
    values zero (``int(B * k)`` are chosen, fewer when fewer activations are positive;
    differentiable like encode_topk's values), ``c`` the candidates per row needed for the exact
    selection. Data-parallel (``dp``), x is this rank's share of the global batch, and the
    selection is over the global batch: the ranks' candidates are gathered, and every rank widens
    its candidates while any rank has a row cut short."""
    dp = dp if dp is not None else Local()
    # (a trainer passes its step's packed encoder; a tensor is packed here, once for every encode)
    enc = W_enc if isinstance(W_enc, KernelWeights) else KernelWeights(W_enc.t(), W_enc.dtype)
    B, d_sae = x.shape[0], enc.W_enc.shape[1]
    budget = int(B * dp.world * k)           # k may be fractional: the batch's share, rounded down
    c = min(d_sae, max(1, math.ceil(2 * k)))
    values, indices = enc.topk(x, b_enc, b_dec, c)
    while True:
        everyone = dp.cat(values.detach(), "BatchTopK's candidates (training step)")
        chosen = select(everyone, budget)[dp.rank * B:(dp.rank + 1) * B]
        short = chosen[:, -1] if c < d_sae else torch.zeros(B, dtype=torch.bool, device=x.device)
        if not int(dp.sum(short.any().long().view(1), "BatchTopK's short rows (training step)")):
            return values * chosen, indices
        # Rows whose every candidate was chosen: widen all rows to 2c candidates (padding the
        # rows that were not short with their own codes and zeros), re-encoding only the short ones.
        c_new = min(d_sae, 2 * c)
        rows = short.nonzero().squeeze(1)
        v_more, i_more = enc.topk(x[rows], b_enc, b_dec, c_new)
        pad = c_new - c
        values = torch.cat([values, values.new_zeros(B, pad)], dim=1).index_copy(0, rows, v_more)
        indices = torch.cat([indices, indices.new_full((B, pad), -1)], dim=1).index_copy(0, rows, i_more)
        c = c_new
