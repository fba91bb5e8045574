"""The CUDA backend on the CPU emulator: ``emulated_cuda(lib)`` registers the CUDA backend's kernels
(``sae_native.backends.cuda.ops.Kernels``: the same launch sequences, behind the same op contract)
as the CPU's kernels in the backend registry, running the emulator's build of cuda/*.cu on CPU
tensors, and puts the previous CPU kernels back on exit. Inside it the whole public API
(SAE.encode, decode, steer, autograd, hooks) runs through the CUDA kernels. No monkey-patching:
the registry is how any backend is chosen.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Dict, Iterator, List, Optional

import torch

from sae_native.backends import registry
from sae_native.backends.cpu import ops as cpu_ops
from sae_native.backends.cuda import ops as cuda_ops
from sae_native.backends.cuda import plan as launch_plan
from sae_native.backends.cuda.launch import Runtime

_stack: List[Dict] = []   # the kernel tables registered for the CPU by enclosing blocks, innermost last


@contextlib.contextmanager
def emulated_cuda(lib, sm_count: Optional[int] = None) -> Iterator[cuda_ops.Kernels]:
    """``sm_count`` overrides the emulated device's (lib.set_device sets the device for good)."""
    def device(w_dtype_code: int) -> launch_plan.Device:
        d = launch_plan.query_device(lib, w_dtype_code)   # not cached: tests change the emulated device
        return d if sm_count is None else dataclasses.replace(d, sm_count=sm_count)

    def runtime(_device: torch.device) -> Runtime:
        return Runtime(lib, 0, device, readback=cuda_ops.readback_allowed(), poison=True)

    kernels = cuda_ops.Kernels(runtime)
    table = kernels.table()
    _stack.append(table)
    try:
        with registry.registered("cpu", table):
            yield kernels
    finally:
        _stack.pop()


@contextlib.contextmanager
def cpu_kernels() -> Iterator[None]:
    """The real CPU kernels for a while inside ``emulated_cuda`` (a reference computed on the CPU);
    a no-op outside it."""
    if not _stack:
        yield
        return
    with registry.registered("cpu", cpu_ops.KERNELS):
        yield
