"""Synthetic activations with known features, for checking that a training recipe recovers them.

The data follow "Toy Models of Superposition" (Elhage et al. 2022): ``n_features`` sparse,
non-negative features along random unit directions in fewer dimensions ``d``, each active with
probability ``l0 / n_features`` and a uniform magnitude in (0, 1], plus Gaussian noise. An SAE
trained on them should find the directions: ``recovery`` is the mean, over the true features, of
the best cosine similarity with a decoder row (1 is perfect; 0.9 is the bar the tests hold every
architecture to)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def superposition(n: int = 60_000, d: int = 40, n_features: int = 160, l0: float = 5.0, *,
                  noise: float = 0.01, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Returns ``(activations [n, d], directions [n_features, d])`` in float32."""
    for name, v in (("n", n), ("d", d), ("n_features", n_features)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    if not isinstance(l0, (int, float)) or isinstance(l0, bool) or not 0 < l0 <= n_features:
        raise ValueError(f"l0: expected a number in (0, n_features={n_features}], got {l0!r}")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not noise >= 0:
        raise ValueError(f"noise: expected a number >= 0, got {noise!r}")
    # (a stream of its own: seeded with ``seed`` alone, the directions would be the first draw of
    # torch.randn, which is also what a trainer seeded alike initialises its decoder with)
    g = torch.Generator().manual_seed(0x5EED_5EED + seed)
    dirs = torch.randn(n_features, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    acts = torch.empty(n, d)
    p = l0 / n_features
    for start in range(0, n, 8192):          # in chunks: [n, n_features] at once can be large
        m = min(n, start + 8192) - start
        mags = (1 - torch.rand(m, n_features, generator=g)) * (torch.rand(m, n_features, generator=g) < p)
        acts[start:start + m] = mags @ dirs + noise * torch.randn(m, d, generator=g)
    return acts, dirs


def recovery(sae, directions: Tensor) -> float:
    """Mean over the true ``directions`` [n_features, d] of the best cosine similarity with one of
    ``sae``'s decoder rows."""
    if not isinstance(directions, Tensor) or directions.dim() != 2 or directions.shape[1] != sae.d_in:
        raise ValueError(f"directions: expected a tensor [n_features, {sae.d_in}], got "
                         f"{list(getattr(directions, 'shape', []))}")
    W = sae.W_dec.detach().float().cpu()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    D = directions.float() / directions.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((D @ W.t()).max(dim=1).values.mean())
