"""The launch sequences of the CUDA ops: scratch buffers, kernel calls, read-backs, on arguments the
op contract has checked (backends/contract.py).

Nothing here names a device or imports the kernel module: a ``Runtime`` says which module runs the
kernels, on what stream and for what device. ``ops.py`` passes ``sae_native._cuda`` and torch's
current stream; the tests also pass the CPU emulator's build of the same kernel sources
(tests/cuda_emu) with CPU tensors, so every line below runs on a machine without a GPU too.

Two encode paths (backends/encode_paths.py's setting): the fused kernels (``own``: WMMA / SIMT
tiles filtered in shared memory) and, the default until a GPU measurement says otherwise, cuBLAS
(``torch.mm`` with fp32 output) into a bounded buffer of pre-activations, then the same epilogues
reading that buffer (``gemm``). fp32 weights stay on the fused kernels while torch allows TF32
matmuls (cuBLAS would round the operands to TF32).

What differs from the CPU backend:
- With 16-bit weights, ``u = x - b_dec`` is rounded to the weights' dtype and multiplied on tensor
  cores with fp32 accumulation (as torch's own bf16 matmul does); fp32 weights use fp32 FMAs.
- GroupMax, TopK with k beyond what the fused kernel's buffers hold on this device, and float64
  encode through torch (``default.py``): same contract, a bounded block of rows at a time.
- Synchronisation: the threshold encode reads its codes' width back (data-dependent, like
  ``torch.nonzero``); the gathers and steering read back the kernels' count of out-of-range indices
  and clamp features only when the op's ``check`` asks (and never inside a CUDA graph capture).
  TopK encode never synchronises.
- sparse_outer adds with atomics: weight gradients are not bitwise reproducible run to run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..._dtypes import dtype_code
from .. import default, encode_paths
from .. import native_args as na
from ..contract import (DecodeArgs, EncodeArgs, SparseDotArgs, SparseOuterArgs, SteerCodesArgs, SteerThresholdArgs,
                        fail, features_reported, indices_reported)
from . import candidate_keys, plan as launch_plan

_TENSOR_CORE = (torch.bfloat16, torch.float16)
_FUSED_WEIGHTS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Runtime:
    lib: Any            # the kernel module: sae_native._cuda, or the emulator's build of it
    stream: int         # cudaStream_t as an integer (0: the legacy default stream)
    device: Callable[[int], launch_plan.Device]  # the device the encode is planned for, by weight dtype code
    readback: bool      # reading back the kernels' reports is allowed (not inside a graph capture)
    poison: bool = False  # fill every buffer the kernels write with junk first (tests: unwritten shows)

    def empty(self, *shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A buffer for the kernels to fill: uninitialised, or with ``poison`` NaN / a large key."""
        t = torch.empty(*shape, dtype=dtype, device=device)
        if self.poison:
            t.fill_(float("nan") if dtype.is_floating_point else 0x5A5A5A5A5A5A5A5A)
        return t


class _Report:
    """Two counters a kernel fills with what it skipped (how many, one example), read back only when
    the op's ``check`` asks for it."""

    def __init__(self, rt: Runtime, device: torch.device, wanted: bool):
        self.t = torch.zeros(2, dtype=torch.int64, device=device) if wanted and rt.readback else None

    @property
    def ptr(self) -> int:
        return na.ptr(self.t)

    def raise_if_any(self, op: str, rows: int, what: str = "indices") -> None:
        if self.t is not None:
            count, example = self.t.tolist()  # synchronises
            (features_reported if what == "features" else indices_reported)(op, count, example, rows)


def _encoder_input(x: Tensor, b_dec: Optional[Tensor], W: Tensor) -> Tensor:
    """u = x - b_dec, in the weights' dtype when they are 16-bit (the tensor cores' operand)."""
    u = x - b_dec if b_dec is not None else x
    return u.to(W.dtype).contiguous() if W.dtype in _TENSOR_CORE else u.contiguous()


def _torch_encode(a: EncodeArgs, fn):
    """An encode through torch, with u rounded as the tensor-core path rounds it."""
    return fn(a, _encoder_input(a.x, a.b_dec, a.W_enc).to(a.x.dtype))


