"""The weights as a training step's kernels read them, and their gradients straight into Adam's.

Three costs of running the ops through plain autograd, each a dense pass over d_in x d_sae per
step (measured on a TopK step, N 4096, 768 -> 24576, in torch.profiler):
- every encode op called without ``packed`` lays W_enc out anew, and a step encodes more than once
  (the codes, AuxK's dead latents, BatchTopK's widened rows): here one packing serves the step;
- each weight gradient is a fresh tensor of zeros that the sparse backward fills. Fresh pages cost
  the kernel a fault and a clear each (two 75 MB gradients took 150 ms a step on a 2-core VM):
  here the backward adds into the parameter's ``.grad``, which the trainer keeps and zeroes;
- with ``weight_dtype="bfloat16"``, ``W.to(bfloat16)`` in the graph makes autograd round the
  gradient to bf16 and cast it back to the float32 master (two more copies, and a rounding the
  master never needed): here the forward runs on a bf16 copy and the backward accumulates the
  float32 gradient of the master directly.

The input gradient reads the master's rows (for bf16, they differ from the copy's by bf16
rounding: a straight-through estimate of the rounding, as mixed-precision training has it). The
decoder reads the float32 master in either dtype: a decode gathers k rows per token, where bf16
saves little.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _ops


def grad_buffer(param: Tensor) -> Tensor:
    """``param.grad``, made (zeros) if the step has none yet: the backward adds into it."""
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    return param.grad


class KernelWeights:
    """One step's encoder. ``W_enc_t`` is the trainer's float32 master W_enc^T [d_sae, d_in] (a
    leaf parameter); it is laid out once in ``dtype`` for every encode of the step. ``copy``: the
    trainer's bf16 buffer of W_enc_t's shape, reused from step to step. Make a new one after each
    optimizer step."""

    def __init__(self, W_enc_t: Tensor, dtype: torch.dtype, copy: Optional[Tensor] = None):
        self.W_enc_t = W_enc_t
        # (a leaf's gradient is added into its .grad; another tensor's is returned to autograd)
        self.accumulate = W_enc_t.is_leaf
        with torch.no_grad():
            if dtype == W_enc_t.dtype:
                kernel_t = W_enc_t.detach()
            else:
                kernel_t = copy.copy_(W_enc_t) if copy is not None else W_enc_t.detach().to(dtype)
            self.kernel = kernel_t.t()                  # W_enc [d_in, d_sae] in dtype, no grad
            self.packed = _ops.pack_encoder(self.kernel)

    @property
    def W_enc(self) -> Tensor:
        """The differentiable master W_enc [d_in, d_sae]."""
        return self.W_enc_t.t()

    def topk(self, x: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], k: int):
        """``_ops.encode_topk``'s (values, indices), differentiable to x, the master, b_enc, b_dec."""
        return _Encode.apply("encode_topk", x, self.W_enc_t, b_enc, b_dec, self, k)

    def threshold(self, x: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], threshold: Optional[Tensor]):
        """``_ops.encode_threshold``'s (values, indices, counts) (non-finite rows compacted),
        differentiable as ``topk``."""
        return _Encode.apply("encode_threshold", x, self.W_enc_t, b_enc, b_dec, self, threshold)


def decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor]) -> Tensor:
    """``_ops.decode`` of the step's own codes (no check); W_dec a leaf parameter, whose gradient is
    added into its ``.grad``."""
    if not W_dec.is_leaf:
        raise ValueError("decode: W_dec must be a leaf tensor (its gradient is added into W_dec.grad)")
    return _Decode.apply(values, indices, W_dec, b_dec)


class _Encode(torch.autograd.Function):
    """An encode op on the step's packed kernel weights, differentiated as the op of the master."""

    @staticmethod
    def forward(ctx, op, x, W_enc_t, b_enc, b_dec, weights, arg):
        if op == "encode_topk":
            out = _ops.encode_topk(x, weights.kernel, b_enc, b_dec, arg, weights.packed)
        else:
            out = _ops.encode_threshold(x, weights.kernel, b_enc, b_dec, arg, weights.packed, True)
        ctx.save_for_backward(x, W_enc_t, b_dec, out[0], out[1])
        ctx.b_enc_meta = (b_enc.shape, b_enc.dtype)
        ctx.weights = weights
        ctx.mark_non_differentiable(*out[1:])
        return out

    @staticmethod
    def backward(ctx, g_values, *_unused):
        x, W_enc_t, b_dec, values, indices = ctx.saved_tensors
        need, weights = ctx.needs_input_grad, ctx.weights
        into = grad_buffer(weights.W_enc_t) if need[2] and weights.accumulate else None
        g_x, g_W, g_b_enc, g_b_dec = _ops.encode_grads(g_values, x, W_enc_t.t(), b_dec, values, indices,
                                                       ctx.b_enc_meta, (need[1], need[2], need[3], need[4]), into)
        return None, g_x, None if g_W is None else g_W.t(), g_b_enc, g_b_dec, None, None


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec):
        ctx.save_for_backward(values, indices)
        ctx.W_dec = W_dec            # (the parameter itself, whose .grad the backward adds to)
        ctx.b_dec_dtype = None if b_dec is None else b_dec.dtype
        return _ops.decode(values, indices, W_dec, b_dec, False)

    @staticmethod
    def backward(ctx, g):
        values, indices = ctx.saved_tensors
        need, W_dec = ctx.needs_input_grad, ctx.W_dec
        into = grad_buffer(W_dec) if need[2] else None
        return _ops.decode_grads(g, values, indices, W_dec.detach(), ctx.b_dec_dtype, need, into)
