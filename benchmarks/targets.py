"""The CPU-speed issue's targets, measured side by side in one process, printed as a table.

    python benchmarks/targets.py [--repeats 7] [--json PATH]

Ratios compare runs interleaved in one process with caches flushed before every call (the method of
`sae-native bench`), medians, never absolute times: the machines are shared and noisy. References
that are not installed are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import sae_native as sn
from sae_native.bench import machine, measure
from sae_native.bench.references import Case, callables
from sae_native.bench.workloads import Shape, make_workload

A = Shape(2048, 768, 24576, 32)
B = Shape(4096, 2304, 16384, None, "jumprelu")
C = Shape(1, 2304, 65536, 64)
CPU = torch.device("cpu")


def medians(fns, repeats, flush):
    return {k: measure.quantile(v, 0.5) for k, v in measure.interleaved(fns, repeats, CPU, flush=flush).items()}


def row(what, value, target="", ok=None):
    return (what, value, target, None if ok is None else bool(ok))


def encode_A(repeats, flush):
    case = Case.build(make_workload(A))
    fns, skipped = callables("encode", case)
    m = medians(fns, repeats, flush)
    rows = [row("encode A: GFLOP/s", f"{2 * A.N * A.d_in * A.d_sae / m['sae_native'] / 1e9:.0f}")]
    for ref, target in (("faiss", 0.85), ("matmul", 0.95), ("sparsify", 1 / 1.5), ("sae_lens", 1 / 1.5),
                        ("dense", None)):
        if ref in skipped:
            rows.append(row(f"encode A: time ours / {ref}", f"skipped: {skipped[ref]}"))
            continue
        r = m["sae_native"] / m[ref]
        rows.append(row(f"encode A: time ours / {ref}", f"{r:.2f}", f"<= {target:.2f}" if target else "",
                        r <= target if target else None))
    return rows, m


def encode_C(repeats, flush):
    w32 = make_workload(C)
    s32, s16 = w32.sae(), make_workload(C, dtype=torch.bfloat16).sae()
    m = medians({"fp32": lambda: s32.encode(w32.x), "bf16": lambda: s16.encode(w32.x),
                 "matmul": lambda: w32.x @ w32.W_enc, "read": lambda: w32.W_enc.sum()}, repeats, flush)
    nbytes = w32.W_enc.numel() * 4
    ours, read = nbytes / m["fp32"] / 1e9, nbytes / m["read"] / 1e9
    return [row("encode C: GB/s of W_enc, ours / plain read", f"{ours:.1f} / {read:.1f} = {ours / read:.2f}",
                ">= 0.70", ours >= 0.7 * read),
            row("encode C: speedup vs bare matmul", f"{m['matmul'] / m['fp32']:.2f}", ">= 1.20",
                m["matmul"] / m["fp32"] >= 1.2),
            row("encode C: bf16 weights speedup vs fp32", f"{m['fp32'] / m['bf16']:.2f}", ">= 1.60",
                m["fp32"] / m["bf16"] >= 1.6)], m


def decode_A(repeats, flush):
    case = Case.build(make_workload(A))
    fns, _ = callables("decode", case, refs=["embedding_bag"])
    fns["read"] = lambda: case.w.W_dec.sum()
    m = medians(fns, repeats, flush)
    r = m["sae_native"] / m["embedding_bag"]
    row_bytes = A.N * A.k * A.d_in * 4  # every (row, code) pair gathers one W_dec row
    return [row("decode A (k=32): time ours / embedding_bag", f"{r:.2f}", "<= 0.80", r <= 0.8),
            row("decode A: GB/s gathered, ours / embedding_bag / plain read of W_dec",
                f"{row_bytes / m['sae_native'] / 1e9:.0f} / {row_bytes / m['embedding_bag'] / 1e9:.0f} / "
                f"{case.w.W_dec.numel() * 4 / m['read'] / 1e9:.0f}")], m


def steer_B(repeats, flush):
    case = Case.build(make_workload(B))
    fns, _ = callables("steer", case, refs=["dense"])
    m = medians(fns, max(3, repeats // 2), flush)
    enc, _ = callables("encode", case, refs=["dense", "sae_lens"])
    e = medians(enc, max(3, repeats // 2), flush)
    rows = [row("steer B (1 feature, keep_error): speedup vs dense encode+decode",
                f"{m['dense'] / m['sae_native']:.0f}", ">= 100", m["dense"] / m["sae_native"] >= 100),
            row("encode B (jumprelu): speedup vs dense", f"{e['dense'] / e['sae_native']:.2f}")]
    if "sae_lens" in e:
        rows.append(row("encode B (jumprelu): speedup vs sae_lens", f"{e['sae_lens'] / e['sae_native']:.2f}"))
    return rows, {**m, **{f"encode_{k}": v for k, v in e.items()}}


def memory_and_scaling(repeats, flush):
    case = Case.build(make_workload(A))
    fns, _ = callables("encode", case, refs=["dense"])
    ours, dense = (measure.peak_extra_mb(fns[k], CPU) for k in ("sae_native", "dense"))
    rows = [row("encode A: peak RSS growth MiB, ours / dense", f"{ours:.1f} / {dense:.0f}")]
    before, times = sn.get_num_threads(), {}
    for t in range(1, (os.cpu_count() or 1) + 1):
        sn.set_num_threads(t)
        times[t] = medians({"x": fns["sae_native"]}, max(3, repeats // 2), flush)["x"]
    sn.set_num_threads(before)
    rows += [row(f"encode A: speedup at {t} threads vs 1", f"{times[1] / v:.2f}") for t, v in times.items()]
    return rows, {"peak_mb": {"ours": ours, "dense": dense}, "threads": times}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = machine.describe(CPU)
    info.update(machine.ceilings(CPU))
    print(f"# {info['cpu']}, {info['cpus']} CPUs, cpu_isa={info['cpu_isa']}, threads={info['threads']}, "
          f"thread_pool={info['thread_pool'].split(':')[0]}, torch {info['torch']}, FMA peak "
          f"{info['fma_gflops']:.0f} GFLOP/s, copy {info['copy_gbps']:.0f} GB/s")
    flush = measure.CacheFlusher(CPU)
    all_rows, raw = [], {}
    for name, fn in (("encode_A", encode_A), ("encode_C", encode_C), ("decode_A", decode_A), ("steer_B", steer_B),
                     ("memory_and_scaling", memory_and_scaling)):
        rows, m = fn(args.repeats, flush)
        all_rows += rows
        raw[name] = m
        for what, value, target, ok in rows:
            print(f"| {what} | {value} | {target} | {'' if ok is None else ('met' if ok else 'NOT met')} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": all_rows, "seconds": raw}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
