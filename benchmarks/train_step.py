"""Per-step time of TopK SAE training (forward + backward + Adam), side by side in one process:
sae-native's Trainer, a plain PyTorch dense implementation, and sparsify's SparseCoder (when
installed). Also peak extra memory of a step.

    python benchmarks/train_step.py [--shape N,d_in,d_sae,k] [--dtype float32|bfloat16] [--repeats 5]
"""
from __future__ import annotations

import argparse
import math

import torch

import sae_native as sn
from sae_native.bench import measure

CPU = torch.device("cpu")


def dense_step(d_in, d_sae, k, lr, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g).to(dtype)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": W_dec.t().contiguous().requires_grad_(),
              "b_enc": torch.zeros(d_sae, dtype=dtype, requires_grad=True),
              "W_dec": W_dec.clone().requires_grad_(), "b_dec": torch.zeros(d_in, dtype=dtype, requires_grad=True)}
    opt = torch.optim.Adam(params.values(), lr=lr)

    def step(x):
        p = params
        x = x.to(dtype)
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        top = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        loss = (x - (z @ p["W_dec"] + p["b_dec"])).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True)
    return step


def sparsify_step(d_in, d_sae, k, lr, dtype=torch.float32):
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        return None
    coder = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), dtype=dtype)
    opt = torch.optim.Adam(coder.parameters(), lr=lr)

    def step(x):
        out = coder(x.to(dtype))
        opt.zero_grad(set_to_none=True)
        out.fvu.backward()
        opt.step()
        coder.set_decoder_norm_to_unit_norm()
    return step


def step_functions(n, d_in, d_sae, k, dtype=torch.float32):
    """{name: one training step} for sae-native (kernel weights in `dtype`, Adam masters fp32), the
    dense PyTorch step and sparsify's (both in `dtype`), on one fixed batch."""
    lr = 2e-4 / math.sqrt(d_sae / 16384)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(1))
    trainer = sn.Trainer(d_in, sn.TrainConfig(architecture="topk", d_sae=d_sae, k=k, batch_size=n,
                                              weight_dtype=str(dtype).replace("torch.", "")))
    fns = {"sae_native": lambda: trainer.step(x, 1000),
           "dense": (lambda s: lambda: s(x))(dense_step(d_in, d_sae, k, lr, dtype=dtype))}
    sp = sparsify_step(d_in, d_sae, k, lr, dtype=dtype)
    if sp is not None:
        fns["sparsify"] = lambda: sp(x)
    return fns


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096,768,24576,32")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    n, d_in, d_sae, k = (int(v) for v in args.shape.split(","))
    fns = step_functions(n, d_in, d_sae, k, getattr(torch, args.dtype))
    if "sparsify" not in fns:
        print("sparsify not installed: skipped")
    times = measure.interleaved(fns, args.repeats, CPU, warmup=1)
    med = {name: measure.quantile(t, 0.5) for name, t in times.items()}
    mem = {name: measure.peak_extra_mb(f, CPU) for name, f in fns.items()}
    print(f"TopK training step, N={n} d_in={d_in} d_sae={d_sae} k={k}, {args.dtype}, {sn.get_num_threads()} threads, "
          f"cpu_isa={sn.build_info()['cpu_isa']}")
    for name in fns:
        ratio = "" if name == "sae_native" else f"  sae-native is {med[name] / med['sae_native']:.2f}x faster"
        print(f"{name:12s} {med[name] * 1e3:9.1f} ms/step   peak extra {mem[name]:7.1f} MiB{ratio}")


if __name__ == "__main__":
    main()
