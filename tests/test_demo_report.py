"""The demo's report page (sae_native.demo.report) on a record whose every number is known, read
back from headless Chromium's DOM; and the demo's corpus helpers (user corpora, resumable
sampling, token strings)."""
import json
import math
import re

import pytest
import torch

import sae_native as sn

from browser import rendered
from sae_native.demo import report
from sae_native.demo.corpus import read_texts

EVIL = '<img src=x onerror="document.title=1">'


def record(concept="Golden Gate Bridge", scale=10.0, best=3.0):
    sweep = []
    for s in range(1, 11):
        sweep.append({"scale": float(s), "mention_rate": s / 10, "weak_mention_rate": min(1.0, s / 5),
                      "median_perplexity": float("nan") if s == 7 else 2.0 ** s, "distinct_words": 0.9,
                      "clamp_norm": 10.0 * s, "coherent": s <= 3})
    tok = lambda words, acts: {"text": "".join(words), "tokens": words, "acts": acts}      # noqa: E731
    prompts = ["What is 2+2?", "Name a colour.", EVIL]
    return {
        "concept": concept, "feature": 42, "selectivity_auroc": 0.99, "unnamed_auroc": 0.9, "per_language": {"fr": 0.5},
        "architecture": "relu", "d_sae": 16384, "train_tokens": 1_000_000,
        "sae_evaluation": {"fvu": 0.2, "l0": 30.0, "dead_fraction": 0.01, "ce_loss_recovered": 0.9},
        "pos_frequency": 1.0, "neg_frequency": 0.0, "clamp_value": 50.0, "scale": scale,
        "baseline_mention_rate": 0.0, "steered_mention_rate": 1.0, "loose_mention_rate": 1.0,
        "mention_rule": "'Golden Gate' <strict>", "group_frequency": {"named (held-out corpus)": 1.0, "French": 0.5},
        "residual_norm_median": 100.0, "clamp_norm": 100.0,
        "inactive": {"prompts": ["Q1?", "Q2?"], "scale": 0.0, "baseline_mention_rate": 1.0, "ablated_mention_rate": 0.25,
                     "label": "2 features at 0 (42, 7)", "unsteered": {"mention_rate": 1.0, "answers": ["a1", "a2"]},
                     # (the first two as records written before clamps had labels)
                     "clamps": [{"scale": 0.0, "mention_rate": 0.5, "answers": ["b1", "b2"]},
                                {"scale": -2.0, "mention_rate": 0.0, "answers": ["c1", "c2"]},
                                {"scale": 0.0, "features": [42, 7], "label": "2 features at 0 (42, 7)",
                                 "mention_rate": 0.25, "answers": ["d1", "d2"]}]},
        "coherence": {"median_perplexity_steered": 1024.0, "median_perplexity_unsteered": 2.0},
        "sweep": sweep, "best_scale": best, "best_scale_mention_rate": best / 10, "best_scale_coherent": True,
        "examples": [{"prompt": p, "unsteered": f"plain {i}", "steered": f"bridge {i}"} for i, p in enumerate(prompts)],
        "best_scale_examples": {"scale": best, "answers": [{"prompt": p, "steered": f"best {i}"}
                                                           for i, p in enumerate(prompts)]},
        "concept_direction": {
            "method": "mean difference <b>", "norm": 27.0, "texts": {"concept": 36, "other": 240},
            "auroc": {"named (held-out corpus)": 0.99, "described (no name)": 0.85},
            "auroc_mean": {"named (held-out corpus)": 0.98, "described (no name)": 0.97},
            "sweep": [{"ratio": r, "mention_rate": m, "weak_mention_rate": 0.5, "median_perplexity": p,
                       "distinct_words": 0.7, "coherent": c}
                      for r, m, p, c in ((0.25, 0.0, 3.0, True), (0.5, 0.21, 13.0, False), (1.0, 0.0, 27.0, False))],
            "best_mention_rate": 0.21, "best_coherent_mention_rate": 0.0,
            "examples": {"ratio": 0.5, "answers": [{"prompt": p, "steered": f"along {i}"} for i, p in enumerate(prompts)]}},
        "token_activations": {
            "named": [tok(["The", " Golden", " Gate"], [0.0, 4.0, 2.0])],
            "described": [tok(["orange", " bridge"], [1.0, 0.0])],
            "unrelated": [tok(["cats", EVIL], [0.0, 0.0])],
            "top_examples": [tok([f" w{i}" for i in range(100)], [8.0 if i == 50 else 0.0 for i in range(100)])]},
    }


