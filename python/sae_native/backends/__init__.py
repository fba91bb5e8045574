"""Per-device kernels for the ops declared in ``sae_native._ops``.

Importing this package registers every backend that is available: the CPU always, CUDA when the
optional ``sae_native._cuda`` module was built.
"""
from __future__ import annotations

from torch import Tensor

from . import cpu  # noqa: F401  (registers the CPU kernels)


def prepare_encoder(W_enc: Tensor) -> None:
    """Packs W_enc into the layout its device's encode kernel streams, ahead of the first call."""
    if W_enc.device.type == "cpu":
        cpu.PACKED_ENCODERS.get(W_enc)
