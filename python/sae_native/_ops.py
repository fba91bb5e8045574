"""The op registry: every native operation as a ``torch.library`` custom op, declared once here.

Each op has a schema (from the signature), a fake implementation (shapes only, so
``torch.compile`` and meta tensors work) and, where it is differentiable, its autograd formula.
Kernels are registered per device by ``sae_native.backends`` (``backends/cpu.py`` for the CPU);
a device without a backend gets a clear error from the default implementation below.

Conventions shared by all ops (the public API in ``functional.py`` establishes them):
activations ``x`` are 2-D ``[n, d_in]`` float32 (float64 for the float64 path) and contiguous;
weights are in SAELens orientation (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``) with any
strides, float32 / bfloat16 / float16 (or float64); biases and thresholds may be any float dtype
and are read in the activations' dtype. Codes are ``values [n, k]`` and int64 ``indices [n, k]``;
index -1 marks padding.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _steer_math
from ._known_valid import known_valid_fn

__all__ = [
    "encode_topk",
    "encode_groupmax",
    "encode_threshold",
    "decode",
    "steer_threshold",
    "steer_codes",
    "sparse_dot",
    "sparse_outer",
]


def _no_backend(op: str, *tensors: Optional[Tensor]):
    devices = sorted({str(t.device.type) for t in tensors if t is not None})
    hint = ""
    if "cuda" in devices:
        hint = (" This build of sae_native has no CUDA kernels (sae_native.build_info()"
                "['cuda_compiled'] is False); move the inputs to the CPU or install a CUDA build.")
    return NotImplementedError(f"sae_native::{op} has no kernel for device {', '.join(devices)}.{hint}")


# --------------------------------------------------------------------------------------------
# encode


@torch.library.custom_op("sae_native::encode_topk", mutates_args=())
def encode_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], k: int,
                packed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """TopK encode: relu of the k largest pre-activations of ``(x - b_dec) @ W_enc + b_enc`` per
    row, sorted by value descending (ties to the lower latent index). Returns (values, indices).

    ``packed`` is W_enc already in the layout the device's kernel streams
    (``backends.PackedEncoder``), or None to lay it out for this call."""
    raise _no_backend("encode_topk", x, W_enc)


@encode_topk.register_fake
def _(x, W_enc, b_enc, b_dec, k, packed):
    return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)


@torch.library.custom_op("sae_native::encode_groupmax", mutates_args=())
def encode_groupmax(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], k: int,
                    packed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """GroupMax encode (sparsify): the d_sae latents form k contiguous groups; each row keeps the
    largest relu(pre) of every group (ties to the lower index). Returns (values, indices) [n, k],
    sorted by value descending. ``packed`` as for encode_topk."""
    raise _no_backend("encode_groupmax", x, W_enc)


@encode_groupmax.register_fake
def _(x, W_enc, b_enc, b_dec, k, packed):
    return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)


@torch.library.custom_op("sae_native::encode_threshold", mutates_args=())
def encode_threshold(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor],
                     threshold: Optional[Tensor], packed: Optional[Tensor],
                     compact_nonfinite: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Threshold encode (JumpReLU; ReLU when threshold is None): the latents with
    ``relu(pre) * (pre > threshold)`` non-zero, per row, sorted by value descending, padded to the
    batch's largest count with value 0 and index -1. Returns (values, indices, counts).
    ``packed`` as for encode_topk. With ``compact_nonfinite`` a row whose active latents include a
    non-finite value keeps only the lowest such latent (one NaN token cannot widen every row's
    codes to d_sae); without it every active latent is kept, as the dense formula has it."""
    raise _no_backend("encode_threshold", x, W_enc)


@encode_threshold.register_fake
def _(x, W_enc, b_enc, b_dec, threshold, packed, compact_nonfinite=True):
    width = torch.library.get_ctx().new_dynamic_size()
    n = x.shape[0]
    return (x.new_empty(n, width), x.new_empty(n, width, dtype=torch.int64),
            x.new_empty(n, dtype=torch.int64))


def _encode_setup(ctx, inputs, output):
    x, W_enc, _b_enc, b_dec = inputs[:4]
    values, indices = output[0], output[1]
    ctx.save_for_backward(x, W_enc, b_dec, values, indices)
    ctx.has_b_dec = b_dec is not None
    ctx.b_enc_meta = (inputs[2].shape, inputs[2].dtype)


