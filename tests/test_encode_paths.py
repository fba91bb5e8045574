"""The two encode paths (own fused kernels; vendor GEMM + native epilogue) and the choice between
them: the GEMM path at block and chunk edges, the epilogue's argument checks, the setting
(SAE_NATIVE_ENCODE / set_encode_path), the measured choice and its on-disk cache."""
import json
import math

import pytest
import torch

import sae_native as sn
from helpers import check_groupmax_codes, check_threshold_codes, check_topk_codes, make_pair, randn
from sae_native import _C
from sae_native.backends import contract, encode_paths, gemm_path
from sae_native.backends.gemm_path import Blocking


@pytest.fixture
def fresh_choices(monkeypatch):
    """No override, no cache file, no choices: what a new process sees."""
    monkeypatch.delenv("SAE_NATIVE_ENCODE", raising=False)
    monkeypatch.delenv("SAE_NATIVE_ENCODE_CACHE", raising=False)
    before = sn.set_encode_path(None)
    encode_paths.forget()
    yield
    encode_paths.forget()
    sn.set_encode_path(before)


def _args(activation, n, d_in, d_sae, k=None, seed=0):
    sae, ref = make_pair(d_in, d_sae, activation, k, seed=seed)
    x = randn(n, d_in, seed=seed + 1)
    if activation == "jumprelu":
        a = contract.encode_threshold(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.threshold, None, True)
    elif activation == "relu":
        a = contract.encode_threshold(x, sae.W_enc, sae.b_enc, sae.b_dec, None, None, True)
    elif activation == "groupmax":
        a = contract.encode_groupmax(x, sae.W_enc, sae.b_enc, sae.b_dec, k, None)
    else:
        a = contract.encode_topk(x, sae.W_enc, sae.b_enc, sae.b_dec, k, None)
    return a, ref, x


def _codes(activation, out, d_sae):
    if activation in ("jumprelu", "relu"):
        values, indices, counts = out
        return sn.SparseCodes(values, indices, d_sae, counts=counts)
    values, indices = out
    return sn.SparseCodes(values, indices, d_sae)


KIND = {"topk": "topk", "groupmax": "groupmax", "jumprelu": "threshold", "relu": "threshold"}


@pytest.mark.parametrize("blocking", [Blocking(1, 1), Blocking(3, 7), Blocking(5, 64), Blocking(256, 2048)])
@pytest.mark.parametrize("activation,k", [("topk", 5), ("topk", 1), ("groupmax", 7), ("jumprelu", None),
                                          ("relu", None)])
@pytest.mark.parametrize("n,d_in,d_sae", [(1, 1, 7), (13, 17, 97), (37, 31, 259)])
def test_gemm_path_matches_reference_at_block_edges(isa, blocking, activation, k, n, d_in, d_sae):
    if activation == "groupmax" and d_sae % k:
        d_sae = (d_sae // k + 1) * k
    k = min(k, d_sae) if k else k
    a, ref, x = _args(activation, n, d_in, d_sae, k)
    codes = _codes(activation, gemm_path.encode(_C, KIND[activation], a, blocking), d_sae)
    {"topk": check_topk_codes, "groupmax": check_groupmax_codes}.get(activation, check_threshold_codes)(
        codes, ref, x)


def test_gemm_path_is_independent_of_the_blocking():
    a, _, _ = _args("topk", 41, 23, 301, 9)
    want = gemm_path.encode(_C, "topk", a, Blocking(41, 301))
    for b in (Blocking(1, 1), Blocking(4, 33), Blocking(64, 8)):
        got = gemm_path.encode(_C, "topk", a, b)
        # MKL may sum a row in another order for another block shape: the same codes up to rounding.
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)


