"""Fused encode against the float64 reference: TopK, JumpReLU and ReLU, odd sizes, dtypes."""
import math

import pytest
import torch

import sae_native as sn
from helpers import (SIZES_D_IN, SIZES_D_SAE, check_threshold_codes, check_topk_codes, make_pair,
                     make_weights, randn)
from reference import RefSAE

pytestmark = pytest.mark.usefixtures("encode_path")   # every test on both encode paths (conftest.py)


@pytest.mark.parametrize("d_in", SIZES_D_IN)
@pytest.mark.parametrize("d_sae", SIZES_D_SAE)
def test_topk_matches_reference(isa, d_in, d_sae):
    for k in sorted({1, max(1, d_sae // 3), d_sae}):
        sae, ref = make_pair(d_in, d_sae, "topk", k, seed=d_in * 1000 + d_sae)
        x = randn(11, d_in, seed=k)
        check_topk_codes(sae.encode(x), ref, x)


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
@pytest.mark.parametrize("d_in", SIZES_D_IN)
@pytest.mark.parametrize("d_sae", SIZES_D_SAE)
def test_threshold_matches_reference(isa, activation, d_in, d_sae):
    sae, ref = make_pair(d_in, d_sae, activation, seed=d_in * 1000 + d_sae)
    x = randn(9, d_in, seed=3)
    check_threshold_codes(sae.encode(x), ref, x)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 33, 130, 517])
@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_batch_sizes_and_threads(isa, threads, thread_pool, n, activation):
    # Sizes that exercise both work splits: rows only, and latents split across threads (small n).
    sae, ref = make_pair(48, 1031, activation, 17, seed=n)
    x = randn(n, 48, seed=n)
    codes = sae.encode(x)
    (check_topk_codes if activation == "topk" else check_threshold_codes)(codes, ref, x)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_same_result_for_any_thread_count(activation):
    sae, _ = make_pair(40, 2000, activation, 23, seed=5)
    x = randn(70, 40, seed=9)
    results = []
    before = sn.get_num_threads()
    try:
        for t in (1, 2, 3, 4):
            sn.set_num_threads(t)
            c = sae.encode(x)
            results.append((c.values, c.indices))
    finally:
        sn.set_num_threads(before)
    for v, i in results[1:]:
        assert torch.equal(v, results[0][0]) and torch.equal(i, results[0][1])


def test_leading_dimensions(isa):
    sae, ref = make_pair(24, 100, "topk", 7)
    x = randn(2, 3, 5, 24)
    codes = sae.encode(x)
    assert codes.values.shape == (2, 3, 5, 7) and codes.indices.shape == (2, 3, 5, 7)
    assert codes.counts.shape == (2, 3, 5)
    flat = sae.encode(x.reshape(-1, 24))
    assert torch.equal(codes.values.reshape(-1, 7), flat.values)
    check_topk_codes(codes, ref, x)
    sae_t, ref_t = make_pair(24, 100, "jumprelu")
    codes_t = sae_t.encode(x)
    assert codes_t.values.shape[:3] == (2, 3, 5) and codes_t.counts.shape == (2, 3, 5)
    check_threshold_codes(codes_t, ref_t, x)


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_empty_batch(activation):
    sae, _ = make_pair(16, 50, activation, 4)
    codes = sae.encode(torch.empty(0, 16))
    assert codes.values.shape[0] == 0 and codes.indices.shape[0] == 0 and codes.counts.shape == (0,)
    codes = sae.encode(torch.empty(3, 0, 16))
    assert codes.values.shape[:2] == (3, 0)
    assert sae(torch.empty(0, 16)).shape == (0, 16)
    assert sae.decode(sae.encode(torch.empty(0, 16))).shape == (0, 16)


def test_non_contiguous_input(isa):
    sae, ref = make_pair(20, 64, "topk", 5)
    big = randn(30, 40)
    x = big[::3, ::2]  # strided rows and columns
    assert not x.is_contiguous()
    codes = sae.encode(x)
    check_topk_codes(codes, ref, x)
    assert torch.equal(codes.values, sae.encode(x.contiguous()).values)


def test_non_contiguous_weights(isa):
    # sparsify stores encoder.weight as [d_sae, d_in]; its transpose is a strided W_enc.
    w = make_weights(19, 45, "topk", 6)
    w["W_enc"] = w["W_enc"].t().contiguous().t()
    w["W_dec"] = w["W_dec"].t().contiguous().t()
    assert not w["W_enc"].is_contiguous()
    sae, ref = sn.SAE(**w), RefSAE(**w)
    x = randn(13, 19)
    check_topk_codes(sae.encode(x), ref, x)
    torch.testing.assert_close(sae(x).double(), ref.decode_dense(ref.dense(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_16bit_weights(isa, wdtype, activation):
    # The reference uses the same rounded weights widened to float64: only accumulation differs.
    sae, ref = make_pair(33, 130, activation, 9, dtype=wdtype)
    x = randn(21, 33)
    codes = sae.encode(x)
    assert codes.values.dtype == torch.float32
    (check_topk_codes if activation == "topk" else check_threshold_codes)(codes, ref, x)


@pytest.mark.parametrize("d_in", SIZES_D_IN)
@pytest.mark.parametrize("n", [1, 5, 9, 17])
def test_bf16_weights_odd_sizes(isa, d_in, n):
    """The bf16 dot-product tile pairs rows of d_in (an odd d_in leaves one unpaired) and runs 1-8
    rows x 1-4 panels; every edge against the reference (u rounded to bf16 where the variant
    does that)."""
    for d_sae, k in ((1, 1), (17, 3), (97, 5), (257, 9)):
        sae, ref = make_pair(d_in, d_sae, "topk", k, dtype=torch.bfloat16, seed=d_sae)
        x = randn(n, d_in, seed=d_in)
        check_topk_codes(sae.encode(x), ref, x)


def test_bf16_dot_products_round_u_as_documented(encode_path):
    """On a variant with bf16 dot products the own kernels multiply bf16(x - b_dec): the codes'
    values match the rounded-u reference to float32 rounding, and differ from the exact one by
    more (a kernel silently widening instead would fail the first check's tolerance or this)."""
    sae, ref = make_pair(64, 96, "topk", 96, dtype=torch.bfloat16)
    x = randn(8, 64)
    codes = sae.encode(x)
    check_topk_codes(codes, ref, x)
    exact = (x.double() - ref.d(ref.b_dec)) @ ref.d(ref.W_enc) + ref.d(ref.b_enc)
    got = codes.to_dense().double()
    gap = float((got - exact.relu()).abs().max())
    if ref.rounds_u():
        assert gap > 1e-4, "u was not rounded to bf16"
    else:
        assert gap < 1e-4


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_float64_path(isa, activation):
    sae, ref = make_pair(29, 77, activation, 8, dtype=torch.float64)
    x = randn(10, 29, dtype=torch.float64)
    codes = sae.encode(x)
    assert codes.values.dtype == torch.float64
    torch.testing.assert_close(codes.to_dense(), ref.dense(x), atol=1e-12, rtol=1e-12)


def test_activation_dtype_follows_input():
    sae, ref = make_pair(16, 40, "topk", 4)
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        x = randn(5, 16).to(dt)
        assert sae.encode(x).values.dtype == torch.float32
        assert sae(x).dtype == dt


def test_apply_b_dec_to_input_false(isa):
    sae, ref = make_pair(18, 60, "topk", 5, apply_b_dec_to_input=False)
    x = randn(7, 18)
    check_topk_codes(sae.encode(x), ref, x)


def test_k_equals_d_sae_orders_everything():
    sae, ref = make_pair(8, 12, "topk", 12)
    x = randn(6, 8)
    codes = sae.encode(x)
    assert torch.equal(torch.sort(codes.indices, -1).values, torch.arange(12).expand(6, 12))
    torch.testing.assert_close(codes.to_dense().double(), ref.dense(x), atol=1e-6, rtol=0)


def test_exact_ties_go_to_the_lower_index():
    # Duplicate columns give bit-identical pre-activations: the lower latent must win.
    d_in, d_sae = 10, 40
    w = make_weights(d_in, d_sae, "topk", 3)
    w["W_enc"][:, 20:] = w["W_enc"][:, :20]
    w["b_enc"][20:] = w["b_enc"][:20]
    sae = sn.SAE(**w)
    codes = sae.encode(randn(50, d_in))
    chosen = codes.indices
    for row in chosen.tolist():
        for i in row:
            if i >= 20:  # a twin is chosen only with its lower twin, which comes first
                assert i - 20 in row and row.index(i - 20) < row.index(i)
    # k = 3 cuts a tied pair in every row: the lower twin of the pair at the cut wins.
    assert (chosen[:, 2] < 20).all()
    # All-zero rows of W_enc with equal bias: every pre-activation ties.
    w2 = make_weights(d_in, d_sae, "topk", 5)
    w2["W_enc"].zero_()
    w2["b_enc"].fill_(0.25)
    codes = sn.SAE(**w2).encode(randn(4, d_in))
    assert torch.equal(codes.indices, torch.arange(5).expand(4, 5))


def test_nonpositive_topk_values_are_zero_and_sorted_by_index():
    w = make_weights(6, 30, "topk", 4)
    w["b_enc"].fill_(-100.0)  # every pre-activation negative
    sae, ref = sn.SAE(**w), RefSAE(**w)
    x = randn(3, 6)
    codes = sae.encode(x)
    assert (codes.values == 0).all() and (codes.counts == 0).all()
    check_topk_codes(codes, ref, x)
    assert (codes.indices.diff(dim=-1) > 0).all()


def test_nan_inputs_follow_the_dense_formula():
    # NaN ranks above every number (torch.topk's rule); values are NaN, never garbage.
    sae, ref = make_pair(12, 50, "topk", 4)
    x = randn(5, 12)
    x[2, 3] = math.nan
    codes = sae.encode(x)
    assert torch.isnan(codes.values[2]).all()
    assert torch.equal(codes.indices[2], torch.arange(4))
    ok = torch.tensor([0, 1, 3, 4])
    check_topk_codes(sn.SparseCodes(codes.values[ok], codes.indices[ok], 50), ref, x[ok])
    assert torch.isnan(sae(x)[2]).all() and torch.isfinite(sae(x)[ok]).all()
    # Threshold SAEs: z = relu(pre) * (pre > thr) is NaN at every latent of a NaN row; the dense
    # formula keeps them all with nan="propagate" (the default keeps one: tests/test_nonfinite.py).
    sae_t, _ = make_pair(12, 50, "jumprelu")
    codes_t = sae_t.encode(x, nan="propagate")
    assert int(codes_t.counts[2]) == 50 and torch.isnan(codes_t.values[2]).all()
    assert torch.isnan(codes_t.to_dense()[2]).all()


def test_infinite_inputs_do_not_crash():
    sae, _ = make_pair(12, 50, "topk", 4)
    x = randn(3, 12)
    x[0, :] = math.inf
    x[1, :] = -math.inf
    codes = sae.encode(x)
    assert codes.values.shape == (3, 4)
    assert ((codes.indices >= 0) & (codes.indices < 50)).all()
    assert (torch.sort(codes.indices, -1).values.diff(dim=-1) > 0).all()


def test_weights_changed_in_place_are_repacked():
    sae, _ = make_pair(16, 64, "topk", 4)
    x = randn(8, 16)
    before = sae.encode(x)
    with torch.no_grad():
        sae.W_enc.mul_(-1.0)
    w = dict(W_enc=sae.W_enc, b_enc=sae.b_enc, W_dec=sae.W_dec, b_dec=sae.b_dec, k=4)
    after, ref = sae.encode(x), RefSAE(**w)
    assert not torch.equal(before.indices, after.indices)
    check_topk_codes(after, ref, x)


def test_functional_encode_matches_sae():
    w = make_weights(20, 90, "jumprelu")
    sae = sn.SAE(**w)
    x = randn(6, 20)
    a = sae.encode(x)
    b = sn.functional.encode(x, w["W_enc"], w["b_enc"], activation="jumprelu", threshold=w["threshold"],
                             b_dec=w["b_dec"])
    assert torch.equal(a.values, b.values) and torch.equal(a.indices, b.indices)


def test_refresh_after_writes_through_data():
    # .data writes bypass the version counter; refresh() re-reads W_enc.
    sae, _ = make_pair(16, 64, "topk", 4)
    x = randn(8, 16)
    sae.W_enc.data.mul_(-1.0)
    sae.refresh()
    w = dict(W_enc=sae.W_enc, b_enc=sae.b_enc, W_dec=sae.W_dec, b_dec=sae.b_dec, k=4)
    check_topk_codes(sae.encode(x), RefSAE(**w), x)


@pytest.mark.parametrize("d_sae,k", [(1, 1), (12, 3), (97, 97), (128, 8), (255, 5), (1000, 40)])
@pytest.mark.parametrize("n", [1, 6, 133])
def test_groupmax_matches_reference(isa, threads, d_sae, k, n):
    from helpers import check_groupmax_codes
    sae, ref = make_pair(19, d_sae, "groupmax", k, seed=d_sae + n)
    x = randn(n, 19, seed=n)
    check_groupmax_codes(sae.encode(x), ref, x)
    torch.testing.assert_close(sae(x).double(), ref.decode_dense(ref.dense(x)), atol=2e-5, rtol=2e-5)


def test_groupmax_all_negative_groups_pick_the_first_latent():
    w = make_weights(6, 20, "groupmax", 4)
    w["b_enc"].fill_(-100.0)
    codes = sn.SAE(**w).encode(randn(3, 6))
    assert (codes.values == 0).all()
    assert torch.equal(torch.sort(codes.indices, -1).values, torch.tensor([0, 5, 10, 15]).expand(3, 4))


def test_groupmax_k_must_divide_d_sae():
    with pytest.raises(ValueError, match=r"k: a groupmax SAE splits d_sae=20 into k equal groups; 3 does not divide"):
        sn.SAE(**make_weights(6, 20, "groupmax", 3))


@pytest.mark.parametrize("normalize", ["constant_norm_rescale", "layer_norm"])
@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_input_normalization(normalize, activation):
    sae, ref = make_pair(24, 80, activation, 6, normalize=normalize)
    x = 3.0 * randn(2, 5, 24) + 1.5
    codes = sae.encode(x)
    (check_topk_codes if activation == "topk" else check_threshold_codes)(codes, ref, x)
    want = ref.decode_dense(ref.dense(x.reshape(-1, 24)), x.reshape(-1, 24)).reshape(2, 5, 24)
    torch.testing.assert_close(sae(x).double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(codes), sae(x))
    with pytest.raises(ValueError, match=r"codes: this SAE normalizes its input \(" + normalize):
        sae.decode((codes.values, codes.indices))
    for keep_error in (True, False):
        got = sae.steer(x, {3: 4.0}, keep_error=keep_error)
        torch.testing.assert_close(got.double(), ref.steer(x.reshape(-1, 24), {3: 4.0}, "set", keep_error, "always")
                                   .reshape(2, 5, 24), atol=1e-4, rtol=1e-4)
    assert torch.equal(sae.steer(x, {}), x)
