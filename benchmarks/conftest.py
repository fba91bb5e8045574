"""pytest-benchmark suite: `pytest benchmarks/` (not part of the default test run).

One group per (op, shape) holding sae-native and every reference available, so
`pytest benchmarks/ --benchmark-autosave` then `--benchmark-compare` shows regressions. The shapes
are a preset of `sae-native bench` (SAE_NATIVE_BENCH_PRESET: quick, standard (default), large).
"""
import os

import pytest
import torch

from sae_native.bench import PRESETS
from sae_native.bench.measure import CacheFlusher
from sae_native.bench.references import Case
from sae_native.bench.workloads import make_workload

SHAPES = PRESETS[os.environ.get("SAE_NATIVE_BENCH_PRESET", "standard")]


@pytest.fixture(scope="session")
def case():
    built = {}

    def get(shape):
        if shape not in built:
            built.clear()  # one shape's weights at a time
            built[shape] = Case.build(make_workload(shape))
        return built[shape]
    return get


@pytest.fixture(scope="session")
def flush():
    return CacheFlusher(torch.device("cpu"))
