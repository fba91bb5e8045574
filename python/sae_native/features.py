"""Finding the features that stand for a concept: which fire on texts about it and not otherwise."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
from torch import Tensor


@dataclass
class FeatureMatch:
    """One feature's selectivity for a concept. ``auroc``: the probability that a positive text's
    maximum activation of the feature exceeds a negative text's (ties count half).
    ``pos_frequency`` / ``neg_frequency``: fraction of positive / negative texts where it fires.
    ``top_tokens``: the positive texts' tokens it fires most on, as (token, value)."""
    feature: int
    auroc: float
    pos_frequency: float
    neg_frequency: float
    pos_mean_max: float
    top_tokens: List[Tuple[str, float]] = field(default_factory=list)
    pos_coverage: float = 0.0   # mean fraction of a positive text's tokens where it fires
    neg_coverage: float = 0.0
    # positive texts given in named groups (phrasings, languages): the fraction of each group's
    # texts where it fires
    group_frequency: Dict[str, float] = field(default_factory=dict)


def auroc(pos: Tensor, neg: Tensor) -> Tensor:
    """Per column: P(pos > neg) + P(pos == neg) / 2, over all pairs of rows ([P, F], [Q, F])."""
    out = torch.zeros(pos.shape[1], dtype=torch.float64)
    for i in range(pos.shape[0]):  # P rows at a time keeps memory at Q x F
        p = pos[i][None, :]
        out += (p > neg).double().sum(0) + 0.5 * (p == neg).double().sum(0)
    return out / (pos.shape[0] * neg.shape[0])


def _max_per_text(model, site, sae, texts, tokenizer):
    """[len(texts), d_sae] maximum activation of every feature over each text's tokens, and the
    (token ids, [seq, d_sae] activations) of each text for the examples."""
    from .hooks import record
    rows, cover, details = [], [], []
    device = next(model.parameters(), torch.empty(0)).device
    # (stop: the layers after the site never run)
    with torch.no_grad(), record(model, site, sae, stop=True) as rec:
        for n, text in enumerate(texts):
            ids = torch.as_tensor(tokenizer(text, return_tensors="pt")["input_ids"]) if isinstance(text, str) \
                else torch.as_tensor(text).reshape(1, -1)
            if ids.numel() == 0 or ids.dtype.is_floating_point:
                raise ValueError(f"texts[{n}]: expected a non-empty string or sequence of token ids")
            rec.clear()
            rec.forward(ids.to(device))
            dense = rec.codes[-1].to_dense()[0].float().cpu()  # [seq, d_sae]
            dense[0] = 0.0                                     # BOS/first-token activations are outliers
            rows.append(dense.max(dim=0).values)
            cover.append((dense[1:] > 0).float().mean(dim=0) if dense.shape[0] > 1 else torch.zeros(dense.shape[1]))
            details.append((ids[0], dense))
    return torch.stack(rows), torch.stack(cover), details


def _rank(primary: Tensor, secondary: Tensor) -> Tensor:
    """Feature ids by primary descending, then secondary descending, then id ascending."""
    order = torch.argsort(secondary, descending=True, stable=True)
    return order[torch.argsort(primary[order], descending=True, stable=True)]


RANKS = ("auroc", "coverage", "consistency")


def find_features(model: torch.nn.Module, site, sae, positive_texts: Union[Sequence, Mapping[str, Sequence]],
                  negative_texts: Sequence, *, top: int = 10, tokenizer=None, examples: int = 5, rank: str = "auroc",
                  min_auroc: float = 0.95) -> List[FeatureMatch]:
    """The ``top`` features most selective for the concept the positive texts share.

    ``positive_texts`` is a list of texts, or a dict of named groups of them (phrasings of the
    concept: texts naming it, texts describing it without its name, other languages), whose
    per-group firing rates each match reports (``group_frequency``).

    ``rank="auroc"``: by the AUROC of the per-text maximum activation (positives vs negatives),
    then by how much more often they fire on positives. ``rank="coverage"``: among features with
    AUROC >= ``min_auroc``, by how much larger a share of a positive text's tokens they fire on
    (concept-wide features rather than single-token ones; those steer better).
    ``rank="consistency"``: among features with AUROC >= ``min_auroc``, by the firing rate in the
    group where they fire least, minus the rate on the negatives: a feature of the concept itself
    fires on every phrasing and language, one of a name's tokens only where the name is. Texts
    are strings (give ``tokenizer``) or token-id sequences."""
    if rank not in RANKS:
        raise ValueError(f"rank: expected one of {RANKS}, got {rank!r}")
    groups: Dict[str, Sequence] = {}
    if isinstance(positive_texts, Mapping):
        groups = dict(positive_texts)
        if not groups or any(not isinstance(g, str) or not texts for g, texts in groups.items()):
            raise ValueError("positive_texts: expected a dict of named, non-empty groups of texts")
        positive_texts = [t for texts in groups.values() for t in texts]
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top: expected an int >= 1, got {top!r}")
    if not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples: expected an int >= 0, got {examples!r}")
    if not 0.0 <= float(min_auroc) <= 1.0:
        raise ValueError(f"min_auroc: expected a number in [0, 1], got {min_auroc!r}")
    if not positive_texts or not negative_texts:
        raise ValueError("positive_texts and negative_texts: expected at least one text each")
    if tokenizer is None and any(isinstance(t, str) for t in (*positive_texts, *negative_texts)):
        raise ValueError("tokenizer: needed to tokenize string texts")
    pos, pos_cov, pos_details = _max_per_text(model, site, sae, positive_texts, tokenizer)
    neg, neg_cov, _ = _max_per_text(model, site, sae, negative_texts, tokenizer)
    if pos.shape[1] != sae.d_sae:
        raise ValueError(f"sae: recorded {pos.shape[1]} features at {site!r}, expected d_sae={sae.d_sae}")
    scores = auroc(pos, neg)
    pos_f, neg_f = (pos > 0).double().mean(0), (neg > 0).double().mean(0)
    pc, nc = pos_cov.double().mean(0), neg_cov.double().mean(0)
    rates, at = {}, 0
    for name, texts in (groups or {"": positive_texts}).items():
        rates[name] = (pos[at:at + len(texts)] > 0).double().mean(0)
        at += len(texts)
    if rank == "auroc":
        order = _rank(scores, pos_f - neg_f)
    else:
        eligible = scores >= min_auroc
        if not bool(eligible.any()):
            eligible = torch.ones_like(eligible)
        if rank == "coverage":
            order = _rank(pc - nc, scores)
        else:
            order = _rank(torch.stack(list(rates.values())).min(0).values - neg_f, scores)
        order = order[eligible[order]]
    order = order[:top].tolist()
    out = []
    for f in order:
        tokens = []
        for ids, dense in pos_details:
            v, i = dense[:, f].max(dim=0)
            if float(v) > 0:
                tokens.append((float(v), int(ids[int(i)])))
        tokens.sort(reverse=True)
        shown = [(tokenizer.decode([t]) if tokenizer is not None else str(t), v) for v, t in tokens[:examples]]
        out.append(FeatureMatch(f, float(scores[f]), float(pos_f[f]), float(neg_f[f]), float(pos[:, f].mean()),
                                shown, float(pc[f]), float(nc[f]),
                                {name: float(r[f]) for name, r in rates.items()} if groups else {}))
    return out
