"""The sparsity terms that need more than autograd of the ops: JumpReLU's straight-through
estimator (Rajamanoharan et al. 2024, "Jumping Ahead")."""
from __future__ import annotations

import torch
from torch import Tensor


def rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUCodes(torch.autograd.Function):
    """z = pre * (pre > theta) on sparse codes, with the straight-through estimator for theta.

    Forward: ``pre`` are code values (``[n, m]``, latents in ``indices``; entries whose pre lies
    below ``theta`` are present because the band encode returned them), ``theta`` is ``[d_sae]``.
    Backward: dz/dpre = 1 where pre > theta; dz/dtheta = -(theta / eps) * K((pre - theta) / eps),
    K the rectangle kernel; summed over the codes into theta's gradient.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, indices: Tensor, theta: Tensor, eps: float):
        valid = indices >= 0
        th = theta[indices.clamp_min(0)]
        active = (pre > th) & valid
        ctx.save_for_backward(pre, indices, th, valid)
        ctx.eps, ctx.d_sae = eps, theta.shape[0]
        return torch.where(active, pre, torch.zeros_like(pre))

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, indices, th, valid = ctx.saved_tensors
        g_pre = torch.where((pre > th) & valid, g, torch.zeros_like(g))
        g_th = -(th / ctx.eps) * rectangle((pre - th) / ctx.eps) * g * valid
        g_theta = g.new_zeros(ctx.d_sae).index_add_(0, indices.clamp_min(0).flatten(), g_th.flatten())
        return g_pre, None, g_theta, None


class StepL0(torch.autograd.Function):
    """sum of H(pre - theta) over the codes (the L0 norm), with the straight-through estimator:
    d/dtheta = -(1 / eps) * K((pre - theta) / eps); no gradient to pre (as in the paper)."""

    @staticmethod
    def forward(ctx, pre: Tensor, indices: Tensor, theta: Tensor, eps: float):
        valid = indices >= 0
        th = theta[indices.clamp_min(0)]
        ctx.save_for_backward(pre, indices, th, valid)
        ctx.eps, ctx.d_sae = eps, theta.shape[0]
        return ((pre > th) & valid).sum().to(pre.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, indices, th, valid = ctx.saved_tensors
        g_th = -(1.0 / ctx.eps) * rectangle((pre - th) / ctx.eps) * valid * g
        g_theta = g_th.new_zeros(ctx.d_sae).index_add_(0, indices.clamp_min(0).flatten(), g_th.flatten())
        return None, None, g_theta, None
