"""Benchmark shapes and presets, and the random SAEs they run on.

A shape is (N, d_in, d_sae, k, activation); k is None for JumpReLU. Weights are random with a
realistic sparsity: TopK picks k, and JumpReLU thresholds leave about 60-80 latents active per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

import sae_native as sn


@dataclass(frozen=True)
class Shape:
    N: int
    d_in: int
    d_sae: int
    k: Optional[int]
    activation: str = "topk"

    @property
    def label(self) -> str:
        act = f"k={self.k}" if self.activation == "topk" else self.activation
        return f"N={self.N} d_in={self.d_in} d_sae={self.d_sae} {act}"


PRESETS: Dict[str, List[Shape]] = {
    # seconds: a smoke run
    "quick": [Shape(256, 768, 24576, 32)],
    # about a minute on two cores with no peers installed
    "standard": [Shape(2048, 768, 24576, 32), Shape(1024, 2304, 16384, None, "jumprelu"),
                 Shape(1, 2304, 65536, 64)],
    # the CPU-speed issue's full shapes, and a bigger batch
    "large": [Shape(8192, 768, 24576, 32), Shape(4096, 2304, 16384, None, "jumprelu"),
              Shape(1, 2304, 65536, 64), Shape(16, 2304, 65536, 64)],
}


def parse_shape(text: str, activation: str = "topk") -> Shape:
    """'N,d_in,d_sae,k' (k ignored for jumprelu, where 'N,d_in,d_sae' is enough)."""
    parts = [p.strip() for p in text.split(",")]
    want = 3 if activation == "jumprelu" else 4
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (want, 4) or min(vals, default=0) < 1:
        form = "N,d_in,d_sae (a threshold SAE needs no k)" if activation == "jumprelu" else "N,d_in,d_sae,k"
        raise ValueError(f"--shape: expected {form} with positive integers, got {text!r}")
    n, d_in, d_sae = vals[:3]
    k = vals[3] if activation == "topk" else None
    if k is not None and k > d_sae:
        raise ValueError(f"--shape: k={k} is larger than d_sae={d_sae} in {text!r}")
    return Shape(n, d_in, d_sae, k, activation)


@dataclass
class Workload:
    shape: Shape
    x: torch.Tensor
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: Optional[torch.Tensor]

    def sae(self) -> sn.SAE:
        s = self.shape
        return sn.SAE(self.W_enc, self.b_enc, self.W_dec, self.b_dec, activation=s.activation, k=s.k,
                      threshold=self.threshold)


def make_workload(shape: Shape, *, dtype=torch.float32, device="cpu", seed: int = 0) -> Workload:
    """Random weights in `dtype` (activations stay float32) on `device`."""
    g = torch.Generator().manual_seed(seed)
    d_in, d_sae = shape.d_in, shape.d_sae
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    b_enc = 0.1 * torch.randn(d_sae, generator=g)
    threshold = None
    if shape.activation == "jumprelu":
        b_enc -= 2.5
        threshold = 0.2 * torch.rand(d_sae, generator=g)
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5
    b_dec = 0.1 * torch.randn(d_in, generator=g)
    x = torch.randn(shape.N, d_in, generator=g)

    def put(t, cast=True):
        return None if t is None else t.to(device=device, dtype=dtype if cast else t.dtype)
    return Workload(shape, put(x, cast=False), put(W_enc), put(b_enc), put(W_dec), put(b_dec), put(threshold))
