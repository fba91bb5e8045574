"""Latent-sharded SAEs on torch.distributed (gloo on CPUs, NCCL on GPUs).

    sae = sn.distributed.shard(sn.load(path))          # every rank: its slice of the latents
    codes = sae.encode(x)                               # global indices, the same on every rank
    sae.save("ckpt")                                    # each rank its shard, rank 0 the manifest
    sae = sn.distributed.load_shard("ckpt")             # any world size; sn.load("ckpt") on one process

See sharded.py for the algorithm and docs/api.md ("Distributed") for the surface.
"""
from ._comm import DistributedError
from .ranges import even_ranges
from .sharded import ShardedSAE, load_shard, shard

__all__ = ["shard", "load_shard", "ShardedSAE", "DistributedError", "even_ranges"]