@known_valid_fn
def _encode_backward(ctx, g_values, *_unused):
    # values = relu(pre) at the selected latents; the selection itself is piecewise constant.
    x, W_enc, b_dec, values, indices = ctx.saved_tensors
    need = ctx.needs_input_grad
    g_pre = g_values * (values > 0).to(g_values.dtype)
    g_x = g_W_enc = g_b_enc = g_b_dec = None
    if need[0] or (ctx.has_b_dec and need[3]):
        # sum_j g_pre[r, j] * W_enc[:, idx[r, j]]: a decode against the rows of W_enc transposed,
        # made contiguous once (gathering strided columns would miss the cache on every element).
        rows = W_enc.t()
        g_u = decode(g_pre, indices, rows if rows.stride(1) == 1 else rows.contiguous(), None)
        g_x = g_u if need[0] else None
        g_b_dec = -g_u.sum(0).to(b_dec.dtype) if ctx.has_b_dec and need[3] else None
    if need[1]:
        # Accumulated as [d_sae, d_in] rows (contiguous writes), handed back as W_enc's transpose.
        u = x - b_dec.to(x.dtype) if ctx.has_b_dec else x
        g_W_enc = sparse_outer(g_pre, indices, u, W_enc.shape[1], False).t().to(W_enc.dtype)
    if need[2]:
        shape, dtype = ctx.b_enc_meta
        g_b_enc = g_pre.new_zeros(shape).index_add_(0, indices.clamp_min(0).flatten(), g_pre.flatten())
        g_b_enc = g_b_enc.to(dtype)
    return (g_x, g_W_enc, g_b_enc, g_b_dec) + (None,) * (len(ctx.needs_input_grad) - 4)


encode_topk.register_autograd(_encode_backward, setup_context=_encode_setup)
encode_groupmax.register_autograd(_encode_backward, setup_context=_encode_setup)
encode_threshold.register_autograd(_encode_backward, setup_context=_encode_setup)


# --------------------------------------------------------------------------------------------
# decode


@torch.library.custom_op("sae_native::decode", mutates_args=())
def decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor]) -> Tensor:
    """Sparse decode: ``out[r] = b_dec + sum_j values[r, j] * W_dec[indices[r, j]]``; padding
    (index -1) is skipped. ``W_dec`` is ``[d_sae, d_in]`` with any strides."""
    raise _no_backend("decode", values, W_dec)


@decode.register_fake
def _(values, indices, W_dec, b_dec):
    return values.new_empty(values.shape[0], W_dec.shape[1])


def _decode_setup(ctx, inputs, output):
    values, indices, W_dec, b_dec = inputs
    ctx.save_for_backward(values, indices, W_dec)
    ctx.b_dec_dtype = None if b_dec is None else b_dec.dtype


@known_valid_fn
def _decode_backward(ctx, g):
    values, indices, W_dec = ctx.saved_tensors
    need = ctx.needs_input_grad
    g_values = sparse_dot(g, indices, W_dec) if need[0] else None
    g_W_dec = sparse_outer(values, indices, g, W_dec.shape[0], False).to(W_dec.dtype) if need[2] else None
    g_b_dec = g.sum(0).to(ctx.b_dec_dtype) if ctx.b_dec_dtype is not None and need[3] else None
    return g_values, None, g_W_dec, g_b_dec


decode.register_autograd(_decode_backward, setup_context=_decode_setup)


# --------------------------------------------------------------------------------------------
# steering (clamped reconstruction); the clamp arithmetic is in _steer_math.py


@torch.library.custom_op("sae_native::steer_threshold", mutates_args=())
def steer_threshold(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Optional[Tensor],
                    threshold: Optional[Tensor], features: Tensor, targets: Tensor, mode: str,
                    only_active: bool) -> Tuple[Tensor, Tensor]:
    """Steering with the SAE error kept, for threshold SAEs (JumpReLU, or ReLU when threshold is
    None): ``y = x + sum_f delta_f W_dec[f]`` where ``z_f`` needs only column f of W_enc, so a row
    costs O(|C| * d_in). ``b_dec`` is the bias subtracted from x before encoding (None: none).
    Returns (y, z) with z ``[n, |C|]`` the features' unclamped activations."""
    raise _no_backend("steer_threshold", x, W_enc)


def _steer_outputs(x: Tensor, features: Tensor):
    return torch.empty_like(x), x.new_empty(x.shape[0], features.shape[0])


@steer_threshold.register_fake
def _(x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active):
    return _steer_outputs(x, features)


def _steer_threshold_setup(ctx, inputs, output):
    x, W_enc, b_enc, W_dec, b_dec, _thr, features, targets, mode, only_active = inputs
    ctx.save_for_backward(x, W_enc, W_dec, b_dec, features, targets, output[1])
    ctx.mode, ctx.only_active = mode, only_active
    ctx.b_enc_meta = (b_enc.shape, b_enc.dtype)


