"""Clamped reconstruction (steering) against the float64 reference, every mode and path."""
import itertools

import pytest
import torch

import sae_native as sn
from helpers import make_pair, make_weights, randn

pytestmark = pytest.mark.usefixtures("encode_path")   # every test on both encode paths (conftest.py)

MODES = ["set", "scale", "add"]
WHERE = ["always", "active"]


def _clamp_for(sae, x, seed=0):
    """A clamp over features that fire somewhere and features that never do."""
    codes = sae.encode(x)
    fired = torch.unique(codes.indices[codes.values > 0]).tolist()
    g = torch.Generator().manual_seed(seed)
    picks = [fired[int(i)] for i in torch.randperm(len(fired), generator=g)[:3]] if fired else []
    silent = [f for f in range(sae.d_sae) if f not in fired][:2]
    return {f: float(v) for f, v in zip(picks + silent, [5.0, 0.0, 2.5, 7.0, -1.5])}


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize("mode,where,keep_error", list(itertools.product(MODES, WHERE, [True, False])))
def test_steer_matches_reference(threads, activation, mode, where, keep_error):
    sae, ref = make_pair(23, 97, activation, 11, seed=4)
    x = randn(17, 23, seed=2)
    clamp = _clamp_for(sae, x)
    got = sae.steer(x, clamp, mode=mode, keep_error=keep_error, where=where)
    want = ref.steer(x, clamp, mode, keep_error, where)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("d_in,d_sae", [(1, 1), (1, 5), (7, 1), (13, 31), (17, 16)])
def test_steer_odd_sizes(d_in, d_sae):
    for activation in ("topk", "jumprelu"):
        sae, ref = make_pair(d_in, d_sae, activation, 1)
        x = randn(5, d_in)
        clamp = {d_sae - 1: 3.0}
        for keep_error in (True, False):
            got = sae.steer(x, clamp, keep_error=keep_error)
            torch.testing.assert_close(got.double(), ref.steer(x, clamp, "set", keep_error, "always"),
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_threshold_fast_path_equals_codes_path(activation):
    # keep_error on threshold SAEs reads only the clamped columns; the general path must agree.
    w = make_weights(40, 300, activation)
    sae = sn.SAE(**w)
    x = randn(25, 40)
    clamp = _clamp_for(sae, x)
    fast = sae.steer(x, clamp)
    features = torch.tensor(list(clamp), dtype=torch.int64)
    targets = torch.tensor(list(clamp.values()))
    codes = sae.encode(x)
    slow, _ = torch.ops.sae_native.steer_codes(x, codes.values, codes.indices, w["W_dec"], w["b_dec"], features,
                                              targets, "set", False, True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_exact_single_feature_formula():
    # y = x + (v - z_f) W_dec[f] at every position (what the hooks issue relies on).
    sae, ref = make_pair(30, 120, "jumprelu")
    x = randn(3, 4, 30)
    f, v = 17, 9.0
    z = sae.encode(x).to_dense()[..., f]
    y = sae.steer(x, {f: v})
    torch.testing.assert_close(y, x + (v - z)[..., None] * sae.W_dec[f], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_empty_clamp(activation):
    sae, _ = make_pair(20, 50, activation, 5)
    x = randn(6, 20)
    assert torch.equal(sae.steer(x, {}), x)
    torch.testing.assert_close(sae.steer(x, {}, keep_error=False), sae(x))


def test_clamp_as_tensor_pair_and_leading_dims():
    sae, _ = make_pair(20, 50, "topk", 5)
    x = randn(2, 3, 20)
    a = sae.steer(x, {3: 2.0, 7: 1.0})
    b = sae.steer(x, (torch.tensor([3, 7]), torch.tensor([2.0, 1.0])))
    c = sae.steer(x, ([3, 7], [2.0, 1.0]))
    assert a.shape == (2, 3, 20)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_steer_empty_batch():
    for activation in ("topk", "jumprelu"):
        sae, _ = make_pair(8, 20, activation, 3)
        for keep_error in (True, False):
            assert sae.steer(torch.empty(0, 8), {1: 1.0}, keep_error=keep_error).shape == (0, 8)


def test_steer_bf16_model_activations():
    # A bf16 model's activations with an fp32 SAE: computed in fp32, returned in bf16.
    sae, ref = make_pair(16, 40, "jumprelu")
    x = randn(5, 16).to(torch.bfloat16)
    y = sae.steer(x, {2: 4.0})
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), ref.steer(x.float(), {2: 4.0}, "set", True, "always"), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float64])
def test_steer_weight_dtypes(wdtype):
    sae, ref = make_pair(16, 40, "topk", 4, dtype=wdtype)
    xdtype = torch.float64 if wdtype == torch.float64 else torch.float32
    x = randn(5, 16, dtype=xdtype)
    tol = 1e-10 if wdtype == torch.float64 else 1e-4
    for keep_error in (True, False):
        torch.testing.assert_close(sae.steer(x, {2: 4.0}, keep_error=keep_error).double(),
                                   ref.steer(x, {2: 4.0}, "set", keep_error, "always"), atol=tol, rtol=tol)


