"""The package across processes and signals: DataLoader workers (fork, spawn, forkserver), a child
forked after the parent ran kernels, and Ctrl-C during a long native call.

Each case runs in a child Python (tests/process_workers.py) with a timeout, so a regression shows
as a failure instead of hanging the test session. The timeouts only guard against hangs: each case
takes a second or two, far below them.
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = os.path.join(HERE, "process_workers.py")
HANG_GUARD_S = 300


def run_worker(*args, env=None):
    proc = subprocess.run([sys.executable, WORKERS, *args], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, **(env or {})}, cwd=HERE)
    assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("method, pool", [("fork", "openmp"), ("fork", "own"), ("spawn", "openmp"),
                                          ("forkserver", "openmp")])
def test_encode_in_dataloader_workers(method, pool):
    # Used to hang forever with fork: the parent's OpenMP team does not exist in the child.
    out = run_worker("dataloader", method, env={"SAE_NATIVE_THREAD_POOL": pool})
    assert "equal=True" in out


@pytest.mark.parametrize("pool, path", [("openmp", "auto"), ("openmp", "gemm"), ("openmp", "own"), ("own", "auto")])
def test_a_child_forked_after_parent_use(pool, path):
    # With the GEMM path the parent's torch ran its OpenMP team, which the child lacks: a torch
    # matmul there used to hang. The child falls back to the own kernels (warning if asked for gemm).
    out = run_worker("fork", env={"SAE_NATIVE_THREAD_POOL": pool, "SAE_NATIVE_ENCODE": path})
    assert "child status 0" in out


@pytest.mark.parametrize("activation, pool", [("topk", "openmp"), ("topk", "own"), ("jumprelu", "openmp")])
def test_ctrl_c_interrupts_a_long_encode(activation, pool):
    # The encode would take about a minute (generic kernels); the interrupt comes 0.5 s in.
    out = run_worker("interrupt", activation, env={"SAE_NATIVE_THREAD_POOL": pool, "SAE_NATIVE_ISA": "generic"})
    assert out.startswith("interrupted") and "sane=True" in out
