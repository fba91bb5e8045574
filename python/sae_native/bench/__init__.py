"""`sae-native bench`: times sae-native's ops against every reference available, on shapes or presets.

    from sae_native.bench import run, PRESETS
    result = run(PRESETS["quick"], ["encode", "decode", "steer"])
    result.records  # one dict per (op, shape, implementation)
"""
from .references import OPS, reference_names
from .runner import BenchResult, run
from .workloads import PRESETS, Shape, parse_shape

__all__ = ["run", "BenchResult", "PRESETS", "Shape", "parse_shape", "OPS", "reference_names"]
