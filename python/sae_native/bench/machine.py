"""What machine a benchmark ran on, and its measured ceilings (the roofline)."""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, Optional

import torch

import sae_native as sn
from sae_native import _C


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> Dict[str, Any]:
    info = sn.build_info()
    out = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpu_flags": info["cpu_features"],            # includes avx512_bf16, amx_tile, amx_bf16 when present
        "cpu_isa": info["cpu_isa"],
        "bf16_inputs": "rounded to bf16" if info["cpu_bf16_inputs_rounded"] else "exact (widened to fp32)",
        "threads": info["num_threads"],
        "thread_pool": info["thread_pool"],
        "torch": torch.__version__,
        "sae_native": info["version"],
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    return out


def _probe_gflops(probe, seconds: float) -> float:
    probe(10_000)
    iters = 100_000
    while True:
        t0 = time.perf_counter()
        flops, _ = probe(iters)
        dt = time.perf_counter() - t0
        if dt >= seconds / 3:
            break
        iters *= 4
    best = dt
    for _ in range(2):
        t0 = time.perf_counter()
        probe(iters)
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def fma_peak_gflops(seconds: float = 0.3) -> float:
    """FMA throughput of all kernel threads at once, fp32, with the kernel variant in use."""
    return _probe_gflops(_C.fma_probe, seconds)


def bf16_dot_peak_gflops(seconds: float = 0.3) -> Optional[float]:
    """bf16 dot-product throughput (VDPBF16PS) of all kernel threads, or None where the kernel
    variant in use has no bf16 dot products."""
    if _C.bf16_dot_probe(1) is None:
        return None
    return _probe_gflops(_C.bf16_dot_probe, seconds)


def copy_bandwidth_gbps(device: torch.device, mib: Optional[int] = None) -> float:
    """Bytes read plus bytes written per second by a large tensor copy: the best of five, timed
    with CUDA events on a GPU (the device's time), the wall clock elsewhere. The buffer is several
    times the last-level cache (GPU: 1 GiB; CPU: 256 MiB by default)."""
    from .measure import _timed
    mib = mib or (1024 if device.type == "cuda" else 256)
    n = mib * 2 ** 20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src), device) for _ in range(5))
    return 2 * n * 4 / best / 1e9


def ceilings(device: torch.device) -> Dict[str, float]:
    out = {"copy_gbps": copy_bandwidth_gbps(device)}
    if device.type == "cpu":
        out["fma_gflops"] = fma_peak_gflops()
        bf16 = bf16_dot_peak_gflops()
        if bf16 is not None:
            out["bf16_dot_gflops"] = bf16
    return out
