"""The CUDA backend on the CPU emulator: ``emulated_cuda(lib)`` registers the CUDA backend's
kernels (``sae_native.backends.cuda.Kernels``: the same checks and launch sequences) as the CPU
kernels of every op, running the emulator's build of cuda/*.cu on CPU tensors, and puts the real
CPU kernels back on exit. Inside it the whole public API (SAE.encode, decode, steer, autograd,
hooks) runs through the CUDA kernels.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, List, Optional

import torch

import sae_native.backends as backends
from sae_native.backends import cpu, cuda, cuda_plan
from sae_native.backends.cpu_packing import pack as _real_pack
from sae_native.backends._checks import OpChecks
from sae_native.backends.cuda_launch import Runtime

_active: List[cuda.Kernels] = []   # the emulated kernels now registered for the CPU, innermost last


def _register_cpu_kernels() -> None:
    for name in cuda.OPS:
        torch.library.register_kernel(f"sae_native::{name}", "cpu", getattr(cpu, "_" + name))


@contextlib.contextmanager
def emulated_cuda(lib, sm_count: Optional[int] = None) -> Iterator[cuda.Kernels]:
    """``sm_count`` overrides the emulated device's (lib.set_device sets the device for good)."""
    def device(w_dtype_code: int) -> cuda_plan.Device:
        d = cuda_plan.query_device(lib, w_dtype_code)   # not cached: tests change the emulated device
        return d if sm_count is None else dataclasses.replace(d, sm_count=sm_count)

    def runtime(_device: torch.device) -> Runtime:
        return Runtime(lib, 0, device, cuda.index_check_wanted(), poison=True)

    kernels = cuda.Kernels(OpChecks("cpu", "CPU"), runtime, lambda device: contextlib.nullcontext())
    pack = backends._pack_cpu
    kernels.register("cpu")
    backends._pack_cpu = lambda W: W.contiguous()   # the CUDA kernels read W_enc row-major
    _active.append(kernels)
    try:
        yield kernels
    finally:
        _active.pop()
        backends._pack_cpu = pack
        if _active:
            _active[-1].register("cpu")
        else:
            _register_cpu_kernels()


@contextlib.contextmanager
def cpu_kernels() -> Iterator[None]:
    """The real CPU kernels for a while inside ``emulated_cuda`` (a reference computed on the CPU);
    a no-op outside it."""
    if not _active:
        yield
        return
    pack = backends._pack_cpu
    backends._pack_cpu = _real_pack
    _register_cpu_kernels()
    try:
        yield
    finally:
        backends._pack_cpu = pack
        _active[-1].register("cpu")
