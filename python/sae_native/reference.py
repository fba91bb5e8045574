"""The math of every op, written densely in torch: the contract the kernels implement (docs/design.md).

One definition, used by ``sae-native check``, the benchmark's dense references, the pure-torch
backend (``backends/default.py``, which runs these on bounded blocks of rows), the ops' autograd
formulas, and the tests' float64 oracle (tests/reference.py). Everything here may materialise
``[n, d_sae]``; the kernels never do.

Ranking: larger first, ties to the lower latent, NaN above every number (torch.topk's rule).
Codes: ``values [n, w]`` and int64 ``indices [n, w]`` per row, sorted by value descending (ties to
the lower latent); threshold codes are padded to the batch's widest row with value 0, index -1.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

MODES = ("set", "scale", "add")


# ---- encode ------------------------------------------------------------------------------------------

def preact(u: Tensor, W_enc: Tensor, b_enc: Optional[Tensor] = None) -> Tensor:
    """``u @ W_enc + b_enc`` in u's dtype: weights widened, products and sums in u's dtype (never a
    16-bit GEMM)."""
    pre = u @ W_enc.to(u.dtype)
    return pre if b_enc is None else pre + b_enc.to(u.dtype)


def ranked(pre: Tensor) -> Tensor:
    """Each row's latents in code order: value descending, ties (and NaNs) to the lower latent."""
    return torch.sort(pre, dim=-1, descending=True, stable=True).indices


def listed(values: Tensor, idx: Tensor) -> Tuple[Tensor, Tensor]:
    """Codes listed by value descending, ties to the lower latent."""
    idx, perm = torch.sort(idx, dim=-1)
    values = values.gather(-1, perm)
    order = ranked(values)
    return values.gather(-1, order), idx.gather(-1, order)


