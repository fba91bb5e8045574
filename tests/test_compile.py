"""torch.compile(fullgraph=True) traces functions that call the SAE's operations."""
import pytest
import torch

import sae_native as sn  # noqa: F401  (registers the ops)
from helpers import make_pair, randn


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_compile_encode_decode_steer(activation):
    sae, ref = make_pair(24, 90, activation, 6)
    x = randn(10, 24)

    def pipeline(x):
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
        y = sae.steer(x, {3: 5.0, 40: 1.0})
        y2 = sae.steer(x, {3: 5.0}, keep_error=False, mode="scale", where="active")
        return codes.values, codes.indices, x_hat, y, y2

    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    got, want = compiled(x), pipeline(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # A second batch size reuses or retraces without graph breaks.
    x2 = randn(3, 24, seed=5)
    for a, b in zip(compiled(x2), pipeline(x2)):
        torch.testing.assert_close(a, b)


def test_compile_inductor_reconstruction():
    sae, _ = make_pair(16, 50, "topk", 4)
    x = randn(7, 16)
    f = torch.compile(lambda x: sae(x) * 2.0, fullgraph=True)
    torch.testing.assert_close(f(x), sae(x) * 2.0)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_compile_backward_through_reconstruction(activation):
    sae, _ = make_pair(12, 40, activation, 4)
    x = randn(5, 12).requires_grad_(True)
    f = torch.compile(lambda x: sae(x).square().sum(), fullgraph=True, backend="aot_eager")
    f(x).backward()
    g_compiled = x.grad.clone()
    x.grad = None
    sae(x).square().sum().backward()
    torch.testing.assert_close(g_compiled, x.grad)
