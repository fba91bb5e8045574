"""How the fused CUDA encode is launched for a problem size: the tile grid, chunks of latents per
CTA column, candidate buffer and merge sizes. Pure Python, so the CPU tests check every rule.

The encode grid is (ceil(n / TILE_M) row blocks) x (chunks); each CTA walks its chunk of latents
TILE_N at a time. More chunks fill more SMs when n is small (token-by-token generation) but give
the TopK merge more candidates (chunks * k keys per row, sorted by one block in shared memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Must match cuda/launch.h (tests/test_cuda_host.py checks against the built module).
TILE_M, TILE_N = 64, 128
CAPS = (64, 128, 256)      # candidate buffer per row; a buffer needs room for k plus one warp's 32 hits
SORT_MAX = 8192            # keys one block sorts per row
MAX_FUSED_K = CAPS[-1] - 32
CTAS_PER_SM = 4            # the grid to aim for: a few CTAs per SM hide the epilogue and the tail


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


@dataclass(frozen=True)
class EncodeGrid:
    chunks: int            # CTA columns
    chunk_latents: int     # latents per column, a multiple of TILE_N


def _grid(n: int, d_sae: int, sm_count: int, max_chunks: int) -> EncodeGrid:
    tiles = -(-d_sae // TILE_N)
    row_blocks = max(1, -(-n // TILE_M))
    want = -(-CTAS_PER_SM * max(sm_count, 1) // row_blocks)
    chunks = max(1, min(tiles, max_chunks, want, 65535))
    per_chunk = -(-tiles // chunks)
    chunks = -(-tiles // per_chunk)  # no empty chunk
    return EncodeGrid(chunks, per_chunk * TILE_N)


@dataclass(frozen=True)
class TopkPlan:
    grid: EncodeGrid
    k: int
    cap: int               # per-row candidate buffer (cuda/encode.cu)

    @property
    def candidates(self) -> int:
        """Keys per row the chunks hand to the merge: each chunk's top k."""
        return self.grid.chunks * self.k

    @property
    def sort_size(self) -> int:
        """The merge's shared-memory sort: a power of two >= candidates, <= SORT_MAX."""
        return next_pow2(self.candidates)


def topk_plan(n: int, d_sae: int, k: int, sm_count: int) -> Optional[TopkPlan]:
    """The fused TopK launch, or None when k is too large for the fused kernel's buffers."""
    if not 1 <= k <= min(d_sae, MAX_FUSED_K):
        return None
    cap = min(c for c in CAPS if c >= k + 32)
    grid = _grid(n, d_sae, sm_count, max(1, SORT_MAX // k))
    return TopkPlan(grid, k, cap)


def threshold_grid(n: int, d_sae: int, sm_count: int) -> EncodeGrid:
    return _grid(n, d_sae, sm_count, 65535)


def threshold_cap(d_sae: int) -> int:
    """First guess at the hits a row keeps (rerun wider when a row has more): JumpReLU SAEs run at
    L0 of tens to a few hundred."""
    return max(1, min(d_sae, 256))

