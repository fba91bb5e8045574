"""W_enc laid out for its device's encode kernel, once per SAE (the ``pack_encoder`` op)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _ops
from ._tensors import tensor_version


class PackedEncoder:
    """``pack_encoder(W_enc)``, made once and reused across calls.

    The layout is re-made when W_enc is changed in place through autograd-visible ops (an
    optimizer step, ``W_enc.mul_``), which bump its version counter. Writes through ``W_enc.data``
    or inside inference mode are invisible: call ``refresh()`` after those.
    """

    def __init__(self, W_enc: Tensor):
        self.W_enc = W_enc
        self.refresh()

    def refresh(self) -> None:
        self._version = tensor_version(self.W_enc)
        with torch.no_grad():
            self._packed: Optional[Tensor] = _ops.pack_encoder(self.W_enc.detach()) \
                if self.W_enc.device.type != "meta" else None

    def get(self) -> Optional[Tensor]:
        """The packed tensor for the encode ops' ``packed`` argument."""
        if not torch.compiler.is_compiling() and tensor_version(self.W_enc) != self._version:
            self.refresh()
        return self._packed
