"""The tests' float64 oracle: sae_native.reference's dense formulas (docs/design.md's math) in
float64 on an SAE's weights, with the SAE-level pieces the tests need (input normalization, a
rounding bound, steering by a dict).

Everything here materialises [n, d_sae]; tests keep the sizes small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from sae_native import _C, reference

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

    def rounds_u(self) -> bool:
        """Whether the kernels round u = x - b_dec to bf16: bf16 weights on a CPU variant with bf16
        dot products (avx512_bf16), on either encode path and in steering (docs/design.md)."""
        return (self.W_enc.dtype == torch.bfloat16 and self.W_enc.device.type == "cpu"
                and _C.bf16_inputs_rounded())

    def u(self, x: Tensor) -> Tensor:
        x = self.norm_stats(x)[0]
        u = x - self.d(self.b_dec) if self.apply_b_dec_to_input else x
        if self.rounds_u():    # as the kernel: the float32 difference, rounded to nearest even
            x32 = x.to(torch.float32)
            u32 = x32 - self.b_dec.to(torch.float32) if self.apply_b_dec_to_input else x32
            u = u32.to(torch.bfloat16).to(torch.float64)
        return u

    def pre(self, x: Tensor) -> Tensor:
        return reference.preact(self.u(x), self.d(self.W_enc), self.d(self.b_enc))

    def pre_error_bound(self, x: Tensor) -> Tensor:
        """A bound on |pre computed in float32 - pre in float64| (worst-case dot-product rounding)."""
        u = self.u(x)
        scale = u.abs() @ self.d(self.W_enc).abs() + self.d(self.b_enc).abs()
        d_in = self.W_enc.shape[0]
        bound = 2 * (d_in + 2) * EPS32 * scale + 1e-30
        if self.rounds_u() and self.normalize != "none":
            # The kernel normalizes in float32, this in float64: an element of u may round to
            # the neighbouring bf16 (2^-8 relative).
            bound = bound + 2.0 ** -8 * scale
        return bound

    def dense(self, x: Tensor) -> Tensor:
        """z [n, d_sae] by the dense formula (the contract's tie rule)."""
        return reference.dense(self.u(x), self.d(self.W_enc), self.d(self.b_enc), None, self.activation, self.k,
                               self.d(self.threshold))

    def decode_dense(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """z @ W_dec + b_dec, mapped back to x's space when the SAE normalizes its input."""
        out = reference.decode_dense(z.to(torch.float64), self.d(self.W_dec), self.d(self.b_dec))
        if self.normalize != "none":
            _, shift, scale = self.norm_stats(x)
            out = out * scale + shift
        return out

    def steer(self, x: Tensor, clamp: Dict[int, float], mode: str, keep_error: bool, where: str) -> Tensor:
        xn, shift, scale = self.norm_stats(x)
        features = torch.tensor(list(clamp), dtype=torch.int64)
        targets = torch.tensor(list(clamp.values()), dtype=torch.float64)
        y, _ = reference.steer(xn, self.dense(x), self.d(self.W_dec), self.d(self.b_dec), features, targets, mode,
                               where == "active", keep_error)
        if keep_error:
            return x.detach().to(torch.float64) + (y - xn) * scale
        return y * scale + shift if self.normalize != "none" else y


def topk_indices(pre: Tensor, k: int) -> Tensor:
    """The k largest per row, ties to the lower index, NaN first (torch's NaN-is-largest rule)."""
    return reference.ranked(pre)[..., :k]


def sorted_codes(z_at: Tensor, idx: Tensor):
    """Sort (value, index) pairs by value descending, ties to the lower index."""
    return reference.listed(z_at, idx)
