"""Bad input raises ValueError/TypeError naming the argument and what was expected."""
import math

import pytest
import torch

import sae_native as sn
from helpers import make_pair, make_weights, randn


def _w(**over):
    w = make_weights(8, 20, over.pop("activation", "topk"), 4)
    w.update(over)
    return w


@pytest.mark.parametrize("over,exc,match", [
    (dict(W_enc=torch.randn(8)), ValueError, r"W_enc: expected shape \[d_in, d_sae\]"),
    (dict(W_enc=torch.randn(0, 20)), ValueError, r"W_enc: expected d_in >= 1"),
    (dict(W_enc=[[1.0]]), TypeError, r"W_enc: expected a torch.Tensor"),
    (dict(b_enc=torch.randn(19)), ValueError, r"b_enc: expected shape \[20\], got \[19\]"),
    (dict(W_dec=torch.randn(8, 20)), ValueError, r"W_dec: expected shape \[20, 8\], got \[8, 20\]"),
    (dict(b_dec=torch.randn(8, 1)), ValueError, r"b_dec: expected shape \[8\]"),
    (dict(k=0), ValueError, r"k: expected an int in \[1, d_sae=20\], got 0"),
    (dict(k=21), ValueError, r"k: expected an int in \[1, d_sae=20\], got 21"),
    (dict(k=None), TypeError, r"k: expected an int"),
    (dict(k=2.0), TypeError, r"k: expected an int"),
    (dict(k=True), TypeError, r"k: expected an int"),
    (dict(activation="gelu"), ValueError, r"activation: expected one of"),
    (dict(activation="relu", k=3), ValueError, r"k: only topk and groupmax SAEs take k"),
    (dict(activation="jumprelu", k=None, threshold=None), ValueError, r"threshold: a jumprelu SAE needs"),
    (dict(activation="jumprelu", k=None, threshold=torch.ones(3)), ValueError, r"threshold: expected shape \[20\]"),
    (dict(activation="jumprelu", k=None, threshold=torch.tensor([math.nan] + [0.1] * 19)), ValueError,
     r"threshold: expected finite values, got nan at latent 0"),
    (dict(activation="jumprelu", k=None, threshold=torch.tensor([0.1] * 5 + [math.inf] + [0.1] * 14)), ValueError,
     r"threshold: expected finite values, got inf at latent 5"),
    (dict(threshold=torch.ones(20)), ValueError, r"threshold: only jumprelu SAEs take a threshold"),
    (dict(W_enc=torch.randn(8, 20, dtype=torch.float64)), TypeError, r"W_dec: expected the dtype of W_enc"),
    (dict(b_enc=torch.zeros(20, dtype=torch.int64)), TypeError, r"b_enc: expected float32, bfloat16"),
    (dict(W_enc=torch.randn(8, 20).to(torch.float8_e4m3fn)), TypeError, r"W_enc: expected float32"),
    (dict(b_enc=torch.zeros(20, device="meta")), ValueError, r"b_enc: expected device cpu"),
    (dict(apply_b_dec_to_input=1), TypeError, r"apply_b_dec_to_input: expected a bool"),
])
def test_constructor_errors(over, exc, match):
    w = _w(**over)
    with pytest.raises(exc, match=match):
        sn.SAE(**w)


@pytest.mark.parametrize("x,exc,match", [
    (torch.randn(3, 7), ValueError, r"x: expected shape \[\.\.\., d_in=8\], got \[3, 7\]"),
    (torch.tensor(1.0), ValueError, r"x: expected shape \[\.\.\., d_in=8\], got \[\]"),
    (torch.ones(3, 8, dtype=torch.int64), TypeError, r"x: expected a floating-point tensor, got torch.int64"),
    (torch.randn(3, 8, device="meta"), ValueError, r"x: expected device cpu"),
    ([[0.0] * 8], TypeError, r"x: expected a torch.Tensor, got list"),
])
def test_input_errors(x, exc, match):
    sae, _ = make_pair(8, 20, "topk", 4)
    for call in (sae.encode, sae, lambda x: sae.steer(x, {1: 1.0})):
        with pytest.raises(exc, match=match):
            call(x)


