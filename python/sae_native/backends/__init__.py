"""Per-device kernels for the ops declared in ``sae_native._ops``.

``registry.py`` maps (op, device type) to a kernel; ``contract.py`` is the check every op runs
before it. Importing this package registers what is available: the CPU always (``cpu/``), CUDA
when the optional ``sae_native._cuda`` module was built (``cuda/``); every other device type runs
the pure-torch kernels (``default.py``).
"""
from __future__ import annotations

from .. import _runtime
from . import cpu, registry  # noqa: F401  (cpu registers its kernels)

CUDA_KERNELS = _runtime._cuda_module() is not None
if CUDA_KERNELS:
    from . import cuda  # noqa: F401  (registers its kernels)
