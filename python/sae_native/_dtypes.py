"""Element types: the codes the native modules use (defined once, in csrc/dtype.h, and read from
the CPU module here), and which weight dtypes the kernels accept with which activations."""
from __future__ import annotations

import torch

from . import _C

CODES = {torch.float32: _C.DTYPES["float32"], torch.float64: _C.DTYPES["float64"],
         torch.bfloat16: _C.DTYPES["bfloat16"], torch.float16: _C.DTYPES["float16"]}
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


def compute_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The activations' dtype for weights of this dtype: float64 for float64, else float32 (16-bit
    weights are widened in registers)."""
    return torch.float64 if weight_dtype == torch.float64 else torch.float32
