"""The CPU-speed issue's targets, measured side by side in one process, printed as a table.

    python benchmarks/targets.py [--repeats 7] [--json PATH] [--only encode_A,encode_B,...]

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
from sae_native import _C
from sae_native.backends import encode_paths
from sae_native.bench import machine, measure
from sae_native.bench.references import Case, callables
from sae_native.bench.workloads import Shape, make_workload

A = Shape(2048, 768, 24576, 32)
B = Shape(4096, 2304, 16384, None, "jumprelu")
C = Shape(1, 2304, 65536, 64)
CPU = torch.device("cpu")
DTYPES = (torch.float32, torch.bfloat16)


def medians(fns, repeats, flush):
    return {k: measure.quantile(v, 0.5) for k, v in measure.interleaved(fns, repeats, CPU, flush=flush).items()}


def row(what, value, target="", ok=None):
    return (what, value, target, None if ok is None else bool(ok))


def _name(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def _path(shape, dtype):
    op = "encode_topk" if shape.activation == "topk" else "encode_threshold"
    c = encode_paths.chosen("cpu", op, dtype, shape.N, shape.d_in, shape.d_sae, shape.k)
    return c.path if c is not None else encode_paths.setting()


def encode_ratios(label, shape, dtype, repeats, flush, refs, extra=()):
    """The issue's encode targets for one shape and weight dtype: time ours / torch's bare matmul
    (<= 1.05), / torch dense (<= 0.7), / FAISS (<= 0.85, fp32); every path timed beside auto."""
    case = Case.build(make_workload(shape, dtype=dtype))          # (the first encode makes auto's choice)
    fns, skipped = callables("encode", case, refs=list(refs) + list(extra))
    m = medians(fns, repeats, flush)
    flops = 2 * shape.N * shape.d_in * shape.d_sae
    d = _name(dtype)
    rows = [row(f"encode {label} {d}: auto path / ms ours, own, gemm",
                f"{_path(shape, dtype)} / {m['sae_native'] * 1e3:.0f}, {m['sae_native:own'] * 1e3:.0f}, "
                f"{m['sae_native:gemm'] * 1e3:.0f}"),
            row(f"encode {label} {d}: GFLOP/s ours, bare matmul",
                f"{flops / m['sae_native'] / 1e9:.0f}, {flops / m['matmul'] / 1e9:.0f}")]
    for ref, target in (("matmul", 1.05), ("dense", 0.7), ("faiss", 0.85), *((e, None) for e in extra)):
        if ref == "faiss" and dtype != torch.float32:
            continue
        if ref not in m:
            rows.append(row(f"encode {label} {d}: time ours / {ref}", f"skipped: {skipped.get(ref, 'not run')}"))
            continue
        r = m["sae_native"] / m[ref]
        rows.append(row(f"encode {label} {d}: time ours / {ref}", f"{r:.2f}", f"<= {target:.2f}" if target else "",
                        r <= target if target else None))
    return rows, m


def encode_A(repeats, flush):
    rows, raw = [], {}
    for dtype in DTYPES:
        r, m = encode_ratios("A", A, dtype, repeats, flush, ("matmul", "dense", "faiss"),
                             extra=("sparsify", "sae_lens"))
        rows += r
        raw[_name(dtype)] = m
    return rows, raw


def encode_B(repeats, flush):
    rows, raw = [], {}
    for dtype in DTYPES:
        r, m = encode_ratios("B (jumprelu)", B, dtype, max(3, repeats // 2), flush, ("matmul", "dense"),
                             extra=("sae_lens",))
        rows += r
        raw[_name(dtype)] = m
    return rows, raw


def encode_C(repeats, flush):
    w32 = make_workload(C)
    s32, s16 = w32.sae(), make_workload(C, dtype=torch.bfloat16).sae()
    m = medians({"fp32": lambda: s32.encode(w32.x), "bf16": lambda: s16.encode(w32.x),
                 "matmul": lambda: w32.x @ w32.W_enc, "read": lambda: w32.W_enc.sum()}, repeats, flush)
    nbytes = w32.W_enc.numel() * 4
    ours, read = nbytes / m["fp32"] / 1e9, nbytes / m["read"] / 1e9
    return [row("encode C fp32: GB/s of W_enc, ours / plain read", f"{ours:.1f} / {read:.1f} = {ours / read:.2f}",
                ">= 0.90", ours >= 0.9 * read),
            row("encode C fp32: speedup vs bare matmul", f"{m['matmul'] / m['fp32']:.2f}"),
            row("encode C: bf16 weights speedup vs fp32", f"{m['fp32'] / m['bf16']:.2f}", ">= 1.60",
                m["fp32"] / m["bf16"] >= 1.6)], m


def train_step(repeats, flush):
    """TopK training step, N 4096, 768 -> 24576, k 32: ours >= 2x faster than sparsify's."""
    import train_step as ts
    rows, raw = [], {}
    for dtype in DTYPES:
        fns = ts.step_functions(4096, 768, 24576, 32, dtype)
        d = _name(dtype)
        if "sparsify" not in fns:
            rows.append(row(f"train step {d}: speedup vs sparsify", "skipped: sparsify not installed"))
            continue
        m = medians({k: fns[k] for k in ("sae_native", "sparsify")}, max(3, repeats // 2), None)
        rows.append(row(f"train step {d}: ms ours / sparsify", f"{m['sae_native'] * 1e3:.0f} / "
                        f"{m['sparsify'] * 1e3:.0f}"))
        rows.append(row(f"train step {d}: speedup vs sparsify", f"{m['sparsify'] / m['sae_native']:.2f}", ">= 2.00",
                        m["sparsify"] / m["sae_native"] >= 2))
        raw[d] = m
    return rows, raw


def generic_isa(repeats, flush):
    """SAE_NATIVE_ISA=generic (what a CPU without the SIMD variants runs): fp32 encode A no slower
    than torch's dense path -- auto has to find the GEMM path there."""
    before = _C.cpu_isa()
    _C.select_isa("generic")
    try:
        case = Case.build(make_workload(A))
        fns, _ = callables("encode", case, refs=["dense"])
        m = medians({k: fns[k] for k in ("sae_native", "sae_native:own", "dense")}, max(3, repeats // 2), flush)
        path = _path(A, torch.float32)
    finally:
        _C.select_isa(before)
    r = m["sae_native"] / m["dense"]
    return [row("encode A fp32, generic ISA: auto path / ms ours, own, dense",
                f"{path} / {m['sae_native'] * 1e3:.0f}, {m['sae_native:own'] * 1e3:.0f}, {m['dense'] * 1e3:.0f}"),
            row("encode A fp32, generic ISA: time ours / dense", f"{r:.2f}", "<= 1.00", r <= 1.0)], m


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
    return [row("steer B (1 feature, keep_error): speedup vs dense encode+decode",
                f"{m['dense'] / m['sae_native']:.0f}", ">= 100", m["dense"] / m["sae_native"] >= 100)], m


def memory_and_scaling(repeats, flush):
    case = Case.build(make_workload(A))
    fns, _ = callables("encode", case, refs=["dense"])
    mem = {k: measure.peak_extra_mb(fns[k], CPU) for k in ("sae_native:own", "sae_native:gemm", "dense")}
    rows = [row("encode A: peak RSS growth MiB, own path / gemm path / dense",
                f"{mem['sae_native:own']:.1f} / {mem['sae_native:gemm']:.1f} / {mem['dense']:.0f}", "<= 64 (both paths)",
                max(mem["sae_native:own"], mem["sae_native:gemm"]) <= 64)]
    before, times = sn.get_num_threads(), {}
    for t in range(1, (os.cpu_count() or 1) + 1):
        sn.set_num_threads(t)
        times[t] = medians({"x": fns["sae_native"]}, max(3, repeats // 2), flush)["x"]
    sn.set_num_threads(before)
    rows += [row(f"encode A: speedup at {t} threads vs 1", f"{times[1] / v:.2f}") for t, v in times.items()]
    return rows, {"peak_mb": mem, "threads": times}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    ap.add_argument("--only", help="comma-separated parts: encode_A,encode_B,encode_C,decode_A,steer_B,train_step,"
                                   "generic_isa,memory_and_scaling")
    args = ap.parse_args(argv)
    info = machine.describe(CPU)
    info.update(machine.ceilings(CPU))
    bf16 = f", bf16 dot peak {info['bf16_dot_gflops']:.0f} GFLOP/s" if "bf16_dot_gflops" in info else ""
    print(f"# {info['cpu']}, {info['cpus']} CPUs ({', '.join(info['cpu_flags'])}), cpu_isa={info['cpu_isa']}, "
          f"threads={info['threads']}, thread_pool={info['thread_pool'].split(':')[0]}, torch {info['torch']}, "
          f"encode path setting {encode_paths.setting()}, FMA peak {info['fma_gflops']:.0f} GFLOP/s{bf16}, "
          f"copy {info['copy_gbps']:.0f} GB/s")
    flush = measure.CacheFlusher(CPU)
    all_rows, raw = [], {}
    parts = (("encode_A", encode_A), ("encode_B", encode_B), ("encode_C", encode_C), ("decode_A", decode_A),
             ("steer_B", steer_B), ("train_step", train_step), ("generic_isa", generic_isa),
             ("memory_and_scaling", memory_and_scaling))
    only = set(args.only.split(",")) if args.only else None
    for name, fn in parts:
        if only is not None and name not in only:
            continue
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
