"""Measures the CPU-speed targets side by side in one process and prints them as a table.

    python benchmarks/targets.py [--repeats 7] [--json PATH]

Every ratio compares runs interleaved in the same process (A B A B ...), medians, never absolute
times: the machines are shared and noisy. References that are not installed are reported as
skipped. Peak memory is measured in fresh subprocesses.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sae_native as sn  # noqa: E402
import workloads as wl  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def medians(fns, repeats):
    fns = {k: v for k, v in fns.items() if v is not None}
    return {k: wl.median(v) for k, v in wl.interleaved(fns, repeats).items()}


def encode_A(repeats):
    w = wl.make_workload("A")
    sae = w.sae()
    m = medians({"sae_native": lambda: sae.encode(w.x), "faiss": wl.faiss_search(w), "matmul": lambda: w.x @ w.W_enc,
                 "dense": wl.dense_encode(w), "sparsify": wl.sparsify_encode(w), "sae_lens": wl.saelens_encode(w)},
                repeats)
    flops = 2 * w.N * w.d_in * w.d_sae
    rows = [("encode A: GFLOP/s", f"{flops / m['sae_native'] / 1e9:.0f}", "", None)]
    for ref, target, op in (("faiss", 0.85, "<="), ("matmul", 0.95, "<="), ("sparsify", 1 / 1.5, "<="),
                            ("sae_lens", 1 / 1.5, "<="), ("dense", None, None)):
        if ref not in m:
            rows.append((f"encode A: ours / {ref}", "skipped (not installed)", "", None))
            continue
        r = m["sae_native"] / m[ref]
        rows.append((f"encode A: time ours / {ref}", f"{r:.2f}", f"{op} {target:.2f}" if target else "", r <= target if target else None))
    return rows, m


def encode_C(repeats):
    w = wl.make_workload("C")
    s32, s16 = w.sae(), w.sae(torch.bfloat16)
    m = medians({"fp32": lambda: s32.encode(w.x), "bf16": lambda: s16.encode(w.x), "matmul": lambda: w.x @ w.W_enc,
                 "read": lambda: w.W_enc.sum()}, repeats)
    nbytes = w.W_enc.numel() * 4
    bw_ours, bw_read = nbytes / m["fp32"] / 1e9, nbytes / m["read"] / 1e9
    return [
        ("encode C: GB/s of W_enc (fp32)", f"{bw_ours:.1f} of {bw_read:.1f} read", ">= 70%", bw_ours >= 0.7 * bw_read),
        ("encode C: fraction of read bandwidth", f"{bw_ours / bw_read:.2f}", ">= 0.70", bw_ours >= 0.7 * bw_read),
        ("encode C: speedup vs bare matmul", f"{m['matmul'] / m['fp32']:.2f}", ">= 1.20", m["matmul"] / m["fp32"] >= 1.2),
        ("encode C: bf16 weights speedup vs fp32", f"{m['fp32'] / m['bf16']:.2f}", ">= 1.60", m["fp32"] / m["bf16"] >= 1.6),
    ], m


def decode_A(repeats):
    w = wl.make_workload("A")
    codes = w.sae().encode(w.x)
    v, i = codes.values, codes.indices
    m = medians({"sae_native": lambda: sn.functional.decode(v, i, w.W_dec, w.b_dec),
                 "embedding_bag": lambda: F.embedding_bag(i, w.W_dec, per_sample_weights=v, mode="sum") + w.b_dec,
                 "read": lambda: w.W_dec.sum()}, repeats)
    r = m["sae_native"] / m["embedding_bag"]
    row_bytes = w.N * w.k * w.d_in * 4  # every (row, code) pair reads one W_dec row
    gbps = {name: row_bytes / m[name] / 1e9 for name in ("sae_native", "embedding_bag")}
    return [("decode A (k=32): time ours / embedding_bag", f"{r:.2f}", "<= 0.80", r <= 0.8),
            ("decode A: GB/s of W_dec rows gathered, ours / embedding_bag / plain read",
             f"{gbps['sae_native']:.0f} / {gbps['embedding_bag']:.0f} / {w.W_dec.numel() * 4 / m['read'] / 1e9:.0f}",
             "", None)], m


def steer_B(repeats):
    w = wl.make_workload("B")
    sae = w.sae()
    f = int(sae.encode(w.x[:256]).indices[0, 0])
    m = medians({"sae_native": lambda: sae.steer(w.x, {f: 10.0}), "dense": wl.dense_encode_decode(w)},
                max(3, repeats // 2))
    r = m["dense"] / m["sae_native"]
    enc = medians({"sae_native": lambda: sae.encode(w.x), "dense": wl.dense_encode(w),
                   "sae_lens": wl.saelens_encode(w)}, max(3, repeats // 2))
    rows = [("steer B (1 feature, keep_error): speedup vs dense encode+decode", f"{r:.0f}", ">= 100", r >= 100),
            ("encode B (jumprelu): speedup vs dense", f"{enc['dense'] / enc['sae_native']:.2f}", "", None)]
    if "sae_lens" in enc:
        rows.append(("encode B (jumprelu): speedup vs sae_lens", f"{enc['sae_lens'] / enc['sae_native']:.2f}", "", None))
    return rows, {**m, **{f"encode_{k}": v for k, v in enc.items()}}


PEAK = """
import re, sys, torch
sys.path.insert(0, {here!r})
import workloads as wl

def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

w = wl.make_workload("A")
sae = w.sae()
f = (lambda: sae.encode(w.x)) if sys.argv[1] == "ours" else wl.dense_encode(w)
f()                                            # allocator and thread pools warm
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
base = peak_kib()
f()
print((peak_kib() - base) / 1024)
"""


def peak_memory():
    """Peak resident growth of one encode of shape A (Linux: VmHWM reset through clear_refs)."""
    out = {}
    for which in ("ours", "dense"):
        code = PEAK.format(here=os.path.dirname(os.path.abspath(__file__)))
        r = subprocess.run([sys.executable, "-c", code, which], capture_output=True, text=True)
        out[which] = float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else float("nan")
    return [("encode A: peak RSS growth MiB, ours / dense", f"{out['ours']:.1f} / {out['dense']:.0f}", "", None)], out


def scaling(repeats):
    w = wl.make_workload("A")
    sae = w.sae()
    before = sn.get_num_threads()
    res = {}
    for t in range(1, (os.cpu_count() or 1) + 1):
        sn.set_num_threads(t)
        res[t] = wl.median(wl.interleaved({"x": lambda: sae.encode(w.x)}, max(3, repeats // 2))["x"])
    sn.set_num_threads(before)
    return [(f"encode A: speedup at {t} threads vs 1", f"{res[1] / v:.2f}", "", None) for t, v in res.items()], res


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = sn.build_info()
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, cpu_isa={info['cpu_isa']}, threads={info['num_threads']}, "
          f"torch {torch.__version__}, sae-native {info['version']}")
    all_rows, raw = [], {}
    for name, fn in (("encode_A", encode_A), ("encode_C", encode_C), ("decode_A", decode_A), ("steer_B", steer_B),
                     ("peak_memory", lambda r: peak_memory()), ("scaling", scaling)):
        rows, m = fn(args.repeats)
        all_rows += rows
        raw[name] = m
        for what, value, target, ok in rows:
            mark = "" if ok is None else ("met" if ok else "NOT met")
            print(f"| {what} | {value} | {target} | {mark} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpu": cpu_model(), **info}, "rows": all_rows, "seconds": raw}, f, indent=1,
                      default=str)


if __name__ == "__main__":
    main()
