"""torch.library.opcheck on every op: schema, fake (meta) kernels, autograd registration, AOT."""
import pytest
import torch

import sae_native as sn  # noqa: F401  (registers the ops)
from helpers import make_weights, randn
from sae_native._packing import PackedEncoder

ops = torch.ops.sae_native


def _w(activation="topk", dtype=torch.float32, grad=False):
    w = make_weights(12, 37, activation, 5, dtype=dtype)
    if grad:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            w[name].requires_grad_(True)
    return w


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_encode_topk(grad, packed):
    w = _w(grad=grad)
    x = randn(6, 12).requires_grad_(grad)
    p = PackedEncoder(w["W_enc"]).get() if packed else None
    torch.library.opcheck(ops.encode_topk, (x, w["W_enc"], w["b_enc"], w["b_dec"], 5, p))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_encode_threshold(grad, activation):
    w = _w(activation, grad=grad)
    x = randn(6, 12).requires_grad_(grad)
    # Data-dependent output width: the dynamic AOT test cannot trace it without real data.
    torch.library.opcheck(ops.encode_threshold, (x, w["W_enc"], w["b_enc"], None, w["threshold"], None),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("grad", [False, True])
def test_decode(grad):
    w = _w(grad=grad)
    vals = torch.rand(6, 4).requires_grad_(grad)
    idx = torch.tensor([[0, 5, 9, -1]] * 6)
    torch.library.opcheck(ops.decode, (vals, idx, w["W_dec"], w["b_dec"]))
    torch.library.opcheck(ops.decode, (vals, idx, w["W_dec"], None))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("mode", ["set", "scale", "add"])
def test_steer_threshold(grad, mode):
    w = _w("jumprelu", grad=grad)
    x = randn(6, 12).requires_grad_(grad)
    feats, targets = torch.tensor([3, 30]), torch.tensor([2.0, 1.5]).requires_grad_(grad)
    torch.library.opcheck(ops.steer_threshold, (x, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], w["threshold"],
                                                feats, targets, mode, False))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("keep_error", [False, True])
def test_steer_codes(grad, keep_error):
    w = _w(grad=grad)
    x = randn(6, 12).requires_grad_(grad)
    vals = torch.rand(6, 4).requires_grad_(grad)
    idx = torch.tensor([[0, 5, 9, 3]] * 6)
    feats, targets = torch.tensor([3, 30]), torch.tensor([2.0, 1.5])
    torch.library.opcheck(ops.steer_codes, (x, vals, idx, w["W_dec"], w["b_dec"], feats, targets, "set", True,
                                            keep_error))


def test_backward_helpers():
    w = _w()
    g = randn(6, 12)
    idx = torch.tensor([[0, 5, 9, -1]] * 6)
    torch.library.opcheck(ops.sparse_dot, (g, idx, w["W_dec"]))
    torch.library.opcheck(ops.sparse_dot, (g, idx, w["W_enc"].t()))
    vals = torch.rand(6, 4)
    torch.library.opcheck(ops.sparse_outer, (vals, idx, g, 37, False))
    torch.library.opcheck(ops.sparse_outer, (vals, idx, g, 37, True))
    torch.library.opcheck(ops.sparse_outer_add_, (randn(37, 12), vals, idx, g))


def test_backward_helpers_match_dense():
    w = _w()
    g = randn(6, 12).double()
    W = w["W_dec"].double()
    idx = torch.tensor([[0, 5, 9, -1]] * 3 + [[36, 1, 2, 4]] * 3)
    vals = torch.rand(6, 4, dtype=torch.float64)
    dots = ops.sparse_dot(g, idx, W)
    want = (g[:, None, :] * W[idx.clamp_min(0)]).sum(-1) * (idx >= 0)
    torch.testing.assert_close(dots, want)
    dense = torch.zeros(6, 37, dtype=torch.float64).scatter_add(-1, idx.clamp_min(0), vals * (idx >= 0))
    torch.testing.assert_close(ops.sparse_outer(vals, idx, g, 37, False), dense.t() @ g)
    torch.testing.assert_close(ops.sparse_outer(vals, idx, g, 37, True), (dense.t() @ g).t())
    for into in (torch.ones(37, 12, dtype=torch.float64), torch.ones(12, 37, dtype=torch.float64).t()):
        ops.sparse_outer_add_(into, vals, idx, g)                 # added to what is there, in place
        torch.testing.assert_close(into, 1 + dense.t() @ g)
