import pytest
import torch.nn.functional as F

import sae_native as sn
import workloads as wl
from conftest import run


@pytest.mark.benchmark(group="decode-A (N=2048, d_in=768, d_sae=24576, k=32)")
@pytest.mark.parametrize("impl", ["sae_native", "embedding_bag"])
def test_decode_A(benchmark, workload, impl):
    w = workload("A")
    codes = w.sae().encode(w.x)
    v, i = codes.values, codes.indices
    fns = {"sae_native": lambda: sn.functional.decode(v, i, w.W_dec, w.b_dec),
           "embedding_bag": lambda: F.embedding_bag(i, w.W_dec, per_sample_weights=v, mode="sum") + w.b_dec}
    run(benchmark, fns[impl], rounds=20)


@pytest.mark.benchmark(group="steer-B (one feature, keep_error)")
@pytest.mark.parametrize("impl", ["sae_native", "dense_encode_decode"])
def test_steer_B(benchmark, workload, impl):
    w = workload("B")
    sae = w.sae()
    fns = {"sae_native": lambda: sae.steer(w.x, {7: 10.0}), "dense_encode_decode": wl.dense_encode_decode(w)}
    run(benchmark, fns[impl], rounds=3)
