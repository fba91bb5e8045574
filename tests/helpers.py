"""Builders of random SAEs and the checks that compare sae_native's output with the reference."""
from __future__ import annotations

import math
from typing import Optional

import torch

import sae_native as sn
from reference import RefSAE

SIZES_D_IN = [1, 2, 7, 16, 17, 31, 64]
SIZES_D_SAE = [1, 2, 13, 16, 17, 97, 128, 257]


def make_weights(d_in: int, d_sae: int, activation: str = "topk", k: Optional[int] = None, *,
                 dtype=torch.float32, seed: int = 0, apply_b_dec_to_input: bool = True, normalize: str = "none") -> dict:
    g = torch.Generator().manual_seed(seed)
    w = dict(
        W_enc=(torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in)).to(dtype),
        b_enc=(0.1 * torch.randn(d_sae, generator=g)).to(dtype),
        W_dec=(torch.randn(d_sae, d_in, generator=g) / math.sqrt(max(d_sae, 1))).to(dtype),
        b_dec=(0.1 * torch.randn(d_in, generator=g)).to(dtype),
        activation=activation,
        k=k if activation in ("topk", "groupmax") else None,
        threshold=(0.5 * torch.rand(d_sae, generator=g)).to(dtype) if activation == "jumprelu" else None,
        apply_b_dec_to_input=apply_b_dec_to_input,
        normalize=normalize,
    )
    return w


def make_pair(*args, **kwargs):
    w = make_weights(*args, **kwargs)
    return sn.SAE(**w), RefSAE(**w)


def randn(*shape, seed: int = 1, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def check_topk_codes(codes: sn.SparseCodes, ref: RefSAE, x: torch.Tensor) -> None:
    """Selected set equal to the reference's up to swaps within rounding; values exact to rounding;
    order by value descending with ties to the lower index."""
    d_sae = ref.W_enc.shape[1]
    x2 = x.reshape(-1, x.shape[-1])
    flat = codes.flatten()
    vals, idx = flat.values.double(), flat.indices
    k = ref.k
    assert vals.shape == (x2.shape[0], k) and idx.dtype == torch.int64
    if x2.shape[0] == 0:
        return
    assert int(idx.min()) >= 0 and int(idx.max()) < d_sae
    assert (torch.sort(idx, -1).values.diff(dim=-1) > 0).all(), "indices repeat within a row"
    pre, tol = ref.pre(x2), ref.pre_error_bound(x2)
    sel_pre, sel_tol = pre.gather(-1, idx), tol.gather(-1, idx)
    torch.testing.assert_close(vals, sel_pre.relu(), atol=float(sel_tol.max()), rtol=0)
    if k < d_sae:
        selected = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, idx, True)
        lowest_selected = (sel_pre + sel_tol).min(-1).values
        best_unselected = torch.where(selected, torch.full_like(pre, -math.inf), pre - tol).max(-1).values
        bad = best_unselected > lowest_selected
        assert not bad.any(), f"rows {bad.nonzero().flatten().tolist()[:5]} miss a clearly larger latent"
    check_order(vals, idx)


def check_order(vals: torch.Tensor, idx: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
    if vals.shape[-1] < 2:
        return
    a, b = vals[..., :-1], vals[..., 1:]
    ok = (a > b) | ((a == b) & (idx[..., :-1] < idx[..., 1:]))
    if valid is not None:
        ok |= ~valid[..., 1:]
    assert ok.all(), "codes are not sorted by value descending with ties to the lower index"


def check_threshold_codes(codes: sn.SparseCodes, ref: RefSAE, x: torch.Tensor) -> None:
    """Active set equal to the reference's except within rounding of the threshold; values exact
    to rounding; padding (-1, 0) after each row's count; rows sorted."""
    d_sae = ref.W_enc.shape[1]
    x2 = x.reshape(-1, x.shape[-1])
    n = x2.shape[0]
    flat = codes.flatten()
    vals, idx, counts = flat.values.double(), flat.indices, flat.counts
    width = vals.shape[1]
    pos = torch.arange(width).expand(n, width)
    valid = pos < counts[:, None]
    assert (idx[~valid] == -1).all() and (vals[~valid] == 0).all(), "padding must be index -1, value 0"
    if n == 0:
        return
    assert width == int(counts.max())
    assert ((idx[valid] >= 0) & (idx[valid] < d_sae)).all()
    assert (vals[valid] > 0).all()
    check_order(vals, idx, valid)
    pre, tol = ref.pre(x2), ref.pre_error_bound(x2)
    thr = ref.d(ref.threshold) if ref.threshold is not None else torch.zeros(d_sae, dtype=torch.float64)
    bar = torch.maximum(thr, torch.zeros_like(thr))
    ours = codes.to_dense().reshape(n, d_sae).double()
    clear = (pre - bar).abs() > tol
    assert ((ours != 0) == (pre > bar))[clear].all(), "active set differs away from the threshold"
    torch.testing.assert_close(ours[ours != 0], pre[ours != 0], atol=float(tol.max()), rtol=0)


def check_groupmax_codes(codes: sn.SparseCodes, ref: RefSAE, x: torch.Tensor) -> None:
    """One pick per group, in its group, the group's largest relu(pre) up to rounding, exact
    value; sorted by value descending with ties to the lower index."""
    d_sae, k = ref.W_enc.shape[1], ref.k
    group = d_sae // k
    x2 = x.reshape(-1, x.shape[-1])
    flat = codes.flatten()
    vals, idx = flat.values.double(), flat.indices
    assert vals.shape == (x2.shape[0], k)
    if x2.shape[0] == 0:
        return
    assert torch.equal(torch.sort(idx // group, -1).values, torch.arange(k).expand(x2.shape[0], k))
    pre, tol = ref.pre(x2), ref.pre_error_bound(x2)
    torch.testing.assert_close(vals, pre.gather(-1, idx).relu(), atol=float(tol.max()), rtol=0)
    best = (pre.relu() - tol).unflatten(-1, (k, group)).max(-1).values      # [n, k] by group
    mine = torch.zeros_like(best).scatter(-1, idx // group, vals)
    assert (mine >= best - 2 * float(tol.max())).all(), "a group missed a clearly larger latent"
    check_order(vals, idx)
