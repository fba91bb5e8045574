"""A float64 dense reference of DESIGN.md's math, written for clarity rather than speed.

Everything here materialises [n, d_sae]; tests keep the sizes small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

EPS32 = float(torch.finfo(torch.float32).eps)


@dataclass
class RefSAE:
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    activation: str = "topk"
    k: Optional[int] = None
    threshold: Optional[Tensor] = None
    apply_b_dec_to_input: bool = True
    normalize: str = "none"

    def norm_stats(self, x: Tensor):
        """(normalized x, shift, scale) in float64, SAELens's definitions."""
        x = x.detach().to(torch.float64)
        if self.normalize == "none":
            return x, torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
        if self.normalize == "constant_norm_rescale":
            coeff = x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, torch.zeros_like(coeff), 1 / coeff
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        return (x - mu) / (std + 1e-5), mu, std

    def d(self, t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.detach().to(torch.float64)

    def u(self, x: Tensor) -> Tensor:
        x = self.norm_stats(x)[0]
        return x - self.d(self.b_dec) if self.apply_b_dec_to_input else x

    def pre(self, x: Tensor) -> Tensor:
        return self.u(x) @ self.d(self.W_enc) + self.d(self.b_enc)

    def pre_error_bound(self, x: Tensor) -> Tensor:
        """A bound on |pre computed in float32 - pre in float64| (worst-case dot-product rounding)."""
        u = self.u(x)
        scale = u.abs() @ self.d(self.W_enc).abs() + self.d(self.b_enc).abs()
        d_in = self.W_enc.shape[0]
        return 2 * (d_in + 2) * EPS32 * scale + 1e-30

    def dense(self, x: Tensor) -> Tensor:
        """z [n, d_sae] by the dense formula."""
        pre = self.pre(x)
        if self.activation == "topk":
            idx = topk_indices(pre, self.k)
            return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())
        if self.activation == "groupmax":
            groups = pre.relu().unflatten(-1, (self.k, -1))
            best = groups.max(dim=-1)
            idx = best.indices + torch.arange(0, pre.shape[-1], pre.shape[-1] // self.k)
            return torch.zeros_like(pre).scatter(-1, idx, best.values)
        thr = torch.zeros_like(self.d(self.b_enc)) if self.threshold is None else self.d(self.threshold)
        return pre.relu() * (pre > thr)

    def decode_dense(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """z @ W_dec + b_dec, mapped back to x's space when the SAE normalizes its input."""
        out = z.to(torch.float64) @ self.d(self.W_dec) + self.d(self.b_dec)
        if self.normalize != "none":
            _, shift, scale = self.norm_stats(x)
            out = out * scale + shift
        return out

    def steer(self, x: Tensor, clamp: Dict[int, float], mode: str, keep_error: bool, where: str) -> Tensor:
        z = self.dense(x)
        z2 = z.clone()
        for f, c in clamp.items():
            zf = z[:, f]
            new = {"set": torch.full_like(zf, c), "scale": c * zf, "add": zf + c}[mode]
            if where == "active":
                new = torch.where(zf > 0, new, zf)
            z2[:, f] = new
        if keep_error:
            scale = self.norm_stats(x)[2]
            return x.detach().to(torch.float64) + ((z2 - z) @ self.d(self.W_dec)) * scale
        return self.decode_dense(z2, x)


def topk_indices(pre: Tensor, k: int) -> Tensor:
    """The k largest per row, ties to the lower index, NaN first (torch's NaN-is-largest rule)."""
    order = torch.sort(pre, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def sorted_codes(z_at: Tensor, idx: Tensor):
    """Sort (value, index) pairs by value descending, ties to the lower index."""
    by_index = torch.sort(idx, dim=-1).indices
    idx = idx.gather(-1, by_index)
    z_at = z_at.gather(-1, by_index)
    order = torch.sort(z_at, dim=-1, descending=True, stable=True).indices
    return z_at.gather(-1, order), idx.gather(-1, order)
