"""The dashboard's HTML: an index page with search by token and one page per feature. Every page
is self-contained (inline CSS, SVG and script; no network), so the folder opens from disk."""
from __future__ import annotations

import html
import json
from typing import List

from .summary import Context, FeatureSummary

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse} td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
.tok{white-space:pre;border-radius:2px;padding:0 1px} .peak{outline:1px solid #b30}
.ctx{font-family:ui-monospace,monospace;font-size:.9em;margin:.25em 0}
.val{display:inline-block;width:5em;color:#666}
.cols{display:flex;gap:3em;flex-wrap:wrap} .muted{color:#777}
"""


def esc(text: str) -> str:
    """A token's text made visible: newlines and tabs as symbols, then HTML-escaped."""
    return html.escape(text.replace("\n", "\u21b5").replace("\t", "\u21e5"), quote=True)


def page(title: str, body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n{script}</body></html>\n")


def shaded(tokens, peak: int, top: float) -> str:
    """Tokens with a background whose strength is the activation over the feature's maximum."""
    out = []
    for i, (text, value) in enumerate(tokens):
        alpha = 0.0 if top <= 0 else min(max(value / top, 0.0), 1.0)
        cls = "tok peak" if i == peak else "tok"
        out.append(f"<span class=\"{cls}\" style=\"background:rgba(255,110,0,{alpha:.3f})\" "
                   f"title=\"{value:.4g}\" data-act=\"{value:.6g}\">{esc(text)}</span>")
    return "".join(out)


def histogram_svg(bins, width: int = 420, height: int = 110) -> str:
    if not bins:
        return "<p class=\"muted\">never active in this corpus</p>"
    most = max(c for _, _, c in bins) or 1
    w = width / len(bins)
    bars = "".join(f"<rect x=\"{i * w:.2f}\" y=\"{height - 15 - (height - 20) * c / most:.2f}\" width=\"{w * 0.9:.2f}\" "
                   f"height=\"{(height - 20) * c / most:.2f}\" fill=\"#e46c0a\"><title>{lo:.3g}-{hi:.3g}: {c}</title>"
                   f"</rect>" for i, (lo, hi, c) in enumerate(bins))
    labels = (f"<text x=\"0\" y=\"{height - 2}\" font-size=\"10\">0</text>"
              f"<text x=\"{width}\" y=\"{height - 2}\" font-size=\"10\" text-anchor=\"end\">{bins[-1][1]:.3g}</text>")
    return (f"<svg class=\"hist\" width=\"{width}\" height=\"{height}\" role=\"img\" "
            f"aria-label=\"activation histogram\">{bars}{labels}</svg>")


def _context_rows(ctxs: List[Context], top: float) -> str:
    return "\n".join(f"<div class=\"ctx\"><span class=\"val\">{c.value:.3f}</span>{shaded(c.tokens, c.peak, top)}</div>"
                     for c in ctxs) or "<p class=\"muted\">no examples</p>"


def _token_table(rows, header: str) -> str:
    cells = "".join(f"<tr><td class=\"tok\">{esc(t)}</td><td>{v:+.3f}</td></tr>" for t, v in rows)
    return f"<div><h2>{header}</h2><table class=\"logits\">{cells}</table></div>"


def feature_page(s: FeatureSummary, title: str, pages=frozenset()) -> str:
    """``pages``: the features that have a page, which the neighbour list links to."""
    def name(f):
        return f"<a href=\"{f}.html\">feature {f}</a>" if f in pages else f"feature {f}"
    near = "".join(f"<tr><td>{name(f)}</td><td>{c:.3f}</td></tr>" for f, c in s.neighbours)
    fires = ", ".join(f"{esc(t)} ({n})" for t, n in s.top_tokens) or "-"
    logits = (_token_table(s.promoted, "Promotes (logit effect)") + _token_table(s.suppressed, "Suppresses")
              if s.promoted or s.suppressed else "<p class=\"muted\">no unembedding given: logit effects not shown</p>")
    body = f"""<p><a href="../index.html">&larr; all features</a></p>
<h1>Feature {s.feature}</h1>
<p class="muted">{html.escape(title)}</p>
<table class="stats">
<tr><th>density</th><td id="density">{s.density:.4%}</td><td class="muted">{s.count} tokens</td></tr>
<tr><th>max activation</th><td id="max">{s.max:.4g}</td></tr>
<tr><th>mean when active</th><td>{s.mean_active:.4g}</td></tr>
<tr><th>fires most on</th><td colspan="2">{fires}</td></tr>
</table>
<h2>Activation histogram</h2>
{histogram_svg(s.histogram)}
<h2>Top-activating contexts</h2>
<div id="contexts">{_context_rows(s.contexts, s.max)}</div>
<div class="cols">{logits}
<div><h2>Nearest features (decoder cosine)</h2><table class="neighbours">{near}</table></div></div>"""
    return page(f"Feature {s.feature} - {title}", body)


INDEX_SCRIPT = """<script>
const data = JSON.parse(document.getElementById('features-data').textContent);
const box = document.getElementById('search'), rows = document.getElementById('rows'),
      shown = document.getElementById('shown');
function fmt(x) { return (100 * x).toPrecision(3) + '%'; }
function render() {
  const q = box.value.trim().toLowerCase();
  const hits = data.filter(d => q === '' || String(d.f) === q ||
                                d.top.some(t => t.toLowerCase().includes(q)));
  rows.replaceChildren(...hits.map(d => {
    const tr = document.createElement('tr');
    tr.className = 'feature';
    tr.dataset.feature = d.f;
    const a = document.createElement('a');
    a.href = 'features/' + d.f + '.html';
    a.textContent = 'feature ' + d.f;
    const cells = [a, fmt(d.density), d.max.toPrecision(4), d.top.join(' | ')];
    for (const c of cells) {
      const td = document.createElement('td');
      if (typeof c === 'string') td.textContent = c; else td.appendChild(c);
      tr.appendChild(td);
    }
    return tr;
  }));
  shown.textContent = hits.length + ' of ' + data.length + ' features';
}
box.addEventListener('input', render);
const m = location.hash.match(/^#q=(.*)$/);
if (m) box.value = decodeURIComponent(m[1]);
render();
</script>"""


def index_page(summaries: List[FeatureSummary], title: str, facts: List[str]) -> str:
    data = [{"f": s.feature, "density": s.density, "max": s.max, "top": [t for t, _ in s.top_tokens]}
            for s in summaries]
    # JSON inside <script>: "</" could close the element, so it is escaped.
    blob = json.dumps(data).replace("</", "<\\/")
    facts_html = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    body = f"""<h1>{html.escape(title)}</h1>
<ul class="facts">{facts_html}</ul>
<p><label>Search by token or feature id: <input id="search" type="search" placeholder="e.g. bridge"></label>
<span id="shown" class="muted"></span></p>
<table><thead><tr><th>feature</th><th>density</th><th>max</th><th>fires most on</th></tr></thead>
<tbody id="rows"></tbody></table>
<script type="application/json" id="features-data">{blob}</script>"""
    return page(title, body, INDEX_SCRIPT)
