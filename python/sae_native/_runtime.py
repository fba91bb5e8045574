"""Build facts and the native thread pool's size."""
from __future__ import annotations

import platform
from typing import Any, Dict

import torch

from . import _C


def _cuda_module():
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _cuda


def set_num_threads(n: int) -> None:
    """Sets how many threads the native kernels use (the calling thread included).

    The default is ``torch.get_num_threads()`` at import. ``n`` must be an int >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int >= 1, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """How many threads the native kernels use."""
    return int(_C.num_threads())


def build_info() -> Dict[str, Any]:
    """What this installation was built with and what it chose at import.

    Keys: ``version``, ``cpu_isa`` (the encode kernel variant in use), ``cpu_isas_supported``,
    ``cpu_features``, ``cuda_compiled``, ``cuda_archs``, ``num_threads``, ``compiler``,
    ``torch``, ``python``, ``machine``.
    """
    cuda = _cuda_module()
    return {
        "version": getattr(_C, "__version__", "unknown"),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isas_supported": list(_C.supported_isas()),
        "cpu_features": list(_C.cpu_features()),
        "cuda_compiled": cuda is not None,
        "cuda_archs": list(getattr(cuda, "ARCHS", [])) if cuda is not None else [],
        "num_threads": get_num_threads(),
        "compiler": _C.COMPILER,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _init_threads() -> None:
    _C.set_num_threads(max(1, torch.get_num_threads()))
