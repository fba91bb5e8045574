"""Runs the benchmark: every op, shape and implementation, into a list of records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..backends import encode_paths
from . import machine, measure
from .references import Case, callables, work
from .workloads import Shape, make_workload

OURS = "sae_native"


@dataclass
class BenchResult:
    records: List[Dict[str, Any]]
    machine: Dict[str, Any]
    skipped: List[Dict[str, str]] = field(default_factory=list)


def encode_path(device: torch.device, shape: Shape, dtype: torch.dtype) -> str:
    """The encode path sae-native took for this shape: the measured choice ("own" / "gemm"), or
    what the setting forces."""
    setting = encode_paths.setting()
    if setting != "auto":
        return setting
    op = "encode_topk" if shape.activation == "topk" else "encode_threshold"
    c = encode_paths.chosen(device.type, op, dtype, shape.N, shape.d_in, shape.d_sae, shape.k)
    return c.path if c is not None else "own"      # no choice on this device: its own kernels


def run(shapes: Sequence[Shape], ops: Sequence[str], *, dtypes: Sequence[torch.dtype] = (torch.float32,),
        device: str = "cpu", repeats: int = 5, memory: bool = True, refs: Optional[List[str]] = None,
        progress: Optional[Callable[[str], None]] = None, tick: Optional[Callable[[], None]] = None) -> BenchResult:
    """Times `ops` on `shapes` with weights in each of `dtypes` on `device`; `refs` limits the
    references (None: every one available). Records carry the fields documented in docs/performance.md."""
    dev = torch.device(device)
    info = machine.describe(dev)
    info["dtypes"] = [str(d).replace("torch.", "") for d in dtypes]
    info.update(machine.ceilings(dev))
    records: List[Dict[str, Any]] = []
    skipped: List[Dict[str, str]] = []
    flush = measure.CacheFlusher(dev)
    for shape, dtype in ((s, d) for d in dtypes for s in shapes):
        case = Case.build(make_workload(shape, dtype=dtype, device=device))   # (its encode makes the path choice)
        path = encode_path(dev, shape, dtype)
        for op in ops:
            if progress is not None:
                progress(f"{op} {shape.label} {str(dtype).replace('torch.', '')}")
            fns, why = callables(op, case, refs)
            for impl, reason in why.items():
                skipped.append({"op": op, "shape": shape.label, "impl": impl, "reason": reason})
            times = measure.interleaved(fns, repeats, dev, tick=tick, flush=flush)
            flops, nbytes = work(op, case)
            medians = {impl: measure.quantile(t, 0.5) for impl, t in times.items()}
            for impl, t in times.items():
                med = medians[impl]
                rec: Dict[str, Any] = {
                    "op": op,
                    "shape": {"N": shape.N, "d_in": shape.d_in, "d_sae": shape.d_sae, "k": shape.k},
                    "activation": shape.activation,
                    "impl": impl,
                    "dtype": str(dtype).replace("torch.", ""),
                    "device": str(dev),
                    "median_ms": med * 1e3,
                    "min_ms": min(t) * 1e3,
                    "max_ms": max(t) * 1e3,
                    "iqr_ms": (measure.quantile(t, 0.75) - measure.quantile(t, 0.25)) * 1e3,
                    "repeats": len(t),
                    "tokens_per_s": shape.N / med,
                    "gflops": flops / med / 1e9,
                    "gbps": nbytes / med / 1e9,
                    "peak_extra_mb": measure.peak_extra_mb(fns[impl], dev) if memory else None,
                }
                if "fma_gflops" in info:
                    rec["pct_fma_peak"] = 100 * rec["gflops"] / info["fma_gflops"]
                rec["pct_bandwidth"] = 100 * rec["gbps"] / info["copy_gbps"]
                if "bf16_dot_gflops" in info and dtype == torch.bfloat16 and info["bf16_inputs"].startswith("rounded"):
                    rec["pct_bf16_dot_peak"] = 100 * rec["gflops"] / info["bf16_dot_gflops"]
                if impl == OURS:
                    rec["speedup_vs"] = {ref: medians[ref] / med for ref in medians if ref != OURS}
                    if op in ("encode", "steer"):
                        rec["encode_path"] = path
                records.append(rec)
            del fns
    for rec in records:
        rec["machine"] = info
    return BenchResult(records, info, skipped)
