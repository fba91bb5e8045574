"""The op registry: every native operation as a ``torch.library`` custom op, declared once here.

Each op has a schema (from the signature), a fake implementation (shapes only, so
``torch.compile`` and meta tensors work) and, where it is differentiable, its autograd formula.
Its body is the same for every device: the op's contract check (``backends/contract.py``), then
the kernel ``backends/registry.py`` has for the inputs' device type (the CPU's, CUDA's, or the
pure-torch default on any other device).

``check``: the ops that read codes or clamps by index take it. True checks the values too (index
and feature ranges, distinct features, finite targets), which on a GPU reads them back, a
synchronisation; the public API passes True for what a user hands in and False for what the
package made itself (an encode's codes, a clamp it parsed, a backward pass). Either way a kernel
never reads an index or feature out of range: it skips it (and the CPU raises, reading its count
being free). The argument is part of the call, so eager and compiled code behave the same.

Conventions shared by all ops (the public API in ``functional.py`` establishes them):
activations ``x`` are 2-D ``[n, d_in]`` float32 (float64 for the float64 path);
weights are in SAELens orientation (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``) with any
strides, float32 / bfloat16 / float16 (or float64); biases and thresholds may be any float dtype
and are read in the activations' dtype. Codes are ``values [n, k]`` and int64 ``indices [n, k]``;
index -1 marks padding.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import reference
from .backends import contract, registry

__all__ = ["pack_encoder", "encode_topk", "encode_groupmax", "encode_threshold", "decode", "steer_threshold",
           "steer_codes", "sparse_dot", "sparse_outer", "sparse_outer_add_"]


def _run(op: str, *args):
    """The contract check, then the device's kernel."""
    checked = contract.CHECKS[op](*args)
    return registry.kernel(op, contract.device_of(checked).type)(checked)


# --------------------------------------------------------------------------------------------
# packing


@torch.library.custom_op("sae_native::pack_encoder", mutates_args=())
def pack_encoder(W_enc: Tensor) -> Tensor:
    """W_enc laid out as its device's encode kernel streams it, made once per SAE and passed to the
    encode ops as ``packed``: on the CPU panels of latents; on CUDA a row-major copy of a strided
    W_enc, or an empty tensor when W_enc is row-major already (the kernels then read W_enc itself:
    an op's output may not alias its input, and a copy would double W_enc's memory)."""
    return _run("pack_encoder", W_enc)


@pack_encoder.register_fake
def _(W_enc):
    return W_enc.new_empty(torch.library.get_ctx().new_dynamic_size())


# --------------------------------------------------------------------------------------------
# encode


@torch.library.custom_op("sae_native::encode_topk", mutates_args=())
def encode_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], k: int,
                packed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """TopK encode: relu of the k largest pre-activations of ``(x - b_dec) @ W_enc + b_enc`` per
    row, sorted by value descending (ties to the lower latent index). Returns (values, indices).

    ``packed`` is ``pack_encoder(W_enc)``, or None to lay W_enc out for this call."""
    return _run("encode_topk", x, W_enc, b_enc, b_dec, k, packed)


@encode_topk.register_fake
def _(x, W_enc, b_enc, b_dec, k, packed):
    return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)


@torch.library.custom_op("sae_native::encode_groupmax", mutates_args=())
def encode_groupmax(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], k: int,
                    packed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """GroupMax encode (sparsify): the d_sae latents form k contiguous groups; each row keeps the
    largest relu(pre) of every group (ties to the lower index). Returns (values, indices) [n, k],
    sorted by value descending. ``packed`` as for encode_topk."""
    return _run("encode_groupmax", x, W_enc, b_enc, b_dec, k, packed)


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
    return _run("encode_threshold", x, W_enc, b_enc, b_dec, threshold, packed, compact_nonfinite)


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


