"""Candidate keys (cuda/keys.h) read back in torch: the sort the threshold encode falls back to
when a row has more hits than one block sorts in shared memory.

A key is a uint64 held in an int64 tensor: high 32 bits an order-preserving image of the float
value (NaN largest, -0 == +0), low 32 bits 0xFFFFFFFF - latent; unsigned descending order is the
codes' order (value descending, latent ascending); key 0 marks an empty slot.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

_SIGN = -(2 ** 63)     # flips the top bit: signed order of (key ^ _SIGN) == unsigned order of key
_LOW = 0xFFFFFFFF


def sort_keys(keys: Tensor, valid: Tensor, width: int) -> Tuple[Tensor, Tensor]:
    """Row r's first valid[r] keys sorted, as (values float32 [n, width], latents int64 [n, width]);
    slots past a row's keys are value 0, latent -1. ``keys`` int64 [n, m], ``valid`` int64 [n]."""
    n, m = keys.shape
    pos = torch.arange(m, device=keys.device)
    keys = torch.where(pos < valid[:, None], keys, torch.zeros_like(keys))
    ordered = torch.sort(keys ^ _SIGN, dim=1, descending=True).values[:, :width] ^ _SIGN
    if ordered.shape[1] < width:
        ordered = torch.cat([ordered, ordered.new_zeros(n, width - ordered.shape[1])], dim=1)
    empty = ordered == 0
    high = (ordered >> 32) & _LOW
    bits = torch.where((high & 0x80000000) != 0, high & 0x7FFFFFFF, (~high) & _LOW)
    bits = torch.where(bits >= 2 ** 31, bits - 2 ** 32, bits).to(torch.int32)   # two's complement
    values = torch.where(empty, torch.zeros_like(bits, dtype=torch.float32), bits.view(torch.float32))
    latents = torch.where(empty, torch.full_like(ordered, -1), _LOW - (ordered & _LOW))
    return values, latents
