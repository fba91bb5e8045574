"""Which latents each rank holds: contiguous ranges, and what can be sharded."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

ACTIVATIONS = ("topk", "jumprelu", "relu")


def even_ranges(d_sae: int, world: int) -> List[Tuple[int, int]]:
    """``world`` contiguous ranges covering [0, d_sae), sizes differing by at most one."""
    return [(r * d_sae // world, (r + 1) * d_sae // world) for r in range(world)]


def ranges_from_sizes(sizes: Optional[Sequence[int]], d_sae: int, world: int) -> List[Tuple[int, int]]:
    if sizes is None:
        if d_sae < world:
            raise ValueError(f"group: {world} ranks cannot share d_sae={d_sae} latents (each needs at least one)")
        return even_ranges(d_sae, world)
    sizes = list(sizes)
    if len(sizes) != world or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) \
            or sum(sizes) != d_sae:
        raise ValueError(f"sizes: expected {world} ints >= 1 (one per rank) summing to d_sae={d_sae}, got {sizes}")
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return list(zip(bounds[:-1], bounds[1:]))


def check_shardable(activation: str, normalize: str = "none") -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"sae: sharding supports activations {ACTIVATIONS}, got {activation!r} (groupmax's groups "
                         "would have to align with the shards)")
    if normalize != "none":
        raise ValueError(f"sae: sharding supports normalize='none', got {normalize!r}")
