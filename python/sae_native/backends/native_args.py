"""The descriptors both native modules take (csrc/op_args.h: Mat, ClampArgs), made from tensors.

A descriptor holds raw pointers, not the tensors: the caller must keep every tensor it describes
alive until the native call returns (never describe a temporary made inside the call's argument
list).

``lib`` is the module the call goes to (sae_native._C, sae_native._cuda, or the CUDA emulator's
build): each defines its own copy of the structs.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._dtypes import CODES, dtype_code
from .contract import Clamp


def ptr(t: Optional[Tensor]) -> int:
    """The data pointer, 0 for an absent optional tensor."""
    return 0 if t is None else t.data_ptr()


def mat(lib, t: Tensor):
    """A 2-D tensor (any strides) as a Mat (int64 indices get dtype -1: the kernels know them)."""
    return lib.Mat(data=t.data_ptr(), dtype=CODES.get(t.dtype, -1), rows=t.shape[0], cols=t.shape[1],
                   row_stride=t.stride(0), col_stride=t.stride(1))


def laid_out(lib, data: Tensor, like: Tensor):
    """A tensor in a kernel's own layout of ``like`` (rows x cols of like's shape, no strides)."""
    return lib.Mat(data=data.data_ptr(), dtype=dtype_code(like.dtype), rows=like.shape[0], cols=like.shape[1],
                   row_stride=0, col_stride=0)


def clamp(lib, c: Clamp):
    return lib.ClampArgs(features=c.features.data_ptr(), targets=c.targets.data_ptr(), count=c.features.shape[0],
                         mode=lib.CLAMP_MODES[c.mode], only_active=c.only_active)
