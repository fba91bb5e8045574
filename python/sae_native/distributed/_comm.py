"""The collectives the sharded SAE uses, with errors a user can act on.

Every collective goes through ``collective``: a failure (a rank that died, a timeout) becomes a
DistributedError that names the collective and what it carried, on every surviving rank. Before
the data moves, ``agree`` has the ranks compare what they are about to do (shapes, dtypes, k,
world sizes): ranks that disagree would otherwise block in a collective of mismatched sizes, or
mix garbage. ``agree`` raises the same error on every rank, listing each rank's value.

How long a rank waits for a peer that hangs (rather than dies) is the process group's timeout:
``torch.distributed.init_process_group(..., timeout=datetime.timedelta(seconds=...))``.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class DistributedError(RuntimeError):
    """A collective of the sharded SAE failed (a rank died, a timeout) or the ranks disagree."""


def resolve_group(group):
    """``group``: None (the default group), a ProcessGroup, or a DeviceMesh. A 1-D mesh is its
    own group; a 2-D mesh (data-parallel replicas x latent shards) shards over its dimension
    named "latent"."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sn.distributed: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group (or run under torchrun) first")
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:          # (torch without device meshes)
        DeviceMesh = ()
    if DeviceMesh and isinstance(group, DeviceMesh):
        if group.ndim == 1:
            return group.get_group()
        names = group.mesh_dim_names or ()
        if "latent" not in names:
            raise ValueError(f"group: a {group.ndim}-D DeviceMesh needs a dimension named 'latent' (the one the "
                             f"latents are sharded over), got dimension names {names}")
        return group.get_group("latent")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group: expected None, a ProcessGroup or a DeviceMesh, got {type(group).__name__}")
    return group if group is not None else dist.group.WORLD


def backend_device(group) -> torch.device:
    """Where the group's tensors must live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collective(name: str, what: str, group, fn: Callable[[], object]):
    """Runs ``fn`` (one collective); a failure names the collective, what it carried and this rank."""
    try:
        return fn()
    except DistributedError:
        raise
    except (RuntimeError, ValueError) as e:   # gloo / NCCL report dead peers and timeouts as these
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        raise DistributedError(f"sn.distributed: {name} of {what} failed on rank {rank} of {world} (a peer rank "
                               f"died, timed out or called a different collective): {e}") from e


def all_gather(t: Tensor, what: str, group) -> List[Tensor]:
    """Every rank's ``t`` (same shape and dtype on every rank), in rank order."""
    device = backend_device(group)
    src = t.to(device).contiguous()
    out = [torch.empty_like(src) for _ in range(dist.get_world_size(group))]
    collective("all_gather", what, group, lambda: dist.all_gather(out, src, group=group))
    return [o.to(t.device) for o in out]


def all_reduce(t: Tensor, what: str, group, op: str = "sum") -> Tensor:
    """Every rank's ``t`` reduced by ``op`` ("sum", "max" or "min")."""
    device = backend_device(group)
    buf = t.to(device).contiguous().clone()
    red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    collective("all_reduce", what, group, lambda: dist.all_reduce(buf, op=red, group=group))
    return buf.to(t.device)


def all_reduce_sum(t: Tensor, what: str, group) -> Tensor:
    """The sum of every rank's ``t``."""
    return all_reduce(t, what, group, "sum")


def agree(what: str, fields: Sequence[str], values: Sequence[int], group) -> None:
    """Checks that every rank passes the same int ``values`` (named ``fields``); otherwise raises
    the same ValueError on every rank, naming the fields that differ and each rank's values."""
    mine = torch.tensor([len(values), *values], dtype=torch.int64)
    everyone = torch.stack(all_gather(mine, f"the ranks' {what} settings", group))
    if bool((everyone == everyone[0]).all()):
        return
    if bool((everyone[:, 0] != everyone[0, 0]).any()):
        raise ValueError(f"sn.distributed: the ranks called {what} differently (different collectives in flight)")
    rows = everyone[:, 1:].tolist()
    differ = [i for i in range(len(fields)) if len({r[i] for r in rows}) > 1]
    detail = "; ".join(f"{fields[i]}: " + ", ".join(f"rank {r} {row[i]}" for r, row in enumerate(rows)) for i in differ)
    raise ValueError(f"sn.distributed: the ranks disagree on {what} ({detail}); every rank must pass the same")


def check_all(ok: bool, what: str, group, error: Optional[BaseException] = None) -> None:
    """Raises on every rank when any rank's ``ok`` is False (its own ``error`` where it has one):
    a failure on one rank (a full disk) must not leave the others waiting in the next collective."""
    flags = torch.stack(all_gather(torch.tensor([int(ok)], dtype=torch.int64), f"the ranks' {what} status", group))
    bad = [r for r, f in enumerate(flags[:, 0].tolist()) if not f]
    if not bad:
        return
    if error is not None:
        raise error
    raise DistributedError(f"sn.distributed: {what} failed on rank(s) {bad}")
