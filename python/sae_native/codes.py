"""SparseCodes: the sparse output of an SAE encoder."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


class SparseCodes:
    """Active latents of each row: ``values [..., k]`` and int64 ``indices [..., k]``.

    Each row is sorted by value descending, ties to the lower latent index. ``counts [...]`` is the
    number of active (non-zero) latents per row. TopK codes always hold k entries per row (those
    past ``counts`` are top-k picks whose value is 0). Threshold (JumpReLU/ReLU) codes are padded
    to the batch's largest count with value 0 and index -1; ``decode`` and ``to_dense`` ignore the
    padding. Values follow the dense formula, so a NaN activation shows up as a NaN value.
    """

    def __init__(self, values: Tensor, indices: Tensor, d_sae: int, counts: Optional[Tensor] = None,
                 input_norm: Optional[Tuple[Optional[Tensor], Tensor]] = None):
        if not isinstance(values, Tensor) or not isinstance(indices, Tensor):
            raise TypeError("values and indices: expected tensors")
        if values.shape != indices.shape:
            raise ValueError(f"indices: expected the shape of values {list(values.shape)}, got {list(indices.shape)}")
        if indices.dtype != torch.int64:
            raise TypeError(f"indices: expected int64, got {indices.dtype}")
        if values.dim() < 1:
            raise ValueError("values: expected at least one dimension [..., k]")
        if counts is not None and tuple(counts.shape) != tuple(values.shape[:-1]):
            raise ValueError(f"counts: expected shape {list(values.shape[:-1])}, got {list(counts.shape)}")
        self.values = values
        self.indices = indices
        self.d_sae = int(d_sae)
        self._counts = counts
        # (shift or None, scale), each [..., 1]: the statistics of an SAE that normalizes its input
        # (layer_norm / constant_norm_rescale), which decode needs to map back.
        self.input_norm = input_norm

    @property
    def counts(self) -> Tensor:
        if self._counts is None:
            self._counts = (self.values != 0).sum(-1)
        return self._counts

    @property
    def k(self) -> int:
        """Entries per row (for threshold codes: the batch's largest count)."""
        return self.values.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """The leading (batch) shape."""
        return self.values.shape[:-1]

    @property
    def device(self) -> torch.device:
        return self.values.device

    def __len__(self) -> int:
        """Rows along the first leading dimension (as ``len`` of a tensor of that shape)."""
        if self.values.dim() < 2:
            raise TypeError("len() of codes of a single row (values [k]): there is no leading dimension")
        return self.values.shape[0]

    def __getitem__(self, key) -> "SparseCodes":
        """Codes of a part of the batch: ``key`` indexes the leading dimensions as it would a
        tensor of shape ``codes.shape`` (ints, slices, index and boolean tensors, ``...``); each
        row's k entries are kept whole."""
        parts = key if isinstance(key, tuple) else (key,)
        used = sum(p.dim() if isinstance(p, Tensor) and p.dtype == torch.bool else
                   0 if p is None or p is Ellipsis else 1 for p in parts)
        if used > len(self.shape):
            raise IndexError(f"codes: too many indices for leading shape {list(self.shape)} (the last dimension, "
                             f"the k entries of a row, cannot be indexed)")
        full = (*parts, slice(None)) if any(p is Ellipsis for p in parts) else (*parts, Ellipsis, slice(None))

        def pick(t: Tensor) -> Tensor:
            return t[full]
        counts = None if self._counts is None else self._counts.unsqueeze(-1)[full].squeeze(-1)
        return SparseCodes(pick(self.values), pick(self.indices), self.d_sae, counts, self._map_norm(pick))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def to_dense(self) -> Tensor:
        """The dense activations ``[..., d_sae]`` (zeros where no latent is active)."""
        dense = self.values.new_zeros(*self.values.shape[:-1], self.d_sae)
        valid = self.indices >= 0
        index = torch.where(valid, self.indices, torch.zeros_like(self.indices))
        src = torch.where(valid, self.values, torch.zeros_like(self.values))
        return dense.scatter_add(-1, index, src)

    def flatten(self) -> "SparseCodes":
        """The codes with the leading dimensions flattened to one: ``[n, k]``."""
        k, n = self.values.shape[-1], math.prod(self.values.shape[:-1])
        counts = None if self._counts is None else self._counts.reshape(n)
        return SparseCodes(self.values.reshape(n, k), self.indices.reshape(n, k), self.d_sae, counts,
                           self._map_norm(lambda t: t.reshape(n, 1)))

    def to(self, device) -> "SparseCodes":
        counts = None if self._counts is None else self._counts.to(device)
        return SparseCodes(self.values.to(device), self.indices.to(device), self.d_sae, counts,
                           self._map_norm(lambda t: t.to(device)))

    def _map_norm(self, fn):
        if self.input_norm is None:
            return None
        shift, scale = self.input_norm
        return (None if shift is None else fn(shift), fn(scale))

    def __repr__(self) -> str:
        return (f"SparseCodes(shape={list(self.shape)}, k={self.k}, d_sae={self.d_sae}, "
                f"dtype={self.values.dtype}, device={self.values.device})")
