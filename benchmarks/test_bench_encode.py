import pytest
import torch

import workloads as wl
from conftest import run


@pytest.mark.benchmark(group="encode-A (N=2048, d_in=768, d_sae=24576, k=32)")
@pytest.mark.parametrize("impl", ["sae_native", "matmul", "dense", "faiss", "sparsify", "sae_lens"])
def test_encode_A(benchmark, workload, impl):
    w = workload("A")
    fns = {"sae_native": lambda: (lambda s: lambda: s.encode(w.x))(w.sae()), "matmul": lambda: lambda: w.x @ w.W_enc,
           "dense": lambda: wl.dense_encode(w), "faiss": lambda: wl.faiss_search(w),
           "sparsify": lambda: wl.sparsify_encode(w), "sae_lens": lambda: wl.saelens_encode(w)}
    run(benchmark, fns[impl]())


@pytest.mark.benchmark(group="encode-B (N=4096, d_in=2304, d_sae=16384, jumprelu)")
@pytest.mark.parametrize("impl", ["sae_native", "dense", "sae_lens"])
def test_encode_B(benchmark, workload, impl):
    w = workload("B")
    fns = {"sae_native": lambda: (lambda s: lambda: s.encode(w.x))(w.sae()), "dense": lambda: wl.dense_encode(w),
           "sae_lens": lambda: wl.saelens_encode(w)}
    run(benchmark, fns[impl](), rounds=3)


@pytest.mark.benchmark(group="encode-C (N=1, d_in=2304, d_sae=65536, k=64)")
@pytest.mark.parametrize("impl", ["sae_native", "sae_native_bf16", "matmul", "read_W_enc"])
def test_encode_C(benchmark, workload, impl):
    w = workload("C")
    fns = {"sae_native": lambda: (lambda s: lambda: s.encode(w.x))(w.sae()),
           "sae_native_bf16": lambda: (lambda s: lambda: s.encode(w.x))(w.sae(torch.bfloat16)),
           "matmul": lambda: lambda: w.x @ w.W_enc, "read_W_enc": lambda: lambda: w.W_enc.sum()}
    run(benchmark, fns[impl](), rounds=20)
