"""Autograd of the ops in float64: gradcheck against finite differences, and the dense formula."""
import pytest
import torch

import sae_native as sn
from helpers import make_weights, randn

pytestmark = pytest.mark.usefixtures("encode_path")   # every test on both encode paths (conftest.py)

F64 = torch.float64


def _leaf_weights(activation, d_in=6, d_sae=11, k=3, seed=0):
    w = make_weights(d_in, d_sae, activation, k, dtype=F64, seed=seed)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        w[name] = w[name].clone().requires_grad_(True)
    return w


def test_gradcheck_decode():
    w = _leaf_weights("topk")
    idx = torch.tensor([[0, 4, 7], [10, 2, -1], [3, 3 + 1, 9]])
    vals = torch.rand(3, 3, dtype=F64, requires_grad=True)
    W_dec, b_dec = w["W_dec"], w["b_dec"]
    assert torch.autograd.gradcheck(lambda v, W, b: sn.functional.decode(v, idx, W, b), (vals, W_dec, b_dec))
    assert torch.autograd.gradgradcheck is not None  # (double backward is not claimed)


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_gradcheck_encode_values(activation):
    w = _leaf_weights(activation)
    x = randn(4, 6, dtype=F64).requires_grad_(True)
    thr = w["threshold"]

    def f(x, W_enc, b_enc, b_dec):
        return sn.functional.encode(x, W_enc, b_enc, activation=activation, k=w["k"], threshold=thr,
                                    b_dec=b_dec).values

    assert torch.autograd.gradcheck(f, (x, w["W_enc"], w["b_enc"], w["b_dec"]))


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize("mode", ["set", "scale", "add"])
@pytest.mark.parametrize("keep_error", [True, False])
@pytest.mark.parametrize("where", ["always", "active"])
def test_gradcheck_steer(activation, mode, keep_error, where):
    w = _leaf_weights(activation, seed=3)
    x = randn(5, 6, dtype=F64, seed=7).requires_grad_(True)
    targets = torch.tensor([2.0, 0.5], dtype=F64, requires_grad=True)
    features = torch.tensor([1, 8])

    def f(x, W_enc, b_enc, W_dec, b_dec, targets):
        return sn.functional.steer(x, W_enc, b_enc, W_dec, b_dec, (features, targets), activation=activation,
                                   k=w["k"], threshold=w["threshold"], mode=mode, keep_error=keep_error, where=where)

    assert torch.autograd.gradcheck(f, (x, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], targets))


def test_reconstruction_gradient_equals_dense_formula():
    # Gradients of a loss through sae(x) equal those of the dense torch formula (away from ties).
    w = _leaf_weights("topk", d_in=9, d_sae=40, k=5, seed=2)
    x = randn(7, 9, dtype=F64).requires_grad_(True)
    ours = sn.functional.reconstruct(x, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], k=5)
    ours.square().sum().backward()
    got = [t.grad.clone() for t in (x, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"])]
    for t in (x, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"]):
        t.grad = None
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = pre.topk(5, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    (z @ w["W_dec"] + w["b_dec"]).square().sum().backward()
    want = [t.grad for t in (x, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"])]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_float32_gradients_have_weight_dtypes():
    w = make_weights(8, 20, "topk", 4)
    W_enc = w["W_enc"].to(torch.bfloat16).requires_grad_(True)
    W_dec = w["W_dec"].to(torch.bfloat16).requires_grad_(True)
    x = randn(3, 8).requires_grad_(True)
    y = sn.functional.reconstruct(x, W_enc, w["b_enc"], W_dec, w["b_dec"], k=4)
    y.sum().backward()
    assert W_enc.grad.dtype == torch.bfloat16 and W_dec.grad.dtype == torch.bfloat16
    assert x.grad.dtype == torch.float32 and x.grad.shape == x.shape
