"""Sharded checkpoints: every rank writes its slice, rank 0 the manifest (formats/sharded.py).

Writes are atomic (a temporary file renamed into place) and ordered: the manifest is written only
after every rank reported its shard written, and replaces the previous one in one rename, so a
reader never sees a manifest whose shards are missing or half written. Shard files of an earlier
save with another world size are removed after the new manifest is in place.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..formats import sharded as fmt
from ..formats._common import FormatError
from . import _comm
from .ranges import check_shardable, even_ranges


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(sae, path, *, overwrite: bool = False) -> None:
    """Writes a ShardedSAE's checkpoint (collective over its group; see the module docstring)."""
    from safetensors.torch import save_file
    path = os.fspath(path)
    group, rank, world = sae._group, sae.rank, sae.world_size
    error: Optional[BaseException] = None
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise FileExistsError(f"path: {path!r} exists and is not a folder")
        if os.path.isfile(os.path.join(path, fmt.MANIFEST)) and not overwrite:
            raise FileExistsError(f"path: {path!r} already holds a sharded SAE; pass overwrite=True to replace it")
    except OSError as e:
        error = e
    _comm.check_all(error is None, "the checkpoint's checks (save)", group, error)
    try:
        os.makedirs(path, exist_ok=True)
        local = sae.local
        tensors = {"W_enc": local.W_enc, "b_enc": local.b_enc, "W_dec": local.W_dec, "b_dec": sae.b_dec}
        if local.threshold is not None:
            tensors["threshold"] = local.threshold
        tensors = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
        _atomic_write(os.path.join(path, fmt.shard_file(rank, world)), lambda tmp: save_file(tensors, tmp))
    except OSError as e:
        error = e
    _comm.check_all(error is None, f"writing the shards to {path!r} (save)", group, error)
    if rank == 0:
        try:
            manifest = {"format": fmt.FORMAT_NAME, "version": 1, "d_in": sae.d_in, "d_sae": sae.d_sae,
                        "activation": sae.activation, "k": sae.k, "apply_b_dec_to_input": sae.apply_b_dec_to_input,
                        "dtype": str(sae.dtype).replace("torch.", ""), "world_size": world,
                        "shards": [{"file": fmt.shard_file(r, world), "start": a, "stop": b}
                                   for r, (a, b) in enumerate(sae.ranges)],
                        "metadata": _jsonable(sae.metadata)}

            def write(tmp):
                with open(tmp, "w") as f:
                    json.dump(manifest, f, indent=1)
            _atomic_write(os.path.join(path, fmt.MANIFEST), write)
            keep = {s["file"] for s in manifest["shards"]}
            for name in os.listdir(path):          # an earlier save's shards of another world size
                if name.startswith("shard-") and name.endswith(".safetensors") and name not in keep:
                    os.remove(os.path.join(path, name))
        except OSError as e:
            error = e
    # (every rank returns only once the manifest is in place, or raises rank 0's error)
    _comm.check_all(error is None, f"writing the manifest of {path!r} (save)", group, error)


def _jsonable(meta: dict) -> dict:
    out = {}
    for key, value in meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue                               # tensors and other non-JSON values stay behind
        out[key] = value
    return out


def read_shard(path, group) -> Tuple[dict, list, Dict[str, Optional[Tensor]]]:
    """(manifest, ranges, this rank's weights) of the sharded checkpoint at ``path`` for the ranks
    of ``group`` (collective: a failure on any rank is an error on every rank)."""
    world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    path = os.fspath(path)
    error, manifest, ok = None, None, True
    try:
        if not fmt.detect(path):
            raise FormatError(f"{path}: not a sharded SAE checkpoint (no {fmt.MANIFEST}); sn.distributed.shard "
                              f"splits an SAE loaded with sn.load")
        manifest = fmt.read_manifest(path)
        check_shardable(manifest["activation"])
    except (OSError, FormatError, ValueError) as e:
        error, ok = e, False
    _comm.check_all(ok, f"reading the manifest of {path!r} (load_shard)", group, error)
    d_sae = manifest["d_sae"]
    _comm.agree("load_shard", ("world size", "d_in", "d_sae", "checkpoint world size"),
                (world, manifest["d_in"], d_sae, len(manifest["shards"])), group)
    if d_sae < world:
        raise ValueError(f"group: {world} ranks cannot share d_sae={d_sae} latents (each needs at least one)")
    ranges = even_ranges(d_sae, world)
    start, stop = ranges[rank]
    weights: Dict[str, Optional[Tensor]] = {}
    try:
        weights = fmt.read_range(path, manifest, start, stop)
    except (OSError, FormatError) as e:
        error, ok = e, False
    _comm.check_all(ok, f"reading the shards of {path!r} (load_shard)", group, error)
    return manifest, ranges, weights