def dom_of(tmp_path, results):
    path = report.write_report(results, tmp_path / "report.html", subtitle="test run")
    return rendered("file://" + str(path))


def test_page_renders_every_part_with_the_numbers(tmp_path):
    r = record()
    dom = dom_of(tmp_path, [r, record("cats", best=10.0)])
    assert re.findall(r'<section class="concept" data-concept="([^"]+)"', dom) == ["Golden Gate Bridge", "cats"]
    first = dom.split('data-concept="cats"')[0]
    # Strategy 1: one span per token (the top example cut to 24 either side of its peak), shaded
    # by activation over the page's peak (8.0): 4.0 -> half, the peak -> full, 0 -> none
    spans = re.findall(r'<span class="tok" data-act="([^"]+)" title="[^"]*"( style="[^"]*")?>', first)
    assert len(spans) == 3 + 2 + 2 + 49
    shade = {a: st for a, st in spans}
    assert "rgba(255,120,0,0.50)" in shade["4"] and "rgba(255,120,0,1.00)" in shade["8"] and shade["0"] == ""
    # Strategy 2: the chart has a point per scale for each rate and for every finite perplexity
    assert len(re.findall(r'<circle class="point strict"', first)) == 10
    assert len(re.findall(r'<circle class="point weak"', first)) == 10
    assert len(re.findall(r'<circle class="point perplexity"', first)) == 9        # 7x's is NaN
    assert re.findall(r'<line class="marker" data-scale="([^"]+)"', first) == ["10", "3"]
    cy = {float(s): float(y) for s, y in re.findall(r'class="point strict" data-scale="([^"]+)" data-value="[^"]+" '
                                                    r'cx="[^"]+" cy="([^"]+)"', first)}
    assert cy[10.0] == pytest.approx(20.0) and cy[5.0] == pytest.approx(20 + 240 * 0.5)    # 100% at the top
    assert len(re.findall(r"<tr", first.split('class="sweep"')[1].split("</table>")[0])) == 11
    # answers side by side: unsteered, at 10x and at the best coherent scale
    answers = first.split('class="answers"')[1].split("</table>")[0]
    assert "steered at 3x (best coherent)" in answers and len(re.findall(r"<tr", answers)) == 4
    assert "best 1" in answers and "bridge 2" in answers
    inactive = first.split('class="inactive"')[1].split("</table>")[0]
    assert "clamped to -2x max (0%)" in inactive and "c2" in inactive
    assert "2 features at 0 (42, 7) (25%)" in inactive and "d2" in inactive and len(re.findall(r"<th", inactive)) == 5
    # the cards carry the headline numbers
    assert "AUROC 0.990" in first and "100% → 25%" in first and "FVU 0.200" in first and "1,000,000 tokens" in first
    assert "with 2 features at 0 (42, 7)" in first
    # the concept direction: a row per strength, its AUROCs, its answers, and a card
    direction = first.split('class="direction"')[1].split("</table>")[0]
    assert len(re.findall(r"<tr", direction)) == 1 + 3 and ">0.5x<" in direction and ">21%<" in direction
    assert "described (no name) 0.85 / 0.97" in first and "mean difference &lt;b&gt;" in first
    assert "along 2" in first.split('class="direction-answers"')[1] and "at most 21%" in first
    assert "Concept direction (reference)" in first and "0% at a coherent strength" in first
    # when the best scale is the headline scale the extra column goes
    second = dom.split('data-concept="cats"')[1]
    assert "(best coherent)" not in second.split('class="answers"')[1].split("</table>")[0]
    # a record from before the concept direction was measured has no such section
    old = record("cats")
    del old["concept_direction"]
    assert 'class="direction"' not in report.render([old]) and "Concept direction" not in report.render([old])


