"""Sparse decode against the float64 dense product."""
import pytest
import torch

import sae_native as sn
from helpers import SIZES_D_IN, SIZES_D_SAE, make_pair, make_weights, randn


def _codes(n, k, d_sae, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)]) if n else torch.empty(0, k, dtype=torch.int64)
    vals = torch.rand(n, k, generator=g).to(dtype)
    return vals, idx


@pytest.mark.parametrize("d_in", SIZES_D_IN)
@pytest.mark.parametrize("d_sae", SIZES_D_SAE)
def test_decode_matches_dense(isa, threads, d_in, d_sae):
    w = make_weights(d_in, d_sae, "topk", 1)
    for k in sorted({1, max(1, d_sae // 2), d_sae}):
        vals, idx = _codes(13, k, d_sae, seed=k)
        dense = torch.zeros(13, d_sae, dtype=torch.float64).scatter(-1, idx, vals.double())
        want = dense @ w["W_dec"].double() + w["b_dec"].double()
        got = sn.functional.decode(vals, idx, w["W_dec"], w["b_dec"])
        assert got.dtype == torch.float32 and got.shape == (13, d_in)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_decode_without_bias_and_padding(isa):
    w = make_weights(10, 30)
    vals, idx = _codes(6, 5, 30)
    idx[:, 3:] = -1  # padding is skipped whatever its value
    vals[:, 3:] = 123.0
    got = sn.functional.decode(vals, idx, w["W_dec"])
    want = (vals[:, :3, None].double() * w["W_dec"].double()[idx[:, :3]]).sum(1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16, torch.float64])
def test_decode_weight_dtypes(isa, wdtype):
    w = make_weights(21, 70, dtype=wdtype)
    vals, idx = _codes(9, 6, 70, dtype=torch.float64 if wdtype == torch.float64 else torch.float32)
    got = sn.functional.decode(vals, idx, w["W_dec"], w["b_dec"])
    dense = torch.zeros(9, 70, dtype=torch.float64).scatter(-1, idx, vals.double())
    want = dense @ w["W_dec"].double() + w["b_dec"].double()
    tol = 1e-12 if wdtype == torch.float64 else 1e-5
    assert got.dtype == (torch.float64 if wdtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_reconstruction_matches_reference(isa, activation):
    sae, ref = make_pair(37, 211, activation, 19)
    x = randn(4, 6, 37)
    got = sae(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    want = ref.decode_dense(ref.dense(x.reshape(-1, 37))).reshape(4, 6, 37)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), got)
    torch.testing.assert_close(sn.functional.reconstruct(x, **make_weights(37, 211, activation, 19)), got)


def test_decode_accepts_a_pair_and_leading_dims():
    sae, _ = make_pair(12, 40, "topk", 3)
    codes = sae.encode(randn(2, 5, 12))
    a = sae.decode(codes)
    b = sae.decode((codes.values, codes.indices))
    assert a.shape == (2, 5, 12) and torch.equal(a, b)


@pytest.mark.parametrize("d_in", [1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 300])
def test_decode_chunk_edges(isa, d_in):
    # Row kernels work in register chunks (64 / 128 floats) with masked or scalar tails.
    w = make_weights(d_in, 50)
    vals, idx = _codes(5, 7, 50)
    idx[0, 2] = -1
    vals[1, 3] = 0.0
    dense = torch.zeros(5, 50, dtype=torch.float64).scatter_add(-1, idx.clamp_min(0), vals.double() * (idx >= 0))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        W = w["W_dec"].to(dtype)
        got = sn.functional.decode(vals, idx, W, w["b_dec"])
        torch.testing.assert_close(got.double(), dense @ W.double() + w["b_dec"].double(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("d_in", [512, 600, 1031])
def test_decode_few_rows_wide(isa, threads, n, d_in):
    # Few rows of a wide decoder: the columns are split across threads too.
    w = make_weights(d_in, 70)
    vals, idx = _codes(n, 9, 70, seed=d_in)
    if n > 1:
        idx[1, 0] = -1
    dense = torch.zeros(n, 70, dtype=torch.float64).scatter_add(-1, idx.clamp_min(0), vals.double() * (idx >= 0))
    for dtype in (torch.float32, torch.bfloat16):
        W = w["W_dec"].to(dtype)
        got = sn.functional.decode(vals, idx, W, w["b_dec"])
        torch.testing.assert_close(got.double(), dense @ W.double() + w["b_dec"].double(), atol=1e-5, rtol=1e-5)


def test_decode_strided_weights():
    w = make_weights(15, 33)
    Wt = w["W_dec"].t().contiguous().t()
    vals, idx = _codes(7, 4, 33)
    torch.testing.assert_close(sn.functional.decode(vals, idx, Wt, w["b_dec"]),
                               sn.functional.decode(vals, idx, w["W_dec"], w["b_dec"]))


def test_to_dense_round_trip():
    sae, ref = make_pair(16, 64, "jumprelu")
    x = randn(3, 4, 16)
    codes = sae.encode(x)
    dense = codes.to_dense()
    assert dense.shape == (3, 4, 64)
    torch.testing.assert_close(dense.reshape(-1, 64).double(), ref.dense(x.reshape(-1, 16)), atol=1e-5, rtol=1e-5)
    assert torch.equal((dense != 0).sum(-1), codes.counts)