def _weights(op: str, a: EncodeArgs) -> Tensor:
    """W_enc row-major: the packed copy (pack_encoder), or W_enc itself (made contiguous if need be)
    when nothing was packed or the packing was empty (W_enc row-major already)."""
    if a.packed is None or a.packed.numel() == 0:
        return a.W_enc.contiguous()
    if a.packed.shape != a.W_enc.shape:
        raise fail(op, f"packed must be pack_encoder(W_enc) ({list(a.W_enc.shape)}), got {list(a.packed.shape)}")
    return a.packed


def _fused(a: EncodeArgs) -> bool:
    return a.x.dtype == torch.float32 and a.W_enc.dtype in _FUSED_WEIGHTS and a.W_enc.shape[1] < 2 ** 31


def _vec_ok(u: Tensor, W: Tensor) -> bool:
    d_in, d_sae = W.shape
    return W.dtype in _TENSOR_CORE and d_in % 8 == 0 and d_sae % 8 == 0 and \
        u.data_ptr() % 16 == 0 and W.data_ptr() % 16 == 0


def _tf32_allowed() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


def use_gemm(a: EncodeArgs) -> bool:
    """The cuBLAS path for this encode: the setting is not "own", and cuBLAS would keep the contract
    (fp32 products: no TF32 for fp32 weights)."""
    if encode_paths.setting() == "own" or not _fused(a):
        return False
    return a.W_enc.dtype != torch.float32 or a.x.device.type != "cuda" or not _tf32_allowed()


def _gemm(u: Tensor, W: Tensor, out: Tensor) -> None:
    """out = u @ W, float32, exact products: cuBLAS with fp32 output for 16-bit operands on a GPU;
    elsewhere (the emulator's CPU tensors) the same products widened to fp32."""
    if u.device.type == "cuda" and W.dtype in _TENSOR_CORE:
        torch.mm(u, W, out_dtype=torch.float32, out=out)
    else:
        torch.mm(u.float(), W.float(), out=out)


def _gemm_blocks(rt: Runtime, a: EncodeArgs, op: str):
    """(u, W, rows per GEMM, the pre-activation buffer) of the cuBLAS path."""
    W = _weights(op, a)
    u = _encoder_input(a.x, a.b_dec, W)
    rows = launch_plan.gemm_rows(u.shape[0], W.shape[1])
    return u, W, rows, rt.empty(rows, W.shape[1], dtype=torch.float32, device=u.device)


def _encode_topk_gemm(rt: Runtime, a: EncodeArgs):
    n, d_sae = a.x.shape[0], a.W_enc.shape[1]
    plan = launch_plan.topk_plan(launch_plan.gemm_rows(n, d_sae), d_sae, a.k, rt.device(launch_plan.EPILOGUE))
    if plan is None:
        return _torch_encode(a, default.encode_topk)
    u, W, rows, pre = _gemm_blocks(rt, a, "encode_topk")
    cand = rt.empty(n, plan.candidates, dtype=torch.int64, device=u.device)   # uint64 keys
    for r0 in range(0, n, rows):
        block = pre[:min(rows, n - r0)]
        _gemm(u[r0:r0 + block.shape[0]], W, block)
        rt.lib.epilogue_topk(pre=na.mat(rt.lib, block), b_enc=a.b_enc.data_ptr(), k=a.k, cap=plan.cap,
                             chunk_latents=plan.grid.chunk_latents, chunks=plan.grid.chunks,
                             cand=cand[r0].data_ptr(), stream=rt.stream)
    return _sorted_topk(rt, a, cand, plan)


def _sorted_topk(rt: Runtime, a: EncodeArgs, cand: Tensor, plan):
    n = a.x.shape[0]
    values = rt.empty(n, a.k, dtype=a.x.dtype, device=cand.device)
    indices = rt.empty(n, a.k, dtype=torch.int64, device=cand.device)
    rt.lib.sort_rows(n=n, keys=cand.data_ptr(), row_stride=plan.candidates, m=plan.candidates, counts=0,
                     size=plan.sort_size, width=a.k, relu=True, values=values.data_ptr(),
                     indices=indices.data_ptr(), stream=rt.stream)
    return values, indices


