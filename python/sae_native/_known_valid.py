"""Marks op calls whose code indices the package produced itself: an encode's codes decoded or
steered straight away, a forward pass's indices in its backward. Such indices are in range by
construction, so a backend may skip proving it.

On a GPU that proof costs a synchronisation: the kernels count out-of-range indices on the device
and the CUDA backend reads the count back to raise (backends/cuda_launch.py). Indices a user hands
to an op are always checked; for calls made through ``call_known_valid`` the read-back is skipped,
and the kernels still never read past W_dec (a bad index is skipped like padding). (Clamp features
have their own record of what was checked: _clamp.features_checked.)

Under torch.compile the mark is left out (Dynamo cannot trace a ContextVar, and a compiled graph
runs its ops later, outside any Python context): compiled code keeps the check.
"""
from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, TypeVar

import torch

_KNOWN_VALID = contextvars.ContextVar("sae_native_indices_known_valid", default=False)
F = TypeVar("F", bound=Callable[..., Any])


def call_known_valid(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with its ops' indices marked as the package's own."""
    if torch.compiler.is_compiling():
        return fn(*args, **kwargs)
    token = _KNOWN_VALID.set(True)
    try:
        return fn(*args, **kwargs)
    finally:
        _KNOWN_VALID.reset(token)


def known_valid_fn(fn: F) -> F:
    """``fn`` always called through ``call_known_valid`` (for the ops' backward functions)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call_known_valid(fn, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def known_valid() -> bool:
    return _KNOWN_VALID.get()
