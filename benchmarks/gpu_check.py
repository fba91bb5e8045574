"""The CUDA issue's check, in one run on a GPU machine (build first):

    pip install --no-build-isolation -e . && python benchmarks/gpu_check.py [--out DIR] [--quick]

1. prints the build and the card; stops unless a GPU and the CUDA module are both there;
2. runs the CUDA tests (tests/test_cuda.py: every op against the float64 reference and the CUDA
   reference kernels, odd sizes, poisoned outputs, NaN inputs, empty batches, graphs, streams);
3. times every op against torch's dense path, torch's bare matmul and embedding_bag, interleaved,
   L2 flushed before each call, CUDA-event medians, and prints one table with the targets;
4. writes everything to DIR/gpu_check.json (DIR: --out, else $OUT, else the current folder).
Exit status 0 only if the tests pass; the targets are reported, not enforced.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import sae_native as sn
from sae_native.bench import machine, measure
from sae_native.bench.references import Case, callables, work
from sae_native.bench.workloads import Shape, make_workload

# The target shapes (bf16), and a JumpReLU and a generation-sized one for the steer/decode view.
ENCODE_BIG = Shape(4096, 2304, 65536, 64)
ENCODE_SMALL = Shape(8192, 768, 24576, 32)
JUMPRELU = Shape(4096, 2304, 16384, None, "jumprelu")
ONE_TOKEN = Shape(1, 2304, 65536, 64)
QUICK = [Shape(512, 768, 24576, 32)]


def run_tests(quick: bool) -> dict:
    # The GPU half of tests/test_cuda.py: its emulated half runs on any machine (and in CI).
    select = "not emulated"
    if quick:
        select += " and not test_topk_matches_reference and not test_threshold_matches_reference"
    args = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-x", "-p", "no:cacheprovider", "-k", select]
    t0 = time.time()
    proc = subprocess.run(args, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
    print("\n".join(tail))
    return {"returncode": proc.returncode, "seconds": round(time.time() - t0, 1), "tail": tail}


def time_op(op: str, shape: Shape, dtype: torch.dtype, repeats: int, flush) -> dict:
    case = Case.build(make_workload(shape, dtype=dtype, device="cuda"))
    fns, skipped = callables(op, case, ["dense", "matmul", "embedding_bag"])
    times = measure.interleaved(fns, repeats, torch.device("cuda"), warmup=3, flush=flush)
    med = {impl: measure.quantile(t, 0.5) for impl, t in times.items()}
    flops, nbytes = work(op, case)
    mem = {impl: measure.peak_extra_mb(fn, torch.device("cuda")) for impl, fn in fns.items()}
    return {"op": op, "shape": shape.label, "dtype": str(dtype).replace("torch.", ""), "median_ms":
            {k: v * 1e3 for k, v in med.items()}, "gbps": nbytes / med["sae_native"] / 1e9,
            "tflops": flops / med["sae_native"] / 1e12, "peak_extra_mb": mem, "skipped": skipped}


def ratio(rec: dict, ref: str):
    ms = rec["median_ms"]
    return ms["sae_native"] / ms[ref] if ref in ms else None


def targets(results: dict, copy_gbps: float) -> list:
    """(what, measured, target, met) rows: the issue's targets, from this run's medians."""
    rows = []

    def add(what, value, target, ok):
        rows.append({"what": what, "value": value, "target": target, "met": ok})

    big, small = results.get("encode big"), results.get("encode small")
    if big:
        r = ratio(big, "matmul")
        add("encode 4096x2304->65536 k64 bf16: time ours / bare matmul", r, "<= 1.1", r is not None and r <= 1.1)
        r = ratio(big, "dense")
        add("encode 4096x2304->65536 k64 bf16: dense / ours", None if r is None else 1 / r, ">= 1.3",
            r is not None and 1 / r >= 1.3)
    if small:
        r = ratio(small, "dense")
        add("encode 8192x768->24576 k32 bf16: dense / ours", None if r is None else 1 / r, ">= 1.5",
            r is not None and 1 / r >= 1.5)
    for name in ("decode big", "decode small"):
        rec = results.get(name)
        if rec:
            add(f"{name}: GB/s of rows touched / copy bandwidth", rec["gbps"] / copy_gbps, ">= 0.70",
                rec["gbps"] >= 0.7 * copy_gbps)
            r = ratio(rec, "embedding_bag")
            add(f"{name}: time ours / embedding_bag", r, "< 1", r is not None and r < 1)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--quick", action="store_true", help="small shapes, fewer tests (a smoke run)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()

    info = sn.build_info()
    print(json.dumps(info, indent=1))
    if not torch.cuda.is_available() or not info["cuda_compiled"]:
        print("gpu_check: needs a CUDA GPU and a build with the CUDA module (nvcc present at build time)")
        return 2
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(dev)
    print(f"card: {card}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    report = {"build": info, "card": card, "torch": torch.__version__}

    report["tests"] = {"skipped": True} if args.skip_tests else run_tests(args.quick)
    copy_gbps = machine.copy_bandwidth_gbps(dev)
    report["copy_gbps"] = copy_gbps
    flush = measure.CacheFlusher(dev)
    plan = ([("encode small", "encode", QUICK[0]), ("decode small", "decode", QUICK[0])] if args.quick else
            [("encode big", "encode", ENCODE_BIG), ("encode small", "encode", ENCODE_SMALL),
             ("encode jumprelu", "encode", JUMPRELU), ("encode one token", "encode", ONE_TOKEN),
             ("decode big", "decode", ENCODE_BIG), ("decode small", "decode", ENCODE_SMALL),
             ("steer topk", "steer", ENCODE_SMALL), ("steer jumprelu", "steer", JUMPRELU)])
    results = {}
    print(f"\n{'case':<18} {'shape':<38} {'ours ms':>9} {'dense':>9} {'matmul':>9} {'emb_bag':>9} "
          f"{'GB/s':>7} {'TFLOP/s':>8} {'MiB ours/dense':>15}")
    for name, op, shape in plan:
        try:
            rec = time_op(op, shape, torch.bfloat16, args.repeats, flush)
        except Exception as e:  # report and go on: one failing op must not hide the others' numbers
            rec = {"op": op, "shape": shape.label, "error": f"{type(e).__name__}: {e}"}
            print(f"{name:<18} {shape.label:<38} ERROR {rec['error']}")
            results[name] = rec
            continue
        results[name] = rec
        ms = rec["median_ms"]
        cells = [f"{ms[k]:9.3f}" if k in ms else f"{'-':>9}" for k in ("sae_native", "dense", "matmul", "embedding_bag")]
        mem = rec["peak_extra_mb"]
        print(f"{name:<18} {shape.label:<38} {' '.join(cells)} {rec['gbps']:7.0f} {rec['tflops']:8.1f} "
              f"{mem.get('sae_native', 0) or 0:7.0f}/{mem.get('dense', 0) or 0:<7.0f}")
        torch.cuda.empty_cache()
    report["results"] = results
    report["targets"] = targets(results, copy_gbps)
    print(f"\ncopy bandwidth {copy_gbps:.0f} GB/s")
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        print(f"  {t['what']:<62} {value:>6}  target {t['target']:<7} {'met' if t['met'] else 'NOT met'}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {path}")
    tests = report["tests"]
    return 0 if tests.get("skipped") or tests.get("returncode") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