def _encode_backward(ctx, g_values, *_unused):
    x, W_enc, b_dec, values, indices = ctx.saved_tensors
    grads = encode_grads(g_values, x, W_enc, b_dec if ctx.has_b_dec else None, values, indices, ctx.b_enc_meta,
                         ctx.needs_input_grad[:4])
    return grads + (None,) * (len(ctx.needs_input_grad) - 4)


def encode_grads(g_values: Tensor, x: Tensor, W_enc: Tensor, b_dec: Optional[Tensor], values: Tensor,
                 indices: Tensor, b_enc_meta, need, W_enc_grad_t: Optional[Tensor] = None):
    """The gradients (x, W_enc, b_enc, b_dec) of an encode's ``values`` given theirs, where ``need``
    says (None elsewhere); ``b_enc_meta`` is b_enc's (shape, dtype). With ``W_enc_grad_t``
    [d_sae, d_in], W_enc's gradient is added to it in place (transposed) instead of returned: a
    trainer's persistent gradient buffer (training/kernel_weights.py)."""
    # values = relu(pre) at the selected latents; the selection itself is piecewise constant.
    # The indices are the forward's own: no check (check=False).
    g_pre = g_values * (values > 0).to(g_values.dtype)
    g_x = g_W_enc = g_b_enc = g_b_dec = None
    if need[0] or (b_dec is not None and need[3]):
        # sum_j g_pre[r, j] * W_enc[:, idx[r, j]]: a decode against the rows of W_enc transposed,
        # made contiguous once (gathering strided columns would miss the cache on every element).
        rows = W_enc.t()
        g_u = decode(g_pre, indices, rows if rows.stride(1) == 1 else rows.contiguous(), None, False)
        g_x = g_u if need[0] else None
        g_b_dec = -g_u.sum(0).to(b_dec.dtype) if b_dec is not None and need[3] else None
    if need[1]:
        # Accumulated as [d_sae, d_in] rows (contiguous writes), handed back as W_enc's transpose.
        u = x - b_dec.to(x.dtype) if b_dec is not None else x
        if W_enc_grad_t is not None:
            sparse_outer_add_(W_enc_grad_t, g_pre, indices, u, False)
        else:
            g_W_enc = sparse_outer(g_pre, indices, u, W_enc.shape[1], False, False).t().to(W_enc.dtype)
    if need[2]:
        shape, dtype = b_enc_meta
        g_b_enc = g_pre.new_zeros(shape).index_add_(0, indices.clamp_min(0).flatten(), g_pre.flatten())
        g_b_enc = g_b_enc.to(dtype)
    return g_x, g_W_enc, g_b_enc, g_b_dec


encode_topk.register_autograd(_encode_backward, setup_context=_encode_setup)
encode_groupmax.register_autograd(_encode_backward, setup_context=_encode_setup)
encode_threshold.register_autograd(_encode_backward, setup_context=_encode_setup)


# --------------------------------------------------------------------------------------------
# decode


@torch.library.custom_op("sae_native::decode", mutates_args=())
def decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor], check: bool = True) -> Tensor:
    """Sparse decode: ``out[r] = b_dec + sum_j values[r, j] * W_dec[indices[r, j]]``; padding
    (index -1) is skipped. ``W_dec`` is ``[d_sae, d_in]`` with any strides. ``check``: see above."""
    return _run("decode", values, indices, W_dec, b_dec, check)


@decode.register_fake
def _(values, indices, W_dec, b_dec, check=True):
    return values.new_empty(values.shape[0], W_dec.shape[1])


def _decode_setup(ctx, inputs, output):
    values, indices, W_dec, b_dec = inputs[:4]
    ctx.save_for_backward(values, indices, W_dec)
    ctx.b_dec_dtype = None if b_dec is None else b_dec.dtype


def _decode_backward(ctx, g):
    values, indices, W_dec = ctx.saved_tensors
    grads = decode_grads(g, values, indices, W_dec, ctx.b_dec_dtype, ctx.needs_input_grad[:4])
    return grads + (None,) * (len(ctx.needs_input_grad) - 4)