def _steer_threshold_backward(ctx, g_y, g_z):
    x, W_enc, W_dec, b_dec, features, targets, z = ctx.saved_tensors
    need = ctx.needs_input_grad
    T = x.dtype
    W_e = W_enc[:, features].to(T)          # [d_in, C]
    W_d = W_dec[features].to(T)             # [C, d_in]
    terms = _steer_math.clamp_terms(z, targets.to(T), ctx.mode, ctx.only_active)
    a = g_y @ W_d.t()                       # dL/d delta_f, [n, C]
    g_pre = (a * terms.d_dz + g_z) * (z > 0).to(T)
    g_u = g_pre @ W_e.t()
    g_x = g_y + g_u if need[0] else None
    g_W_enc = g_b_enc = g_W_dec = g_b_dec = g_targets = None
    if need[1]:
        u = x - b_dec.to(T) if b_dec is not None else x
        g_W_enc = torch.zeros_like(W_enc)
        g_W_enc[:, features] = (u.t() @ g_pre).to(W_enc.dtype)
    if need[2]:
        shape, dtype = ctx.b_enc_meta
        g_b_enc = torch.zeros(shape, dtype=dtype, device=x.device)
        g_b_enc[features] = g_pre.sum(0).to(dtype)
    if need[3]:
        g_W_dec = torch.zeros_like(W_dec)
        g_W_dec[features] = (terms.delta.t() @ g_y).to(W_dec.dtype)
    if b_dec is not None and need[4]:
        g_b_dec = -g_u.sum(0).to(b_dec.dtype)
    if need[7]:
        g_targets = (a * terms.d_dc).sum(0).to(targets.dtype)
    return g_x, g_W_enc, g_b_enc, g_W_dec, g_b_dec, None, None, g_targets, None, None


steer_threshold.register_autograd(_steer_threshold_backward, setup_context=_steer_threshold_setup)


@torch.library.custom_op("sae_native::steer_codes", mutates_args=())
def steer_codes(x: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor],
                features: Tensor, targets: Tensor, mode: str, only_active: bool,
                keep_error: bool) -> Tuple[Tensor, Tensor]:
    """Steering from codes (any SAE): ``z_f`` is the code's value for latent f (0 if absent).
    keep_error: ``y = x + sum_f delta_f W_dec[f]``; otherwise ``y = decode(codes) + sum_f delta_f
    W_dec[f]`` (b_dec added when given). Returns (y, z) with z ``[n, |C|]``."""
    raise _no_backend("steer_codes", x, W_dec)


@steer_codes.register_fake
def _(x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error):
    return _steer_outputs(x, features)


def _steer_codes_setup(ctx, inputs, output):
    x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error = inputs
    ctx.save_for_backward(values, indices, W_dec, features, targets, output[1])
    ctx.mode, ctx.only_active, ctx.keep_error = mode, only_active, keep_error
    ctx.b_dec_dtype = None if b_dec is None else b_dec.dtype


@known_valid_fn
def _steer_codes_backward(ctx, g_y, g_z):
    values, indices, W_dec, features, targets, z = ctx.saved_tensors
    need = ctx.needs_input_grad
    T = values.dtype
    W_d = W_dec[features].to(T)
    terms = _steer_math.clamp_terms(z, targets.to(T), ctx.mode, ctx.only_active)
    a = g_y @ W_d.t()
    g_zf = a * terms.d_dz + g_z                                   # [n, C]
    g_x = g_values = g_W_dec = g_b_dec = g_targets = None
    if need[0] and ctx.keep_error:
        g_x = g_y
    if need[1]:
        # z_f is the value at the position holding latent f (if any): route g_zf there.
        match = (indices.unsqueeze(-1) == features).to(T)        # [n, k, C]
        g_values = (match * g_zf.unsqueeze(1)).sum(-1)
        if not ctx.keep_error:
            g_values = g_values + sparse_dot(g_y, indices, W_dec)
    if need[3]:
        g_W_dec = torch.zeros(W_dec.shape, dtype=T, device=W_dec.device)
        if not ctx.keep_error:
            g_W_dec += sparse_outer(values, indices, g_y, W_dec.shape[0], False)
        g_W_dec[features] += terms.delta.t() @ g_y
        g_W_dec = g_W_dec.to(W_dec.dtype)
    if need[4] and ctx.b_dec_dtype is not None and not ctx.keep_error:
        g_b_dec = g_y.sum(0).to(ctx.b_dec_dtype)
    if need[6]:
        g_targets = (a * terms.d_dc).sum(0).to(targets.dtype)
    return g_x, g_values, None, g_W_dec, g_b_dec, None, g_targets, None, None, None


steer_codes.register_autograd(_steer_codes_backward, setup_context=_steer_codes_setup)


# --------------------------------------------------------------------------------------------
# sparse pieces of the backward passes (not differentiable themselves)


@torch.library.custom_op("sae_native::sparse_dot", mutates_args=())
def sparse_dot(g: Tensor, indices: Tensor, W: Tensor) -> Tensor:
    """``out[r, j] = <g[r], W[indices[r, j]]>`` (0 for padding); W is ``[rows, d]``, any strides."""
    raise _no_backend("sparse_dot", g, W)


@sparse_dot.register_fake
def _(g, indices, W):
    return g.new_empty(indices.shape)


@torch.library.custom_op("sae_native::sparse_outer", mutates_args=())
def sparse_outer(values: Tensor, indices: Tensor, g: Tensor, rows: int, transposed: bool) -> Tensor:
    """``out[indices[r, j]] += values[r, j] * g[r]`` into zeros ``[rows, d]`` (``[d, rows]`` when
    transposed): the weight gradient of a sparse product."""
    raise _no_backend("sparse_outer", values, g)


@sparse_outer.register_fake
def _(values, indices, g, rows, transposed):
    d = g.shape[1]
    return g.new_empty((d, rows) if transposed else (rows, d))