def encode_topk(rt: Runtime, a: EncodeArgs):
    n, d_sae = a.x.shape[0], a.W_enc.shape[1]
    if n > 0 and use_gemm(a):
        return _encode_topk_gemm(rt, a)
    plan = launch_plan.topk_plan(n, d_sae, a.k, rt.device(dtype_code(a.W_enc.dtype))) if _fused(a) else None
    if plan is None or n == 0:
        return _torch_encode(a, default.encode_topk)
    W = _weights("encode_topk", a)
    u = _encoder_input(a.x, a.b_dec, W)
    cand = rt.empty(n, plan.candidates, dtype=torch.int64, device=u.device)   # uint64 keys
    rt.lib.encode_topk(u=na.mat(rt.lib, u), w=na.mat(rt.lib, W), b_enc=a.b_enc.data_ptr(), k=a.k, cap=plan.cap,
                       chunk_latents=plan.grid.chunk_latents, chunks=plan.grid.chunks, vec=_vec_ok(u, W),
                       cand=cand.data_ptr(), stream=rt.stream)
    return _sorted_topk(rt, a, cand, plan)


def encode_groupmax(rt: Runtime, a: EncodeArgs):
    return _torch_encode(a, default.encode_groupmax)


def encode_threshold(rt: Runtime, a: EncodeArgs):
    n, d_sae = a.x.shape[0], a.W_enc.shape[1]
    gemm = n > 0 and use_gemm(a)
    code = launch_plan.EPILOGUE if gemm else dtype_code(a.W_enc.dtype)
    rows = launch_plan.gemm_rows(n, d_sae) if gemm else n
    grid = launch_plan.threshold_grid(rows, d_sae, rt.device(code)) if _fused(a) else None
    if grid is None or n == 0:
        return _torch_encode(a, default.encode_threshold)
    if gemm:
        u, W, rows, pre = _gemm_blocks(rt, a, "encode_threshold")
    else:
        W = _weights("encode_threshold", a)
        u = _encoder_input(a.x, a.b_dec, W)
    cap = launch_plan.threshold_cap(d_sae)
    while True:
        counts = torch.zeros(n, dtype=torch.int64, device=u.device)
        hits = rt.empty(n, cap, dtype=torch.int64, device=u.device)   # uint64 keys
        # uint64 per row, all ones: no non-finite latent yet (the kernel keeps the lowest one)
        nonfinite = torch.full((n,), -1, dtype=torch.int64, device=u.device) if a.compact_nonfinite else None
        if gemm:
            for r0 in range(0, n, rows):
                block = pre[:min(rows, n - r0)]
                _gemm(u[r0:r0 + block.shape[0]], W, block)
                rt.lib.epilogue_threshold(pre=na.mat(rt.lib, block), b_enc=a.b_enc.data_ptr(),
                                          threshold=na.ptr(a.threshold), cap=cap, chunk_latents=grid.chunk_latents,
                                          chunks=grid.chunks, counts=counts[r0].data_ptr(), hits=hits[r0].data_ptr(),
                                          nonfinite=0 if nonfinite is None else nonfinite[r0].data_ptr(),
                                          stream=rt.stream)
        else:
            rt.lib.encode_threshold(u=na.mat(rt.lib, u), w=na.mat(rt.lib, W), b_enc=a.b_enc.data_ptr(),
                                    threshold=na.ptr(a.threshold), cap=cap, chunk_latents=grid.chunk_latents,
                                    chunks=grid.chunks, vec=_vec_ok(u, W), counts=counts.data_ptr(),
                                    hits=hits.data_ptr(), nonfinite=na.ptr(nonfinite), stream=rt.stream)
        width = int(counts.max())  # synchronises: the codes' width is the batch's largest count
        if width <= cap:
            break
        cap = width  # a row had more hits than the buffer held: once more, wide enough for all
    size = launch_plan.next_pow2(width)
    if size > launch_plan.SORT_MAX:
        values, indices = candidate_keys.sort_keys(hits, counts, width)
        return values.to(a.x.dtype), indices, counts
    values = rt.empty(n, width, dtype=a.x.dtype, device=u.device)
    indices = rt.empty(n, width, dtype=torch.int64, device=u.device)
    rt.lib.sort_rows(n=n, keys=hits.data_ptr(), row_stride=cap, m=width, counts=counts.data_ptr(), size=size,
                     width=width, relu=False, values=values.data_ptr(), indices=indices.data_ptr(), stream=rt.stream)
    return values, indices, counts