def decode_grads(g: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec_dtype, need,
                 W_dec_grad: Optional[Tensor] = None):
    """The gradients (values, indices: None, W_dec, b_dec) of a decode given its output's, where
    ``need`` says; ``b_dec_dtype`` None when the decode had no b_dec. With ``W_dec_grad``
    [d_sae, d_in], W_dec's gradient is added to it in place instead of returned."""
    # (indices the forward already read: check=False)
    g_values = sparse_dot(g, indices, W_dec, False) if need[0] else None
    g_W_dec = None
    if need[2] and W_dec_grad is not None:
        sparse_outer_add_(W_dec_grad, values, indices, g, False)
    elif need[2]:
        g_W_dec = sparse_outer(values, indices, g, W_dec.shape[0], False, False).to(W_dec.dtype)
    g_b_dec = g.sum(0).to(b_dec_dtype) if b_dec_dtype is not None and need[3] else None
    return g_values, None, g_W_dec, g_b_dec


decode.register_autograd(_decode_backward, setup_context=_decode_setup)


# --------------------------------------------------------------------------------------------
# steering (clamped reconstruction); the clamp arithmetic is csrc/clamp.h and reference.clamp_terms


@torch.library.custom_op("sae_native::steer_threshold", mutates_args=())
def steer_threshold(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Optional[Tensor],
                    threshold: Optional[Tensor], features: Tensor, targets: Tensor, mode: str,
                    only_active: bool, check: bool = True) -> Tuple[Tensor, Tensor]:
    """Steering with the SAE error kept, for threshold SAEs (JumpReLU, or ReLU when threshold is
    None): ``y = x + sum_f delta_f W_dec[f]`` where ``z_f`` needs only column f of W_enc, so a row
    costs O(|C| * d_in). ``b_dec`` is the bias subtracted from x before encoding (None: none).
    Returns (y, z) with z ``[n, |C|]`` the features' unclamped activations."""
    return _run("steer_threshold", x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active,
                check)


def _steer_outputs(x: Tensor, features: Tensor):
    return torch.empty_like(x), x.new_empty(x.shape[0], features.shape[0])


@steer_threshold.register_fake
def _(x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active, check=True):
    return _steer_outputs(x, features)


def _steer_threshold_setup(ctx, inputs, output):
    x, W_enc, b_enc, W_dec, b_dec, _thr, features, targets, mode, only_active = inputs[:10]
    ctx.save_for_backward(x, W_enc, W_dec, b_dec, features, targets, output[1])
    ctx.mode, ctx.only_active = mode, only_active
    ctx.b_enc_meta = (b_enc.shape, b_enc.dtype)


def _steer_threshold_backward(ctx, g_y, g_z):
    x, W_enc, W_dec, b_dec, features, targets, z = ctx.saved_tensors
    need = ctx.needs_input_grad
    T = x.dtype
    W_e = W_enc[:, features].to(T)          # [d_in, C]
    W_d = W_dec[features].to(T)             # [C, d_in]
    terms = reference.clamp_terms(z, targets.to(T), ctx.mode, ctx.only_active)
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
    return (g_x, g_W_enc, g_b_enc, g_W_dec, g_b_dec, None, None, g_targets) + (None,) * (len(need) - 8)


steer_threshold.register_autograd(_steer_threshold_backward, setup_context=_steer_threshold_setup)


@torch.library.custom_op("sae_native::steer_codes", mutates_args=())
def steer_codes(x: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor],
                features: Tensor, targets: Tensor, mode: str, only_active: bool,
                keep_error: bool, check: bool = True) -> Tuple[Tensor, Tensor]:
    """Steering from codes (any SAE): ``z_f`` is the code's value for latent f (0 if absent).
    keep_error: ``y = x + sum_f delta_f W_dec[f]``; otherwise ``y = decode(codes) + sum_f delta_f
    W_dec[f]`` (b_dec added when given). Returns (y, z) with z ``[n, |C|]``."""
    return _run("steer_codes", x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error,
                check)


