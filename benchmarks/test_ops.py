"""Every op x preset shape x implementation, grouped by (op, shape)."""
import pytest

from conftest import SHAPES
from sae_native.bench.references import IMPLEMENTATIONS, OPS, callables

CASES = [(op, impl) for op in OPS for impl, _ in IMPLEMENTATIONS[op]]


@pytest.mark.parametrize("shape", SHAPES, ids=[s.label.replace(" ", "_") for s in SHAPES])
@pytest.mark.parametrize("op,impl", CASES, ids=[f"{o}-{i}" for o, i in CASES])
def test_op(benchmark, case, flush, shape, op, impl):
    fns, skipped = callables(op, case(shape), refs=[impl])
    if impl not in fns:
        pytest.skip(skipped.get(impl, "not applicable"))
    benchmark.group = f"{op} {shape.label}"
    # Caches flushed before every round, as in `sae-native bench`.
    benchmark.pedantic(fns[impl], setup=flush, rounds=5, warmup_rounds=1)
