"""The GEMM encode path: the device's vendor GEMM for the pre-activations, the package's native
epilogue for everything after.

A block of rows of ``u = x - b_dec`` times a chunk of latents of ``W_enc`` is multiplied by
``torch.matmul(..., out=)`` into one reused buffer (MKL or oneDNN on a CPU, Accelerate on macOS,
cuBLAS on CUDA), and the device's epilogue (CPU: ``_C.EncodeAccumulator``, csrc/epilogue.h) turns
the buffer into codes while it is still in cache: bias, activation, the screen against each row's
running k-th value, candidate buffers, the merge, threshold compaction. Extra memory is
O(block x chunk) plus the codes, never O(N x d_sae). The pre-activations are fp32 (or fp64) sums of
exact products: 16-bit weights are widened chunk by chunk (a 16-bit GEMM would round its output),
and where the CPU variant multiplies bf16 weights with u rounded to bf16 (avx512_bf16), u is
rounded here too, so the contract is the fused kernels'.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from .._dtypes import dtype_code
from . import native_args as na
from .contract import EncodeArgs

KINDS = {"topk": 0, "groupmax": 1, "threshold": 2}


@dataclass(frozen=True)
class Blocking:
    rows: int      # rows of u per GEMM
    latents: int   # latents per GEMM (W_enc columns)

    def fit(self, n: int, d_sae: int) -> "Blocking":
        return Blocking(max(1, min(self.rows, n)), max(1, min(self.latents, d_sae)))


# Candidates the choice measures (sized to the caches: a 1-4 MiB fp32 buffer the epilogue reads
# right after the GEMM wrote it).
BLOCKINGS = (Blocking(256, 2048), Blocking(256, 1024), Blocking(256, 4096))
DEFAULT = BLOCKINGS[0]


def encode(lib, kind: str, a: EncodeArgs, blocking: Blocking = DEFAULT):
    """The encode of ``a`` (topk / groupmax: (values, indices); threshold: (values, indices,
    counts)) through torch.matmul and ``lib``'s epilogue."""
    x, W = a.x, a.W_enc
    T = x.dtype
    n, d_sae = x.shape[0], W.shape[1]
    u = x - a.b_dec if a.b_dec is not None else x
    if W.dtype == torch.bfloat16 and lib.bf16_inputs_rounded():
        # The variant's rule for bf16 weights (docs/design.md): u rounded to bf16, as its own
        # kernels and the steering kernel multiply it, so the two paths agree to summation order.
        u = u.to(torch.bfloat16).to(T)
    b = blocking.fit(n, d_sae)
    acc = lib.EncodeAccumulator(kind=KINDS[kind], n=n, k=a.k if kind != "threshold" else 0, d_sae=d_sae,
                                dtype=dtype_code(T), threshold=na.ptr(a.threshold),
                                compact_nonfinite=a.compact_nonfinite)
    buf = torch.empty(b.rows * b.latents, dtype=T, device=x.device)
    for l0 in range(0, d_sae, b.latents):              # chunks in latent order: each row sees them ascending
        l1 = min(d_sae, l0 + b.latents)
        chunk = W[:, l0:l1] if W.dtype == T else W[:, l0:l1].to(T)   # 16-bit weights widened, chunk by chunk
        for r0 in range(0, n, b.rows):
            r1 = min(n, r0 + b.rows)
            pre = buf[:(r1 - r0) * (l1 - l0)].view(r1 - r0, l1 - l0)
            torch.matmul(u[r0:r1], chunk, out=pre)
            acc.add(pre=na.mat(lib, pre), row0=r0, latent0=l0, b_enc=a.b_enc.data_ptr())
    return _finish(lib, kind, acc, n, a.k, T, x.device)


def _finish(lib, kind: str, acc, n: int, k: int, T: torch.dtype, device) -> Tuple[Tensor, ...]:
    if kind != "threshold":
        values = torch.empty(n, k, dtype=T, device=device)
        indices = torch.empty(n, k, dtype=torch.int64, device=device)
        acc.finish(values=values.data_ptr(), indices=indices.data_ptr())
        return values, indices
    result = acc.finish_threshold()
    width = result.max_count
    values = torch.empty(n, width, dtype=T, device=device)
    indices = torch.empty(n, width, dtype=torch.int64, device=device)
    counts = torch.empty(n, dtype=torch.int64, device=device)
    result.write(width, values.data_ptr(), indices.data_ptr(), counts.data_ptr())
    return values, indices, counts
