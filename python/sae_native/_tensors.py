"""Facts about a tensor that the layers above the kernels need: whether its values may be read now,
and its version counter."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def can_read_values(*tensors: Optional[Tensor]) -> bool:
    """Whether checks that read tensor data may run: not while tracing for torch.compile, and not
    on meta tensors (which have shapes only). Kernels never read out of bounds either way."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or t.device.type != "meta" for t in tensors)


def tensor_version(t: Tensor) -> int:
    """t's version counter (bumped by every in-place change); -1 for inference tensors, which have none."""
    try:
        return t._version
    except RuntimeError:
        return -1
