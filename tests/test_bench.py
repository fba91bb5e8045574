"""`sae-native bench`: argument errors, records, skipped references, the chart."""
import json
import sys

import pytest
import torch

from sae_native.bench import PRESETS, Shape, parse_shape, reference_names
from sae_native.cli import main

FIELDS = {"op", "shape", "impl", "dtype", "device", "median_ms", "min_ms", "max_ms", "tokens_per_s", "gflops",
          "gbps", "peak_extra_mb", "machine"}
TINY = ["--shape", "9,16,67,5", "--repeats", "2"]


def _exit_code(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("shape,msg", [
    ("1,2", r"--shape: expected N,d_in,d_sae,k"),
    ("a,b,c,d", r"--shape: expected N,d_in,d_sae,k"),
    ("0,16,64,4", r"--shape: expected N,d_in,d_sae,k with positive integers"),
    ("4,16,64,65", r"--shape: k=65 is larger than d_sae=64"),
    ("4,16,64,4,9", r"--shape: expected N,d_in,d_sae,k"),
])
def test_bad_shapes_exit_2(shape, msg, capsys):
    code, err = _exit_code(["bench", "--shape", shape], capsys)
    assert code == 2
    assert __import__("re").search(msg, err), err


def test_a_threshold_shape_asks_for_no_k(capsys):
    code, err = _exit_code(["bench", "--activation", "jumprelu", "--shape", "4,16"], capsys)
    assert code == 2 and "expected N,d_in,d_sae (a threshold SAE needs no k)" in err


@pytest.mark.parametrize("argv,msg", [
    (["--ops", "encode,frobnicate"], "--ops: unknown op 'frobnicate'"),
    (["--ops", ","], "--ops: expected at least one op"),
    (["--refs", "dense,numpy"], "--refs: unknown reference 'numpy'"),
    (["--repeats", "0"], "--repeats: expected an integer >= 1"),
    (["--dtype", "int8"], "--dtype: expected a comma-separated subset of float32,bfloat16,float16"),
    (["--dtype", ","], "--dtype: expected a comma-separated subset"),
    (["--preset", "huge"], "invalid choice"),
])
def test_bad_arguments_exit_2(argv, msg, capsys):
    code, err = _exit_code(["bench", *TINY, *argv], capsys)
    assert code == 2 and msg in err, err


def test_cuda_absent_is_a_clear_error(capsys):
    import sae_native as sn
    if torch.cuda.is_available() and sn.build_info()["cuda_compiled"]:
        pytest.skip("this machine can run the CUDA kernels")
    code, err = _exit_code(["bench", *TINY, "--device", "cuda"], capsys)
    assert code == 2
    assert "--device cuda: torch sees no CUDA device" in err or "has no CUDA kernels" in err


def test_records_have_every_field(tmp_path, capsys, monkeypatch):
    # A fake clock: each implementation's calls report FAKE_SAMPLES in turn, so a record's
    # statistics are the summary arithmetic of known numbers. Nothing here times anything.
    from sae_native.bench import measure
    FAKE_SAMPLES = (3e-3, 1e-3)
    calls = {}

    def fake_timed(fn, device):
        fn()
        calls[id(fn)] = calls.get(id(fn), 0) + 1
        return FAKE_SAMPLES[(calls[id(fn)] - 1) % 2]
    monkeypatch.setattr(measure, "_timed", fake_timed)
    # TINY's 2 repeats: each implementation's timed samples are 3 ms then 1 ms (warm-up calls are
    # not timed), so min 1, median 3 (measure.quantile takes the upper of two), max 3.
    samples_ms = [3.0, 1.0]
    want_summary = (min(samples_ms), measure.quantile(samples_ms, 0.5), max(samples_ms))
    assert want_summary == (1.0, 3.0, 3.0)
    out = tmp_path / "r.json"
    assert main(["bench", *TINY, "--refs", "dense,matmul,embedding_bag", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    records = json.loads(out.read_text())
    impls = {(r["op"], r["impl"]) for r in records}
    assert impls == {("encode", "sae_native"), ("encode", "sae_native:own"), ("encode", "sae_native:gemm"),
                     ("encode", "dense"), ("encode", "matmul"),
                     ("decode", "sae_native"), ("decode", "embedding_bag"), ("decode", "dense"),
                     ("steer", "sae_native"), ("steer", "dense")}
    # The default runs fp32 and bf16 weights: every (op, impl) once per dtype.
    assert sorted(r["dtype"] for r in records) == ["bfloat16"] * 10 + ["float32"] * 10
    for r in records:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["shape"] == {"N": 9, "d_in": 16, "d_sae": 67, "k": 5}
        summary = (r["min_ms"], r["median_ms"], r["max_ms"])
        assert summary[0] <= summary[1] <= summary[2]
        assert summary == pytest.approx(want_summary)
        assert r["tokens_per_s"] > 0 and r["gflops"] > 0 and r["device"] == "cpu"
        assert {"cpu", "cpu_flags", "cpu_isa", "threads", "copy_gbps", "fma_gflops", "bf16_inputs"} <= set(r["machine"])
        if r["impl"] == "sae_native":
            assert set(r["speedup_vs"]) == {i for o, i in impls if o == r["op"] and i != "sae_native"}
            assert all(v > 0 for v in r["speedup_vs"].values())
            assert (r.get("encode_path") in ("own", "gemm")) == (r["op"] in ("encode", "steer"))
    assert "cpu_isa=" in printed and "sae_native (" in printed and "wrote 20 records" in printed


def test_absent_peers_are_reported_as_skipped(tmp_path, monkeypatch, capsys):
    for name in ("faiss", "sparsify", "sae_lens"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    out = tmp_path / "r.json"
    assert main(["bench", *TINY, "--ops", "encode", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for peer in ("faiss", "sparsify", "sae_lens"):
        assert f"skipped {peer} for encode" in printed and "not installed" in printed
    assert {r["impl"] for r in json.loads(out.read_text())} == {"sae_native", "sae_native:own", "sae_native:gemm",
                                                                "dense", "matmul"}


def test_jumprelu_and_bf16(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--shape", "7,16,61", "--activation", "jumprelu", "--dtype", "bfloat16", "--repeats", "2",
                 "--refs", "dense,embedding_bag", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {r["dtype"] for r in records} == {"bfloat16"}
    assert all(r["shape"]["k"] is None for r in records)
    assert "skipped" not in capsys.readouterr().out  # nothing asked for is missing


def test_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "chart.png"
    assert main(["bench", *TINY, "--refs", "dense", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, err = _exit_code(["bench", *TINY, "--plot", "x.png"], capsys)
    assert code == 2 and "--plot: needs matplotlib" in err


def test_presets_and_shape_parsing():
    assert set(PRESETS) == {"quick", "standard", "large"}
    assert parse_shape("4,16,64,8") == Shape(4, 16, 64, 8, "topk")
    assert parse_shape("4,16,64", "jumprelu") == Shape(4, 16, 64, None, "jumprelu")
    assert {"dense", "matmul", "embedding_bag", "faiss", "sparsify", "sae_lens"} == set(reference_names())
