"""The CUDA kernel of each op: the launch sequence (``launch.py``) on a ``Runtime``: for a GPU,
``sae_native._cuda`` on torch's current stream of the inputs' device. Launches are asynchronous on
that stream; scratch buffers come from torch's caching allocator.

``Kernels`` is parameterised by the runtime so that the tests can also register it, for CPU tensors,
with the CPU emulator's build of the kernels (tests/cuda_emu): the same launch sequences run.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, ContextManager, Dict

import torch

from .. import contract
from . import launch, plan as launch_plan

ENCODES = ("encode_topk", "encode_groupmax", "encode_threshold")
GATHERS = ("decode", "sparse_dot", "sparse_outer", "sparse_outer_add_", "steer_threshold", "steer_codes")


class Kernels:
    """One kernel per op; ``runtime(device)`` says which kernel module runs it and on what stream,
    inside ``scope(device)``. ``pack(W_enc)`` lays W_enc out for the encode (row-major)."""

    def __init__(self, runtime: Callable[[torch.device], launch.Runtime],
                 scope: Callable[[torch.device], ContextManager] = lambda device: contextlib.nullcontext()):
        self.runtime, self.scope = runtime, scope

    def table(self) -> Dict[str, Callable]:
        def bound(name: str) -> Callable:
            fn = getattr(launch, name)

            def kernel(a):
                device = contract.device_of(a)
                with self.scope(device):
                    return fn(self.runtime(device), a)
            kernel.__name__ = name
            return kernel
        return {"pack_encoder": self.pack_encoder, **{name: bound(name) for name in ENCODES + GATHERS}}

    def pack_encoder(self, a: contract.PackArgs):
        # The kernels stream W_enc row-major: a strided W_enc is copied once, here; a row-major one
        # is read as it is (an empty tensor says so). The device's kernels load now too, so a CUDA
        # graph captured before any other call finds them loaded.
        with self.scope(a.W_enc.device):
            self.runtime(a.W_enc.device)
            return a.W_enc.new_empty(0) if a.W_enc.is_contiguous() else a.W_enc.contiguous()


@functools.lru_cache(maxsize=None)
def _loaded(index: int) -> bool:
    """Loads every kernel on device ``index`` once, before any launch: with lazy module loading the
    first launch of a kernel would load it, and inside a CUDA graph capture that fails."""
    from ... import _cuda
    with torch.cuda.device(index):
        _cuda.load_kernels()
    return True


@functools.lru_cache(maxsize=None)
def _device(index: int, w_dtype_code: int) -> launch_plan.Device:
    """The planner's view of GPU ``index`` (multiprocessors, occupancy of the fused encode), once."""
    from ... import _cuda
    with torch.cuda.device(index):
        return launch_plan.query_device(_cuda, w_dtype_code)


def readback_allowed() -> bool:
    """Reports may be read back (a synchronisation) unless a CUDA graph is being captured, or
    SAE_NATIVE_CUDA_INDEX_CHECK=0 turns the read-back off for good (bad entries are then skipped)."""
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    return os.environ.get("SAE_NATIVE_CUDA_INDEX_CHECK", "1") != "0" and not capturing


def gpu_runtime(device: torch.device) -> launch.Runtime:
    """sae_native._cuda on torch's current stream of ``device`` (inside torch.cuda.device)."""
    from ... import _cuda
    index = device.index if device.index is not None else torch.cuda.current_device()
    _loaded(index)
    return launch.Runtime(_cuda, torch.cuda.current_stream(device).cuda_stream, functools.partial(_device, index),
                          readback_allowed())


KERNELS = Kernels(gpu_runtime, torch.cuda.device).table()
