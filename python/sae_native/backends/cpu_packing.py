"""W_enc laid out in panels for the CPU encode kernel (csrc/pack.h)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _C
from ._dtypes import dtype_code


def pack(W_enc: Tensor) -> Tensor:
    """The panel layout of W_enc [d_in, d_sae]: [ceil(d_sae / PANEL), d_in, PANEL], zero-padded."""
    d_in, d_sae = W_enc.shape
    out = torch.empty(_C.packed_size(d_in, d_sae), dtype=W_enc.dtype)
    _C.pack(dtype_code(W_enc.dtype), W_enc.data_ptr(), d_in, d_sae, W_enc.stride(0), W_enc.stride(1),
            out.data_ptr())
    return out


def check_packed(op: str, packed: Tensor, W_enc: Tensor) -> None:
    """A packed tensor handed to an op must be W_enc's layout: same dtype and size, on the CPU."""
    size = _C.packed_size(*W_enc.shape)
    if packed.dtype != W_enc.dtype or packed.device.type != "cpu" or packed.numel() != size or not packed.is_contiguous():
        raise ValueError(f"sae_native::{op}: packed must be a contiguous CPU {W_enc.dtype} tensor of {size} "
                         f"elements (backends.PackedEncoder of W_enc), got {packed.dtype} with "
                         f"{packed.numel()} elements on {packed.device}")