def test_accumulator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        _C.EncodeAccumulator(kind=3, n=1, k=1, d_sae=4, dtype=0, threshold=0, compact_nonfinite=True)
    with pytest.raises(ValueError, match="sizes"):
        _C.EncodeAccumulator(kind=0, n=1, k=5, d_sae=4, dtype=0, threshold=0, compact_nonfinite=True)
    with pytest.raises(ValueError, match="sizes"):
        _C.EncodeAccumulator(kind=1, n=1, k=3, d_sae=4, dtype=0, threshold=0, compact_nonfinite=True)
    with pytest.raises(ValueError, match="dtype"):
        _C.EncodeAccumulator(kind=0, n=1, k=1, d_sae=4, dtype=2, threshold=0, compact_nonfinite=True)
    acc = _C.EncodeAccumulator(kind=0, n=2, k=1, d_sae=4, dtype=0, threshold=0, compact_nonfinite=True)
    pre, b = torch.zeros(2, 4), torch.zeros(4)
    from sae_native.backends import native_args as na
    with pytest.raises(ValueError, match="outside"):
        acc.add(pre=na.mat(_C, pre), row0=1, latent0=0, b_enc=b.data_ptr())      # rows 1..3 of 2
    with pytest.raises(ValueError, match="outside"):
        acc.add(pre=na.mat(_C, pre), row0=0, latent0=1, b_enc=b.data_ptr())      # latents 1..5 of 4
    with pytest.raises(ValueError, match="dtype"):
        acc.add(pre=na.mat(_C, pre.double()), row0=0, latent0=0, b_enc=b.data_ptr())
    with pytest.raises(ValueError, match="topk or groupmax accumulator: use finish"):
        acc.finish_threshold()


def test_setting_validation_and_environment(monkeypatch, fresh_choices):
    with pytest.raises(ValueError, match="set_encode_path: path must be one of"):
        sn.set_encode_path("fast")
    assert encode_paths.setting() == "auto"
    monkeypatch.setenv("SAE_NATIVE_ENCODE", "GEMM")
    assert encode_paths.setting() == "gemm"
    monkeypatch.setenv("SAE_NATIVE_ENCODE", "blas")
    with pytest.warns(UserWarning, match="SAE_NATIVE_ENCODE='blas' is not one of"):
        assert encode_paths.setting() == "auto"
    sn.set_encode_path("own")
    assert encode_paths.setting() == "own" and sn.build_info()["encode_paths"]["setting"] == "own"


def _scripted(monkeypatch, costs):
    """Candidates 'take' the milliseconds in costs (name -> ms): _best_ms returns what the
    candidate returns, so the choice is tested without timing anything."""
    monkeypatch.setattr(encode_paths, "_best_ms", lambda fn: fn())
    own = lambda a: costs["own"]                                                   # noqa: E731
    gemm = lambda a, b: costs[f"gemm {b.rows}x{b.latents}"]                        # noqa: E731
    return own, gemm


@pytest.mark.parametrize("winner", ["own", "gemm 256x1024", "gemm 256x4096"])
def test_auto_picks_the_fastest_candidate(monkeypatch, fresh_choices, winner):
    a, _, _ = _args("topk", 300, 8, 8192, 4)
    costs = {"own": 50.0, "gemm 256x2048": 40.0, "gemm 256x1024": 45.0, "gemm 256x4096": 60.0}
    costs[winner] = 1.0
    own, gemm = _scripted(monkeypatch, costs)
    c = encode_paths.choose("key", a, own, gemm)
    assert (c.path if c.blocking is None else f"gemm {c.blocking.rows}x{c.blocking.latents}") == winner
    scale = 300 / encode_paths.PROBE_ROWS
    assert c.ms == pytest.approx({name: v * scale for name, v in costs.items()}, abs=1e-3)   # (rounded to 4 places)


def test_unpacked_weights_charge_the_packing_to_the_own_path(monkeypatch, fresh_choices):
    a, _, _ = _args("topk", 128, 8, 4096, 4)
    own, gemm = _scripted(monkeypatch, {"own": 10.0, "gemm 256x2048": 12.0, "gemm 256x1024": 13.0,
                                        "gemm 256x4096": 14.0})
    clock = iter([0.0, 0.005])          # prepare (packing) takes 5 ms
    monkeypatch.setattr(encode_paths.time, "perf_counter", lambda: next(clock))
    c = encode_paths.choose("key", a, own, gemm, prepare=lambda p: p._replace(packed=torch.empty(1)))
    assert c.ms["own"] == pytest.approx(15.0) and c.path == "gemm"