def topk_select(pre: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """TopK: the k largest pre-activations (NaN first), listed by their relu."""
    idx = ranked(pre)[..., :k]
    return listed(pre.gather(-1, idx).relu(), idx)


def threshold_active(pre: Tensor, threshold: Optional[Tensor], compact_nonfinite: bool = False) -> Tensor:
    """Where ``relu(pre) * (pre > threshold)`` is non-zero or NaN (ReLU: threshold None, i.e. 0).
    With ``compact_nonfinite`` a row whose active latents include a non-finite value keeps only the
    lowest such latent."""
    bar = torch.zeros_like(pre[..., 0:1]) if threshold is None else threshold.to(pre.dtype)
    active = torch.isnan(pre) | ((pre > 0) & (pre > bar))
    if compact_nonfinite:
        bad = active & ~torch.isfinite(pre)
        first = torch.zeros_like(active).scatter_(-1, bad.to(torch.uint8).argmax(-1, keepdim=True), True)
        active = torch.where(bad.any(-1, keepdim=True), first, active)
    return active


def threshold_select(pre: Tensor, threshold: Optional[Tensor], compact_nonfinite: bool = False,
                     width: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """JumpReLU / ReLU codes of 2-D ``pre``: (values, indices, counts), padded to ``width`` (default:
    the widest row)."""
    active = threshold_active(pre, threshold, compact_nonfinite)
    counts = active.sum(-1)
    if width is None:
        width = int(counts.max()) if counts.numel() else 0
    keyed = torch.where(active, pre, torch.full_like(pre, -float("inf")))
    idx = ranked(keyed)[..., :width]
    values = pre.gather(-1, idx)
    keep = torch.arange(idx.shape[-1], device=pre.device) < counts[..., None]
    values = torch.where(keep, values, torch.zeros_like(values))
    idx = torch.where(keep, idx, torch.full_like(idx, -1))
    if idx.shape[-1] < width:
        pad = width - idx.shape[-1]
        values = torch.nn.functional.pad(values, (0, pad))
        idx = torch.nn.functional.pad(idx, (0, pad), value=-1)
    return values, idx, counts


def groupmax_select(pre: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """GroupMax (sparsify): the latents in k contiguous groups, each row keeping the largest relu(pre)
    of every group (NaN wins, as torch.max; ties to the lower latent), listed by value."""
    d_sae = pre.shape[-1]
    best = pre.relu().unflatten(-1, (k, d_sae // k)).max(dim=-1)     # the first maximum wins
    starts = torch.arange(0, d_sae, d_sae // k, device=pre.device)
    order = ranked(best.values)          # groups are in latent order, so ties go to the lower latent
    return best.values.gather(-1, order), (best.indices + starts).gather(-1, order)


def encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], activation: str,
           k: Optional[int] = None, threshold: Optional[Tensor] = None,
           compact_nonfinite: bool = False) -> Tuple[Tensor, Tensor]:
    """(values, indices) of 2-D x by the dense formula (b_dec: subtracted from x first, or None)."""
    pre = preact(x - b_dec.to(x.dtype) if b_dec is not None else x, W_enc, b_enc)
    if activation == "topk":
        return topk_select(pre, k)
    if activation == "groupmax":
        return groupmax_select(pre, k)
    values, indices, _ = threshold_select(pre, threshold, compact_nonfinite)
    return values, indices


def dense(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Optional[Tensor], activation: str,
          k: Optional[int] = None, threshold: Optional[Tensor] = None, exact_ties: bool = True) -> Tensor:
    """The activations ``z [n, d_sae]`` by the dense formula, the way a user writes it in torch. With
    ``exact_ties`` TopK follows the contract's tie rule (a stable sort); without it, torch.topk
    picks among ties as it likes (faster: what the benchmarks time as "dense")."""
    pre = preact(x - b_dec.to(x.dtype) if b_dec is not None else x, W_enc, b_enc)
    if activation == "topk":
        if exact_ties:
            idx = ranked(pre)[..., :k]
            return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    if activation == "groupmax":
        values, idx = groupmax_select(pre, k)
        return torch.zeros_like(pre).scatter(-1, idx, values)
    bar = torch.zeros_like(b_enc).to(pre.dtype) if threshold is None else threshold.to(pre.dtype)
    return pre.relu() * (pre > bar)


def decode_dense(z: Tensor, W_dec: Tensor, b_dec: Optional[Tensor] = None) -> Tensor:
    """``z @ W_dec + b_dec`` in z's dtype."""
    out = z @ W_dec.to(z.dtype)
    return out if b_dec is None else out + b_dec.to(z.dtype)


# ---- codes, decode ------------------------------------------------------------------------------------

def to_dense(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """Codes as a dense ``[..., d_sae]`` matrix (padding, index -1, adds nothing)."""
    valid = indices >= 0
    index = torch.where(valid, indices, torch.zeros_like(indices))
    src = torch.where(valid, values, torch.zeros_like(values))
    return values.new_zeros(*values.shape[:-1], d_sae).scatter_add(-1, index, src)


def decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor] = None) -> Tensor:
    """``b_dec + sum_j values[r, j] W_dec[indices[r, j]]`` in values' dtype."""
    return decode_dense(to_dense(values, indices, W_dec.shape[0]), W_dec, b_dec)


# ---- steering ------------------------------------------------------------------------------------------

class ClampTerms(NamedTuple):
    delta: Tensor   # the change of each clamped feature, [n, C]
    d_dz: Tensor    # d delta / d z
    d_dc: Tensor    # d delta / d c


def clamp_terms(z: Tensor, c: Tensor, mode: str, only_active: bool) -> ClampTerms:
    """The clamp arithmetic (csrc/clamp.h's clamp_delta) and its derivatives, for z ``[n, C]``:
    set: ``c - z``; scale: ``(c - 1) z``; add: ``c``; 0 where only_active and z <= 0."""
    c = c.to(z.dtype).expand_as(z)
    one = torch.ones_like(z)
    if mode == "set":
        delta, d_dz, d_dc = c - z, -one, one
    elif mode == "scale":
        delta, d_dz, d_dc = (c - 1) * z, c - 1, z
    elif mode == "add":
        delta, d_dz, d_dc = c, torch.zeros_like(z), one
    else:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if only_active:
        keep = z > 0
        delta, d_dz, d_dc = (torch.where(keep, t, torch.zeros_like(t)) for t in (delta, d_dz, d_dc))
    return ClampTerms(delta, d_dz, d_dc)


def steer(x: Tensor, z: Tensor, W_dec: Tensor, b_dec: Optional[Tensor], features: Tensor, targets: Tensor,
          mode: str, only_active: bool, keep_error: bool) -> Tuple[Tensor, Tensor]:
    """Clamped reconstruction from dense activations ``z [n, d_sae]``: (y, z at the features).
    keep_error: ``y = x + sum_f delta_f W_dec[f]``; otherwise ``decode(z) + sum_f delta_f W_dec[f]``."""
    T = x.dtype
    zf = z[:, features]
    delta = clamp_terms(zf, targets.to(T), mode, only_active).delta
    change = delta @ W_dec[features].to(T)
    if keep_error:
        return x + change, zf
    base = z @ W_dec.to(T)
    if b_dec is not None:
        base = base + b_dec.to(T)
    return base + change, zf
