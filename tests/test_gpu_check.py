"""benchmarks/gpu_check.py, the GPU session's script, on a machine without a GPU: it must stop
cleanly, and its target arithmetic must be right before a GPU session relies on it."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run for real")
def test_stops_cleanly_without_a_gpu(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--skip-tests", "--out", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "needs a CUDA GPU" in out.stdout


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