def test_auto_records_and_reuses_its_choice(fresh_choices):
    sae, _ = make_pair(16, 600, "topk", 8)
    x = randn(300, 16)
    codes = sae.encode(x)
    info = sn.build_info()["encode_paths"]
    assert info["setting"] == "auto"
    (choice,) = info["choices"]
    assert "encode_topk" in choice["key"] and "rows>256" in choice["key"] and choice["source"] == "measured"
    fastest = min(choice["ms"], key=choice["ms"].get)
    assert fastest.split()[0] == choice["path"]
    # The same class is not measured again, and auto's result is the chosen path's.
    sn.set_encode_path(choice["path"])
    if choice["path"] == "gemm":
        b = choice["blocking"]
        want = gemm_path.encode(_C, "topk", contract.encode_topk(x, sae.W_enc, sae.b_enc, sae.b_dec, 8, None),
                                Blocking(b["rows"], b["latents"]))
    else:
        want = (sae.encode(x).values, None)
    assert torch.equal(codes.values, want[0])
    sn.set_encode_path(None)
    sae.encode(x)
    assert len(sn.build_info()["encode_paths"]["choices"]) == 1


def test_disk_cache_round_trip(monkeypatch, tmp_path, fresh_choices):
    path = tmp_path / "choices.json"
    monkeypatch.setenv("SAE_NATIVE_ENCODE_CACHE", str(path))
    sae, _ = make_pair(16, 600, "jumprelu")
    sae.encode(randn(40, 16))
    data = json.loads(path.read_text())
    (machine,) = data
    assert "torch" in machine and len(data[machine]) == 1
    encode_paths.forget()

    def no_measuring(*args):
        raise AssertionError("measured although the cache had the choice")
    monkeypatch.setattr(encode_paths, "_measure", no_measuring)
    sae.encode(randn(40, 16, seed=3))
    (choice,) = sn.build_info()["encode_paths"]["choices"]
    assert choice["source"] == "disk"


def test_unreadable_disk_cache_warns_and_measures(monkeypatch, tmp_path, fresh_choices):
    path = tmp_path / "choices.json"
    path.write_text("{not json")
    monkeypatch.setenv("SAE_NATIVE_ENCODE_CACHE", str(path))
    sae, _ = make_pair(8, 64, "topk", 4)
    with pytest.warns(UserWarning, match="could not be read"):
        sae.encode(randn(3, 8))
    assert sn.build_info()["encode_paths"]["choices"][0]["source"] == "measured"
    assert len(next(iter(json.loads(path.read_text()).values()))) == 1     # rewritten, readable again


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16, torch.float64])
def test_gemm_path_weight_dtypes(encode_path, wdtype):
    """16-bit weights are widened chunk by chunk (fp32 products, never a 16-bit GEMM's rounded
    output); float64 stays float64."""
    sae, ref = make_pair(19, 211, "topk", 6, dtype=wdtype)
    x = randn(29, 19, dtype=torch.float64 if wdtype == torch.float64 else torch.float32)
    check_topk_codes(sae.encode(x), ref, x)


def test_empty_and_single_row_batches_on_auto(fresh_choices):
    sae, ref = make_pair(7, 13, "relu")
    assert sae.encode(torch.zeros(0, 7)).values.shape[0] == 0
    assert sn.build_info()["encode_paths"]["choices"] == []        # nothing to measure on no rows
    x = randn(1, 7)
    check_threshold_codes(sae.encode(x), ref, x)
    assert not math.isnan(sn.build_info()["encode_paths"]["choices"][0]["ms"]["own"])


def test_bf16_dot_probe_and_build_info():
    """The bf16 dot-product probe exists exactly where the variant multiplies on bf16 units."""
    before = _C.cpu_isa()
    try:
        for isa in _C.supported_isas():
            assert _C.select_isa(isa)
            rounded = _C.bf16_inputs_rounded()
            assert sn.build_info()["cpu_bf16_inputs_rounded"] == rounded
            probe = _C.bf16_dot_probe(1000)
            assert (probe is not None) == rounded == (isa in ("avx512_bf16", "amx", "amx_emulated"))
            if probe is not None:
                flops, checksum = probe
                assert flops == 1000 * 24 * 32 * 2 * sn.get_num_threads() and math.isfinite(checksum)
    finally:
        _C.select_isa(before)
