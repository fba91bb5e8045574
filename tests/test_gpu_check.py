"""The GPU session's scripts (benchmarks/gpu_check.py, benchmarks/gpu_oneshot.sh) on a machine without
a GPU: they must stop cleanly with the right exit code and leave their files, and their check and
target arithmetic must be right before a GPU session relies on them."""
import importlib.util
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from sae_native.bench.workloads import Shape, make_workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
ONESHOT = os.path.join(ROOT, "benchmarks", "gpu_oneshot.sh")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the scripts would run for real")


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@no_gpu
def test_gpu_check_stops_cleanly_without_a_gpu(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--skip-tests", "--out", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "the CUDA kernels cannot run here" in out.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stopped"] == report["build"]["cuda_error"] and report["stopped"]


def _oneshot(tmp_path, **env):
    run_env = {**os.environ, "OUT": str(tmp_path / "out"), "SAE_ONESHOT_SKIP_BUILD": "1",
               "SAE_ONESHOT_PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", ONESHOT], capture_output=True, text=True, env=run_env, timeout=600)
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    return proc, {p["phase"]: p for p in status["phases"]}


@no_gpu
def test_oneshot_stops_at_the_info_phase_without_a_gpu(tmp_path):
    proc, phases = _oneshot(tmp_path)
    assert proc.returncode == 12, proc.stderr[-2000:]
    assert phases["deps"]["exit"] == 0 and phases["build"]["note"].startswith("skipped")
    assert phases["info"]["exit"] == 12 and "smoke" not in phases
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stopped"]


def test_oneshot_stops_itself_when_the_budget_is_spent(tmp_path):
    proc, phases = _oneshot(tmp_path, BUDGET_S="0")
    assert proc.returncode == 20, proc.stderr[-2000:]
    assert phases["deps"]["exit"] == 20 and "not started" in phases["deps"]["note"]


def test_oneshot_reports_missing_packages(tmp_path):
    # A python without site-packages (-S) stands in for an image without the test dependencies.
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(bare.stat().st_mode | stat.S_IEXEC)
    proc, phases = _oneshot(tmp_path, SAE_ONESHOT_PYTHON=str(bare))
    assert proc.returncode == 10 and phases["deps"]["exit"] == 10
    assert "missing Python packages: torch" in proc.stderr


def test_targets_from_medians():
    gpu_check = load()
    results = {
        "encode big": {"median_ms": {"sae_native": 1.0, "matmul": 1.0, "dense": 1.5}, "gbps": 0},
        "encode small": {"median_ms": {"sae_native": 1.0, "dense": 1.2}, "gbps": 0},
        "decode big": {"median_ms": {"sae_native": 1.0, "embedding_bag": 2.0}, "gbps": 800.0},
        "decode small": {"median_ms": {"sae_native": 1.0}, "gbps": 500.0},
    }
    rows = {r["what"]: r for r in gpu_check.targets(results, copy_gbps=1000.0)}
    assert rows["encode 4096x2304->65536 k64 bf16: time ours / bare matmul"]["met"]          # 1.0 <= 1.1
    assert rows["encode 4096x2304->65536 k64 bf16: dense / ours"]["value"] == pytest.approx(1.5)
    assert rows["encode 4096x2304->65536 k64 bf16: dense / ours"]["met"]
    assert not rows["encode 8192x768->24576 k32 bf16: dense / ours"]["met"]                 # 1.2 < 1.5
    assert rows["decode big: GB/s of rows touched / copy bandwidth"]["met"]                  # 0.8 >= 0.7
    assert rows["decode big: time ours / embedding_bag"]["met"]
    assert not rows["decode small: GB/s of rows touched / copy bandwidth"]["met"]            # 0.5 < 0.7
    assert rows["decode small: time ours / embedding_bag"]["value"] is None                   # not measured
    assert not rows["decode small: time ours / embedding_bag"]["met"]


@pytest.mark.parametrize("shape", [Shape(96, 40, 700, 16), Shape(96, 40, 700, None, "jumprelu")])
def test_the_checks_pass_good_results_and_catch_bad_ones(shape):
    """The correctness checks gpu_check runs at the timed sizes, here on the CPU kernels."""
    from sae_native.bench.references import Case
    gpu_check = load()
    c = Case.build(make_workload(shape, dtype=torch.bfloat16))
    for op, check in gpu_check.CHECKS.items():
        assert check(c)["ok"], (op, check(c))
    good = c.sae.encode

    def shifted(x):   # every latent one to the right: the wrong latents, with their values
        codes = good(x)
        codes.indices = torch.where(codes.indices >= 0, (codes.indices + 1) % shape.d_sae, codes.indices)
        return codes
    c.sae.encode = shifted
    assert not gpu_check.check_encode(c)["ok"]
    c.sae.encode = good
    decode, steer = c.sae.decode, c.sae.steer
    c.sae.decode = lambda codes: decode(codes) * 1.01
    c.sae.steer = lambda x, clamp: steer(x, clamp) + 0.01 * x
    assert not gpu_check.check_decode(c)["ok"] and not gpu_check.check_steer(c)["ok"]


def test_report_keeps_earlier_phases(tmp_path):
    gpu_check = load()
    first = gpu_check.Report(str(tmp_path))
    first.data["smoke"] = {"a": 1}
    first.save()
    second = gpu_check.Report(str(tmp_path))
    second.data["tests"] = {"returncode": 0}
    second.save()
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == {"smoke": {"a": 1}, "tests": {"returncode": 0}}
