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


class _SumForward(torch.autograd.Function):
    """all_reduce in the forward, the identity backward: a partial result (a rank's share of the
    reconstruction) summed into a value every rank then uses alike, so each rank's gradient of
    the sum is already the gradient of its part."""

    @staticmethod
    def forward(ctx, t: Tensor, shards: "LatentShards", what: str):
        return shards.sum(t, what)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None, None


class _SumBackward(torch.autograd.Function):
    """The identity forward, all_reduce of the gradient: a replicated input (b_dec) whose uses on
    each rank (its encoder slice) are parts of one sum."""

    @staticmethod
    def forward(ctx, t: Tensor, shards: "LatentShards"):
        ctx.shards = shards
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g: Tensor):
        return ctx.shards.sum(g.contiguous(), "b_dec's encoder gradient (training step)"), None


class LatentShards:
    """The ranks of ``group`` training one SAE whose latents are split into contiguous ranges
    (distributed.even_ranges); they see the same batch. Each holds the weights of its range and
    a replica of b_dec; the TopK selection is global (distributed.sharded.global_topk); the
    reconstruction is the sum of the ranks' partial decodes."""

    def __init__(self, group, d_sae: int):
        import torch.distributed as dist
        from ..distributed import _comm
        from ..distributed.ranges import even_ranges
        self._comm, self.group = _comm, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        if d_sae < self.world:
            raise ValueError(f"d_sae: {self.world} latent shards need at least one latent each, got d_sae={d_sae}")
        self.ranges = even_ranges(d_sae, self.world)
        self.start, self.stop = self.ranges[self.rank]

    def sum(self, t: Tensor, what: str) -> Tensor:
        return self._comm.all_reduce(t, what, self.group, "sum")

    def sum_forward(self, t: Tensor, what: str) -> Tensor:
        return _SumForward.apply(t, self, what)

    def sum_backward(self, t: Tensor) -> Tensor:
        return _SumBackward.apply(t, self)

    def chosen(self, x_in: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, indices: Tensor, k: int,
               what: str) -> Tensor:
        """Which of this rank's TopK candidates ``[N, c]`` are in the global top-k."""
        from ..distributed.sharded import global_topk
        _, selected = global_topk(x_in, W_enc, b_enc, values, indices, self.start, k, self.group, what)
        return ((indices + self.start).unsqueeze(-1) == selected.unsqueeze(1)).any(-1)


class Layout:
    """How the ranks split the work: ``dp`` over the data (Local for one replica), ``latent``
    over the latents (None: every rank holds all of them)."""

    def __init__(self, dp: Local, latent: "LatentShards | None" = None):
        self.dp, self.latent = dp, latent


def make(group, latent_shards: int = 1, d_sae: int = 1, device: str = "cpu") -> Layout:
    """``group``: None or "auto" (data-parallel over the default group when torch.distributed is
    initialised with more than one rank), False (one process), or a process group / DeviceMesh.
    ``latent_shards`` > 1 arranges the job's ranks as a mesh of world / latent_shards data
    replicas x latent_shards shards of the latents (it needs torch.distributed)."""
    import torch.distributed as dist
    if isinstance(latent_shards, bool) or not isinstance(latent_shards, int) or latent_shards < 1:
        raise ValueError(f"latent_shards: expected an int >= 1, got {latent_shards!r}")
    if latent_shards > 1:
        if group is not None and group != "auto":
            raise ValueError("latent_shards: the mesh is built over the whole job (torch.distributed's default "
                             "group); leave group unset")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("latent_shards: sharding the latents needs torch.distributed; run under torchrun "
                               "(or sae-native train --nproc) or call init_process_group first")
        world = dist.get_world_size()
        if world % latent_shards:
            raise ValueError(f"latent_shards: the {world} ranks cannot form replicas of {latent_shards} shards "
                             f"({world} does not divide by {latent_shards})")
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(torch.device(device).type, (world // latent_shards, latent_shards),
                                mesh_dim_names=("data", "latent"))
        dp = DataParallel(mesh.get_group("data")) if world > latent_shards else Local()
        return Layout(dp, LatentShards(mesh.get_group("latent"), d_sae))
    if group is False:
        return Layout(Local())
    if group is None or group == "auto":
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return Layout(Local())
        return Layout(DataParallel(None))
    return Layout(DataParallel(group))
