"""W_enc packed into panels for the CPU encode kernel, made once per weight tensor and reused.

The cache is keyed by the tensor's memory (data pointer, shape, strides, dtype). An entry lives
as long as the tensor it was made from (a weakref finalizer drops it), so its address cannot be
reused by another tensor while the entry exists; and it records the tensor's version counter, so
an in-place change to the weights (an optimizer step, ``W_enc.mul_``) re-packs on the next call.
Inference-mode tensors carry no version counter; their weights are taken as fixed.
"""
from __future__ import annotations

import threading
import weakref
from typing import Dict, Tuple

import torch
from torch import Tensor

from .. import _C
from ._dtypes import dtype_code


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensor
        return -1


def pack(W_enc: Tensor) -> Tensor:
    """The panel layout of W_enc [d_in, d_sae]: [ceil(d_sae / PANEL), d_in, PANEL], zero-padded."""
    d_in, d_sae = W_enc.shape
    out = torch.empty(_C.packed_size(d_in, d_sae), dtype=W_enc.dtype)
    _C.pack(dtype_code(W_enc.dtype), W_enc.data_ptr(), d_in, d_sae, W_enc.stride(0), W_enc.stride(1),
            out.data_ptr())
    return out


class PackCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[Tuple, Tuple[int, Tensor]] = {}

    def get(self, W_enc: Tensor) -> Tensor:
        key = (W_enc.data_ptr(), tuple(W_enc.shape), tuple(W_enc.stride()), W_enc.dtype)
        version = _version(W_enc)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == version:
                return entry[1]
            packed = pack(W_enc)
            if entry is None:
                weakref.finalize(W_enc, self._entries.pop, key, None)
            self._entries[key] = (version, packed)
            return packed

    def __len__(self) -> int:
        return len(self._entries)
