"""The clamp arithmetic of steering, in torch, for autograd and the reference.

For a clamped feature with activation z and target c (DESIGN.md):
    set:   delta = c - z          scale: delta = (c - 1) * z          add: delta = c
and with where="active" delta is 0 wherever z <= 0. The kernels in csrc/steer.h compute the same.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

MODES = ("set", "scale", "add")


class ClampTerms(NamedTuple):
    delta: Tensor   # the change of each clamped feature, [n, C]
    d_dz: Tensor    # d delta / d z
    d_dc: Tensor    # d delta / d c


def clamp_terms(z: Tensor, c: Tensor, mode: str, only_active: bool) -> ClampTerms:
    c = c.to(z.dtype).expand_as(z)
    one = torch.ones_like(z)
    if mode == "set":
        delta, d_dz, d_dc = c - z, -one, one
    elif mode == "scale":
        delta, d_dz, d_dc = (c - 1) * z, c - 1, z
    elif mode == "add":
        delta, d_dz, d_dc = c, torch.zeros_like(z), one
    else:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if only_active:
        keep = z > 0
        delta, d_dz, d_dc = (torch.where(keep, t, torch.zeros_like(t)) for t in (delta, d_dz, d_dc))
    return ClampTerms(delta, d_dz, d_dc)