@steer_codes.register_fake
def _(x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error, check=True):
    return _steer_outputs(x, features)


def _steer_codes_setup(ctx, inputs, output):
    x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error = inputs[:10]
    ctx.save_for_backward(values, indices, W_dec, features, targets, output[1])
    ctx.mode, ctx.only_active, ctx.keep_error = mode, only_active, keep_error
    ctx.b_dec_dtype = None if b_dec is None else b_dec.dtype


def _steer_codes_backward(ctx, g_y, g_z):
    values, indices, W_dec, features, targets, z = ctx.saved_tensors
    need = ctx.needs_input_grad
    T = values.dtype
    W_d = W_dec[features].to(T)
    terms = reference.clamp_terms(z, targets.to(T), ctx.mode, ctx.only_active)
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
            g_values = g_values + sparse_dot(g_y, indices, W_dec, False)
    if need[3]:
        g_W_dec = torch.zeros(W_dec.shape, dtype=T, device=W_dec.device)
        if not ctx.keep_error:
            g_W_dec += sparse_outer(values, indices, g_y, W_dec.shape[0], False, False)
        g_W_dec[features] += terms.delta.t() @ g_y
        g_W_dec = g_W_dec.to(W_dec.dtype)
    if need[4] and ctx.b_dec_dtype is not None and not ctx.keep_error:
        g_b_dec = g_y.sum(0).to(ctx.b_dec_dtype)
    if need[6]:
        g_targets = (a * terms.d_dc).sum(0).to(targets.dtype)
    return (g_x, g_values, None, g_W_dec, g_b_dec, None, g_targets) + (None,) * (len(need) - 7)


steer_codes.register_autograd(_steer_codes_backward, setup_context=_steer_codes_setup)


# --------------------------------------------------------------------------------------------
# sparse pieces of the backward passes (not differentiable themselves)


@torch.library.custom_op("sae_native::sparse_dot", mutates_args=())
def sparse_dot(g: Tensor, indices: Tensor, W: Tensor, check: bool = True) -> Tensor:
    """``out[r, j] = <g[r], W[indices[r, j]]>`` (0 for padding); W is ``[rows, d]``, any strides."""
    return _run("sparse_dot", g, indices, W, check)


@sparse_dot.register_fake
def _(g, indices, W, check=True):
    return g.new_empty(indices.shape)


@torch.library.custom_op("sae_native::sparse_outer", mutates_args=())
def sparse_outer(values: Tensor, indices: Tensor, g: Tensor, rows: int, transposed: bool,
                 check: bool = True) -> Tensor:
    """``out[indices[r, j]] += values[r, j] * g[r]`` into zeros ``[rows, d]`` (``[d, rows]`` when
    transposed): the weight gradient of a sparse product."""
    return _run("sparse_outer", values, indices, g, rows, transposed, check)


@sparse_outer.register_fake
def _(values, indices, g, rows, transposed, check=True):
    d = g.shape[1]
    return g.new_empty((d, rows) if transposed else (rows, d))


@torch.library.custom_op("sae_native::sparse_outer_add_", mutates_args=("out",))
def sparse_outer_add_(out: Tensor, values: Tensor, indices: Tensor, g: Tensor, check: bool = True) -> None:
    """``out[indices[r, j]] += values[r, j] * g[r]`` in place, ``out`` ``[rows, d]`` with contiguous
    rows or columns: sparse_outer accumulated into an existing gradient (a trainer keeps its weight
    gradients from step to step instead of taking fresh zeros of d_sae x d_in each time)."""
    _run("sparse_outer_add_", out, values, indices, g, check)


@sparse_outer_add_.register_fake
def _(out, values, indices, g, check=True):
    return None
