"""Differential fuzzing (hypothesis) of the public API and of the raw ``torch.ops.sae_native`` ops.

Random shapes (0 and 1 included), strides, leading dimensions, weight dtypes, activations, NaN and
inf placed in the input, and tensors edited after the package checked them. The public API is
compared with the float64 reference (tests/reference.py) on every finite row; the raw ops must
return or raise a Python error (ValueError / TypeError / RuntimeError), never crash or read out of
bounds: run this file under tests/sanitize/run.py and any stray access aborts with a report.

CI runs a fixed, derandomized budget. A longer, randomized run is one command:

    SAE_NATIVE_FUZZ_EXAMPLES=3000 python -m pytest tests/test_fuzz.py -q
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sae_native as sn
from helpers import check_groupmax_codes, check_threshold_codes, check_topk_codes
from reference import RefSAE

_LONG = os.environ.get("SAE_NATIVE_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_LONG or 40), deadline=None, derandomize=_LONG is None, database=None,
                suppress_health_check=list(HealthCheck))
OPS = torch.ops.sae_native
ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError)
WEIGHT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
ODD = [0, 1, 2, 3, 5, 7, 13, 16, 17, 31, 64, 97]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def saes(draw):
    """An SAE (and its reference) of a random activation, size and weight dtype."""
    d_in = draw(st.sampled_from(ODD[1:] + [40]))
    activation = draw(st.sampled_from(["topk", "jumprelu", "relu", "groupmax"]))
    if activation == "groupmax":
        k = draw(st.integers(1, 12))
        d_sae = k * draw(st.integers(1, 25))
    else:
        d_sae = draw(st.sampled_from(ODD[1:] + [300]))
        k = draw(st.integers(1, d_sae)) if activation == "topk" else None
    dtype = draw(st.sampled_from(WEIGHT_DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = _gen(seed)
    w = dict(W_enc=(torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in)).to(dtype),
             b_enc=0.1 * torch.randn(d_sae, generator=g),
             W_dec=(torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_sae)).to(dtype),
             b_dec=0.1 * torch.randn(d_in, generator=g), activation=activation, k=k,
             threshold=0.3 * torch.rand(d_sae, generator=g) if activation == "jumprelu" else None,
             apply_b_dec_to_input=draw(st.booleans()))
    if dtype == torch.float64:
        w = {key: (v.double() if isinstance(v, torch.Tensor) else v) for key, v in w.items()}
    if draw(st.booleans()):  # W_enc as a transposed view: any strides are accepted
        w["W_enc"] = w["W_enc"].t().contiguous().t()
    # (W_enc keeps its dtype: the reference rounds u to bf16 where the kernel in use does)
    ref = RefSAE(**{key: (v.float() if isinstance(v, torch.Tensor) and v.dtype in (torch.bfloat16, torch.float16)
                          and key != "W_enc" else v) for key, v in w.items()})
    return sn.SAE(**w), ref


@st.composite
def inputs(draw, d_in: int, dtype: torch.dtype):
    """x [..., d_in] with random leading dims, strides, and NaN / inf in some rows; and the mask of
    those rows (of x flattened to [n, d_in])."""
    lead = draw(st.sampled_from([(0,), (1,), (3,), (7,), (2, 3), (1, 1, 4), (2, 0)]))
    seed = draw(st.integers(0, 2**31 - 1))
    flat = torch.randn(math.prod(lead), d_in, generator=_gen(seed), dtype=dtype)
    bad = torch.zeros(flat.shape[0], dtype=torch.bool)
    if flat.shape[0] and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            r = draw(st.integers(0, flat.shape[0] - 1))
            flat[r, draw(st.integers(0, d_in - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
            bad[r] = True
    x = flat.reshape(*lead, d_in)
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    if layout == "strided":      # every other column of a wider tensor
        wide = torch.zeros(*lead, 2 * d_in, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    elif layout == "transposed" and len(lead) == 1:
        x = x.t().contiguous().t()
    return x, bad


def _check_codes(sae, ref, codes, x2, ok):
    """The codes of the finite rows against the reference; the others only well formed."""
    flat = codes.flatten()
    n = x2.shape[0]
    assert flat.values.shape[0] == n and flat.indices.dtype == torch.int64
    idx = flat.indices
    assert ((idx >= -1) & (idx < sae.d_sae)).all(), "an index outside [-1, d_sae)"
    if not ok.any():
        return
    sub = sn.SparseCodes(flat.values[ok], flat.indices[ok], sae.d_sae,
                         None if codes._counts is None else flat.counts[ok])
    if sae.activation == "topk":
        check_topk_codes(sub, ref, x2[ok])
    elif sae.activation == "groupmax":
        check_groupmax_codes(sub, ref, x2[ok])
    else:
        width = int(sub.counts.max()) if sub.counts.numel() else 0
        trimmed = sn.SparseCodes(sub.values[:, :width], sub.indices[:, :width], sae.d_sae, sub.counts)
        check_threshold_codes(trimmed, ref, x2[ok])


@FUZZ
@given(saes(), st.data())
def test_public_api_against_the_reference(pair, data):
    sae, ref = pair
    x, bad = data.draw(inputs(sae.d_in, torch.float64 if sae.dtype == torch.float64 else torch.float32))
    nan = data.draw(st.sampled_from(["compact", "propagate"]))
    codes = sae.encode(x, nan=nan)
    assert codes.shape == x.shape[:-1]
    x2 = x.reshape(-1, sae.d_in)
    ok = ~bad
    _check_codes(sae, ref, codes, x2, ok)
    if nan == "compact" and sae.activation in ("jumprelu", "relu") and bad.any():
        # A bad row holds at most one entry, so the codes are no wider than the finite rows need.
        counts = codes.flatten().counts
        assert (counts[bad] <= 1).all()
        assert codes.k <= max(1, int(counts[ok].max()) if ok.any() else 1)
    recon = sae.decode(codes).reshape(-1, sae.d_in).double()
    assert recon.shape == x2.shape
    if ok.any():
        want = ref.decode_dense(codes.flatten().to_dense()[ok].double(), x2[ok])
        torch.testing.assert_close(recon[ok], want, atol=1e-4, rtol=1e-4)
    if ok.any():
        f = data.draw(st.integers(0, sae.d_sae - 1))
        value = data.draw(st.floats(-8, 8, allow_nan=False))
        mode = data.draw(st.sampled_from(["set", "scale", "add"]))
        keep_error = data.draw(st.booleans())
        got = sae.steer(x2[ok], {f: value}, mode=mode, keep_error=keep_error).double()
        z = sae.encode(x2[ok]).to_dense().double()
        z2 = z.clone()
        z2[:, f] = {"set": torch.full_like(z[:, f], value), "scale": value * z[:, f], "add": z[:, f] + value}[mode]
        want = ref.decode_dense(z2, x2[ok])
        if keep_error:
            want = want + x2[ok].double() - ref.decode_dense(z, x2[ok])
        scale = 1 + abs(value) + float(z.abs().max())
        torch.testing.assert_close(got, want, atol=2e-4 * scale, rtol=1e-4)


@FUZZ
@given(saes(), st.data())
def test_clamps_edited_after_parsing_never_reach_memory(pair, data):
    """A ParsedClamp edited behind the version counter (through .numpy(), or made in inference
    mode) reaches the kernels unchecked by Python; the kernels must refuse what is out of range."""
    sae, _ = pair
    if sae.dtype == torch.float64:
        return
    inference = data.draw(st.booleans())
    if inference:
        with torch.inference_mode():
            parsed = sae.parse_clamp({0: 1.0})
    else:
        parsed = sae.parse_clamp({0: 1.0})
    edit = data.draw(st.sampled_from([sae.d_sae, sae.d_sae + 1, -1, -2**40, 2**40, 10**11, 0]))
    parsed.features.numpy()[0] = edit
    x = torch.randn(data.draw(st.integers(0, 5)), sae.d_in)
    keep_error = data.draw(st.booleans())
    if 0 <= edit < sae.d_sae:
        sae.steer(x, parsed, keep_error=keep_error)
    else:
        with pytest.raises(ValueError, match="features must lie in"):
            sae.steer(x, parsed, keep_error=keep_error)


def _maybe(draw, t):
    return None if draw(st.booleans()) else t


@st.composite
def raw_calls(draw):
    """A call of one raw op with random, often inconsistent, arguments."""
    n = draw(st.sampled_from([0, 1, 3, 8]))
    d = draw(st.sampled_from([1, 5, 16, 17]))
    rows = draw(st.sampled_from([1, 4, 31]))
    k = draw(st.sampled_from([0, 1, 3, 40]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = _gen(seed)
    T = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64]))
    W_dtype = draw(st.sampled_from(WEIGHT_DTYPES + [torch.int32]))

    def floats(*shape, dtype=T):
        return torch.randn(*shape, generator=g).to(dtype)

    def shape_of(*want):  # usually right, sometimes off by one somewhere
        if draw(st.integers(0, 4)) == 0 and want:
            i = draw(st.integers(0, len(want) - 1))
            want = list(want)
            want[i] = max(0, want[i] + draw(st.sampled_from([-1, 1])))
        return tuple(want)

    index_pool = st.sampled_from([-2**62, -rows - 1, -2, -1, 0, rows - 1, rows, rows + 1, 2**31, 2**62])
    indices = torch.tensor([[draw(index_pool) for _ in range(k)] for _ in range(n)],
                           dtype=torch.int64).reshape(n, k)
    if draw(st.booleans()):
        indices = indices.clamp(-1, rows - 1)
    values = floats(*shape_of(n, k))
    W_dec = floats(*shape_of(rows, d), dtype=W_dtype)
    W_enc = floats(*shape_of(d, rows), dtype=W_dtype)
    if draw(st.booleans()):
        W_dec = W_dec.t().contiguous().t() if W_dec.dim() == 2 else W_dec
    x = floats(*shape_of(n, d))
    b_dec = _maybe(draw, floats(*shape_of(d)))
    b_enc = floats(*shape_of(rows))
    threshold = _maybe(draw, floats(*shape_of(rows)))
    count = draw(st.integers(0, 3))
    features = torch.tensor([draw(index_pool) for _ in range(count)], dtype=torch.int64)
    targets = floats(*shape_of(count))
    mode = draw(st.sampled_from(["set", "scale", "add", "bogus"]))
    only_active, keep_error = draw(st.booleans()), draw(st.booleans())
    op = draw(st.sampled_from(["encode_topk", "encode_groupmax", "encode_threshold", "decode", "sparse_dot",
                               "sparse_outer", "sparse_outer_add_", "steer_codes", "steer_threshold"]))
    args = {
        "encode_topk": (x, W_enc, b_enc, b_dec, k, None),
        "encode_groupmax": (x, W_enc, b_enc, b_dec, max(k, 1), None),
        "encode_threshold": (x, W_enc, b_enc, b_dec, threshold, None, draw(st.booleans())),
        "decode": (values, indices, W_dec, b_dec),
        "sparse_dot": (x, indices, W_dec),
        "sparse_outer": (values, indices, x, draw(st.sampled_from([0, rows, rows + 1])), draw(st.booleans())),
        "sparse_outer_add_": (W_dec, values, indices, x),
        "steer_codes": (x, values, indices, W_dec, b_dec, features, targets, mode, only_active, keep_error),
        "steer_threshold": (x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode, only_active),
    }[op]
    return op, args


@FUZZ
@given(raw_calls())
def test_raw_ops_return_or_raise_never_crash(call):
    op, args = call
    try:
        out = getattr(OPS, op)(*args)
    except ERRORS:
        return
    if op.endswith("_"):               # an in-place op: its result is its first argument
        assert out is None and isinstance(args[0], torch.Tensor)
        return
    for t in (out if isinstance(out, tuple) else (out,)):
        assert isinstance(t, torch.Tensor)
