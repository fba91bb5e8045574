"""The native thread pool: sizing, and concurrent calls from several Python threads."""
import threading

import pytest
import torch

import sae_native as sn
from helpers import make_pair, randn


def test_set_num_threads_round_trip():
    before = sn.get_num_threads()
    try:
        for n in (1, 3, 2):
            sn.set_num_threads(n)
            assert sn.get_num_threads() == n and sn.build_info()["num_threads"] == n
    finally:
        sn.set_num_threads(before)


def test_default_follows_torch():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(3); import sae_native as sn; "
                                                "print(sn.get_num_threads())"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


@pytest.mark.parametrize("bad", [0, -2])
def test_set_num_threads_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        sn.set_num_threads(bad)


@pytest.mark.parametrize("bad", [60000, 10**9])
def test_set_num_threads_refuses_absurd_counts(bad):
    # 60000 once reached libgomp, which killed the process ("Thread creation failed").
    from sae_native._runtime import max_threads
    with pytest.raises(ValueError, match=rf"n: expected an int >= 1 and <= {max_threads()}"):
        sn.set_num_threads(bad)
    before = sn.get_num_threads()
    sn.set_num_threads(max_threads())       # the bound itself is fine
    sn.set_num_threads(before)


@pytest.mark.parametrize("bad", [1.5, "2", True, None])
def test_set_num_threads_rejects_non_int(bad):
    with pytest.raises(TypeError, match="n: expected an int"):
        sn.set_num_threads(bad)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_concurrent_calls_match_serial(thread_pool, activation):
    sae, _ = make_pair(32, 700, activation, 16)
    inputs = [randn(n, 32, seed=n) for n in (1, 5, 40, 130, 7, 64, 2, 300)]
    serial = [(sae.encode(x).values, sae(x), sae.steer(x, {4: 2.0})) for x in inputs]
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            for _ in range(3):
                x = inputs[i]
                results[i] = (sae.encode(x).values, sae(x), sae.steer(x, {4: 2.0}))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    before = sn.get_num_threads()
    sn.set_num_threads(3)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sn.set_num_threads(before)
    assert not errors, errors
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_gil_is_released_during_kernels():
    # A second Python thread makes progress while a long encode runs (on one kernel thread, so a
    # core is free for the ticker even on a two-core machine).
    sae, _ = make_pair(64, 20000, "topk", 8)
    x = randn(3000, 64)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    threads_before = sn.get_num_threads()
    sn.set_num_threads(1)
    t = threading.Thread(target=ticker)
    t.start()
    try:
        before = len(ticks)
        sae.encode(x)
        during = len(ticks) - before
    finally:
        stop.set()
        t.join()
        sn.set_num_threads(threads_before)
    assert during > 0


def test_thread_pool_selection_and_report():
    from sae_native import _runtime
    before = "openmp" if sn.build_info()["thread_pool"].startswith("openmp") else "own"
    try:
        assert _runtime.select_thread_pool("own") == "own"
        assert sn.build_info()["thread_pool"] == "own"
        kind = _runtime.select_thread_pool("openmp")
        assert sn.build_info()["thread_pool"].startswith(kind)
        with pytest.raises(ValueError, match="kind: expected 'openmp' or 'own'"):
            _runtime.select_thread_pool("tbb")
    finally:
        _runtime.select_thread_pool(before)


def test_thread_pool_environment_variable():
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import sae_native as sn; print(sn.build_info()['thread_pool'])"],
                         capture_output=True, text=True, env={**os.environ, "SAE_NATIVE_THREAD_POOL": "own"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "own"


def test_results_identical_on_both_pools():
    from sae_native import _runtime
    sae, _ = make_pair(40, 3000, "topk", 20)
    x = randn(90, 40)
    before = "openmp" if sn.build_info()["thread_pool"].startswith("openmp") else "own"
    try:
        _runtime.select_thread_pool("own")
        a = (sae.encode(x).indices, sae(x))
        _runtime.select_thread_pool("openmp")
        b = (sae.encode(x).indices, sae(x))
    finally:
        _runtime.select_thread_pool(before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
