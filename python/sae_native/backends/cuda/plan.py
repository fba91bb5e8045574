"""How the fused CUDA encode is launched for a problem size on a given device: the tile grid, chunks
of latents per CTA column, candidate buffer and merge sizes. Pure Python on a ``Device`` (the
device's multiprocessors and how many CTAs of each kernel fit on one, measured by the CUDA
runtime's occupancy calculator), so the CPU tests check every rule for any device.

The encode grid is (ceil(n / TILE_M) row blocks) x (chunks); each CTA walks its chunk of latents
TILE_N at a time. More chunks fill more SMs when n is small (token-by-token generation) but give
the TopK merge more candidates (chunks * k keys per row, sorted by one block in shared memory).
The grid is sized to whole waves: a grid of one CTA more than the device holds at once runs a
second, nearly empty wave at the cost of a full one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

# Must match cuda/launch.h (tests/test_cuda_host.py checks against the built module).
TILE_M, TILE_N = 64, 128
CAPS = (64, 128, 256)      # candidate buffer per row; a buffer needs room for k plus one warp's 32 hits
SORT_MAX = 8192            # keys one block sorts per row
MAX_FUSED_K = CAPS[-1] - 32


# The pseudo weight dtype code of the cuBLAS path's epilogue kernels (cuda/launch.h kEpilogueDtype):
# query_device(lib, EPILOGUE) gives their occupancy.
EPILOGUE = -1
# Pre-activations the cuBLAS path holds at once (floats): blocks of rows x all latents, 256 MiB.
GEMM_BUFFER_FLOATS = 2 ** 26


def gemm_rows(n: int, d_sae: int) -> int:
    """Rows per GEMM of the cuBLAS path: as many as fit GEMM_BUFFER_FLOATS, whole CTA row blocks."""
    rows = max(1, min(n, GEMM_BUFFER_FLOATS // max(d_sae, 1)))
    return rows if rows < TILE_M or rows == n else rows // TILE_M * TILE_M


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


@dataclass(frozen=True)
class Device:
    """What the planner needs of a device, for one weight dtype of the fused encode."""
    sm_count: int
    topk_blocks: Dict[int, int] = field(default_factory=dict)  # cap -> resident CTAs per SM (0: does not fit)
    threshold_blocks: int = 1


def query_device(lib, w_dtype_code: int) -> Device:
    """The current device as the kernel module's runtime sees it (the GPU, or the emulator's)."""
    limits = lib.device_limits()
    return Device(limits["sm_count"], {cap: int(lib.topk_blocks_per_sm(w_dtype_code, cap)) for cap in CAPS},
                  int(lib.threshold_blocks_per_sm(w_dtype_code)))


@dataclass(frozen=True)
class EncodeGrid:
    chunks: int            # CTA columns
    chunk_latents: int     # latents per column, a multiple of TILE_N


def _grid(n: int, d_sae: int, slots: int, max_chunks: int) -> EncodeGrid:
    """At most one wave's worth of CTAs (``slots``: SMs x resident CTAs per SM) when the rows alone
    do not fill it; the rows' own waves otherwise."""
    tiles = -(-d_sae // TILE_N)
    row_blocks = max(1, -(-n // TILE_M))
    want = max(1, slots // row_blocks)
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


def topk_plan(n: int, d_sae: int, k: int, device: Device) -> Optional[TopkPlan]:
    """The fused TopK launch, or None when k is too large for the buffers that fit this device
    (the caller then encodes through torch, a block of rows at a time)."""
    if not 1 <= k <= min(d_sae, MAX_FUSED_K):
        return None
    fitting = [c for c in CAPS if c >= k + 32 and device.topk_blocks.get(c, 0) > 0]
    if not fitting:
        return None
    cap = fitting[0]
    slots = device.sm_count * device.topk_blocks[cap]
    return TopkPlan(_grid(n, d_sae, slots, max(1, SORT_MAX // k)), k, cap)


def threshold_grid(n: int, d_sae: int, device: Device) -> Optional[EncodeGrid]:
    """The fused threshold launch, or None when its CTA does not fit this device."""
    if device.threshold_blocks < 1:
        return None
    return _grid(n, d_sae, device.sm_count * device.threshold_blocks, 65535)


def threshold_cap(d_sae: int) -> int:
    """First guess at the hits a row keeps (rerun wider when a row has more): JumpReLU SAEs run at
    L0 of tens to a few hundred."""
    return max(1, min(d_sae, 256))
