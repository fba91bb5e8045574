"""Data-parallel training: every rank takes an equal share of each global batch, and the step's
batch-wide quantities are reduced across ranks, so W ranks take the steps one process would take
on the same global batches (within rounding: sums in another order).

What crosses ranks per step: the gradients (averaged: every loss term is a mean over rows, so the
mean of the ranks' gradients is the global batch's), the latents' firing counts, sums and maxima
(dead-latent tracking, AuxK), the input scale and b_dec at the first step, AuxK's normaliser,
BatchTopK's candidates (the selection is over the global batch) and its threshold's minimum.
``Local`` is the same interface for one process, where every reduction is the identity.
"""
from __future__ import annotations

from typing import Iterable, List

import torch
from torch import Tensor


class Local:
    """One process: nothing to share or reduce."""
    rank, world = 0, 1

    def share(self, batch: Tensor) -> Tensor:
        return batch

    def sum(self, t: Tensor, what: str) -> Tensor:
        return t

    def max(self, t: Tensor, what: str) -> Tensor:
        return t

    def min(self, t: Tensor, what: str) -> Tensor:
        return t

    def cat(self, t: Tensor, what: str) -> Tensor:
        return t

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        pass


class DataParallel(Local):
    """The ranks of ``group`` (a torch.distributed process group) training one SAE."""

    def __init__(self, group):
        import torch.distributed as dist
        from ..distributed import _comm
        self._comm, self.group = _comm, _comm.resolve_group(group)
        self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)

    def share(self, batch: Tensor) -> Tensor:
        """This rank's rows of a global batch."""
        n = batch.shape[0]
        if n % self.world:
            raise ValueError(f"batch_size: data-parallel training splits each batch evenly over {self.world} ranks; "
                             f"got a batch of {n} rows (give a batch_size divisible by {self.world})")
        b = n // self.world
        return batch[self.rank * b:(self.rank + 1) * b]

    def sum(self, t: Tensor, what: str) -> Tensor:
        return self._comm.all_reduce(t, what, self.group, "sum")

    def max(self, t: Tensor, what: str) -> Tensor:
        return self._comm.all_reduce(t, what, self.group, "max")

    def min(self, t: Tensor, what: str) -> Tensor:
        return self._comm.all_reduce(t, what, self.group, "min")

    def cat(self, t: Tensor, what: str) -> Tensor:
        """Every rank's ``t`` (same shape), concatenated along rows in rank order."""
        return torch.cat(self._comm.all_gather(t, what, self.group))

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """One all_reduce over every gradient, flattened into one buffer."""
        params: List[torch.nn.Parameter] = [p for p in params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        flat = self.sum(flat, "the gradients (training step)") / self.world
        at = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[at:at + n].view_as(p.grad))
            at += n


def make(group) -> Local:
    """``group``: None or "auto" (data-parallel over the default group when torch.distributed is
    initialised with more than one rank), False (one process), or a process group / DeviceMesh."""
    import torch.distributed as dist
    if group is False:
        return Local()
    if group is None or group == "auto":
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return Local()
        return DataParallel(None)
    return DataParallel(group)
