"""First contact with a GPU: check and time every CUDA op in one run, leaving every result behind.

    python benchmarks/gpu_check.py [--out DIR] [--only PHASE ...] [--quick] [--budget SECONDS]

Phases (all by default, in this order; benchmarks/gpu_oneshot.sh runs them one at a time):
  info   build_info and the card; stops with exit 2 and build_info's cuda_error when the CUDA
         kernels cannot run here (no driver, a driver older than the runtime, no GPU, no module).
  smoke  each op once at full size (4096 x 2304 -> 65536 bf16 and the others below) against
         torch's dense result at that size: top-k overlap, value error, decode and steer error.
  tests  tests/test_cuda.py's GPU half (-k "not emulated"), --maxfail 20, under a timeout; its
         whole output streams to DIR/gpu_check.log, its results to DIR/junit.xml.
  ops    every op at every shape: the smoke checks again, then timed against torch's dense path,
         bare matmul and embedding_bag (CUDA events, interleaved, L2 flushed); the targets.
  race   a small encode with many candidate-buffer compactions, threshold codes and the merge,
         for compute-sanitizer --tool racecheck (gpu_oneshot.sh runs it under the tool).

DIR (--out, else $OUT, else .) gets DIR/gpu_check.json, rewritten after every phase and op, so a
crash or a timeout still leaves what was done. Exit status: 0 all passed, 1 a test or check failed,
2 no usable GPU, 3 out of time (--budget).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

import sae_native as sn
from sae_native.bench import machine, measure
from sae_native.bench.references import Case, callables, work
from sae_native.bench.workloads import Shape, make_workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("info", "smoke", "tests", "ops", "race")
# The target shapes (bf16), and a JumpReLU and a generation-sized one for the steer/decode view.
ENCODE_BIG = Shape(4096, 2304, 65536, 64)
ENCODE_SMALL = Shape(8192, 768, 24576, 32)
JUMPRELU = Shape(4096, 2304, 16384, None, "jumprelu")
ONE_TOKEN = Shape(1, 2304, 65536, 64)
QUICK = Shape(512, 768, 24576, 32)
PLAN = [("encode big", "encode", ENCODE_BIG), ("encode small", "encode", ENCODE_SMALL),
        ("encode jumprelu", "encode", JUMPRELU), ("encode one token", "encode", ONE_TOKEN),
        ("decode big", "decode", ENCODE_BIG), ("decode small", "decode", ENCODE_SMALL),
        ("steer topk", "steer", ENCODE_SMALL), ("steer jumprelu", "steer", JUMPRELU)]
SMOKE = [("encode big", ENCODE_BIG), ("encode jumprelu", JUMPRELU), ("encode one token", ONE_TOKEN)]
# What a check must reach: top-k / active-set agreement with torch (ties and rounding at the
# k-th value may differ), and errors relative to the largest magnitude involved.
MIN_OVERLAP, MAX_REL_ERROR = 0.99, 1e-3
EXIT_OK, EXIT_FAILED, EXIT_NO_GPU, EXIT_OUT_OF_TIME = 0, 1, 2, 3


class OutOfTime(Exception):
    pass


class Report:
    """DIR/gpu_check.json, merged with what an earlier phase wrote and rewritten after each step."""

    def __init__(self, out: str):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "gpu_check.json")
        self.data: Dict = {}
        if os.path.isfile(self.path):
            try:
                with open(self.path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                self.data = {}

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


# ---- correctness at the timed sizes ----------------------------------------------------------------

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b| (NaN-free inputs), as a float."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a.float() - b.float()).abs().max()) / max(scale, 1e-30) if b.numel() else 0.0


def _rounds_u(c: Case, path: str) -> bool:
    """Whether this encode multiplies u = x - b_dec rounded to the weights' 16-bit dtype: on a GPU
    (tensor cores, either path), and on a CPU variant with bf16 dot products (either path)."""
    w = c.w
    if w.W_enc.dtype not in (torch.bfloat16, torch.float16):
        return False
    if w.x.device.type == "cuda":
        return True
    from sae_native import _C
    return w.W_enc.dtype == torch.bfloat16 and _C.bf16_inputs_rounded()


def _dense_pre(c: Case, rounded: bool) -> torch.Tensor:
    """fp32 pre-activations as the kernels compute them: u = x - b_dec (rounded to the weights'
    dtype where ``rounded``), exact products, fp32 sums (no TF32)."""
    w = c.w
    u = w.x.float() - w.b_dec.float()
    if rounded:
        u = u.to(w.W_enc.dtype).float()
    return u @ w.W_enc.float() + w.b_enc.float()


def check_encode(c: Case) -> dict:
    """Both encode paths (fused kernels, cuBLAS + epilogue) against the dense pre-activations."""
    out = {}
    for path in ("own", "gemm"):
        before = sn.set_encode_path(path)
        try:
            out[path] = _check_encode_path(c, _rounds_u(c, path))
        finally:
            sn.set_encode_path(before)
    out["ok"] = all(r["ok"] for r in out.values())
    return out


def _check_encode_path(c: Case, rounded: bool) -> dict:
    w, s = c.w, c.w.shape
    ours = c.sae.encode(w.x)
    pre = _dense_pre(c, rounded)
    if s.activation == "topk":
        ref = pre.topk(s.k, dim=-1).indices
        overlap = float((ours.indices[:, :, None] == ref[:, None, :]).any(-1).float().mean())
    else:
        active = (pre > 0) & (pre > w.threshold.float())
        mine = ours.to_dense() != 0
        overlap = float((active & mine).sum()) / max(1, int((active | mine).sum()))
    valid = ours.indices >= 0
    at = pre.gather(1, ours.indices.clamp_min(0))
    value_error = _rel(torch.where(valid, ours.values, 0), torch.where(valid, at.relu(), 0))
    return {"overlap": overlap, "value_error": value_error,
            "ok": overlap >= MIN_OVERLAP and value_error <= MAX_REL_ERROR}


def check_decode(c: Case) -> dict:
    w = c.w
    ours = c.sae.decode(c.codes)
    ref = c.codes.to_dense().float() @ w.W_dec.float() + w.b_dec.float()
    err = _rel(ours, ref)
    return {"error": err, "ok": err <= MAX_REL_ERROR}


def check_steer(c: Case, value: float = 10.0) -> dict:
    w = c.w
    f = c.feature
    ours = c.sae.steer(w.x, {f: value})
    z = torch.where(c.codes.indices == f, c.codes.values, 0).sum(-1, keepdim=True)   # our own z_f
    ref = w.x.float() + (value - z) * w.W_dec[f].float()
    err = _rel(ours, ref)
    return {"error": err, "ok": err <= MAX_REL_ERROR}


CHECKS: Dict[str, Callable[[Case], dict]] = {"encode": check_encode, "decode": check_decode, "steer": check_steer}


# ---- phases ------------------------------------------------------------------------------------------

def phase_info(report: Report) -> int:
    info = sn.build_info()
    report.data["build"] = info
    print(json.dumps(info, indent=1))
    if not info["cuda_compiled"] or info["cuda_error"] or not torch.cuda.is_available():
        why = info["cuda_error"] or "torch sees no CUDA device (torch.cuda.is_available() is False)"
        print(f"gpu_check: the CUDA kernels cannot run here: {why}")
        report.data["stopped"] = why
        report.save()
        return EXIT_NO_GPU
    props = torch.cuda.get_device_properties(0)
    report.data["card"] = {"name": props.name, "sm_count": props.multi_processor_count,
                           "memory_gib": round(props.total_memory / 2 ** 30, 1),
                           "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda}
    print(f"card: {report.data['card']}")
    report.save()
    return EXIT_OK


def _case(shape: Shape) -> Case:
    return Case.build(make_workload(shape, dtype=torch.bfloat16, device="cuda"))


def phase_smoke(report: Report, deadline: float, quick: bool) -> int:
    results = report.data.setdefault("smoke", {})
    status = EXIT_OK
    for name, shape in ([("encode quick", QUICK)] if quick else SMOKE):
        _check_time(deadline)
        try:
            c = _case(shape)
            rec = {"shape": shape.label, "encode": check_encode(c), "decode": check_decode(c),
                   "steer": check_steer(c)}
            rec["ok"] = all(rec[op]["ok"] for op in CHECKS)
        except Exception as e:  # report it and go on: one failing op must not hide the others
            rec = {"shape": shape.label, "ok": False, "error": f"{type(e).__name__}: {e}"}
        results[name] = rec
        report.save()
        print(f"smoke {name:<18} {shape.label:<38} {'ok' if rec['ok'] else 'FAILED'} "
              f"{ {k: v for k, v in rec.items() if k not in ('shape', 'ok')} }")
        status = status if rec["ok"] else EXIT_FAILED
        torch.cuda.empty_cache()
    return status


def phase_tests(report: Report, out: str, deadline: float, quick: bool, maxfail: int) -> int:
    select = "not emulated"
    if quick:
        select += " and not test_topk_matches_reference and not test_threshold_matches_reference"
    args = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", f"--maxfail={maxfail}", "-p",
            "no:cacheprovider", "-k", select, f"--junitxml={os.path.join(out, 'junit.xml')}"]
    t0 = time.time()
    log_path = os.path.join(out, "gpu_check.log")
    timed_out = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        assert proc.stdout is not None
        for line in proc.stdout:   # as it comes: a hang or a crash still leaves the log
            log.write(line)
            log.flush()
            if time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                timed_out = True
                break
        proc.wait()
    with open(log_path) as f:
        tail = f.read().strip().splitlines()[-15:]
    print("\n".join(tail))
    report.data["tests"] = {"returncode": proc.returncode, "timed_out": timed_out,
                            "seconds": round(time.time() - t0, 1), "tail": tail}
    report.save()
    if timed_out:
        raise OutOfTime("tests")
    return EXIT_OK if proc.returncode == 0 else EXIT_FAILED


def time_op(c: Case, op: str, repeats: int, flush) -> dict:
    fns, skipped = callables(op, c, ["dense", "matmul", "embedding_bag"])
    times = measure.interleaved(fns, repeats, torch.device("cuda"), warmup=3, flush=flush)
    med = {impl: measure.quantile(t, 0.5) for impl, t in times.items()}
    flops, nbytes = work(op, c)
    mem = {impl: measure.peak_extra_mb(fn, torch.device("cuda")) for impl, fn in fns.items()}
    return {"median_ms": {k: v * 1e3 for k, v in med.items()}, "gbps": nbytes / med["sae_native"] / 1e9,
            "tflops": flops / med["sae_native"] / 1e12, "peak_extra_mb": mem, "skipped": skipped}


def ratio(rec: dict, ref: str) -> Optional[float]:
    ms = rec.get("median_ms", {})
    return ms["sae_native"] / ms[ref] if ref in ms and "sae_native" in ms else None


def targets(results: dict, copy_gbps: float) -> list:
    """(what, measured, target, met) rows: the CUDA targets, from this run's medians."""
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
        if rec and "gbps" in rec:
            add(f"{name}: GB/s of rows touched / copy bandwidth", rec["gbps"] / copy_gbps, ">= 0.70",
                rec["gbps"] >= 0.7 * copy_gbps)
            r = ratio(rec, "embedding_bag")
            add(f"{name}: time ours / embedding_bag", r, "< 1", r is not None and r < 1)
    return rows


