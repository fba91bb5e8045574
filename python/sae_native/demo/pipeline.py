"""The seed experiment end to end on SmolLM2-135M-Instruct's middle layer.

Strategy 1: a feature is active when its concept is in the input and not otherwise (found by the
AUROC of its per-text maximum, on held-out texts). Strategy 2: clamped to `scale` x its maximum
activation at layer 15, it makes the model bring up the concept in answers to unrelated questions.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import features, hooks, stats
from ..loading import load as load_sae
from ..training import train
from .concepts import BULK_TEMPLATES, BULK_TOPICS, CONCEPTS, OTHER_TOPICS, PROMPTS, TEMPLATES, Concept
from .corpus import build_corpus, chat_prompt, generate, read_texts, writer_model
from .corpus import text_batches as _batches
from .direction import RATIOS as DIRECTION_RATIOS
from .direction import concept_direction, direction_aurocs

LAYER = 15                  # the default site, the middle of SmolLM2-135M's 30 decoder layers (--layer)
LAYERS = 30
SITE = f"model.layers.{LAYER}"


def site_of(layer: int) -> str:
    """The residual stream after decoder layer ``layer`` (0-based, as ``model.layers[i]``)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < LAYERS:
        raise ValueError(f"layer: expected an int in [0, {LAYERS - 1}] (SmolLM2-135M's decoder layers), got {layer!r}")
    return f"model.layers.{layer}"


@dataclass(frozen=True)
class Budget:
    concept_texts: int      # labelled corpus texts per concept
    other_texts: int        # labelled corpus texts per other topic
    other_topics: int       # how many of OTHER_TOPICS
    text_tokens: int        # new tokens per labelled corpus text
    train_tokens: int       # activations the SAE trains on (the labelled texts plus the bulk corpus)
    bulk_tokens: int        # new tokens per bulk corpus text
    d_sae: int
    k: int                  # for --architecture topk
    batch_size: int
    min_steps: int          # training steps at least (several passes over a small corpus)
    answer_tokens: int      # new tokens per steered / unsteered answer
    prompts: int            # held-out prompts
    held_out: float         # fraction of each topic's texts kept for the selectivity measurement
    relu_l1: Optional[float] = None   # --architecture relu's L1 coefficient (None: sn.train's default)
    relu_lr: Optional[float] = None   # and its learning rate (None: sn.train's default)


BUDGETS = {
    # (relu: sn.train's default rate, 2e-4 at 16384 latents, is made for long runs; in this one pass
    # over 1.1M tokens it still had L0 1058 a quarter of the way through at L1 5, and L1 15 ended
    # with 12% of the latents dead and FVU 0.80. Five times the rate reached L0 92, FVU 0.35 in 400
    # steps, and L0 33, FVU 0.28 over the run: docs/demo.md.)
    "full": Budget(48, 8, 40, 80, 1_000_000, 160, 16384, 32, 1024, 1000, 40, 24, 0.25, relu_l1=5.0, relu_lr=1e-3),
    "small": Budget(4, 2, 4, 24, 3_000, 24, 256, 8, 256, 100, 10, 4, 0.25),
}
ARCHITECTURES = ("relu", "topk", "jumprelu")
# The inactive side of strategy 2: the clamps (x the feature's max) tried on questions about the concept.
INACTIVE = (0.0, -2.0)
# Massive activations: tokens whose norm at SITE is above this multiple of the median (see _store).
MASSIVE = 10.0


def default_cache() -> str:
    from ..models import cache_root
    return cache_root()


def site_activations(model, tok, texts: Sequence[str], site: str = SITE) -> torch.Tensor:
    """[tokens, d_model] activations at ``site`` over the texts (first token and padding dropped,
    rows in no particular order)."""
    from ..training import stream_activations
    chunks = list(stream_activations(model, site, _batches(tok, texts), batch_size=1 << 30, buffer_tokens=1 << 62))
    return torch.cat(chunks)


