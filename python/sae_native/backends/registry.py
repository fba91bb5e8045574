"""Which kernel runs an op for a device type.

Every op in ``sae_native._ops`` runs its contract check (``contract.py``) and then the kernel
registered here for the inputs' device type, or the pure-torch kernel (``default.py``) where none
is: an MPS or XPU tensor runs, slowly, instead of raising. Backends register a mapping of op name
to kernel; each kernel takes the op's checked arguments (a ``contract`` record).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Mapping

OPS = ("pack_encoder", "encode_topk", "encode_groupmax", "encode_threshold", "decode", "sparse_dot",
       "sparse_outer", "sparse_outer_add_", "steer_threshold", "steer_codes")

_KERNELS: Dict[str, Dict[str, Callable]] = {op: {} for op in OPS}


def register(device_type: str, kernels: Mapping[str, Callable]) -> None:
    """Registers ``kernels`` (op name -> kernel) for tensors on ``device_type`` ("cpu", "cuda", ...)."""
    for op, fn in kernels.items():
        if op not in _KERNELS:
            raise ValueError(f"register: unknown op {op!r}; the ops are {OPS}")
        _KERNELS[op][device_type] = fn


def kernels_for(device_type: str) -> Dict[str, Callable]:
    """The kernels registered for ``device_type`` (op name -> kernel)."""
    return {op: table[device_type] for op, table in _KERNELS.items() if device_type in table}


def kernel(op: str, device_type: str) -> Callable:
    """The kernel of ``op`` for ``device_type``: the registered one, else the pure-torch default."""
    fn = _KERNELS[op].get(device_type)
    if fn is None:
        from . import default
        fn = getattr(default, op)
    return fn


@contextlib.contextmanager
def registered(device_type: str, kernels: Mapping[str, Callable]) -> Iterator[None]:
    """``kernels`` registered for ``device_type`` inside the block, the previous ones after (the tests
    run the CUDA kernels' CPU emulator, and the pure-torch kernels, as if they were the CPU's)."""
    before = {op: table.get(device_type) for op, table in _KERNELS.items()}
    replaced = {op: fn for op, fn in kernels.items()}
    register(device_type, replaced)
    try:
        yield
    finally:
        for op, fn in before.items():
            if fn is None:
                _KERNELS[op].pop(device_type, None)
            else:
                _KERNELS[op][device_type] = fn
