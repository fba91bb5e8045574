"""The CUDA backend on the CPU emulator: ``emulated_cuda(lib)`` registers the CUDA backend's
kernels (``sae_native.backends.cuda.Kernels``: the same checks and launch sequences) as the CPU
kernels of every op, running the emulator's build of cuda/*.cu on CPU tensors, and puts the real
CPU kernels back on exit. Inside it the whole public API (SAE.encode, decode, steer, autograd,
hooks) runs through the CUDA kernels.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch

import sae_native.backends as backends
from sae_native.backends import cpu, cuda
from sae_native.backends.cpu_packing import pack as _real_pack
from sae_native.backends._checks import OpChecks
from sae_native.backends.cuda_launch import Runtime

H100_SMS = 132
_active: List[cuda.Kernels] = []   # the emulated kernels now registered for the CPU, innermost last


def _register_cpu_kernels() -> None:
    for name in cuda.OPS:
        torch.library.register_kernel(f"sae_native::{name}", "cpu", getattr(cpu, "_" + name))


@contextlib.contextmanager
def emulated_cuda(lib, sm_count: int = H100_SMS) -> Iterator[cuda.Kernels]:
    def runtime(device: torch.device) -> Runtime:
        return Runtime(lib, 0, sm_count, cuda.index_check_wanted(), poison=True)

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
