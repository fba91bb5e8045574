"""The seed experiment end to end on SmolLM2-135M-Instruct's middle layer.

Strategy 1: a feature is active when its concept is in the input and not otherwise (found by the
AUROC of its per-text maximum, on held-out texts). Strategy 2: clamped to `scale` x its maximum
activation at layer 15, it makes the model bring up the concept in answers to unrelated questions.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import features, hooks, stats
from ..loading import load as load_sae
from ..training import train
from .concepts import CONCEPTS, OTHER_TOPICS, PROMPTS, TEMPLATES, Concept
from .corpus import build_corpus, chat_prompt, generate

SITE = "model.layers.15"


@dataclass(frozen=True)
class Budget:
    concept_texts: int      # corpus texts per concept
    other_texts: int        # corpus texts per other topic
    other_topics: int       # how many of OTHER_TOPICS
    text_tokens: int        # new tokens per corpus text
    d_sae: int
    k: int
    steps: int
    batch_size: int
    answer_tokens: int      # new tokens per steered / unsteered answer
    prompts: int            # held-out prompts
    held_out: float         # fraction of each topic's texts kept for the selectivity measurement


BUDGETS = {
    "full": Budget(48, 8, 40, 80, 4096, 16, 1200, 1024, 40, 24, 0.25),
    "small": Budget(4, 2, 4, 24, 256, 8, 30, 256, 10, 4, 0.25),
}


def default_cache() -> str:
    return os.environ.get("SAE_NATIVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sae-native")


def _batches(tok, texts: Sequence[str], size: int = 16):
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for i in range(0, len(texts), size):
        enc = tok(list(texts[i:i + size]), return_tensors="pt", padding=True)
        yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def site_activations(model, tok, texts: Sequence[str]) -> torch.Tensor:
    """[tokens, d_model] activations at SITE over the texts (first token and padding dropped)."""
    from ..training import stream_activations
    chunks = list(stream_activations(model, SITE, _batches(tok, texts), batch_size=1 << 30, buffer_tokens=1 << 62))
    return torch.cat(chunks)


def answer_perplexity(model, tok, prompt: str, answer: str) -> float:
    """exp(mean NLL) of the answer's tokens after the chat prompt, under the (unsteered) model."""
    p = tok(chat_prompt(tok, prompt), return_tensors="pt", add_special_tokens=False)["input_ids"]
    a = tok(answer, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if a.shape[1] == 0:
        return float("nan")
    ids = torch.cat([p, a], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    nll = -logp[p.shape[1] - 1:].gather(-1, ids[0, p.shape[1]:, None]).squeeze(-1)
    return float(nll.mean().exp())


def distinct_words(texts: Sequence[str]) -> float:
    """Mean share of distinct words in each text: low when an answer collapses into repetition,
    which perplexity alone can miss (a repeated token becomes very predictable)."""
    shares = [len(set(w)) / len(w) for w in (t.lower().split() for t in texts) if w]
    return sum(shares) / len(shares) if shares else float("nan")


def prepare(budget: Budget, *, seed: int = 0, cache_dir: Optional[str] = None, log: Callable[[str], None] = print):
    """Model, tokenizer, corpus split and the trained SAE (with its feature statistics), cached."""
    from ..models import load_model
    key = "-".join(c.name.replace(" ", "_") for c in CONCEPTS.values())
    cache = os.path.join(cache_dir or default_cache(), "demo", f"{key}-{budget.d_sae}x{budget.k}-{budget.steps}-s{seed}")
    t0 = time.perf_counter()
    model, tok = load_model("smollm2")
    log(f"loaded SmolLM2-135M-Instruct ({time.perf_counter() - t0:.0f} s)")
    topics = [(c.topic, budget.concept_texts) for c in CONCEPTS.values()]
    topics += [(t, budget.other_texts) for t in OTHER_TOPICS[:budget.other_topics]]
    t0 = time.perf_counter()
    corpus = build_corpus(model, tok, topics, TEMPLATES, max_new_tokens=budget.text_tokens, seed=seed,
                          path=os.path.join(cache, "corpus.jsonl"),
                          progress=lambda n: log(f"  corpus: {n}/{sum(c for _, c in topics)} texts"))
    log(f"corpus: {len(corpus)} texts the model wrote about {len(topics)} topics ({time.perf_counter() - t0:.0f} s)")
    train_rows, held_rows = [], []
    for topic, count in topics:
        rows = [r for r in corpus if r["topic"] == topic]
        cut = len(rows) - max(1, int(round(budget.held_out * len(rows))))
        train_rows += rows[:cut]
        held_rows += rows[cut:]
    sae_dir = os.path.join(cache, "sae")
    t0 = time.perf_counter()
    if os.path.isfile(os.path.join(sae_dir, "cfg.json")):
        sae = load_sae(sae_dir)
        log(f"SAE: loaded from {sae_dir}")
    else:
        acts = site_activations(model, tok, [r["text"] for r in train_rows])
        log(f"SAE: training d_sae={budget.d_sae}, k={budget.k} on {acts.shape[0]} activations at {SITE}")
        sae = train(acts, architecture="topk", d_sae=budget.d_sae, k=budget.k, steps=budget.steps,
                    batch_size=budget.batch_size, seed=seed, progress=True, log_every=50)
        sae.metadata["hook_name"] = SITE
        sae.save(sae_dir)
        log(f"SAE: trained in {time.perf_counter() - t0:.0f} s, saved to {sae_dir}")
    stats.feature_stats(model, SITE, sae, _batches(tok, [r["text"] for r in train_rows]), top_examples=0,
                        progress=False)
    return model, tok, sae, train_rows, held_rows


def _steered_answers(model, tok, sae, feature: int, scale: float, prompts, budget: Budget):
    with hooks.steer(model, SITE, sae, {feature: ("max", scale)}):
        return generate(model, tok, prompts, max_new_tokens=budget.answer_tokens, sample=False)


def _median(values) -> float:
    v = sorted(x for x in values if not math.isnan(x))
    return v[len(v) // 2] if v else float("nan")


def run_concept(model, tok, sae, held_rows: List[dict], concept: Concept, budget: Budget, *, scale: float = 10.0,
                sweep: Sequence[float] = (), prompts: Optional[Sequence[str]] = None,
                log: Callable[[str], None] = print) -> Dict:
    pos = [r["text"] for r in held_rows if r["topic"] == concept.topic]
    neg = [r["text"] for r in held_rows if r["topic"] not in {c.topic for c in CONCEPTS.values()}]
    # The concept in every phrasing: the held-out corpus texts (which name it), texts describing
    # it without its name, and in French, Spanish and German. Among the features that separate
    # them from the other texts (AUROC >= 0.95), the one that fires most consistently across the
    # groups: a feature of the concept rather than of one of its name's tokens.
    groups = {"named (held-out corpus)": pos, **{g: list(t) for g, t in concept.phrasings.items()}}
    # (every feature's match: the fallback below reads the per-group rates of its own pick here,
    # rather than running the model over the texts again)
    ranked = features.find_features(model, SITE, sae, groups, neg, top=sae.d_sae, tokenizer=tok, rank="consistency",
                                    min_auroc=0.95)
    matches, search = ranked[:5], "consistency"
    if matches[0].auroc < 0.95:
        # No feature fires selectively across the phrasings and languages (a small SAE on a
        # small English corpus learns the name's tokens, not the concept): steer with the
        # feature most selective for the texts that name it, as before, and say so.
        consistent = matches[0]
        log(f"\nStrategy 1 - {concept.name}: no feature separates every phrasing from the other texts (the most "
            f"consistent, {consistent.feature}, has AUROC {consistent.auroc:.3f} and fires on "
            + ", ".join(f"{g} {r:.0%}" for g, r in consistent.group_frequency.items())
            + "); falling back to the texts that name it")
        named = features.find_features(model, SITE, sae, {"named (held-out corpus)": pos}, neg, top=5, tokenizer=tok,
                                       rank="coverage", min_auroc=0.99)
        every = {m.feature: m for m in ranked}   # (no feature was eligible: all of them are ranked)
        for m in named:           # the per-group rates of the named features, for the report
            m.group_frequency = every[m.feature].group_frequency
        matches, search = named, "named texts (fallback)"
    best = matches[0]
    log(f"\nStrategy 1 - {concept.name}: feature {best.feature} fires on {best.pos_frequency:.0%} of held-out texts "
        f"about it and {best.neg_frequency:.0%} of the others (AUROC {best.auroc:.3f}; on {best.pos_coverage:.1%} of "
        f"their tokens vs {best.neg_coverage:.1%}); top tokens: " + ", ".join(f"{t!r} {v:.1f}" for t, v in best.top_tokens))
    log("  fires on: " + ", ".join(f"{g} {r:.0%}" for g, r in best.group_frequency.items()))
    prompts = list(prompts or PROMPTS[:budget.prompts])
    log(f"  a mention is: {concept.rule}")
    base = generate(model, tok, prompts, max_new_tokens=budget.answer_tokens, sample=False)
    base_rate, base_weak = concept.mention_rate(base), concept.mention_rate(base, strict=False)
    ppl_base = _median([answer_perplexity(model, tok, p, a) for p, a in zip(prompts, base)])
    distinct_base = distinct_words(base)
    table = []
    for sc in sorted({float(scale), *map(float, sweep)}):
        ans = _steered_answers(model, tok, sae, best.feature, sc, prompts, budget)
        rate = concept.mention_rate(ans)
        ppl = _median([answer_perplexity(model, tok, p, a) for p, a in zip(prompts, ans)])
        table.append({"scale": sc, "mention_rate": rate, "weak_mention_rate": concept.mention_rate(ans, strict=False),
                      "median_perplexity": ppl, "distinct_words": distinct_words(ans), "answers": ans})
    main = next(r for r in table if r["scale"] == float(scale))
    target = float(sae.stats.max[best.feature]) * scale
    # How hard the clamp pushes: the vector it adds, against the residual stream it is added to
    # (where it swamps the stream, the model degenerates rather than talks about the concept).
    residual = float(site_activations(model, tok, neg[:32]).norm(dim=-1).median())
    row_norm = float(sae.W_dec[best.feature].float().norm())
    for r in table:
        r["clamp_norm"] = float(sae.stats.max[best.feature]) * r["scale"] * row_norm
    log(f"Strategy 2 - {concept.name}: feature {best.feature} clamped to {scale:g} x its max ({target:.1f}) at {SITE} "
        f"on every token: {main['mention_rate']:.0%} of {len(prompts)} answers mention it, against {base_rate:.0%} "
        f"unsteered; median perplexity under the unsteered model {main['median_perplexity']:.1f} (steered) vs "
        f"{ppl_base:.1f} (unsteered); distinct words {main['distinct_words']:.0%} vs {distinct_base:.0%}")
    log(f"  the clamp adds a vector of norm {main['clamp_norm']:.0f} at {scale:g}x to a residual stream of median norm "
        f"{residual:.0f} here ({main['clamp_norm'] / residual:.1f}x)")
    if len(table) > 1:
        log("  clamp scale:  " + "  ".join(f"{r['scale']:>5g}x" for r in table))
        log("  mention rate: " + "  ".join(f"{r['mention_rate']:>5.0%} " for r in table))
        log("  weak rule:    " + "  ".join(f"{r['weak_mention_rate']:>5.0%} " for r in table))
        log("  perplexity:   " + "  ".join(f"{r['median_perplexity']:>6.1f}" for r in table))
        log("  distinct:     " + "  ".join(f"{r['distinct_words']:>5.0%} " for r in table))
        log("  clamp/stream: " + "  ".join(f"{r['clamp_norm'] / residual:>5.1f}x" for r in table))
    # The scale that steers best (most mentions, then the most fluent): the article's 10x is the
    # headline, but a 135M model's residual stream saturates sooner, and the sweep shows where.
    shown = max(table, key=lambda r: (r["mention_rate"], -r["median_perplexity"]))
    if len(table) > 1:
        log(f"  best in the sweep: {shown['scale']:g}x, {shown['mention_rate']:.0%} mention it, median perplexity "
            f"{shown['median_perplexity']:.1f}")
    log(f"  examples at {shown['scale']:g}x:")
    for p, b, st in list(zip(prompts, base, shown["answers"]))[:3]:
        log(f"  Q: {p}\n    unsteered: {b.strip()[:150]!r}\n    steered:   {st.strip()[:150]!r}")
    inactive = _inactive(model, tok, sae, best.feature, concept, budget, log)
    return {
        "concept": concept.name, "feature": best.feature, "selectivity_auroc": best.auroc,
        "pos_frequency": best.pos_frequency, "neg_frequency": best.neg_frequency,
        "pos_token_coverage": best.pos_coverage, "neg_token_coverage": best.neg_coverage, "top_tokens": best.top_tokens,
        "runner_up_features": [asdict(m) for m in matches[1:]], "clamp_value": target, "scale": scale,
        "baseline_mention_rate": base_rate, "steered_mention_rate": main["mention_rate"],
        "baseline_weak_mention_rate": base_weak, "steered_weak_mention_rate": main["weak_mention_rate"],
        "mention_rule": concept.rule, "group_frequency": best.group_frequency, "feature_search": search,
        "residual_norm_median": residual, "clamp_norm": main["clamp_norm"],
        "inactive": inactive,
        "coherence": {"median_perplexity_steered": main["median_perplexity"], "median_perplexity_unsteered": ppl_base,
                      "distinct_words_steered": main["distinct_words"], "distinct_words_unsteered": distinct_base,
                      "measure": "perplexity of each answer under the unsteered model (median over prompts), and the "
                                 "mean share of distinct words per answer (low: repetition)"},
        "sweep": [{k: v for k, v in r.items() if k != "answers"} for r in table],
        "best_scale": shown["scale"], "best_mention_rate": shown["mention_rate"],
        "examples": [{"prompt": p, "unsteered": b, "steered": st} for p, b, st in zip(prompts, base, main["answers"])],
        "best_scale_examples": {"scale": shown["scale"], "answers": [
            {"prompt": p, "steered": st} for p, st in zip(prompts, shown["answers"])]},
        "held_out_texts": {"positive": len(pos), "negative": len(neg)},
    }


def _inactive(model, tok, sae, feature: int, concept: Concept, budget: Budget, log: Callable[[str], None]) -> Dict:
    """The inactive side of strategy 2: questions about the concept answered with its feature
    clamped to 0, and to -2x its maximum, against the unsteered answers."""
    asking = list(concept.asking[:max(2, budget.prompts // 4)])
    rows = {}
    for label, clamp in (("unsteered", None), ("clamped to 0", 0.0), ("clamped to -2x max", -2.0)):
        if clamp is None:
            ans = generate(model, tok, asking, max_new_tokens=budget.answer_tokens, sample=False)
        else:
            ans = _steered_answers(model, tok, sae, feature, clamp, asking, budget)
        rows[label] = {"mention_rate": concept.mention_rate(ans), "weak_mention_rate": concept.mention_rate(ans, False),
                       "distinct_words": distinct_words(ans), "answers": ans}
    # (distinct words: a clamp that silences the concept by breaking the model shows as repetition)
    log(f"  inactive: on {len(asking)} questions about {concept.name}, " + ", ".join(
        f"{label} {r['mention_rate']:.0%} mention it (weak rule {r['weak_mention_rate']:.0%}, distinct words "
        f"{r['distinct_words']:.0%})" for label, r in rows.items()))
    return {"prompts": asking, **rows}


def run(concepts: Sequence[str] = ("Golden Gate Bridge",), *, scale: float = 10.0, sweep: Sequence[float] = (),
        prompts: Optional[Sequence[str]] = None, budget: str = "full", seed: int = 0,
        cache_dir: Optional[str] = None, log: Callable[[str], None] = print) -> List[Dict]:
    for name in concepts:
        if name not in CONCEPTS:
            raise ValueError(f"concept: expected one of {list(CONCEPTS)}, got {name!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {list(BUDGETS)}, got {budget!r}")
    b = BUDGETS[budget]
    model, tok, sae, _, held = prepare(b, seed=seed, cache_dir=cache_dir, log=log)
    return [run_concept(model, tok, sae, held, CONCEPTS[name], b, scale=scale, sweep=sweep, prompts=prompts, log=log)
            for name in concepts]
