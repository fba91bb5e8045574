"""Property tests (hypothesis): random shapes, k, activations and data against the reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sae_native as sn
from helpers import check_threshold_codes, check_topk_codes, make_weights
from reference import RefSAE

pytestmark = pytest.mark.usefixtures("encode_path")   # every test on both encode paths (conftest.py)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def problems(draw):
    d_in = draw(st.integers(1, 40))
    d_sae = draw(st.integers(1, 300))
    activation = draw(st.sampled_from(["topk", "jumprelu", "relu"]))
    k = draw(st.integers(1, d_sae)) if activation == "topk" else None
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float64]))
    apply_b_dec = draw(st.booleans())
    return d_in, d_sae, activation, k, n, seed, dtype, apply_b_dec


def _build(p):
    d_in, d_sae, activation, k, n, seed, dtype, apply_b_dec = p
    w = make_weights(d_in, d_sae, activation, k, dtype=dtype, seed=seed, apply_b_dec_to_input=apply_b_dec)
    xdtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed + 1)).to(xdtype)
    return sn.SAE(**w), RefSAE(**w), x


@SETTINGS
@given(problems())
def test_encode_matches_reference(p):
    sae, ref, x = _build(p)
    codes = sae.encode(x)
    (check_topk_codes if ref.activation == "topk" else check_threshold_codes)(codes, ref, x)


@SETTINGS
@given(problems())
def test_decode_of_codes_matches_dense_decode(p):
    sae, ref, x = _build(p)
    codes = sae.encode(x)
    got = sae.decode(codes).double()
    want = ref.decode_dense(codes.to_dense())
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@SETTINGS
@given(problems(), st.sampled_from(["set", "scale", "add"]), st.sampled_from(["always", "active"]),
       st.booleans(), st.floats(-20, 20, allow_nan=False), st.data())
def test_steer_equals_decode_of_clamped_codes(p, mode, where, keep_error, value, data):
    # Steering is the decode of the codes with the clamped features replaced (keep_error adds the
    # SAE error x - decode(z)); checked against our own codes so rounding of near-ties can't differ.
    sae, ref, x = _build(p)
    f = data.draw(st.integers(0, sae.d_sae - 1))
    codes = sae.encode(x)
    z = codes.to_dense().double()
    z2 = z.clone()
    new = {"set": torch.full_like(z[:, f], value), "scale": value * z[:, f], "add": z[:, f] + value}[mode]
    z2[:, f] = torch.where(z[:, f] > 0, new, z[:, f]) if where == "active" else new
    want = ref.decode_dense(z2)
    if keep_error:
        want = want + x.double() - ref.decode_dense(z)
    got = sae.steer(x, {f: value}, mode=mode, keep_error=keep_error, where=where).double()
    scale = 1 + abs(value) + float(z.abs().max()) if z.numel() else 1
    torch.testing.assert_close(got, want, atol=1e-4 * scale, rtol=1e-4)
