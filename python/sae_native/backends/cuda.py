"""The CUDA backend's kernel for each op in ``sae_native._ops``: check the op contract
(``_checks.py``), then run the op's launch sequence (``cuda_launch.py``) on a ``Runtime``: for the
GPU, ``sae_native._cuda`` on torch's current stream. Launches are asynchronous on that stream;
scratch buffers come from torch's caching allocator. ``cuda_launch.py`` says where the CUDA ops
differ from the CPU's and when they synchronise.

``Kernels`` is parameterised by device so the tests can also register it for CPU tensors with the
CPU emulator's build of the kernels (tests/cuda_emu): the same checks and launch sequences run.
The kernels' count of out-of-range indices is read back (a synchronisation) unless the indices are
the package's own (``_known_valid.py``: an encode's codes decoded or steered at once, backward
passes), a CUDA graph is being captured, or ``SAE_NATIVE_CUDA_INDEX_CHECK=0``.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, ContextManager

import torch

from .._known_valid import known_valid
from . import cuda_launch as launch
from . import cuda_plan
from ._checks import OpChecks, groupmax_k, topk_k

OPS = ("encode_topk", "encode_groupmax", "encode_threshold", "decode", "sparse_dot", "sparse_outer",
       "steer_threshold", "steer_codes")


class Kernels:
    """One method per op, for tensors that ``checks`` accepts; ``runtime(device)`` says which kernel
    module runs them and on what stream, inside ``scope(device)``."""

    def __init__(self, checks: OpChecks, runtime: Callable[[torch.device], launch.Runtime],
                 scope: Callable[[torch.device], ContextManager]):
        self.chk, self.runtime, self.scope = checks, runtime, scope

    def register(self, device_type: str) -> None:
        for name in OPS:
            torch.library.register_kernel(f"sae_native::{name}", device_type, getattr(self, name))

    def encode_topk(self, x, W_enc, b_enc, b_dec, k, packed):
        x, T, d_in, d_sae, b_enc, b_dec = self.chk.encode_prologue("encode_topk", x, W_enc, b_enc, b_dec)
        topk_k("encode_topk", k, d_sae)
        with self.scope(x.device):
            return launch.encode_topk(self.runtime(x.device), x, W_enc, b_enc, b_dec, k, packed)

    def encode_groupmax(self, x, W_enc, b_enc, b_dec, k, packed):
        x, T, d_in, d_sae, b_enc, b_dec = self.chk.encode_prologue("encode_groupmax", x, W_enc, b_enc, b_dec)
        groupmax_k("encode_groupmax", k, d_sae)
        with self.scope(x.device):
            return launch.encode_groupmax(self.runtime(x.device), x, W_enc, b_enc, b_dec, k)

    def encode_threshold(self, x, W_enc, b_enc, b_dec, threshold, packed, compact_nonfinite=True):
        op = "encode_threshold"
        x, T, d_in, d_sae, b_enc, b_dec = self.chk.encode_prologue(op, x, W_enc, b_enc, b_dec)
        threshold = self.chk.vector(op, "threshold", threshold, d_sae, T)
        self.chk.same_device(op, x, threshold=threshold)
        with self.scope(x.device):
            return launch.encode_threshold(self.runtime(x.device), x, W_enc, b_enc, b_dec, threshold, packed,
                                           compact_nonfinite)

    def decode(self, values, indices, W_dec, b_dec):
        values, indices, T, d_sae, d_in, b_dec = self.chk.decode_weights("decode", values, indices, W_dec, b_dec)
        with self.scope(values.device):
            return launch.decode(self.runtime(values.device), values, indices, W_dec, b_dec)

    def sparse_dot(self, g, indices, W):
        g, indices, T, rows, d = self.chk.sparse_dot_inputs("sparse_dot", g, indices, W)
        with self.scope(g.device):
            return launch.sparse_dot(self.runtime(g.device), g, indices, W)

    def sparse_outer(self, values, indices, g, rows, transposed):
        values, indices, g, T = self.chk.sparse_outer_inputs("sparse_outer", values, indices, g, rows)
        with self.scope(g.device):
            return launch.sparse_outer(self.runtime(g.device), values, indices, g, rows, transposed)

    def steer_threshold(self, x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active):
        x, T, d_in, d_sae, b_enc, b_dec, threshold, features, targets, mode_code = self.chk.steer_threshold_inputs(
            "steer_threshold", x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode)
        with self.scope(x.device):
            return launch.steer_threshold(self.runtime(x.device), x, W_enc, b_enc, W_dec, b_dec, threshold,
                                          features, targets, mode_code, only_active)

    def steer_codes(self, x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error):
        x, T, d_in, d_sae, values, indices, b_dec, features, targets, mode_code = self.chk.steer_codes_inputs(
            "steer_codes", x, values, indices, W_dec, b_dec, features, targets, mode)
        with self.scope(x.device):
            return launch.steer_codes(self.runtime(x.device), x, values, indices, W_dec, b_dec, features, targets,
                                      mode_code, only_active, keep_error)


def load_kernels(device: torch.device) -> None:
    """Loads every kernel on ``device`` (once per device; see _loaded)."""
    _loaded(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _loaded(index: int) -> bool:
    """Loads every kernel on device ``index`` once, before any launch: with lazy module loading the
    first launch of a kernel would load it, and inside a CUDA graph capture that fails."""
    from .. import _cuda
    with torch.cuda.device(index):
        _cuda.load_kernels()
    return True


@functools.lru_cache(maxsize=None)
def _device(index: int, w_dtype_code: int) -> cuda_plan.Device:
    """The planner's view of GPU ``index`` (multiprocessors, occupancy of the fused encode), once."""
    from .. import _cuda
    with torch.cuda.device(index):
        return cuda_plan.query_device(_cuda, w_dtype_code)


def index_check_wanted() -> bool:
    """Read back the kernels' out-of-range index count (a synchronisation)? Not for indices the
    package made itself (``_known_valid.py``), nor with SAE_NATIVE_CUDA_INDEX_CHECK=0."""
    return os.environ.get("SAE_NATIVE_CUDA_INDEX_CHECK", "1") != "0" and not known_valid()


def _gpu_runtime(device: torch.device) -> launch.Runtime:
    """sae_native._cuda on torch's current stream of ``device`` (inside torch.cuda.device)."""
    from .. import _cuda
    load_kernels(device)
    check = index_check_wanted() and not torch.cuda.is_current_stream_capturing()
    return launch.Runtime(_cuda, torch.cuda.current_stream(device).cuda_stream,
                          functools.partial(_device, device.index if device.index is not None else
                                            torch.cuda.current_device()), check)


def register() -> None:
    """Registers the GPU kernels (backends/__init__.py calls this when sae_native._cuda was built)."""
    Kernels(OpChecks("cuda", "CUDA"), _gpu_runtime, torch.cuda.device).register("cuda")