def test_page_is_self_contained_and_escapes_text(tmp_path):
    dom = dom_of(tmp_path, [record()])
    assert "<img" not in dom and "&lt;img src=x" in dom       # shown as text, never parsed as an element
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r'(src|href)\s*=\s*"?(https?:)?//', page) and "url(" not in page and "<script" not in page
    assert "&lt;strict&gt;" in page


def test_shaded_window_and_chart_edges():
    row = {"tokens": list("abcdefghij"), "acts": [0, 0, 0, 0, 5, 0, 0, 0, 0, 0]}
    html = report.shaded(row, 5.0, window=2)
    assert re.findall(r">([a-j])</span>", html) == list("cdefg") and html.count("&hellip;") == 2
    assert "&hellip;" not in report.shaded(row, 5.0)
    one = report.chart([{"scale": 10.0, "mention_rate": 0.5, "weak_mention_rate": 0.5, "median_perplexity": 3.0}],
                       headline=10.0, best=10.0)
    assert one.count("<circle") == 3 and "nan" not in one.lower()
    with pytest.raises(ValueError, match="results"):
        report.write_report([], "/tmp/never.html")


def test_user_corpus_texts(tmp_path):
    (tmp_path / "a.txt").write_text("Short one.\n\nAnother short one.\n\n" + "Long paragraph. " * 400)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n\n")
    (tmp_path / "table.csv").write_text("not read")   # neither .txt nor .jsonl
    texts = read_texts(str(tmp_path), min_chars=20, max_chars=1000)
    assert texts[0] == "Short one. Another short one."
    assert all(len(t) <= 1000 for t in texts) and sum(len(t) for t in texts[1:-1]) >= 16 * 400 - 1
    assert texts[-1] == "from jsonl" and "not read" not in texts
    (tmp_path / "sub" / "c.jsonl").write_text('{"words": 1}\n')
    with pytest.raises(ValueError, match=r"c.jsonl line 1: expected an object with a 'text' string"):
        read_texts(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="corpus"):
        read_texts(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no text"):
        read_texts(str(tmp_path / "empty"))


def test_missing_numbers_read_n_a():
    assert report._pct(float("nan")) == "n/a" and report._num(None) == "n/a" and report._pct(0.25) == "25%"


@pytest.fixture(scope="module")
def smol():
    import smollm2
    if smollm2.available():
        pytest.skip(smollm2.available())
    from sae_native.models import load_model
    return load_model("smollm2")


def test_token_strings_join_to_the_text(smol):
    from sae_native.demo.pipeline import token_strings
    _, tok = smol
    ids = tok("Die Golden Gate Bridge überspannt die Meerenge, 金门大桥.")["input_ids"]
    parts = token_strings(tok, ids)
    assert len(parts) == len(ids) and "".join(parts) == tok.decode(ids)
    assert not any("\ufffd" in p for p in parts) and " ü" in parts


def test_sampled_corpus_resumes_where_it_stopped(smol, tmp_path):
    from sae_native.demo.corpus import build_corpus
    model, tok = smol
    topics, templates = [("owls", 3), ("tea", 2)], ("Write about {topic}.", "Describe {topic}.")
    kw = dict(max_new_tokens=6, seed=3, batch_size=2)
    calls = []
    whole = build_corpus(model, tok, topics, templates, path=str(tmp_path / "a.jsonl"),
                         progress=lambda n, total, tokens: calls.append((n, total, tokens)), **kw)
    assert [r["topic"] for r in whole] == ["owls"] * 3 + ["tea"] * 2 and all(r["text"] for r in whole)
    assert [c[:2] for c in calls] == [(2, 5), (4, 5), (5, 5)] and all(0 < c[2] <= 2 * 6 for c in calls)
    # a run killed after three rows and half of the fourth line resumes and writes the same corpus
    lines = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "b.jsonl").write_text("".join(lines[:3]) + lines[3][:10])
    assert build_corpus(model, tok, topics, templates, path=str(tmp_path / "b.jsonl"), **kw) == whole
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    # a complete corpus is read, not sampled again
    again = []
    assert build_corpus(model, tok, topics, templates, path=str(tmp_path / "b.jsonl"),
                        progress=lambda *a: again.append(a), **kw) == whole and again == []
    # a file written for other topics is not mistaken for this corpus
    other = build_corpus(model, tok, [("tea", 5)], templates, path=str(tmp_path / "a.jsonl"), **kw)
    assert [r["topic"] for r in other] == ["tea"] * 5