def test_functional_steer_matches_sae():
    w = make_weights(12, 44, "jumprelu")
    sae = sn.SAE(**w)
    x = randn(4, 12)
    assert torch.equal(sae.steer(x, {5: 3.0}, mode="add"), sn.functional.steer(x, **w, clamp={5: 3.0}, mode="add"))


@pytest.mark.parametrize("activation, keep_error", [("jumprelu", True), ("topk", True), ("topk", False)])
def test_a_parsed_clamp_made_or_changed_by_hand_is_checked_again(activation, keep_error):
    # SAE.steer skips re-checking parse_clamp's output (on a GPU the check is a synchronisation per
    # call); a ParsedClamp built by hand, or edited in place after parsing, is checked as any clamp.
    from sae_native._clamp import ParsedClamp
    sae, _ = make_pair(16, 40, activation, 4)
    x = randn(3, 16)
    with pytest.raises(ValueError, match=r"out of range \[0, d_sae=40\)"):
        sae.steer(x, ParsedClamp(torch.tensor([40]), torch.tensor([1.0])), keep_error=keep_error)
    parsed = sae.parse_clamp({3: 1.0, 7: 2.0})
    sae.steer(x, parsed, keep_error=keep_error)
    parsed.features[1] = -2
    with pytest.raises(ValueError, match="out of range"):
        sae.steer(x, parsed, keep_error=keep_error)
    parsed.features[1] = 3
    with pytest.raises(ValueError, match="distinct"):
        sae.steer(x, parsed, keep_error=keep_error)


def _edited_behind_the_version_counter(parsed, value, how):
    """Writes one feature id in a way torch's version counter does not see."""
    if how == "numpy":
        parsed.features.numpy()[0] = value
    else:
        parsed.features.data[0] = value


@pytest.mark.parametrize("activation, keep_error", [("jumprelu", True), ("jumprelu", False), ("relu", True),
                                                    ("topk", True), ("topk", False)])
@pytest.mark.parametrize("bad", [40, 67, 10**11, -1, -(2**62)])
@pytest.mark.parametrize("how", ["numpy", "data", "inference_mode"])
def test_a_clamp_edited_behind_the_version_counter_never_reaches_memory(activation, keep_error, bad, how):
    # Python skips re-checking a parsed clamp whose version is unchanged; these edits are not seen
    # there, so the kernels themselves must refuse the feature (once: a segfault, or garbage).
    sae, _ = make_pair(16, 40, activation, 4)
    x = randn(3, 16)
    if how == "inference_mode":
        with torch.inference_mode():
            parsed = sae.parse_clamp({1: 5.0, 2: 1.0})
        parsed.features.numpy()[0] = bad
    else:
        parsed = sae.parse_clamp({1: 5.0, 2: 1.0})
        _edited_behind_the_version_counter(parsed, bad, how)
    with pytest.raises(ValueError, match=rf"features must lie in \[0, 40\) \(d_sae\), got {bad}"):
        sae.steer(x, parsed, keep_error=keep_error)


@pytest.mark.parametrize("bad", [40, 10**11, -3])
def test_raw_steer_ops_refuse_out_of_range_features(bad):
    w = make_weights(16, 40, "jumprelu")
    x = randn(3, 16)
    features, targets = torch.tensor([3, bad]), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="steer_threshold: features must lie in"):
        torch.ops.sae_native.steer_threshold(x, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], w["threshold"],
                                             features, targets, "set", False)
    codes = sn.SAE(**w).encode(x)
    for keep_error in (True, False):
        with pytest.raises(ValueError, match="steer_codes: features must lie in"):
            torch.ops.sae_native.steer_codes(x, codes.values, codes.indices, w["W_dec"], w["b_dec"], features,
                                             targets, "set", False, keep_error)
