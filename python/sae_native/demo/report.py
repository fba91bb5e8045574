"""The demo's report page: one self-contained HTML file (inline CSS and SVG, no script, no
network), built from the records `sae-native demo` returns (see pipeline.run_concept).

Strategy 1 shows the feature's activation on every token, shaded as in the article's figures, on
texts that name the concept, describe it without its name, translate it, and on unrelated texts,
with the feature's top examples. Strategy 2 shows the dose-response chart (strict and weak mention
rate and perplexity against the clamp scale) and the answers side by side, both directions.
"""
from __future__ import annotations

import html
import math
import os
from typing import Dict, List, Optional, Sequence

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1100px;padding:0 20px 60px;color:#222}
h1{font-size:26px;margin:28px 0 4px}h2{margin-top:36px;border-bottom:2px solid #eee}h3{margin:22px 0 6px}
.sub{color:#666;margin:0 0 18px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}
.card{flex:1 1 220px;border:1px solid #ddd;border-radius:8px;padding:10px 14px;background:#fafafa}
.card b{display:block;font-size:22px}.card span{color:#555;font-size:13px}
.text{border-left:3px solid #eee;padding:4px 10px;margin:8px 0;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px}
.tok{border-radius:2px}.legend{font-size:13px;color:#555}
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:13px}
td,th{border:1px solid #e2e2e2;padding:5px 7px;vertical-align:top;text-align:left}th{background:#f3f3f3}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}tr.headline td{background:#fff6e5}
.rule{font-size:13px;color:#444;background:#f6f6f6;padding:6px 10px;border-radius:6px}
svg text{font:12px system-ui,sans-serif;fill:#333}
"""

STRICT, WEAK, PPL = "#d9480f", "#f59f00", "#1c7ed6"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _num(x, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def shaded(row: Dict, peak: float, window: Optional[int] = None) -> str:
    """A text as token spans, each shaded by the feature's activation over ``peak`` (orange, as the
    article's figures); ``window`` keeps that many tokens either side of the strongest one."""
    tokens, acts = row["tokens"], row["acts"]
    lo, hi = 0, len(tokens)
    if window is not None and acts:
        at = max(range(len(acts)), key=acts.__getitem__)
        lo, hi = max(0, at - window), min(len(tokens), at + window + 1)
    out = ["&hellip;" if lo > 0 else ""]
    for tok, act in zip(tokens[lo:hi], acts[lo:hi]):
        alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, act / peak))
        style = f' style="background:rgba(255,120,0,{alpha:.2f})"' if alpha > 0 else ""
        out.append(f'<span class="tok" data-act="{act:g}" title="{act:.2f}"{style}>{_e(tok)}</span>')
    out.append("&hellip;" if hi < len(tokens) else "")
    return f'<div class="text" data-peak="{max(acts, default=0.0):g}">{"".join(out)}</div>'


def chart(sweep: Sequence[Dict], *, headline: float, best: float, best_label: str = "best coherent", width: int = 640,
          height: int = 300) -> str:
    """The dose-response chart: strict and weak mention rates (left axis, 0-100%) and the median
    perplexity under the unsteered model (right axis, log scale) against the clamp scale."""
    left, right, top, bottom = 50, 60, 20, 40
    w, h = width - left - right, height - top - bottom
    scales = [r["scale"] for r in sweep]
    x0, x1 = min(scales), max(scales)
    ppl = [r["median_perplexity"] for r in sweep if r["median_perplexity"] > 0 and math.isfinite(r["median_perplexity"])]
    p0, p1 = (math.log10(min(ppl)), math.log10(max(ppl))) if ppl else (0.0, 1.0)
    if p1 - p0 < 1e-9:
        p0, p1 = p0 - 0.5, p1 + 0.5

    def x(s: float) -> float:
        return left + (w * (s - x0) / (x1 - x0) if x1 > x0 else w / 2)

    def y_rate(r: float) -> float:
        return top + h * (1 - r)

    def y_ppl(p: float) -> float:
        return top + h * (1 - (math.log10(p) - p0) / (p1 - p0))

    parts = [f'<svg class="dose-response" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="mention rate and perplexity against clamp scale">',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>']
    for r in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y_rate(r):.1f}" y2="{y_rate(r):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y_rate(r) + 4:.1f}" text-anchor="end">{r:.0%}</text>')
    for s in scales:
        parts.append(f'<text x="{x(s):.1f}" y="{top + h + 16}" text-anchor="middle">{s:g}x</text>')
    for p in sorted({10 ** p0, 10 ** ((p0 + p1) / 2), 10 ** p1}):
        parts.append(f'<text x="{left + w + 6}" y="{y_ppl(p) + 4:.1f}" fill="{PPL}">{p:.1f}</text>')
    for s, label, colour in ((headline, "article", "#888"), (best, best_label, "#2b8a3e")):
        if x0 <= s <= x1:
            parts.append(f'<line class="marker" data-scale="{s:g}" x1="{x(s):.1f}" x2="{x(s):.1f}" y1="{top}" '
                         f'y2="{top + h}" stroke="{colour}" stroke-dasharray="4 3"/>'
                         f'<text x="{x(s) + 3:.1f}" y="{top + 12}" fill="{colour}">{_e(label)}</text>')
    series = [("strict", "mention_rate", STRICT, y_rate, ""), ("weak", "weak_mention_rate", WEAK, y_rate, "6 4"),
              ("perplexity", "median_perplexity", PPL, y_ppl, "")]
    for name, key, colour, y, dash in series:
        pts = [(r["scale"], r[key]) for r in sweep
               if math.isfinite(r[key]) and (key != "median_perplexity" or r[key] > 0)]
        if not pts:
            continue
        line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in pts)
        parts.append(f'<polyline class="series {name}" points="{line}" fill="none" stroke="{colour}" stroke-width="2"'
                     + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        for s, v in pts:
            shown = _pct(v) if key != "median_perplexity" else f"{v:.1f}"
            parts.append(f'<circle class="point {name}" data-scale="{s:g}" data-value="{v:g}" cx="{x(s):.1f}" '
                         f'cy="{y(v):.1f}" r="3.5" fill="{colour}"><title>{s:g}x: {name} {shown}</title></circle>')
    parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 6}" text-anchor="middle">clamp scale (x the feature\'s '
                 f'max activation)</text>')
    legend = [("strict mentions", STRICT), ("weak rule", WEAK), ("median perplexity (right, log)", PPL)]
    for i, (label, colour) in enumerate(legend):
        parts.append(f'<text x="{left + 8 + 190 * i}" y="{top + h - 8}" fill="{colour}">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cards(r: Dict) -> str:
    ev = r.get("sae_evaluation") or {}
    inactive = r["inactive"]
    coh = r["coherence"]
    best = next(row for row in r["sweep"] if row["scale"] == r["best_scale"])
    cards = [
        ("Strategy 1", f"AUROC {r['selectivity_auroc']:.3f}",
         f"feature {r['feature']}: on {_pct(r['pos_frequency'])} of texts naming it, {_pct(r['neg_frequency'])} of "
         f"unrelated ones; AUROC {_num(r['unnamed_auroc'], 3)} on texts that describe it without its name"),
        (f"Strategy 2 at {r['scale']:g}x", _pct(r["steered_mention_rate"]),
         f"of answers mention it (strict rule; weak rule {_pct(r['loose_mention_rate'])}; unsteered "
         f"{_pct(r['baseline_mention_rate'])}); perplexity {coh['median_perplexity_steered']:.1f} vs "
         f"{coh['median_perplexity_unsteered']:.1f} unsteered"),
        (f"Best coherent scale: {r['best_scale']:g}x" if r.get("best_scale_coherent", True)
         else "No coherent scale", _pct(r["best_scale_mention_rate"]),
         f"mention it (weak rule {_pct(best['weak_mention_rate'])}); perplexity {best['median_perplexity']:.1f}, "
         f"distinct words {_pct(best['distinct_words'])}"),
        ("Inactive", f"{_pct(inactive['baseline_mention_rate'])} &rarr; {_pct(inactive['ablated_mention_rate'])}",
         f"of answers to questions about it mention it, with {_e(_clamp_label(inactive))}"),
        *([("Concept direction (reference)", _pct(r["concept_direction"]["best_mention_rate"]),
            "of answers mention it at most, with the concept's own direction added at "
            + ", ".join(f"{row['ratio']:g}" for row in r["concept_direction"]["sweep"]) + "x the stream"
            + (f" ({_pct(r['concept_direction']['best_coherent_mention_rate'])} at a coherent strength)"
               if r["concept_direction"].get("best_coherent_mention_rate") is not None else " (none coherent)"))]
          if r.get("concept_direction") else []),
        (f"SAE: {_e(r['architecture'])}, {r['d_sae']} latents", f"FVU {_num(ev.get('fvu'), 3)}",
         f"L0 {_num(ev.get('l0'), 1)}, dead {_pct(ev.get('dead_fraction'))}, CE loss recovered "
         f"{_num(ev.get('ce_loss_recovered'), 3)}; trained on {r['train_tokens']:,} tokens"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><span>{_e(title)}</span><b>{value}</b><span>{_e(note)}</span></div>'
        for title, value, note in cards) + "</div>"


def _strategy1(r: Dict) -> str:
    acts = r["token_activations"]
    peak = max((max(row["acts"], default=0.0) for rows in acts.values() for row in rows), default=0.0)
    out = [f'<h3>Strategy 1: feature {r["feature"]} on every token</h3>',
           f'<p class="legend">Shading: the activation over its maximum on this page ({peak:.2f}); hover a token '
           f'for its value. Fires on: ' + ", ".join(f"{_e(g)} {_pct(v)}" for g, v in r["group_frequency"].items())
           + (" (" + ", ".join(f"{k} {_pct(v)}" for k, v in r["per_language"].items()) + ")" if r["per_language"]
              else "") + "</p>"]
    titles = {"named": "Held-out texts that name it", "described": "Texts that describe it without its name",
              "other languages": "In French, Spanish and German", "unrelated": "Unrelated texts"}
    for group, title in titles.items():
        rows = acts.get(group) or []
        if rows:
            out.append(f'<h4>{_e(title)}</h4><div class="group" data-group="{_e(group)}">'
                       + "".join(shaded(row, peak) for row in rows) + "</div>")
    if acts.get("top_examples"):
        out.append('<h4>Top examples over the labelled corpus</h4><div class="group" data-group="top examples">'
                   + "".join(shaded(row, peak, window=24) for row in acts["top_examples"]) + "</div>")
    return "".join(out)


def _answers_table(r: Dict) -> str:
    best = r["best_scale_examples"]
    head = ["question", "unsteered", f"steered at {r['scale']:g}x"]
    same = best["scale"] == r["scale"]
    if not same:
        head.append(f"steered at {best['scale']:g}x (best coherent)")
    rows = []
    for ex, b in zip(r["examples"], best["answers"]):
        cells = [ex["prompt"], ex["unsteered"], ex["steered"]] + ([] if same else [b["steered"]])
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return ('<table class="answers"><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table>")


def _sweep_table(r: Dict) -> str:
    head = ["scale", "strict", "weak", "median perplexity", "distinct words", "clamp / stream norm", "coherent"]
    rows = []
    for row in r["sweep"]:
        cls = ' class="headline"' if row["scale"] == r["scale"] else ""
        cells = [f"{row['scale']:g}x", _pct(row["mention_rate"]), _pct(row["weak_mention_rate"]),
                 _num(row["median_perplexity"], 1), _pct(row["distinct_words"]),
                 _num(row["clamp_norm"] / r["residual_norm_median"], 1), "yes" if row.get("coherent") else "no"]
        rows.append(f"<tr{cls}>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
    return ('<table class="sweep"><tr>' + "".join(f'<th class="num">{_e(h)}</th>' for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _direction(r: Dict) -> str:
    """The concept direction's section (records written before it was measured have none)."""
    ref = r.get("concept_direction")
    if not ref:
        return ""
    head = ["added at (x the stream's median norm)", "strict", "weak", "median perplexity", "distinct words", "coherent"]
    rows = []
    for row in ref["sweep"]:
        cells = [f"{row['ratio']:g}x", _pct(row["mention_rate"]), _pct(row["weak_mention_rate"]),
                 _num(row["median_perplexity"], 1), _pct(row["distinct_words"]), "yes" if row["coherent"] else "no"]
        rows.append("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
    aurocs = ", ".join(f"{_e(g)} {_num(v, 2)} / {_num(ref['auroc_mean'].get(g), 2)}" for g, v in ref["auroc"].items())
    examples = ref["examples"]
    answers = "".join(f"<tr><td>{_e(a['prompt'])}</td><td>{_e(a['steered'])}</td></tr>" for a in examples["answers"][:4])
    return (f'<h3>Reference: the concept\'s own direction</h3><p class="legend">What any single direction at this site '
            f'can do, for comparison with the feature: {_e(ref["method"])} ({ref["texts"]["concept"]} and '
            f'{ref["texts"]["other"]} texts). AUROC by its peak / mean projection per text: {aurocs}. Added to every '
            f'token, at most {_pct(ref["best_mention_rate"])} of the answers mention the concept (strict rule)'
            + (f", {_pct(ref['best_coherent_mention_rate'])} at a coherent strength"
               if ref.get("best_coherent_mention_rate") is not None else ", none of them at a coherent strength")
            + '.</p><table class="direction"><tr>' + "".join(f'<th class="num">{_e(h)}</th>' for h in head) + "</tr>"
            + "".join(rows) + "</table>"
            + f'<table class="direction-answers"><tr><th>question</th><th>with the direction at '
              f'{examples["ratio"]:g}x the stream</th></tr>{answers}</table>')


def _clamp_label(c: Dict) -> str:
    # (records written before the multi-feature ablation carry no label)
    return c.get("label") or f"clamped to {c['scale']:g}x max"


def _inactive(r: Dict) -> str:
    ina = r["inactive"]
    head = ["question", f"unsteered ({_pct(ina['unsteered']['mention_rate'])} mention it)"] + [
        f"{_clamp_label(c)} ({_pct(c['mention_rate'])})" for c in ina["clamps"]]
    rows = []
    for i, q in enumerate(ina["prompts"]):
        cells = [q, ina["unsteered"]["answers"][i]] + [c["answers"][i] for c in ina["clamps"]]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return ('<table class="inactive"><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table>")


def render(results: Sequence[Dict], *, title: str = "The Golden Gate experiment on SmolLM2-135M-Instruct",
           subtitle: str = "") -> str:
    sections = []
    for r in results:
        sections.append(
            f'<section class="concept" data-concept="{_e(r["concept"])}"><h2>{_e(r["concept"])}</h2>'
            + _cards(r)
            + f'<p class="rule">A strict mention is: {_e(r["mention_rule"])}</p>'
            + _strategy1(r)
            + f'<h3>Strategy 2: clamped to s x its max ({r["clamp_value"] / r["scale"]:.2f}) on every token</h3>'
            + chart(r["sweep"], headline=r["scale"], best=r["best_scale"],
                    best_label="best coherent" if r.get("best_scale_coherent", True) else "best (none coherent)") + _sweep_table(r)
            + "<h4>Answers side by side</h4>" + _answers_table(r)
            + _direction(r)
            + "<h4>The inactive direction: questions about it, the feature clamped to 0 or below</h4>" + _inactive(r)
            + "</section>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + _e(title) + "</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class=\"sub\">{_e(subtitle)}</p>"
            + "".join(sections) + "</body></html>")


def write_report(results: Sequence[Dict], path: str, *, subtitle: str = "") -> str:
    """Writes the page for the demo's records to ``path`` (atomically) and returns the path."""
    if not results:
        raise ValueError("results: expected at least one concept's record")
    page = render(results, subtitle=subtitle)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


__all__: List[str] = ["render", "write_report", "chart", "shaded"]
