"""Build facts and the native thread pool's size."""
from __future__ import annotations

import ctypes
import os
import platform
import re
import warnings
from typing import Any, Dict, Optional

import torch

from . import _C

_OPENMP_PATH: Optional[str] = None  # torch's OpenMP runtime, when our parallel work runs on it


def _torch_openmp_runtime() -> Optional[str]:
    """The path of the OpenMP runtime torch loaded into this process (Linux), or None."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines()
                    if re.search(r"/lib(g|i|)omp[^/]*\.so", line)})
    return paths[0] if paths else None


def select_thread_pool(kind: str) -> str:
    """Where parallel kernels run: "openmp" (a team of torch's own OpenMP threads, when one is
    loaded; otherwise falls back) or "own" (the package's worker threads). Returns the kind in
    use. The default is "openmp", or the environment variable SAE_NATIVE_THREAD_POOL."""
    global _OPENMP_PATH
    if kind not in ("openmp", "own"):
        raise ValueError(f"kind: expected 'openmp' or 'own', got {kind!r}")
    _OPENMP_PATH = None
    _C.use_openmp_runtime(0)
    if kind == "openmp":
        path = _torch_openmp_runtime()
        if path is not None:
            try:
                fn = ctypes.CDLL(path).GOMP_parallel
            except (OSError, AttributeError):
                fn = None
            if fn is not None:
                _C.use_openmp_runtime(ctypes.cast(fn, ctypes.c_void_p).value)
                _OPENMP_PATH = path
    return "openmp" if _OPENMP_PATH is not None else "own"


_CUDA_IMPORT_ERROR: Optional[str] = None


def _cuda_module():
    """sae_native._cuda, or None when it was not built or does not load (the reason is kept for
    build_info()["cuda_error"])."""
    global _CUDA_IMPORT_ERROR
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError as e:
        _CUDA_IMPORT_ERROR = f"{type(e).__name__}: {e}"
        return None
    return _cuda


def _version(v: int) -> Optional[str]:
    """CUDA's integer versions (13000) as text ("13.0"); None for 0 (no driver)."""
    return f"{v // 1000}.{v % 1000 // 10}" if v else None


def cuda_status() -> Dict[str, Any]:
    """The CUDA module's state: whether it loads, the driver and runtime versions, the GPUs the
    driver shows, and in ``cuda_error`` why the CUDA kernels cannot run (None when they can)."""
    cuda = _cuda_module()
    if cuda is None:
        missing = _CUDA_IMPORT_ERROR is not None and "No module named" in _CUDA_IMPORT_ERROR
        return {"cuda_compiled": False, "cuda_archs": [], "cuda_devices": 0, "cuda_driver": None,
                "cuda_runtime": None,
                "cuda_error": ("built without the CUDA module (no nvcc at build time, or it was turned off: see "
                               "docs/cuda.md)" if missing else f"the CUDA module does not load: {_CUDA_IMPORT_ERROR}")}
    info = cuda.runtime_info()
    driver, runtime = info["driver_version"], info["runtime_version"]
    error = None
    if driver == 0:
        error = "no NVIDIA driver was found (cudaDriverGetVersion)"
    elif driver < runtime:
        error = (f"the driver supports CUDA {_version(driver)}, older than the CUDA {_version(runtime)} runtime this "
                 f"module links: update the driver (CUDA 13 needs R580 or newer) or build against an older toolkit "
                 f"(docs/cuda.md)")
    elif info["device_count"] == 0:
        error = info["error"] or "the driver shows no GPU"
    return {"cuda_compiled": True, "cuda_archs": list(getattr(cuda, "ARCHS", [])),
            "cuda_devices": int(info["device_count"]), "cuda_driver": _version(driver),
            "cuda_runtime": _version(runtime), "cuda_error": error}


def max_threads() -> int:
    """The most threads set_num_threads accepts: 4 per CPU, at least 64. More cannot run faster,
    and OpenMP aborts the whole process (no Python error) when it cannot create them."""
    return max(64, 4 * (os.cpu_count() or 1))


def set_num_threads(n: int) -> None:
    """Sets how many threads the native kernels use (the calling thread included).

    The default is ``torch.get_num_threads()`` at import (1 in a forked child, such as a
    DataLoader worker). ``n`` must be an int in ``[1, max_threads()]``.
    """
    limit = max_threads()
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int >= 1 and <= {limit}, got {type(n).__name__}")
    if not 1 <= n <= limit:
        raise ValueError(f"n: expected an int >= 1 and <= {limit} (4 threads per CPU at most), got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """How many threads the native kernels use."""
    return int(_C.num_threads())


def build_info() -> Dict[str, Any]:
    """What this installation was built with and what it chose at import.

    Keys: ``version``, ``cpu_isa`` (the kernel variant in use), ``cpu_isas_supported``,
    ``cpu_features``, ``cpu_bf16_inputs_rounded`` (the variant multiplies bf16 weights with
    ``x - b_dec`` rounded to bf16, on bf16 dot-product units), ``cuda_compiled``, ``cuda_archs``, ``cuda_devices`` (GPUs the driver shows;
    0 without a driver), ``cuda_driver`` / ``cuda_runtime`` (CUDA versions of the driver and of
    the runtime linked into the module), ``cuda_error`` (why the CUDA kernels cannot run, or None),
    ``num_threads``, ``thread_pool`` ("openmp: <torch's runtime>" or "own"), ``compiler``,
    ``torch``, ``python``, ``machine``, ``encode_paths`` (the encode path setting, and each
    choice measured so far: backends/encode_paths.py).
    """
    from .backends import encode_paths   # (backends imports this module)
    return {
        "version": getattr(_C, "__version__", "unknown"),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isas_supported": list(_C.supported_isas()),
        "cpu_features": list(_C.cpu_features()),
        "cpu_bf16_inputs_rounded": bool(_C.bf16_inputs_rounded()),
        **cuda_status(),
        "num_threads": get_num_threads(),
        "thread_pool": f"openmp: {_OPENMP_PATH}" if _C.using_openmp_runtime() else "own",
        "compiler": _C.COMPILER,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "encode_paths": encode_paths.choices(),
    }


def _init_isa() -> None:
    """Applies SAE_NATIVE_ISA (case-insensitive): a variant the CPU supports is used; any other
    value warns, naming the accepted ones, and the best supported variant stays."""
    wanted = os.environ.get("SAE_NATIVE_ISA")
    if wanted is None or not wanted.strip():
        return
    name = wanted.strip().lower()
    supported = list(_C.supported_isas())
    if name in supported:
        _C.select_isa(name)
        return
    why = "is not supported by this CPU" if name in _C.compiled_isas() else "is not a kernel variant"
    warnings.warn(f"SAE_NATIVE_ISA={wanted!r} {why}; accepted values here: {', '.join(supported)}. "
                  f"Using {_C.cpu_isa()!r}.", RuntimeWarning, stacklevel=3)


def _init_threads() -> None:
    _C.set_num_threads(min(max(1, torch.get_num_threads()), max_threads()))
    select_thread_pool(os.environ.get("SAE_NATIVE_THREAD_POOL", "openmp"))
