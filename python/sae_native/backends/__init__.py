"""Per-device kernels for the ops declared in ``sae_native._ops``.

Importing this package registers every backend that is available: the CPU always, CUDA when the
optional ``sae_native._cuda`` module was built.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _runtime
from .._weights import tensor_version
from . import cpu  # noqa: F401  (registers the CPU kernels)
from .cpu_packing import pack as _pack_cpu

CUDA_KERNELS = _runtime._cuda_module() is not None
if CUDA_KERNELS:
    from . import cuda as _cuda_backend
    _cuda_backend.register()



class PackedEncoder:
    """W_enc laid out for its device's encode kernel, made once and reused across calls.

    The layout is re-made when W_enc is changed in place through autograd-visible ops (an
    optimizer step, ``W_enc.mul_``), which bump its version counter. Writes through ``W_enc.data``
    or inside inference mode are invisible: call ``refresh()`` after those.
    """

    def __init__(self, W_enc: Tensor):
        self.W_enc = W_enc
        self.refresh()

    def refresh(self) -> None:
        self._version = tensor_version(self.W_enc)
        if self.W_enc.device.type == "cpu":
            self._packed = _pack_cpu(self.W_enc)
        elif self.W_enc.device.type == "cuda":
            # The CUDA kernels stream W_enc row-major; a transposed view is copied once, here. The
            # device's kernels are loaded now too, so that a CUDA graph captured before any other
            # call finds them loaded.
            if CUDA_KERNELS:
                _cuda_backend.load_kernels(self.W_enc.device)
            self._packed = self.W_enc if self.W_enc.is_contiguous() else self.W_enc.contiguous()
        else:
            self._packed = None

    def get(self) -> Optional[Tensor]:
        """The packed tensor for the op's ``packed`` argument (None where the device packs nothing)."""
        if not torch.compiler.is_compiling() and tensor_version(self.W_enc) != self._version:
            self.refresh()
        return self._packed