def phase_ops(report: Report, deadline: float, quick: bool, repeats: int) -> int:
    dev = torch.device("cuda")
    copy_gbps = machine.copy_bandwidth_gbps(dev)
    report.data["copy_gbps"] = copy_gbps
    flush = measure.CacheFlusher(dev)
    results = report.data.setdefault("results", {})
    status = EXIT_OK
    plan = [("encode quick", "encode", QUICK), ("decode quick", "decode", QUICK)] if quick else PLAN
    print(f"\n{'case':<18} {'shape':<38} {'check':<6} {'ours ms':>9} {'own':>9} {'gemm':>9} {'dense':>9} "
          f"{'matmul':>9} {'emb_bag':>9} {'GB/s':>7} {'TFLOP/s':>8}")
    for name, op, shape in plan:
        _check_time(deadline)
        try:
            c = _case(shape)
            rec = {"op": op, "shape": shape.label, "check": CHECKS[op](c)}
            rec.update(time_op(c, op, repeats, flush))
        except Exception as e:  # report and go on: one failing op must not hide the others' numbers
            rec = {"op": op, "shape": shape.label, "error": f"{type(e).__name__}: {e}"}
        results[name] = rec
        report.save()
        ok = "error" not in rec and rec["check"]["ok"]
        status = status if ok else EXIT_FAILED
        if "error" in rec:
            print(f"{name:<18} {shape.label:<38} ERROR {rec['error']}")
        else:
            ms = rec["median_ms"]
            cells = [f"{ms[k]:9.3f}" if k in ms else f"{'-':>9}"
                     for k in ("sae_native", "sae_native:own", "sae_native:gemm", "dense", "matmul", "embedding_bag")]
            print(f"{name:<18} {shape.label:<38} {'ok' if ok else 'FAIL':<6} {' '.join(cells)} {rec['gbps']:7.0f} "
                  f"{rec['tflops']:8.1f}")
        torch.cuda.empty_cache()
    report.data["targets"] = targets(results, copy_gbps)
    report.save()
    print(f"\ncopy bandwidth {copy_gbps:.0f} GB/s (CUDA events)")
    for t in report.data["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        print(f"  {t['what']:<62} {value:>6}  target {t['target']:<7} {'met' if t['met'] else 'NOT met'}")
    return status


def phase_race(report: Report) -> int:
    """Many compactions of the TopK candidate buffer: pre-activations rising with the latent index,
    so nearly every ballot beats the bar and the buffer fills, sorts and compacts over and over;
    plus threshold codes and the chunk merge. Small: racecheck runs each access through the tool."""
    n, d_in, d_sae, k = 64, 64, 4096, 32
    ramp = torch.linspace(0, 1, d_sae, device="cuda")
    W = (torch.randn(d_in, d_sae, device="cuda") * 0.01 + ramp).to(torch.bfloat16)
    sae = sn.SAE(W, torch.zeros(d_sae, device="cuda"), W.t().contiguous(), torch.zeros(d_in, device="cuda"),
                 activation="topk", k=k)
    x = torch.rand(n, d_in, device="cuda") + 0.5
    codes = sae.encode(x)
    jump = sn.SAE(W, torch.zeros(d_sae, device="cuda"), W.t().contiguous(), torch.zeros(d_in, device="cuda"),
                  activation="jumprelu", threshold=torch.full((d_sae,), 0.5, device="cuda"))
    tcodes = jump.encode(x)
    torch.cuda.synchronize()
    want = torch.arange(d_sae - 1, d_sae - 1 - k, -1, device="cuda")
    ok = bool((codes.indices[:, :4] >= d_sae - 64).all()) and tcodes.values.shape[0] == n
    report.data["race"] = {"ok": ok, "top_latents_row0": codes.indices[0, :4].tolist(), "expected_near": want[:4].tolist()}
    report.save()
    print(f"race case ran: ok={ok}")
    return EXIT_OK if ok else EXIT_FAILED


def _check_time(deadline: float) -> None:
    if time.time() > deadline:
        raise OutOfTime("budget spent")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--only", action="append", choices=PHASES, help="run these phases (repeatable)")
    parser.add_argument("--skip-tests", action="store_true", help="all phases but tests")
    parser.add_argument("--quick", action="store_true", help="small shapes, fewer tests (a smoke run)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--maxfail", type=int, default=20)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    deadline = time.time() + args.budget
    phases = args.only or [p for p in PHASES if p != "race" and not (args.skip_tests and p == "tests")]
    report = Report(args.out)
    report.data.setdefault("runs", []).append({"phases": phases, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    report.save()
    status = phase_info(report)
    if status != EXIT_OK:
        return status
    torch.backends.cuda.matmul.allow_tf32 = False   # the dense references are exact fp32 sums
    worst = EXIT_OK
    try:
        for phase in phases:
            if phase == "smoke":
                worst = max(worst, phase_smoke(report, deadline, args.quick))
            elif phase == "tests":
                worst = max(worst, phase_tests(report, args.out, deadline, args.quick, args.maxfail))
            elif phase == "ops":
                worst = max(worst, phase_ops(report, deadline, args.quick, args.repeats))
            elif phase == "race":
                worst = max(worst, phase_race(report))
    except OutOfTime as e:
        report.data["stopped"] = f"out of time ({e})"
        report.save()
        print(f"gpu_check: stopped, out of time ({e}); what was done is in {report.path}")
        return EXIT_OUT_OF_TIME
    report.data["exit"] = worst
    report.save()
    print(f"wrote {report.path}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