def answer_perplexities(model, tok, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8) -> List[float]:
    """exp(mean NLL) of each answer's tokens after its chat prompt, under the (unsteered) model
    (NaN for an empty answer). Batched, right-padded: the padding comes after every real token,
    so causal attention never sees it."""
    pairs = []
    for prompt, answer in zip(prompts, answers):
        p = tok(chat_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        pairs.append((len(p), list(p) + list(a)))
    out = [float("nan")] * len(pairs)
    todo = [i for i, (n, ids) in enumerate(pairs) if len(ids) > n]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for c in range(0, len(todo), batch_size):
        rows = todo[c:c + batch_size]
        width = max(len(pairs[i][1]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, i in enumerate(rows):
            seq = pairs[i][1]
            ids[j, :len(seq)] = torch.tensor(seq)
            mask[j, :len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        for j, i in enumerate(rows):
            n, seq = pairs[i]
            logp = torch.log_softmax(logits[j, n - 1:len(seq) - 1].float(), dim=-1)
            nll = -logp.gather(-1, torch.tensor(seq[n:])[:, None]).squeeze(-1)
            out[i] = float(nll.mean().exp())
    return out


_WORDS = re.compile(r"\d+|[^\W\d_]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def words(text: str) -> List[str]:
    """A text's words, lower-cased: runs of letters or of digits, split where a lower-case letter
    meets an upper-case one. Collapsed answers glue their repeats together ("Bridgeview,Bridgeview",
    "SanAntAntAnt"); whitespace alone would count each such run as one distinct word."""
    return [w.lower() for piece in _WORDS.findall(text) for w in _CAMEL.sub(" ", piece).split()]


def distinct_words(texts: Sequence[str]) -> float:
    """Mean share of distinct words (see ``words``) in each text: low when an answer collapses into
    repetition, which perplexity alone can miss (a repeated token becomes very predictable)."""
    shares = [len(set(w)) / len(w) for w in map(words, texts) if w]
    return sum(shares) / len(shares) if shares else float("nan")


def _texts_key(texts: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def _bulk_texts(writer, tok, budget: Budget, *, seed: int, folder: str, corpus: Optional[str],
                log: Callable[[str], None]) -> List[str]:
    """The unlabelled bulk of the training data: a user's corpus (--corpus), or texts the model
    samples about many topics in many forms (cached, resumable)."""
    if corpus:
        texts = read_texts(corpus)
        log(f"corpus: {len(texts)} texts from {corpus}")
        return texts
    topics = [c.topic for c in CONCEPTS.values()] + list(OTHER_TOPICS) + list(BULK_TOPICS)
    per_text = 0.85 * budget.bulk_tokens     # (answers stop early at the end-of-turn token)
    per_topic = max(1, math.ceil(budget.train_tokens / per_text / len(topics)))
    path = os.path.join(folder, f"bulk-{budget.bulk_tokens}x{per_topic * len(topics)}-s{seed}.jsonl")
    t0, written = time.perf_counter(), [0]

    def progress(done: int, total: int, tokens: int) -> None:
        written[0] += tokens
        rate = written[0] / max(time.perf_counter() - t0, 1e-9)
        left = (total - done) * budget.bulk_tokens * 0.85 / max(rate, 1e-9)
        log(f"  bulk corpus: {done}/{total} texts, {rate:.0f} tokens/s, about {left / 60:.0f} min left")
    rows = build_corpus(writer, tok, [(t, per_topic) for t in topics], BULK_TEMPLATES, max_new_tokens=budget.bulk_tokens,
                        seed=seed + 1, path=path, batch_size=256, progress=progress)
    log(f"bulk corpus: {len(rows)} texts the model sampled about {len(topics)} topics ({path})")
    return [r["text"] for r in rows]


def _store(writer, tok, texts: Sequence[str], key: str, folder: str, site: str, log: Callable[[str], None]):
    """The activations at ``site`` over the texts, on disk in shards (resumable, with progress),
    without SmolLM2's massive activations (tokens above 10x the median norm: about 1 in 1000,
    holding 88% of the variance over 50k tokens here): a squared-error loss would spend the SAE
    on them. The SAE's evaluation leaves the same tokens out of its FVU and L0."""
    from ..store import ActivationStore, write_store
    out = os.path.join(folder, f"store-{key}{_site_tag(site)}-max{MASSIVE:g}x")
    t0 = time.perf_counter()
    batches = list(_batches(tok, texts))
    write_store(writer, site, batches, out, source={"texts": key, "model": "SmolLM2-135M-Instruct",
                                                    "dtype": str(next(writer.parameters()).dtype)},
                progress=True, total=len(batches), exclude_token_ids=[tok.pad_token_id], max_norm_ratio=MASSIVE)
    store = ActivationStore(out)
    log(f"activations: {store.n_tokens} tokens at {site} in {out} ({time.perf_counter() - t0:.0f} s)")
    return store


def _site_tag(site: str) -> str:
    # (the default layer's folders keep the names they had before --layer, so caches stay valid)
    return "" if site == SITE else "-L" + site.rsplit(".", 1)[-1]


def demo_folder(cache_dir: Optional[str], seed: int) -> str:
    """Where one seed's corpora, stores and SAEs are cached."""
    key = "-".join(c.name.replace(" ", "_") for c in CONCEPTS.values())
    return os.path.join(cache_dir or default_cache(), "demo", f"{key}-s{seed}")


def labelled_split(model, tok, budget: Budget, *, seed: int, folder: str, log: Callable[[str], None] = print):
    """The labelled corpus (sampled once, cached in ``folder``), split per topic into the rows the
    SAE trains on and the held-out rows (the last ``budget.held_out`` of each topic's texts)."""
    topics = [(c.topic, budget.concept_texts) for c in CONCEPTS.values()]
    topics += [(t, budget.other_texts) for t in OTHER_TOPICS[:budget.other_topics]]
    t0 = time.perf_counter()
    labelled = build_corpus(model, tok, topics, TEMPLATES, max_new_tokens=budget.text_tokens, seed=seed,
                            path=os.path.join(folder, f"labelled-{budget.concept_texts}x{budget.other_texts}x"
                                                      f"{budget.other_topics}-{budget.text_tokens}.jsonl"),
                            progress=lambda n, total, _: log(f"  labelled corpus: {n}/{total} texts"))
    log(f"labelled corpus: {len(labelled)} texts the model wrote about {len(topics)} topics "
        f"({time.perf_counter() - t0:.0f} s)")
    train_rows, held_rows = [], []
    for topic, count in topics:
        rows = [r for r in labelled if r["topic"] == topic]
        cut = len(rows) - max(1, int(round(budget.held_out * len(rows))))
        train_rows += rows[:cut]
        held_rows += rows[cut:]
    return train_rows, held_rows


def prepare(budget: Budget, *, architecture: str = "relu", seed: int = 0, cache_dir: Optional[str] = None,
            corpus: Optional[str] = None, layer: int = LAYER, log: Callable[[str], None] = print):
    """Model, tokenizer, labelled corpus split and the trained SAE (with its feature statistics
    and its evaluation), all cached: the labelled texts and the bulk corpus per seed, the
    activation store per text list and layer, the SAE per architecture, size and layer."""
    from ..models import load_model
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {list(ARCHITECTURES)}, got {architecture!r}")
    site = site_of(layer)
    folder = demo_folder(cache_dir, seed)
    t0 = time.perf_counter()
    model, tok = load_model("smollm2")
    log(f"loaded SmolLM2-135M-Instruct ({time.perf_counter() - t0:.0f} s)")
    train_rows, held_rows = labelled_split(model, tok, budget, seed=seed, folder=folder, log=log)
    # The model that samples the bulk corpus, reads the store's activations, and then searches and
    # steers: bf16 where this CPU's bf16 matmul is faster (writer_model). Only the SAE's evaluation
    # reads the float32 model.
    writer = writer_model(model, log)
    texts = [r["text"] for r in train_rows] + _bulk_texts(writer, tok, budget, seed=seed, folder=folder,
                                                          corpus=corpus, log=log)
    key = _texts_key(texts)
    store = _store(writer, tok, texts, key, folder, site, log)
    extra: Dict = {"k": budget.k} if architecture == "topk" else {}
    if architecture == "relu":
        extra.update({name: value for name, value in (("l1", budget.relu_l1), ("lr", budget.relu_lr)) if value is not None})
    size = "-".join(f"{name}{value:g}" for name, value in extra.items()) or "default"
    sae_dir = os.path.join(folder, f"sae-{architecture}-{budget.d_sae}-{size}-{store.n_tokens}-{key}{_site_tag(site)}")
    t0 = time.perf_counter()
    if os.path.isfile(os.path.join(sae_dir, "cfg.json")):
        sae = load_sae(sae_dir)
        log(f"SAE: loaded from {sae_dir}")
    else:
        steps = max(budget.min_steps, math.ceil(store.n_tokens / budget.batch_size))
        log(f"SAE: training a {architecture} SAE, d_sae={budget.d_sae}, on {store.n_tokens} activations at {site} "
            f"({steps} steps of {budget.batch_size})")
        sae = train(store, architecture=architecture, d_sae=budget.d_sae, steps=steps, batch_size=budget.batch_size,
                    seed=seed, progress=True, log_every=100, **extra)
        sae.metadata["hook_name"] = site
        sae.metadata["train_tokens"] = store.n_tokens
        sae.save(sae_dir)
        log(f"SAE: trained in {time.perf_counter() - t0:.0f} s, saved to {sae_dir}")
    sae.metadata.setdefault("train_tokens", store.n_tokens)
    if architecture == "relu":             # (the SAE's own cfg.json keeps no training options)
        from ..training.config import TrainConfig
        sae.metadata["l1"] = TrainConfig(architecture="relu", d_sae=budget.d_sae, l1=extra.get("l1")).sparsity
    held_texts = [r["text"] for r in held_rows]
    sae.metadata["demo_evaluation"] = _evaluation(model, tok, sae, held_texts, store, sae_dir, site, log)
    _feature_maxima(writer, tok, sae, [r["text"] for r in train_rows], sae_dir, site)
    return writer, tok, sae, train_rows, held_rows


def _feature_maxima(model, tok, sae, texts: Sequence[str], sae_dir: str, site: str = SITE) -> None:
    """sae.stats over the labelled training texts (what ("max", s) clamps read) under ``model``,
    cached beside the SAE per text list and model dtype: the model's pass over them is a large
    share of a cached run."""
    from safetensors.torch import load_file, save_file
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    path = os.path.join(sae_dir, f"demo_feature_stats-{_texts_key(texts)}-{dtype}.safetensors")
    if os.path.isfile(path):
        saved = load_file(path)
        sae.stats = stats.FeatureStats(max=saved["max"], frequency=saved["frequency"], mean=saved["mean"],
                                       n_tokens=int(saved["n_tokens"]))
        return
    fs = stats.feature_stats(model, site, sae, _batches(tok, texts), top_examples=0, progress=False)
    tmp = path + ".tmp"
    save_file({"max": fs.max.contiguous(), "frequency": fs.frequency.contiguous(), "mean": fs.mean.contiguous(),
               "n_tokens": torch.tensor(fs.n_tokens)}, tmp)
    os.replace(tmp, path)


def _evaluation(model, tok, sae, texts: Sequence[str], store, sae_dir: str, site: str,
                log: Callable[[str], None]) -> Dict:
    """FVU, L0 and CE loss recovered on held-out texts, under the fp32 model the demo steers, and
    the dead fraction over the training activations (cached beside the SAE)."""
    from ..models import token_batches
    from ..training import evaluate
    path = os.path.join(sae_dir, "demo_evaluation-v3.json")
    if os.path.isfile(path):
        with open(path) as f:
            ev = json.load(f)
    else:
        acts = site_activations(model, tok, texts, site)
        # SmolLM2's residual stream has massive activations: a few tokens (about 1 in 1000 here)
        # with 100x the median norm carry over 95% of the variance, so an FVU over all tokens
        # measures those few. The SAE trains without them (_store); the FVU and L0 leave them out
        # too (how many is reported, and the all-token FVU beside it), and the CE loss splices the
        # reconstruction into every other token, the massive ones passing through as they are.
        keep = hooks.within_norm_ratio(acts, MASSIVE)
        full = evaluate(sae, acts[keep], model=model, site=site, max_norm_ratio=MASSIVE,
                        token_batches=list(token_batches(tok, texts, seq_len=128, batch_size=8)))
        # (dead: no activation over up to 262k training tokens; a few thousand held-out tokens
        # would call every rare latent dead)
        dead = evaluate(sae, store.rows(0, min(store.n_tokens, 1 << 18)))["dead_fraction"]
        ev = {"fvu": full["fvu"], "l0": full["l0"], "dead_fraction": dead,
              "ce_loss_recovered": full["ce_loss_score"], "tokens": full["tokens"],
              "outlier_tokens": int((~keep).sum()), "fvu_all_tokens": evaluate(sae, acts)["fvu"],
              "measured_on": f"{len(texts)} held-out labelled texts, SmolLM2 in float32; FVU and L0 without the "
                             f"tokens above 10x the median norm, which the CE loss's splice passes through"}
        with open(path, "w") as f:
            json.dump(ev, f, indent=1)
    log(f"SAE: on held-out texts FVU {ev['fvu']:.3f} (all tokens: {ev['fvu_all_tokens']:.3f}, see above), L0 "
        f"{ev['l0']:.1f}, dead {ev['dead_fraction']:.1%}, CE loss recovered {ev['ce_loss_recovered']:.3f}")
    return ev


def token_activations(model, tok, sae, feature: int, texts: Sequence[str], batch_size: int = 16,
                      site: str = SITE) -> List[Dict]:
    """[{"text", "tokens", "acts"}]: each text's tokens and the feature's activation on each (the
    first token's, an attention-sink outlier, is reported as 0, as the feature search does).
    Batched, right-padded (see answer_perplexities)."""
    out = []
    with torch.no_grad(), hooks.record(model, site, sae, stop=True) as rec:
        for c in range(0, len(texts), batch_size):
            chunk = list(texts[c:c + batch_size])
            batch = next(_batches(tok, chunk, len(chunk)))
            rec.clear()
            rec.forward(**batch)
            codes = rec.codes[-1]                                      # [batch, seq, k]
            acts = (codes.values * (codes.indices == feature)).sum(-1).float()
            for text, row, ids, mask in zip(chunk, acts, batch["input_ids"], batch["attention_mask"]):
                n = int(mask.sum())
                row = row[:n].clone()
                row[:1] = 0.0
                out.append({"text": text, "tokens": token_strings(tok, ids[:n].tolist()),
                            "acts": [round(float(a), 3) for a in row]})
    return out


def token_strings(tok, ids: Sequence[int]) -> List[str]:
    """Each token's share of the decoded text. Decoded one by one, a character split over two
    byte-level tokens (\u00fc in 'uberspannt') shows as two replacement marks; here it goes whole
    to the token that completes it, and the token before it shows as empty."""
    out, done = [], ""
    for i in range(len(ids)):
        text = tok.decode(ids[:i + 1])
        if text.endswith("\ufffd"):
            out.append("")
            continue
        out.append(text[len(done):] if text.startswith(done) else tok.decode([ids[i]]))
        done = text
    return out


def _peak(row: Dict) -> float:
    return max(row["acts"], default=0.0)


class _RowClamps(hooks.SiteHook):
    """A different edit in each block of a batch's rows, so that a whole sweep, its unsteered
    answers and the inactive clamps come from one batched generate: the model's weights are read
    once per token for all of them, not once per scale. An edit is None (the block is left as it
    is), a clamp as ``sn.steer`` takes it (each block gets what ``sn.steer(model, site, sae,
    clamp)`` would give it alone), or a [d_model] tensor added to every position (the concept
    direction's sweep, see direction.py)."""

    def __init__(self, model, sae, clamps: Sequence, rows: Sequence[int], site: str = SITE):
        if sae is None and any(c is not None and not isinstance(c, torch.Tensor) for c in clamps):
            raise ValueError("sae: a clamp needs the SAE it clamps (None serves vector edits only)")
        self.clamps = [c if c is None or isinstance(c, torch.Tensor) else sae.parse_clamp(c) for c in clamps]
        self.rows = list(rows)
        super().__init__(model, site, sae)

    def _hook(self, module, args, kwargs, output):
        if self.sae is not None:
            return super()._hook(module, args, kwargs, output)
        hidden, rebuild = hooks.split_output(output)     # (no SAE to check the site's width against)
        return rebuild(self.on_forward(hidden, kwargs))

    def _edit(self, hidden, clamp):
        if clamp is None:
            return hidden
        if isinstance(clamp, torch.Tensor):
            return hidden + clamp.to(hidden.dtype)
        return self.sae.steer(hidden, clamp)

    def on_forward(self, hidden, kwargs):
        if hidden.shape[0] != sum(self.rows):
            raise RuntimeError(f"row clamps: expected a batch of {sum(self.rows)} rows, got {hidden.shape[0]}")
        return torch.cat([self._edit(h, c) for h, c in zip(hidden.split(self.rows), self.clamps)])


def answer_sets(model, tok, sae, sets: Sequence, *, max_new_tokens: int, site: str = SITE) -> List[List[str]]:
    """Greedy answers to each (prompts, edit) set, the edit a clamp as ``sn.steer`` takes it, a
    vector added at ``site``, or None (unsteered), all in one batched generate (see _RowClamps)."""
    questions = [q for prompts, _ in sets for q in prompts]
    with _RowClamps(model, sae, [clamp for _, clamp in sets], [len(prompts) for prompts, _ in sets], site):
        answers = generate(model, tok, questions, max_new_tokens=max_new_tokens, batch_size=max(1, len(questions)))
    out, start = [], 0
    for prompts, _ in sets:
        out.append(answers[start:start + len(prompts)])
        start += len(prompts)
    return out


def _median(values) -> float:
    v = sorted(x for x in values if not math.isnan(x))
    return v[len(v) // 2] if v else float("nan")


def _coherent(perplexity: float, distinct: float, perplexity_base: float, distinct_base: float) -> bool:
    # Coherent: perplexity under the unsteered model at most 4x the unsteered answers' (the
    # issue's bound), and at least 3/4 of their distinct-word share (no collapse into repetition).
    return bool(perplexity <= 4 * perplexity_base and distinct >= 0.75 * distinct_base)


def answers_row(concept: Concept, answers: Sequence[str], perplexity: float, perplexity_base: float,
                distinct_base: float) -> Dict:
    """One sweep point's columns: strict and weak mention rates, the median perplexity given, the
    distinct-word share, and whether that is coherent against the unsteered answers."""
    distinct = distinct_words(answers)
    return {"mention_rate": concept.mention_rate(answers), "weak_mention_rate": concept.mention_rate(answers, False),
            "median_perplexity": perplexity, "distinct_words": distinct,
            "coherent": _coherent(perplexity, distinct, perplexity_base, distinct_base), "answers": list(answers)}


def run_concept(model, tok, sae, held_rows: List[dict], concept: Concept, budget: Budget, *, train_rows: Sequence[dict],
                scale: float = 10.0, sweep: Sequence[float] = (), prompts: Optional[Sequence[str]] = None,
                site: str = SITE, log: Callable[[str], None] = print) -> Dict:
    """Both strategies for one concept at ``site`` (where ``sae`` reads): the feature search on the
    held-out rows, the sweep and the inactive clamps, and the concept direction (from
    ``train_rows``) as the reference."""
    others = {c.topic for c in CONCEPTS.values()}
    pos = [r["text"] for r in held_rows if r["topic"] == concept.topic]
    neg = [r["text"] for r in held_rows if r["topic"] not in others]
    train_pos = [r["text"] for r in train_rows if r["topic"] == concept.topic]
    train_neg = [r["text"] for r in train_rows if r["topic"] not in others]
    if not train_pos or not train_neg:
        raise ValueError(f"train_rows: expected texts about {concept.topic!r} and about other topics (for the concept "
                         f"direction), got {len(train_pos)} and {len(train_neg)}")
    # The concept in every phrasing: the held-out corpus texts (which name it), texts describing
    # it without its name, and in French, Spanish and German. Among the features that separate
    # them from the other texts (AUROC >= 0.95), the one that fires most consistently across the
    # groups: a feature of the concept rather than of one of its name's tokens.
    groups = {"named (held-out corpus)": pos, **{g: list(t) for g, t in concept.phrasings.items()}}
    # (every feature's match: the fallback below reads the per-group rates of its own pick here,
    # rather than running the model over the texts again)
    ranked = features.find_features(model, site, sae, groups, neg, top=sae.d_sae, tokenizer=tok, rank="consistency",
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
        named = features.find_features(model, site, sae, {"named (held-out corpus)": pos}, neg, top=5, tokenizer=tok,
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
    scales = sorted({float(scale), *map(float, sweep)})
    asking = list(concept.asking[:max(2, budget.prompts // 4)])
    # Every answer the report shows, in one batched generate: unsteered and at every scale on
    # the unrelated prompts, and unsteered and under each inactive clamp on the concept's questions.
    ablations = _ablations(best.feature, [m.feature for m in matches if m.auroc >= 0.95])
    # How hard a clamp pushes is the vector it adds against the residual stream it is added to
    # (where it swamps the stream, the model degenerates rather than talks about the concept);
    # the concept direction is added at fractions of the same norm.
    residual = float(site_activations(model, tok, neg[:32], site).float().norm(dim=-1).median())
    unit, diff_norm = concept_direction(model, tok, site, train_pos, train_neg)
    sets = ([(prompts, None)] + [(prompts, {best.feature: ("max", sc)}) for sc in scales]
            + [(prompts, ratio * residual * unit) for ratio in DIRECTION_RATIOS] + [(asking, None)]
            + [(asking, a["clamp"]) for a in ablations])
    answers = answer_sets(model, tok, sae, sets, max_new_tokens=budget.answer_tokens, site=site)
    on_prompts = 1 + len(scales) + len(DIRECTION_RATIOS)     # (the sets on the unrelated prompts)
    base, swept, along = answers[0], answers[1:1 + len(scales)], answers[1 + len(scales):on_prompts]
    inactive_answers = answers[on_prompts:]
    base_rate, base_weak = concept.mention_rate(base), concept.mention_rate(base, strict=False)
    # (the perplexities of every set on the unrelated prompts in one batched pass, split back per set)
    ppls = answer_perplexities(model, tok, prompts * on_prompts, [a for ans in answers[:on_prompts] for a in ans],
                               batch_size=32)
    ppl_base = _median(ppls[:len(prompts)])
    distinct_base = distinct_words(base)

    def row(ans, i):
        return answers_row(concept, ans, _median(ppls[i * len(prompts):(i + 1) * len(prompts)]), ppl_base,
                           distinct_base)
    table = [{"scale": sc, **row(ans, i)} for i, (sc, ans) in enumerate(zip(scales, swept), start=1)]
    main = next(r for r in table if r["scale"] == float(scale))
    target = float(sae.stats.max[best.feature]) * scale
    row_norm = float(sae.W_dec[best.feature].float().norm())
    for r in table:
        r["clamp_norm"] = float(sae.stats.max[best.feature]) * r["scale"] * row_norm
    log(f"Strategy 2 - {concept.name}: feature {best.feature} clamped to {scale:g} x its max ({target:.1f}) at {site} "
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
        log("  coherent:     " + "  ".join(f"{'yes' if r['coherent'] else 'no':>6}" for r in table))
    # The best coherent scale: most strict mentions among the coherent scales, then the lowest
    # perplexity (the article's 10x stays the headline; a 135M model's stream saturates sooner).
    coherent = [r for r in table if r["coherent"]]
    shown = max(coherent or table, key=lambda r: (r["mention_rate"], r["weak_mention_rate"], -r["median_perplexity"]))
    log(f"  best coherent scale: {shown['scale']:g}x, {shown['mention_rate']:.0%} mention it (weak rule "
        f"{shown['weak_mention_rate']:.0%}), median perplexity {shown['median_perplexity']:.1f}, distinct words "
        f"{shown['distinct_words']:.0%}" if coherent else "  no scale kept the answers coherent")
    log(f"  examples at {shown['scale']:g}x:")
    for p, b, st in list(zip(prompts, base, shown["answers"]))[:3]:
        log(f"  Q: {p}\n    unsteered: {b.strip()[:150]!r}\n    steered:   {st.strip()[:150]!r}")
    inactive = _inactive(concept, asking, ablations, inactive_answers, log)
    reference = _direction_record(model, tok, site, concept, unit, diff_norm, (len(train_pos), len(train_neg)),
                                  [{"ratio": ratio, **row(ans, i)} for i, (ratio, ans)
                                   in enumerate(zip(DIRECTION_RATIOS, along), start=1 + len(scales))],
                                  prompts, {"named (held-out corpus)": pos, **concept.phrasings}, neg, log)
    # Strategy 1 on the page: token by token, on texts that name the concept, describe it, or
    # translate it, and on unrelated texts; and the feature's top examples over the labelled corpus.
    described = list(concept.phrasings.get("described (no name)", ()))
    # (the labelled corpus once: the named, unrelated and top texts are all among it)
    labelled = {r["text"]: r for r in token_activations(model, tok, sae, best.feature,
                                                         [r["text"] for r in held_rows + list(train_rows)], site=site)}
    shade = {"named": [labelled[t] for t in pos[:3]],
             "described": token_activations(model, tok, sae, best.feature, described, site=site),
             "other languages": token_activations(model, tok, sae, best.feature, [
                 t for g in ("French", "Spanish", "German") for t in concept.phrasings.get(g, ())[:1]], site=site),
             "unrelated": [labelled[t] for t in neg[:4]]}
    top = sorted(labelled.values(), key=_peak, reverse=True)[:5]
    neg_peaks = torch.tensor([_peak(labelled[t]) for t in neg])
    unnamed = (float(features.auroc(torch.tensor([_peak(r) for r in shade["described"]])[:, None], neg_peaks[:, None])[0])
               if described else float("nan"))
    log(f"  on texts that describe {concept.name} without naming it: AUROC {unnamed:.3f}")
    lang = {"French": "fr", "Spanish": "es", "German": "de"}
    return {
        "concept": concept.name, "feature": best.feature, "selectivity_auroc": best.auroc,
        "unnamed_auroc": unnamed,
        "per_language": {lang[g]: r for g, r in best.group_frequency.items() if g in lang},
        "architecture": sae.activation, "d_sae": sae.d_sae, "site": site,
        "train_tokens": int(sae.metadata.get("train_tokens", 0)),
        "l1": sae.metadata.get("l1"),
        "sae_evaluation": sae.metadata.get("demo_evaluation"),
        "pos_frequency": best.pos_frequency, "neg_frequency": best.neg_frequency,
        "pos_token_coverage": best.pos_coverage, "neg_token_coverage": best.neg_coverage, "top_tokens": best.top_tokens,
        "runner_up_features": [asdict(m) for m in matches[1:]], "clamp_value": target, "scale": scale,
        "baseline_mention_rate": base_rate, "steered_mention_rate": main["mention_rate"],
        "loose_mention_rate": main["weak_mention_rate"],
        "baseline_weak_mention_rate": base_weak, "steered_weak_mention_rate": main["weak_mention_rate"],
        "mention_rule": concept.rule, "group_frequency": best.group_frequency, "feature_search": search,
        "residual_norm_median": residual, "clamp_norm": main["clamp_norm"],
        "inactive": inactive, "concept_direction": reference,
        "coherence": {"median_perplexity_steered": main["median_perplexity"], "median_perplexity_unsteered": ppl_base,
                      "distinct_words_steered": main["distinct_words"], "distinct_words_unsteered": distinct_base,
                      "measure": "perplexity of each answer under the unsteered model (median over prompts), and the "
                                 "mean share of distinct words per answer (low: repetition)",
                      "coherent_if": "median perplexity <= 4x unsteered and distinct words >= 0.75x unsteered"},
        "sweep": [{k: v for k, v in r.items() if k != "answers"} for r in table],
        "best_scale": shown["scale"], "best_scale_mention_rate": shown["mention_rate"],
        "best_mention_rate": max(r["mention_rate"] for r in table), "best_scale_coherent": bool(coherent),
        "examples": [{"prompt": p, "unsteered": b, "steered": st} for p, b, st in zip(prompts, base, main["answers"])],
        "best_scale_examples": {"scale": shown["scale"], "answers": [
            {"prompt": p, "steered": st} for p, st in zip(prompts, shown["answers"])]},
        "held_out_texts": {"positive": len(pos), "negative": len(neg)},
        "token_activations": {**shade, "top_examples": top},
    }


def _direction_record(model, tok, site: str, concept: Concept, unit, diff_norm: float, texts: Sequence[int], table: List[Dict],
                      prompts: Sequence[str], groups: Dict[str, Sequence[str]], neg: Sequence[str],
                      log: Callable[[str], None]) -> Dict:
    """The concept direction's record (see direction.py): its AUROC per phrasing group, and the
    answers with it added at each of DIRECTION_RATIOS x the stream's median norm (``table``)."""
    aurocs = direction_aurocs(model, tok, site, unit, groups, neg)
    most = max(table, key=lambda r: (r["mention_rate"], r["weak_mention_rate"], -r["median_perplexity"]))
    coherent = [r["mention_rate"] for r in table if r["coherent"]]
    log(f"  reference, the concept's own direction at {site} (the mean difference over the labelled texts): AUROC "
        + ", ".join(f"{g} {aurocs['peak'][g]:.2f}/{aurocs['mean'][g]:.2f}" for g in aurocs["peak"])
        + " (per text's peak/mean projection); added at "
        + ", ".join(f"{r['ratio']:g}x the stream: {r['mention_rate']:.0%} (weak rule {r['weak_mention_rate']:.0%}, "
                    f"perplexity {r['median_perplexity']:.1f})" for r in table))
    return {"method": f"mean activation at {site} over the labelled training texts about {concept.topic}, minus the mean "
                      f"over those about other topics; added as ratio x the residual stream's median norm",
            "norm": diff_norm, "texts": {"concept": texts[0], "other": texts[1]},
            "auroc": aurocs["peak"], "auroc_mean": aurocs["mean"],
            "sweep": [{k: v for k, v in r.items() if k != "answers"} for r in table],
            "best_mention_rate": most["mention_rate"],
            "best_coherent_mention_rate": max(coherent) if coherent else None,
            "examples": {"ratio": most["ratio"], "answers": [{"prompt": p, "steered": a}
                                                             for p, a in zip(prompts, most["answers"])]}}


def _ablations(feature: int, matches: Sequence[int]) -> List[Dict]:
    """The inactive clamps: the feature at each of INACTIVE x its max, and the search's top
    features (those with AUROC >= 0.95) together at 0: a concept an SAE splits over several
    latents - its name's tokens, its description - may survive the loss of one."""
    out = [{"scale": sc, "features": [feature], "clamp": {feature: ("max", sc)},
            "label": f"feature {feature} at {sc:g}x max"} for sc in INACTIVE]
    group = list(dict.fromkeys([feature, *matches]))
    if len(group) > 1:
        out.append({"scale": 0.0, "features": group, "clamp": {f: 0.0 for f in group},
                    "label": f"{len(group)} features at 0 (" + ", ".join(map(str, group)) + ")"})
    return out


def _inactive(concept: Concept, asking: Sequence[str], ablations: Sequence[Dict], answers: Sequence[Sequence[str]],
              log: Callable[[str], None]) -> Dict:
    """The inactive side of strategy 2: the answers to questions about the concept, unsteered and
    under each of ``ablations`` (``answers``, in that order). The clamp reported as the ablation
    is the one that lowers mentions most while the answers keep 3/4 of the unsteered
    distinct-word share (a clamp that silences the concept by breaking the model shows as
    repetition), the one with fewer features on a tie; the first if none does."""
    base = answers[0]
    unsteered = {"mention_rate": concept.mention_rate(base), "weak_mention_rate": concept.mention_rate(base, False),
                 "distinct_words": distinct_words(base), "answers": base}
    clamps = [{"scale": a["scale"], "features": a["features"], "label": a["label"],
               "mention_rate": concept.mention_rate(ans), "weak_mention_rate": concept.mention_rate(ans, False),
               "distinct_words": distinct_words(ans), "answers": ans} for a, ans in zip(ablations, answers[1:])]
    fluent = [c for c in clamps if c["distinct_words"] >= 0.75 * unsteered["distinct_words"]]
    used = min(fluent, key=lambda c: (c["mention_rate"], -c["scale"], len(c["features"]))) if fluent else clamps[0]
    log(f"  inactive: on {len(asking)} questions about {concept.name}, unsteered {unsteered['mention_rate']:.0%} "
        f"mention it (weak rule {unsteered['weak_mention_rate']:.0%}, distinct words {unsteered['distinct_words']:.0%}), "
        + ", ".join(f"{c['label']}: {c['mention_rate']:.0%} (weak rule {c['weak_mention_rate']:.0%}, "
                    f"distinct words {c['distinct_words']:.0%})" for c in clamps)
        + f"; the ablation reported: {used['label']}")
    return {"prompts": asking, "scale": used["scale"], "features": used["features"], "label": used["label"],
            "baseline_mention_rate": unsteered["mention_rate"], "ablated_mention_rate": used["mention_rate"],
            "unsteered": unsteered, "clamps": clamps}


def run(concepts: Sequence[str] = ("Golden Gate Bridge",), *, scale: float = 10.0, sweep: Sequence[float] = (),
        prompts: Optional[Sequence[str]] = None, budget: str = "full", architecture: str = "relu",
        corpus: Optional[str] = None, train_tokens: Optional[int] = None, d_sae: Optional[int] = None,
        l1: Optional[float] = None, layer: int = LAYER, seed: int = 0, cache_dir: Optional[str] = None,
        log: Callable[[str], None] = print) -> List[Dict]:
    for name in concepts:
        if name not in CONCEPTS:
            raise ValueError(f"concept: expected one of {list(CONCEPTS)}, got {name!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {list(BUDGETS)}, got {budget!r}")
    b = BUDGETS[budget]
    site = site_of(layer)
    for name, value in (("train_tokens", train_tokens), ("d_sae", d_sae)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
            b = replace(b, **{name: value})
    if l1 is not None:
        if architecture != "relu":
            raise ValueError(f"l1: only the relu architecture takes an L1 coefficient, got architecture {architecture!r}")
        if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not l1 > 0 or math.isinf(l1):
            raise ValueError(f"l1: expected a finite number > 0, got {l1!r}")
        b = replace(b, relu_l1=float(l1))
    model, tok, sae, train_rows, held = prepare(b, architecture=architecture, seed=seed, cache_dir=cache_dir,
                                                corpus=corpus, layer=layer, log=log)
    return [run_concept(model, tok, sae, held, CONCEPTS[name], b, scale=scale, sweep=sweep, prompts=prompts,
                        train_rows=train_rows, site=site, log=log)
            for name in concepts]
