"""pytest-benchmark suite: `pytest benchmarks/` (not part of the default test run).

Each group holds sae-native and every reference available in the process, so
`pytest benchmarks/ --benchmark-compare` shows regressions against a saved run
(`--benchmark-autosave` saves one).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as wl  # noqa: E402


@pytest.fixture(scope="session")
def workload():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = wl.make_workload(name)
        return cache[name]
    return get


def run(benchmark, fn, rounds=5):
    """A few rounds of a slow callable (the shapes here take 10 ms to seconds)."""
    if fn is None:
        pytest.skip("reference not installed")
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