@pytest.mark.parametrize("clamp,exc,match", [
    ({20: 1.0}, ValueError, r"clamp: feature 20 is out of range \[0, d_sae=20\)"),
    ({-1: 1.0}, ValueError, r"clamp: feature -1 is out of range"),
    ({1.5: 1.0}, TypeError, r"clamp: feature ids must be integers"),
    ({True: 1.0}, TypeError, r"clamp: feature ids must be integers"),
    ({1: math.nan}, ValueError, r"clamp: the value for feature 1 must be finite"),
    ({1: "big"}, TypeError, r"clamp: the value for feature 1 must be a number"),
    ((torch.tensor([1, 1]), torch.tensor([1.0, 2.0])), ValueError, r"clamp: features must be distinct"),
    ((torch.tensor([1, 25]), torch.tensor([1.0, 2.0])), ValueError, r"clamp: feature 25 is out of range"),
    ((torch.tensor([1.0]), torch.tensor([1.0])), TypeError, r"clamp: features must be a 1-D integer tensor"),
    ((torch.tensor([1, 2]), torch.tensor([1.0])), ValueError, r"clamp: values must be a floating tensor of shape \[2\]"),
    ((torch.tensor([1]), torch.tensor([math.inf])), ValueError, r"clamp: values must be finite"),
    ([1, 2, 3], TypeError, r"clamp: expected a dict"),
    (5, TypeError, r"clamp: expected a dict"),
    # A list of pairs once read as features [1, 5] with values [2, 7]: ambiguous, refused.
    ([(1, 5), (2, 7)], TypeError, r"clamp: expected a dict .*a list is ambiguous \(\[\(1, 5\), \(2, 7\)\]"),
    ([[1, 5], [2.0, 7.0]], TypeError, r"a list is ambiguous"),
    (((1, 5), (2, 7)), TypeError, r"clamp: \(\(1, 5\), \(2, 7\)\) is ambiguous \(two \(feature, value\) pairs"),
])
def test_clamp_errors(clamp, exc, match):
    for activation in ("topk", "jumprelu"):
        sae, _ = make_pair(8, 20, activation, 4)
        with pytest.raises(exc, match=match):
            sae.steer(randn(2, 8), clamp)


def test_mode_where_keep_error_errors():
    sae, _ = make_pair(8, 20, "topk", 4)
    x = randn(2, 8)
    with pytest.raises(ValueError, match=r"mode: expected one of \('set', 'scale', 'add'\), got 'clamp'"):
        sae.steer(x, {1: 1.0}, mode="clamp")
    with pytest.raises(ValueError, match=r"where: expected one of \('always', 'active'\), got 'never'"):
        sae.steer(x, {1: 1.0}, where="never")
    with pytest.raises(TypeError, match=r"keep_error: expected a bool"):
        sae.steer(x, {1: 1.0}, keep_error="yes")


def test_decode_errors():
    sae, _ = make_pair(8, 20, "topk", 4)
    vals = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"indices: expected latents in \[0, d_sae=20\) or -1 for padding, got 20"):
        sae.decode((vals, torch.tensor([[0, 1, 2, 20]] * 3)))
    with pytest.raises(ValueError, match=r"got -2"):
        sae.decode((vals, torch.tensor([[0, 1, 2, -2]] * 3)))
    with pytest.raises(TypeError, match=r"indices: expected int64"):
        sae.decode((vals, torch.zeros(3, 4, dtype=torch.int32)))
    with pytest.raises(ValueError, match=r"indices: expected the shape of values"):
        sae.decode((vals, torch.zeros(3, 5, dtype=torch.int64)))
    with pytest.raises(TypeError, match=r"codes: expected SparseCodes or a pair"):
        sae.decode(vals)
    with pytest.raises(TypeError, match=r"values: expected a floating-point tensor"):
        sae.decode((torch.ones(3, 4, dtype=torch.int64), torch.zeros(3, 4, dtype=torch.int64)))
    other, _ = make_pair(8, 30, "topk", 4)
    with pytest.raises(ValueError, match=r"codes: expected codes of an SAE with d_sae=20, got d_sae=30"):
        sae.decode(other.encode(randn(2, 8)))
    w = make_weights(8, 20)
    with pytest.raises(ValueError, match=r"b_dec: expected shape \[8\]"):
        sn.functional.decode(vals, torch.zeros(3, 4, dtype=torch.int64), w["W_dec"], torch.zeros(9))


