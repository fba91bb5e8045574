"""The concept's own direction at several layers of SmolLM2: how often the model names the concept
when the direction is added, layer by layer. It bounds what a clamped SAE feature, a direction
too, can do at each layer (the demo's reference, docs/demo.md), without training an SAE per layer.

    python benchmarks/demo_layers.py [--layers 4,8,11,15,20] [--ratios 0.25,0.5,0.75,1] [--concept NAME] [--json PATH]
                                     [--budget full|small] [--cache DIR]

Uses the demo's labelled corpus (sampled and cached by the first `sae-native demo`, or here) and
its 24 unrelated questions; the answers are greedy, 40 tokens, from the bf16 model where this CPU's
bf16 matmul is faster, as in the demo.
"""
from __future__ import annotations

import argparse
import json

from sae_native.bench import machine
from sae_native.demo.concepts import CONCEPTS, OTHER_TOPICS, PROMPTS
from sae_native.demo.corpus import writer_model
from sae_native.demo.direction import RATIOS, concept_direction
from sae_native.demo.pipeline import (BUDGETS, _median, answer_perplexities, answer_sets, answers_row, demo_folder,
                                      distinct_words, labelled_split, site_activations, site_of)
from sae_native.models import load_model


def layer_sweep(model, tok, concept, train_rows, held_rows, layer: int, ratios, prompts, base, ppl_base, tokens: int):
    site = site_of(layer)
    pos = [r["text"] for r in train_rows if r["topic"] == concept.topic]
    neg = [r["text"] for r in train_rows if r["topic"] in OTHER_TOPICS]
    unit, norm = concept_direction(model, tok, site, pos, neg)
    held_neg = [r["text"] for r in held_rows if r["topic"] in OTHER_TOPICS][:32]
    residual = float(site_activations(model, tok, held_neg, site).norm(dim=-1).median())
    answers = answer_sets(model, tok, None, [(prompts, ratio * residual * unit) for ratio in ratios],
                          max_new_tokens=tokens, site=site)
    ppls = answer_perplexities(model, tok, prompts * len(ratios), [a for ans in answers for a in ans], batch_size=32)
    rows = []
    for i, (ratio, ans) in enumerate(zip(ratios, answers)):
        row = answers_row(concept, ans, _median(ppls[i * len(prompts):(i + 1) * len(prompts)]), ppl_base,
                          distinct_words(base))
        rows.append({"ratio": ratio, **{k: v for k, v in row.items() if k != "answers"}, "first_answer": ans[0]})
    return {"layer": layer, "site": site, "residual_norm_median": residual, "direction_norm": norm, "sweep": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="4,8,11,15,20", help="comma-separated decoder layers (0-29)")
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS),
                    help="the direction's norm, as multiples of the stream's median norm (default: the demo's)")
    ap.add_argument("--concept", default="Golden Gate Bridge", choices=list(CONCEPTS))
    ap.add_argument("--budget", choices=list(BUDGETS), default="full",
                    help="the demo budget whose labelled corpus and answer length are used (small: a smoke test)")
    ap.add_argument("--cache", metavar="DIR", help="the demo's cache (default ~/.cache/sae-native)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    try:
        layers = [int(v) for v in args.layers.split(",") if v.strip()]
        for layer in layers:
            site_of(layer)
    except ValueError as e:
        ap.error(f"--layers: {e}")
    if not layers:
        ap.error("--layers: expected at least one layer")
    try:
        ratios = [float(v) for v in args.ratios.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--ratios: expected comma-separated numbers, got {args.ratios!r}")
    if not ratios or not all(0 < r < float("inf") for r in ratios):
        ap.error("--ratios: expected at least one finite number > 0")
    budget, concept = BUDGETS[args.budget], CONCEPTS[args.concept]
    model, tok = load_model("smollm2")
    train_rows, held_rows = labelled_split(model, tok, budget, seed=0, folder=demo_folder(args.cache, 0))
    if not [r for r in held_rows if r["topic"] in OTHER_TOPICS]:
        ap.error("--budget: its labelled corpus holds out no text about the other topics")
    model = writer_model(model)
    prompts = list(PROMPTS[:budget.prompts])
    (base,) = answer_sets(model, tok, None, [(prompts, None)], max_new_tokens=budget.answer_tokens)
    ppl_base = _median(answer_perplexities(model, tok, prompts, base, batch_size=32))
    print(f"unsteered: {concept.mention_rate(base):.0%} strict mentions, median perplexity {ppl_base:.2f}, "
          f"distinct words {distinct_words(base):.0%}")
    out = {"concept": concept.name, "mention_rule": concept.rule, "machine": machine.cpu_model(), "prompts": prompts,
           "unsteered": {"mention_rate": concept.mention_rate(base), "median_perplexity": ppl_base,
                         "distinct_words": distinct_words(base)}, "layers": []}
    for layer in layers:
        rec = layer_sweep(model, tok, concept, train_rows, held_rows, layer, ratios, prompts, base, ppl_base,
                          budget.answer_tokens)
        out["layers"].append(rec)
        print(f"layer {layer:>2} (stream norm {rec['residual_norm_median']:.0f}): " + "; ".join(
            f"{r['ratio']:g}x {r['mention_rate']:.0%} strict, {r['weak_mention_rate']:.0%} weak, perplexity "
            f"{r['median_perplexity']:.1f}{'' if r['coherent'] else ' (incoherent)'}" for r in rec["sweep"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
