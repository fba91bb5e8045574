"""Printing a BenchResult: a terminal table, JSON records and a PNG chart."""
from __future__ import annotations

import json
from typing import Any, Dict, List, TextIO

from .runner import OURS, BenchResult


def machine_line(m: Dict[str, Any]) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    peak = f", FMA peak {m['fma_gflops']:.0f} GFLOP/s" if "fma_gflops" in m else ""
    bf16 = f", bf16 dot peak {m['bf16_dot_gflops']:.0f} GFLOP/s" if "bf16_dot_gflops" in m else ""
    flags = [f for f in m.get("cpu_flags", []) if f.startswith(("avx512", "amx"))]
    return (f"{m['cpu']} ({m['cpus']} CPUs; {', '.join(flags) or 'no AVX-512/AMX'}), cpu_isa={m['cpu_isa']}, "
            f"threads={m['threads']}{gpu}, device={m['device']}, weights {'/'.join(m['dtypes'])}, "
            f"torch {m['torch']}, sae-native {m['sae_native']}; copy bandwidth {m['copy_gbps']:.0f} GB/s{peak}{bf16}")


def _shape_label(r: Dict[str, Any]) -> str:
    s = r["shape"]
    act = f"k={s['k']}" if r["activation"] == "topk" else r["activation"]
    return f"{s['N']}x{s['d_in']}->{s['d_sae']} {act}"


COLUMNS = ["op", "shape", "dtype", "impl", "median ms", "iqr ms", "tokens/s", "GFLOP/s", "GB/s", "% peak", "ours vs it",
           "peak MiB"]


def rows(result: BenchResult) -> List[List[str]]:
    out = []
    ours = {(r["op"], _shape_label(r), r["dtype"]): r for r in result.records if r["impl"] == OURS}
    for r in result.records:
        mine = ours.get((r["op"], _shape_label(r), r["dtype"]))
        if r["impl"] == OURS:
            speed = ""
        elif mine is not None:
            speed = f"{mine['speedup_vs'][r['impl']]:.2f}x"
        else:
            speed = ""
        pct = max(r.get("pct_bf16_dot_peak", r.get("pct_fma_peak", 0.0)), r["pct_bandwidth"])
        mem = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
        impl = f"{r['impl']} ({r['encode_path']})" if "encode_path" in r else r["impl"]
        out.append([r["op"], _shape_label(r), r["dtype"], impl, f"{r['median_ms']:.3f}", f"{r['iqr_ms']:.3f}",
                    f"{r['tokens_per_s']:.3g}", f"{r['gflops']:.1f}", f"{r['gbps']:.1f}", f"{pct:.0f}%", speed, mem])
    return out


def print_table(result: BenchResult, stream: TextIO) -> None:
    print(machine_line(result.machine), file=stream)
    table = rows(result)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(COLUMNS)]
        print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)), file=stream)
        for r in table:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)), file=stream)
    else:
        t = Table(show_lines=False)
        for c in COLUMNS:
            t.add_column(c, justify="left" if c in ("op", "shape", "impl") else "right")
        for r in table:
            t.add_row(*r, style="bold" if r[3].split(" ")[0] == OURS else None)
        Console(file=stream, width=160).print(t)
    print("ours vs it: the reference's median time over ours (above 1: we are faster). sae_native (path): the "
          "encode path auto chose; sae_native:own / :gemm force one. % peak: the larger of GFLOP/s over the "
          "FMA peak (bf16 dot peak for bf16 weights on bf16 units) and GB/s over the copy bandwidth.", file=stream)
    for s in result.skipped:
        print(f"skipped {s['impl']} for {s['op']} {s['shape']}: {s['reason']}", file=stream)


def write_json(result: BenchResult, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result.records, f, indent=1)


def write_plot(result: BenchResult, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    ours = [r for r in result.records if r["impl"] == OURS]
    labels = [f"{r['op']}\n{_shape_label(r)}\n{r['dtype']}" for r in ours]
    refs = sorted({ref for r in ours for ref in r["speedup_vs"]})
    width = 0.8 / max(len(refs), 1)
    for i, ref in enumerate(refs):
        ax1.bar([j + i * width for j in range(len(ours))], [r["speedup_vs"].get(ref, 0.0) for r in ours], width,
                label=ref)
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_xticks([j + width * (len(refs) - 1) / 2 for j in range(len(ours))], labels, fontsize=7)
    ax1.set_ylabel("speedup of sae-native (reference time / ours)")
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    ax1.set_title("sae-native vs references")

    m = result.machine
    for r in result.records:
        intensity = r["gflops"] / r["gbps"] if r["gbps"] else 0.0
        ax2.scatter(intensity, r["gflops"], marker="o" if r["impl"] == OURS else "x",
                    color="C0" if r["impl"] == OURS else "C1")
        ax2.annotate(f"{r['op']} {r['impl']}", (intensity, r["gflops"]), fontsize=6)
    xs = [10 ** (e / 10) for e in range(-20, 41)]
    ax2.plot(xs, [min(m.get("fma_gflops", float("inf")), m["copy_gbps"] * x) for x in xs], color="gray")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("arithmetic intensity (flop / byte of the op's useful work)")
    ax2.set_ylabel("GFLOP/s")
    ax2.set_title("roofline: copy bandwidth and FMA peak")
    fig.suptitle(machine_line(m), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