def test_ops_called_directly_validate():
    # torch.ops.sae_native.* are reachable directly; their checks keep memory safe.
    ops = torch.ops.sae_native
    w = make_weights(8, 20)
    with pytest.raises(ValueError, match=r"sae_native::encode_topk: k must be in \[1, d_sae=20\], got 0"):
        ops.encode_topk(randn(2, 8), w["W_enc"], w["b_enc"], None, 0, None)
    with pytest.raises(ValueError, match=r"sae_native::encode_topk: x must be \[n, 8\]"):
        ops.encode_topk(randn(2, 9), w["W_enc"], w["b_enc"], None, 3, None)
    with pytest.raises(ValueError, match=r"sae_native::encode_topk: packed must be"):
        ops.encode_topk(randn(2, 8), w["W_enc"], w["b_enc"], None, 3, torch.zeros(5))
    with pytest.raises(ValueError, match=r"sae_native::decode: indices must be an int64"):
        ops.decode(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.int32), w["W_dec"], None)
    with pytest.raises(ValueError, match=r"sae_native::steer_codes: features must lie in \[0, 20\)"):
        ops.steer_codes(randn(2, 8), torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.int64), w["W_dec"], None,
                        torch.tensor([99]), torch.tensor([1.0]), "set", False, True)
    with pytest.raises(ValueError, match=r"sae_native::steer_threshold: mode must be one of"):
        ops.steer_threshold(randn(2, 8), w["W_enc"], w["b_enc"], w["W_dec"], None, None, torch.tensor([1]),
                            torch.tensor([1.0]), "bogus", False)
    with pytest.raises(ValueError, match=r"W_enc must be one of \['torch.float64'\] with torch.float64"):
        ops.encode_topk(randn(2, 8).double(), w["W_enc"], w["b_enc"], None, 3, None)
    # Out-of-range indices are never read: the kernels skip and count them, then the op raises.
    with pytest.raises(ValueError, match=r"sae_native::decode: indices: .* got 1000000000000 \(2 out of range\)"):
        ops.decode(torch.ones(1, 2), torch.tensor([[10**12, -7]]), w["W_dec"], None)
    with pytest.raises(ValueError, match=r"sparse_outer_add_: out must have contiguous rows or columns, got strides "
                                         r"\(0, 1\)"):
        ops.sparse_outer_add_(torch.zeros(1, 8).expand(20, 8), torch.ones(1, 1), torch.tensor([[3]]), randn(1, 8))
    with pytest.raises(ValueError, match=r"sparse_outer_add_: out must be torch.float32 \[rows, 8\], got "
                                         r"torch.float64 \[20, 8\]"):
        ops.sparse_outer_add_(torch.zeros(20, 8, dtype=torch.float64), torch.ones(1, 1), torch.tensor([[3]]),
                              randn(1, 8))
    with pytest.raises(ValueError, match=r"sparse_outer_add_: out must be a 2-D tensor \[rows, 8\], got \[160\]"):
        ops.sparse_outer_add_(torch.zeros(160), torch.ones(1, 1), torch.tensor([[3]]), randn(1, 8))
    for call in (lambda: ops.sparse_dot(randn(1, 8), torch.tensor([[20]]), w["W_dec"]),
                 lambda: ops.sparse_outer_add_(torch.zeros(20, 8), torch.ones(1, 1), torch.tensor([[-5]]),
                                               randn(1, 8)),
                 lambda: ops.sparse_outer(torch.ones(1, 1), torch.tensor([[-5]]), randn(1, 8), 20, False),
                 lambda: ops.steer_codes(randn(1, 8), torch.ones(1, 1), torch.tensor([[99]]), w["W_dec"], None,
                                         torch.tensor([1]), torch.tensor([1.0]), "set", False, False)):
        with pytest.raises(ValueError, match=r"indices: expected latents in \[0, d_sae=20\) or -1 for padding"):
            call()


def test_a_device_without_native_kernels_runs_the_torch_ones():
    # MPS, XPU (or CUDA in a build without the CUDA module) run backends/default.py: slowly, but they
    # run. tests/test_backends.py checks those kernels against the reference on every op.
    from sae_native.backends import default, registry
    for op in registry.OPS:
        assert registry.kernel(op, "mps") is getattr(default, op)
    assert registry.kernel("decode", "cpu") is not default.decode


def test_meta_tensors_give_shapes():
    # Meta tensors run the fake kernels: shape inference without computing.
    sae, _ = make_pair(8, 20, "topk", 4)
    meta = sae.to("meta")
    codes = meta.encode(torch.empty(5, 3, 8, device="meta"))
    assert codes.values.shape == (5, 3, 4) and codes.values.device.type == "meta"
    assert meta.steer(torch.empty(2, 8, device="meta"), ([1], [2.0])).shape == (2, 8)
