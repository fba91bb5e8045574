"""Element-type codes shared with the native module (csrc/common.h, enum DType)."""
from __future__ import annotations

import torch

CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
WEIGHT_DTYPES = tuple(CODES)
# Activation dtype -> the weight dtypes the kernels accept with it.
PAIRS = {
    torch.float32: (torch.float32, torch.bfloat16, torch.float16),
    torch.float64: (torch.float64,),
}


def dtype_code(dtype: torch.dtype) -> int:
    try:
        return CODES[dtype]
    except KeyError:
        raise TypeError(f"sae_native kernels take float32, float64, bfloat16 or float16, got {dtype}") from None