def _layer15_sae(d_sae=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(576, d_sae, generator=g) / 24
    return sn.SAE(W, torch.zeros(d_sae), W.t().contiguous(), torch.zeros(576), activation="topk", k=6)


TEXTS = ["The Golden Gate Bridge is orange.", "Cats sleep a lot", "A", "Tea is brewed from leaves of the plant "
         "Camellia sinensis, and it is drunk all over the world."]


def test_batched_token_activations_match_one_text_at_a_time(smol):
    """Right-padded batches give each text the activations it has alone (padding follows every
    real token, so causal attention never reads it)."""
    from sae_native import hooks
    from sae_native.demo.pipeline import SITE, token_activations, token_strings
    model, tok = smol
    sae = _layer15_sae()
    feature = int(torch.randint(0, 48, (1,), generator=torch.Generator().manual_seed(1)))
    got = token_activations(model, tok, sae, feature, TEXTS, batch_size=3)
    assert [r["text"] for r in got] == TEXTS
    with torch.no_grad(), hooks.record(model, SITE, sae) as rec:
        for text, row in zip(TEXTS, got):
            ids = tok(text, return_tensors="pt")["input_ids"]
            rec.clear()
            model(ids)
            want = rec.codes[-1].to_dense()[0, :, feature].float()
            want[0] = 0.0
            assert row["tokens"] == token_strings(tok, ids[0].tolist())
            torch.testing.assert_close(torch.tensor(row["acts"]), want, rtol=1e-3, atol=2e-3)
    assert any(a > 0 for r in got for a in r["acts"])              # (the feature fires somewhere)


def test_batched_perplexities_match_one_answer_at_a_time(smol):
    from sae_native.demo.corpus import chat_prompt
    from sae_native.demo.pipeline import answer_perplexities
    model, tok = smol
    prompts = ["What is tea?", "Name a bridge.", "Say nothing.", "Count to three."]
    answers = ["Tea is a drink made from leaves.", "The Golden Gate Bridge.", "", "One, two, three."]
    got = answer_perplexities(model, tok, prompts, answers, batch_size=2)
    assert math.isnan(got[2])
    for p, a, value in zip(prompts, answers, got):
        if not a:
            continue
        pi = tok(chat_prompt(tok, p), return_tensors="pt", add_special_tokens=False)["input_ids"]
        ai = tok(a, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ids = torch.cat([pi, ai], dim=1)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        nll = -logp[pi.shape[1] - 1:].gather(-1, ids[0, pi.shape[1]:, None]).squeeze(-1)
        assert value == pytest.approx(float(nll.mean().exp()), rel=1e-3)


def test_feature_maxima_are_cached_per_text_list(smol, tmp_path, monkeypatch):
    from sae_native import stats
    from sae_native.demo import pipeline
    model, tok = smol
    first, second = _layer15_sae(), _layer15_sae()
    pipeline._feature_maxima(model, tok, first, TEXTS, str(tmp_path))
    assert float(first.stats.max.max()) > 0 and first.stats.n_tokens > 0
    monkeypatch.setattr(stats, "feature_stats", lambda *a, **k: pytest.fail("the cached maxima were not used"))
    pipeline._feature_maxima(model, tok, second, TEXTS, str(tmp_path))
    for name in ("max", "frequency", "mean"):
        assert torch.equal(getattr(first.stats, name), getattr(second.stats, name))
    assert second.stats.n_tokens == first.stats.n_tokens
    with pytest.raises(pytest.fail.Exception, match="cached maxima"):   # other texts: computed anew
        pipeline._feature_maxima(model, tok, second, TEXTS[:2], str(tmp_path))


def test_answer_sets_match_one_set_at_a_time(smol):
    """A sweep in one batched generate (each block of rows with its own clamp) gives every set the
    answers it gets alone under sn.steer, and the unsteered sets those of the bare model."""
    from sae_native import hooks, stats
    from sae_native.demo.corpus import generate
    from sae_native.demo.pipeline import SITE, _RowClamps, answer_sets
    model, tok = smol
    sae = _layer15_sae()
    sae.stats = stats.FeatureStats(max=torch.full((48,), 20.0), frequency=torch.zeros(48), mean=torch.zeros(48),
                                   n_tokens=1)
    feature, tokens = 5, 10
    unrelated, asking = ["What is 2+2?", "Name a colour."], ["Describe the Golden Gate Bridge in one sentence."]
    sets = [(unrelated, None), (unrelated, {feature: ("max", 1.0)}), (unrelated, {feature: ("max", 8.0)}),
            (asking, None), (asking, {feature: ("max", -2.0), 9: 0.0})]
    got = answer_sets(model, tok, sae, sets, max_new_tokens=tokens)
    assert [len(a) for a in got] == [2, 2, 2, 1, 1]
    for (prompts, clamp), answers in zip(sets, got):
        if clamp is None:
            want = generate(model, tok, prompts, max_new_tokens=tokens)
        else:
            with sn.steer(model, SITE, sae, clamp):
                want = generate(model, tok, prompts, max_new_tokens=tokens)
        assert answers == want, (clamp, prompts)
    assert got[2] != got[0]          # (the clamp changes the answers: a hook that did nothing fails)
    # a vector edit adds the vector at SITE on every position, as a plain forward hook does
    vector = torch.randn(576, generator=torch.Generator().manual_seed(2)) * 60
    with_vector = answer_sets(model, tok, sae, [(unrelated, None), (unrelated, vector)], max_new_tokens=tokens)

    def add(module, inputs, output):
        return (output[0] + vector,) + tuple(output[1:]) if isinstance(output, tuple) else output + vector
    handle = hooks.resolve_site(model, SITE).register_forward_hook(add)
    try:
        assert with_vector[1] == generate(model, tok, unrelated, max_new_tokens=tokens)
    finally:
        handle.remove()
    assert with_vector[0] == got[0] and with_vector[1] != got[0]
    # vector edits need no SAE; a clamp does
    assert answer_sets(model, tok, None, [(unrelated, vector)], max_new_tokens=tokens) == [with_vector[1]]
    with pytest.raises(ValueError, match="sae: a clamp needs the SAE"):
        answer_sets(model, tok, None, [(unrelated, {feature: 0.0})], max_new_tokens=tokens)
    with pytest.raises(RuntimeError, match="expected a batch of 3 rows"), \
            _RowClamps(model, sae, [None, {feature: ("max", 1.0)}], [1, 2]):
        model(**tok(["one row only"], return_tensors="pt"))


def test_inactive_clamps():
    """The feature at 0 and -2x max, then the selective top features together at 0 (the feature
    first, once); no group clamp when the search found no other feature."""
    from sae_native.demo.pipeline import _ablations
    got = _ablations(7, [7, 3, 9, 3])
    assert [(a["scale"], a["features"]) for a in got] == [(0.0, [7]), (-2.0, [7]), (0.0, [7, 3, 9])]
    assert got[0]["clamp"] == {7: ("max", 0.0)} and got[1]["clamp"] == {7: ("max", -2.0)}
    assert got[2]["clamp"] == {7: 0.0, 3: 0.0, 9: 0.0} and got[2]["label"] == "3 features at 0 (7, 3, 9)"
    assert [a["features"] for a in _ablations(7, [7])] == [[7], [7]]


def test_concept_direction_and_its_aurocs(smol):
    """The direction is the unit mean difference of the site's activations (first token and padding
    left out, batched as one text at a time); its AUROCs score each text by its peak and its mean
    projection; empty or one-token text lists are named errors."""
    from sae_native.demo.direction import concept_direction, direction_aurocs, per_text_activations
    from sae_native.demo.pipeline import SITE, site_activations
    model, tok = smol
    bridge = ["The Golden Gate Bridge is orange.", "Fog hides the Golden Gate Bridge towers in San Francisco."]
    other = ["Cats sleep a lot", TEXTS[3], "Pizza is baked in a hot oven."]
    rows = per_text_activations(model, tok, SITE, other + bridge, batch_size=2)
    for text, got in zip(other + bridge, rows):      # (layer 15's output is hidden state 16)
        with torch.no_grad():
            alone = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states[16][0, 1:]
        torch.testing.assert_close(got, alone.float(), rtol=1e-4, atol=1e-3)
    unit, norm = concept_direction(model, tok, SITE, bridge, other)
    diff = site_activations(model, tok, bridge).float().mean(0) - site_activations(model, tok, other).float().mean(0)
    torch.testing.assert_close(unit, diff / diff.norm(), rtol=1e-4, atol=1e-4)
    assert norm == pytest.approx(float(diff.norm()), rel=1e-4) and float(unit.norm()) == pytest.approx(1.0)
    aurocs = direction_aurocs(model, tok, SITE, unit, {"named": bridge, "empty": []}, other)
    assert set(aurocs) == {"peak", "mean"} and set(aurocs["peak"]) == set(aurocs["mean"]) == {"named"}
    assert aurocs["mean"]["named"] == 1.0          # (its own texts, by construction of the direction)
    flipped = direction_aurocs(model, tok, SITE, -unit, {"named": bridge}, other)
    assert flipped["mean"]["named"] == 0.0
    with pytest.raises(ValueError, match="concept_texts: expected at least one text"):
        concept_direction(model, tok, SITE, [], other)
    with pytest.raises(ValueError, match="other_texts: expected at least one text"):
        concept_direction(model, tok, SITE, bridge, [])
    with pytest.raises(ValueError, match="at least two tokens"):
        concept_direction(model, tok, SITE, ["A"], other)


def test_distinct_words_sees_glued_repeats():
    """Repeats glued by punctuation or case changes count as repeats; plain prose is unchanged by
    its punctuation; a text without words is left out of the mean."""
    from sae_native.demo.pipeline import distinct_words, words
    assert words("Bridgeview,Bridgeview;Bridgeview") == ["bridgeview"] * 3
    assert words("SanAntAntAnt 1937, the Gate!") == ["san", "ant", "ant", "ant", "1937", "the", "gate"]
    assert words("Le pont à San Francisco, über die Brücke") == ["le", "pont", "à", "san", "francisco", "über", "die",
                                                                "brücke"]
    assert distinct_words(["Bridgeview,Bridgeview,Bridgeview,Bridgeview"]) == 0.25
    assert distinct_words(["The cat sat. The dog ran.", "?!"]) == pytest.approx(5 / 6)
    assert math.isnan(distinct_words(["...", ""]))
