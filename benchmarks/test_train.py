"""Training step (forward + backward + Adam), TopK, grouped with its references."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402

SHAPE = tuple(int(v) for v in os.environ.get("SAE_NATIVE_TRAIN_SHAPE", "4096,768,24576,32").split(","))


@pytest.mark.benchmark(group=f"train-step N={SHAPE[0]} d_in={SHAPE[1]} d_sae={SHAPE[2]} k={SHAPE[3]}")
@pytest.mark.parametrize("impl", ["sae_native", "dense", "sparsify"])
def test_train_step(benchmark, impl):
    import math

    import torch

    import sae_native as sn
    n, d_in, d_sae, k = SHAPE
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(1))
    lr = 2e-4 / math.sqrt(d_sae / 16384)
    if impl == "sae_native":
        trainer = sn.Trainer(d_in, sn.TrainConfig(d_sae=d_sae, k=k, batch_size=n))
        step = lambda: trainer.step(x, 1000)  # noqa: E731
    elif impl == "dense":
        dense = train_step.dense_step(d_in, d_sae, k, lr)
        step = lambda: dense(x)  # noqa: E731
    else:
        sp = train_step.sparsify_step(d_in, d_sae, k, lr)
        if sp is None:
            pytest.skip("sparsify not installed")
        step = lambda: sp(x)  # noqa: E731
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
