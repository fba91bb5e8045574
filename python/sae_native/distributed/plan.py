"""Sizing a sharded training run: shards, memory per device, bytes exchanged and time per step.

The memory and byte counts follow from the shapes and from what the trainer keeps (trainer.py,
parallel.py); the step time divides the step's work by rates: a kernel rate (FLOP/s of the
encoder GEMM), a memory bandwidth (Adam's pass over the weights) and a link bandwidth (the
collectives). ``measure_rates`` measures the first two on the device at hand; for another
device they are inputs, and the result is an estimate, never a measurement.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch

OPTIMIZERS = ("adam", "sgd", "none")
DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Plan:
    d_in: int
    d_sae: int
    shards: int                   # latent shards (ranks per replica)
    replicas: int
    latents_per_shard: int
    bytes_per_latent: float       # weights, gradients, optimizer state, kernel copies
    memory_per_device_gb: float   # the shard's state plus the step's activations
    exchanged_per_step_gb: float  # bytes each rank receives per step, all collectives
    flop_per_step: float          # per rank
    # Arithmetic on the given rates (work / rate), not a timing: None without rates
    estimated_step_seconds: Optional[float]
    estimated_tokens_per_second: Optional[float]
    # Each part's share of that step: "compute" (the GEMMs), "optimizer" (Adam's pass over the
    # weights), "exchange" (the collectives): what bounds it, and what a faster part would buy
    step_shares: Optional[Dict[str, float]]

    def as_dict(self) -> dict:
        return asdict(self)


def bytes_per_latent(d_in: int, weight_dtype: str = "float32", optimizer: str = "adam") -> float:
    """What one latent costs to train: W_enc column and W_dec row as fp32 masters, their
    gradients, Adam's two moments (fp32), and when weight_dtype is 16-bit the encoder's 16-bit copy
    and its packed layout (training/kernel_weights.py)."""
    if weight_dtype not in DTYPES:
        raise ValueError(f"weight_dtype: expected one of {tuple(DTYPES)}, got {weight_dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")
    params = 2 * d_in + 2                       # W_enc column, W_dec row, b_enc, threshold
    if optimizer == "none":                     # inference: the weights alone, in their dtype
        return params * DTYPES[weight_dtype]
    per = 4 + 4                                 # fp32 master + its gradient
    if optimizer == "adam":
        per += 8                                # two fp32 moments
    copies = 2 * d_in * DTYPES[weight_dtype] if weight_dtype != "float32" else 0
    return params * per + copies + 3 * 8       # + firing counts, sums, maxima (float64)


def plan(d_in: int, d_sae: int, *, device_memory_gb: float = 80.0, weight_dtype: str = "float32",
         optimizer: str = "adam", batch: int = 4096, k: int = 32, replicas: int = 1, headroom: float = 0.85,
         tflops: Optional[float] = None, memory_gb_s: Optional[float] = None,
         link_gb_s: Optional[float] = None) -> Plan:
    """The fewest latent shards whose state fits ``headroom`` of each device's memory, and what a
    step of ``batch`` tokens costs there. ``tflops`` (encoder GEMM rate), ``memory_gb_s`` and
    ``link_gb_s`` give the step time; without them it is None."""
    for name, v in (("d_in", d_in), ("d_sae", d_sae), ("batch", batch), ("k", k), ("replicas", replicas)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    if not device_memory_gb > 0 or not 0 < headroom <= 1:
        raise ValueError("device_memory_gb: expected > 0, headroom in (0, 1]")
    per_latent = bytes_per_latent(d_in, weight_dtype, optimizer)
    # The step's activations on each rank: x, x_hat, the error and the scaled input (fp32), the
    # candidates and codes, and a GEMM block of pre-activations (the fused encode's bound).
    activations = batch * d_in * 4 * 4 + batch * k * 8 * 6 + 4096 * 4096 * 4
    usable = device_memory_gb * 1e9 * headroom - activations
    if usable <= 0:
        raise ValueError(f"device_memory_gb: {device_memory_gb} GB cannot hold a step of batch {batch} at d_in {d_in}")
    shards = max(1, math.ceil(d_sae * per_latent / usable))
    n = math.ceil(d_sae / shards)
    memory = (n * per_latent + activations) / 1e9
    received = 0.0
    if shards > 1:
        received += 2 * batch * k * 24 * (shards - 1)                 # TopK and AuxK candidates
        received += 2 * 2 * batch * d_in * 4 * (shards - 1) / shards    # partial sums, ring all_reduce
        received += 3 * d_sae * 8 / shards                              # dead-latent statistics
    if replicas > 1 and optimizer != "none":
        received += 2 * n * (2 * d_in + 2) * 4 * (replicas - 1) / replicas   # gradients
    b = batch / replicas
    flop = 2 * b * d_in * n + 2 * 2 * b * k * d_in * 2      # encoder GEMM; sparse backward and decode
    seconds = shares = None
    if tflops and memory_gb_s and (link_gb_s or (shards == 1 and replicas == 1)):
        parts = {"compute": flop / (tflops * 1e12), "optimizer": n * per_latent * 2 / (memory_gb_s * 1e9),
                 "exchange": received / (link_gb_s * 1e9) if received else 0.0}
        seconds = sum(parts.values())
        shares = {name: part / seconds for name, part in parts.items()}
    return Plan(d_in, d_sae, shards, replicas, n, per_latent, memory, received / 1e9, flop, seconds,
                None if seconds is None else batch / seconds, shares)


def measure_rates(device="cpu", d_in: int = 768, d_sae: int = 16384, n: int = 1024) -> dict:
    """This device's encoder rate (TFLOP/s of the fused TopK encode, fp32) and memory bandwidth
    (GB/s of a large copy), measured briefly."""
    import sae_native as sn
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    sae = sn.SAE(torch.randn(d_in, d_sae, generator=g), torch.zeros(d_sae), torch.randn(d_sae, d_in, generator=g),
                 torch.zeros(d_in), activation="topk", k=32).to(device)
    x = torch.randn(n, d_in, generator=g).to(device)

    def best(fn, runs=3):
        fn()
        out = []
        for _ in range(runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return min(out)

    encode = best(lambda: sae.encode(x))
    a = torch.empty(64 * 2 ** 20, device=device)
    b = torch.empty_like(a)
    copy = best(lambda: b.copy_(a))
    return {"tflops": 2 * n * d_in * d_sae / encode / 1e12, "memory_gb_s": 2 * a.numel() * 4 / copy / 1e9}