def decode(rt: Runtime, a: DecodeArgs) -> Tensor:
    out = rt.empty(a.values.shape[0], a.W_dec.shape[1], dtype=a.values.dtype, device=a.values.device)
    report = _Report(rt, a.values.device, a.check)
    rt.lib.decode(values=na.mat(rt.lib, a.values), indices=na.mat(rt.lib, a.indices), w=na.mat(rt.lib, a.W_dec),
                  bias=na.ptr(a.b_dec), out=out.data_ptr(), report=report.ptr, stream=rt.stream)
    report.raise_if_any("decode", a.W_dec.shape[0])
    return out


def sparse_dot(rt: Runtime, a: SparseDotArgs) -> Tensor:
    out = rt.empty(*a.indices.shape, dtype=a.g.dtype, device=a.g.device)
    report = _Report(rt, a.g.device, a.check)
    rt.lib.sparse_dot(g=na.mat(rt.lib, a.g), indices=na.mat(rt.lib, a.indices), w=na.mat(rt.lib, a.W),
                      out=out.data_ptr(), report=report.ptr, stream=rt.stream)
    report.raise_if_any("sparse_dot", a.W.shape[0])
    return out


def sparse_outer(rt: Runtime, a: SparseOuterArgs) -> Tensor:
    """sparse_outer, and sparse_outer_add_ (a.out given: added to it in place)."""
    d = a.g.shape[1]
    out = a.out if a.out is not None else \
        torch.zeros((d, a.rows) if a.transposed else (a.rows, d), dtype=a.values.dtype, device=a.g.device)
    report = _Report(rt, a.g.device, a.check)
    rt.lib.sparse_outer(values=na.mat(rt.lib, a.values), indices=na.mat(rt.lib, a.indices), g=na.mat(rt.lib, a.g),
                        out=na.mat(rt.lib, out.t() if a.transposed else out), report=report.ptr, stream=rt.stream)
    report.raise_if_any("sparse_outer" if a.out is None else "sparse_outer_add_", a.rows)
    return out


sparse_outer_add_ = sparse_outer


def _steer_buffers(rt: Runtime, x: Tensor, count: int):
    n, d = x.shape
    y = rt.empty(n, d, dtype=x.dtype, device=x.device)
    z = rt.empty(n, count, dtype=x.dtype, device=x.device)
    scratch = rt.empty(max(1, rt.lib.steer_scratch_elements(count, d)), dtype=x.dtype, device=x.device)
    return y, z, scratch


def steer_threshold(rt: Runtime, a: SteerThresholdArgs):
    y, z, scratch = _steer_buffers(rt, a.x, a.clamp.features.shape[0])
    features = _Report(rt, a.x.device, a.check)
    rt.lib.steer_threshold(x=na.mat(rt.lib, a.x), w_enc=na.mat(rt.lib, a.W_enc), b_enc=a.b_enc.data_ptr(),
                           threshold=na.ptr(a.threshold), b_dec=na.ptr(a.b_dec), w_dec=na.mat(rt.lib, a.W_dec),
                           clamp=na.clamp(rt.lib, a.clamp), y=y.data_ptr(), z=z.data_ptr(),
                           scratch=scratch.data_ptr(), feature_report=features.ptr, stream=rt.stream)
    features.raise_if_any("steer_threshold", a.W_dec.shape[0], "features")
    return y, z


def steer_codes(rt: Runtime, a: SteerCodesArgs):
    y, z, scratch = _steer_buffers(rt, a.x, a.clamp.features.shape[0])
    report = _Report(rt, a.x.device, a.check)
    features = _Report(rt, a.x.device, a.check)
    rt.lib.steer_codes(x=na.mat(rt.lib, a.x), values=na.mat(rt.lib, a.values), indices=na.mat(rt.lib, a.indices),
                       w_dec=na.mat(rt.lib, a.W_dec), b_dec=na.ptr(a.b_dec), keep_error=a.keep_error,
                       clamp=na.clamp(rt.lib, a.clamp), y=y.data_ptr(), z=z.data_ptr(), scratch=scratch.data_ptr(),
                       report=report.ptr, feature_report=features.ptr, stream=rt.stream)
    d_sae = a.W_dec.shape[0]
    report.raise_if_any("steer_codes", d_sae)
    features.raise_if_any("steer_codes", d_sae, "features")
    return y, z
