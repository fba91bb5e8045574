"""Per-feature statistics over a corpus: maximum, firing frequency, mean, top-activating examples."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional

import torch
from torch import Tensor


@dataclass
class FeatureStats:
    """Statistics of every feature over the tokens seen by sn.feature_stats.

    ``max``, ``frequency`` (fraction of tokens where the feature is active), ``mean`` (mean
    activation over all tokens) are ``[d_sae]``; ``n_tokens`` counts the tokens. With
    top_examples=E, ``top_values``, ``top_texts`` (index of the text in the order the batches
    gave them) and ``top_positions`` (token position in that text) are ``[d_sae, E]``, best first;
    unused slots have value -inf and text/position -1.
    """
    max: Tensor
    frequency: Tensor
    mean: Tensor
    n_tokens: int
    top_values: Optional[Tensor] = None
    top_texts: Optional[Tensor] = None
    top_positions: Optional[Tensor] = None

    def to(self, device) -> "FeatureStats":
        move = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return replace(self, **move)

    def top(self, feature: int):
        """The recorded top examples of one feature: a list of (text, position, value)."""
        if self.top_values is None:
            return []
        out = []
        for v, t, p in zip(self.top_values[feature].tolist(), self.top_texts[feature].tolist(),
                           self.top_positions[feature].tolist()):
            if t >= 0:
                out.append((t, p, v))
        return out


class TopExamples:
    """Keeps the E largest (value, text, position) per feature without a per-feature loop: new
    candidates below a feature's current E-th value are dropped; the rest are merged by one sort."""

    def __init__(self, d_sae: int, e: int, device):
        self.d_sae, self.e = d_sae, e
        self.values = torch.full((d_sae, e), float("-inf"), device=device)
        self.texts = torch.full((d_sae, e), -1, dtype=torch.int64, device=device)
        self.positions = torch.full((d_sae, e), -1, dtype=torch.int64, device=device)

    def add(self, features: Tensor, values: Tensor, texts: Tensor, positions: Tensor) -> None:
        keep = values > self.values[features, -1]
        if not bool(keep.any()):
            return
        f = torch.cat([torch.arange(self.d_sae, device=features.device).repeat_interleave(self.e), features[keep]])
        v = torch.cat([self.values.flatten(), values[keep].float()])
        t = torch.cat([self.texts.flatten(), texts[keep]])
        p = torch.cat([self.positions.flatten(), positions[keep]])
        order = torch.sort(v, descending=True, stable=True).indices
        order = order[torch.sort(f[order], stable=True).indices]        # by feature, then value desc
        f, v, t, p = f[order], v[order], t[order], p[order]
        starts = torch.searchsorted(f, torch.arange(self.d_sae, device=f.device))
        rank = torch.arange(f.numel(), device=f.device) - starts[f]
        top = rank < self.e
        self.values[f[top], rank[top]] = v[top]
        self.texts[f[top], rank[top]] = t[top]
        self.positions[f[top], rank[top]] = p[top]


def accumulate(codes_values: Tensor, codes_indices: Tensor, d_sae: int, sums: dict) -> None:
    """Adds flat codes [n, k] of n tokens into running max / count / sum tensors."""
    valid = (codes_indices >= 0) & (codes_values > 0)
    idx = codes_indices[valid]
    vals = codes_values[valid].float()
    sums["max"].scatter_reduce_(0, idx, vals, reduce="amax")
    sums["count"].index_add_(0, idx, torch.ones_like(vals, dtype=torch.float64))
    sums["sum"].index_add_(0, idx, vals.double())


def feature_stats(model: torch.nn.Module, site, sae, batches: Iterable, *, top_examples: int = 0,
                  progress: bool = True, group=None) -> FeatureStats:
    """Runs ``model`` on every batch and collects each feature's statistics at ``site``.

    ``batches`` yields token-id tensors ``[batch, seq]`` or dicts of model inputs (an
    ``attention_mask`` there excludes padding). Returns a FeatureStats and sets ``sae.stats`` to it,
    so ``clamp={f: ("max", 10)}`` means 10 x feature f's maximum. ``top_examples`` keeps that many
    top-activating (text, position, value) per feature. A tqdm progress bar shows when ``progress``
    and tqdm is installed.

    ``group`` (a torch.distributed process group; ``"world"`` for the default one): the corpus is
    split across its ranks, rank 0 holding the first texts, rank 1 the next, and so on; each rank
    passes its own ``batches``, and every rank gets the statistics of the whole corpus (text
    indices counted across ranks in that order), as one process reading it all would. A sharded SAE
    on ranks that all read the same texts (SPMD) needs no group.
    """
    from .hooks import record

    if isinstance(top_examples, bool) or not isinstance(top_examples, int) or top_examples < 0:
        raise ValueError(f"top_examples: expected an int >= 0, got {top_examples!r}")
    d_sae, device = sae.d_sae, sae.device
    sums = {"max": torch.zeros(d_sae, device=device), "count": torch.zeros(d_sae, dtype=torch.float64, device=device),
            "sum": torch.zeros(d_sae, dtype=torch.float64, device=device)}
    top = TopExamples(d_sae, top_examples, device) if top_examples else None
    n_tokens, n_texts = 0, 0
    from ._progress import wrap
    iterator = wrap(batches, progress, desc="feature_stats", unit="batch")
    # (stop: the layers after the site never run)
    with torch.no_grad(), record(model, site, sae, stop=True) as rec:
        for batch in iterator:
            inputs = batch if isinstance(batch, dict) else {"input_ids": batch}
            if not isinstance(inputs.get("input_ids"), Tensor):
                raise TypeError("batches: expected token-id tensors [batch, seq] or dicts with 'input_ids'")
            rec.clear()
            rec.forward(**inputs)
            if not rec.codes:
                raise RuntimeError(f"feature_stats: the model never ran the site {site!r}")
            codes = rec.codes[-1]                                   # [batch, seq, k]
            b, s = inputs["input_ids"].shape[:2]
            mask = inputs.get("attention_mask")
            mask = torch.ones(b, s, dtype=torch.bool, device=device) if mask is None else mask.to(device).bool()
            values, indices = codes.values.to(device)[mask], codes.indices.to(device)[mask]  # [n, k]
            accumulate(values, indices, d_sae, sums)
            n_tokens += int(mask.sum())
            if top is not None:
                texts = torch.arange(n_texts, n_texts + b, device=device)[:, None].expand(b, s)[mask]
                positions = torch.arange(s, device=device)[None, :].expand(b, s)[mask]
                k = values.shape[1]
                active = (indices >= 0) & (values > 0)
                top.add(indices[active], values[active], texts[:, None].expand(-1, k)[active],
                        positions[:, None].expand(-1, k)[active])
            n_texts += b
    if group is not None:
        n_tokens = _reduce_across(group, sums, top, n_tokens, n_texts)
    denom = max(n_tokens, 1)
    stats = FeatureStats(max=sums["max"], frequency=(sums["count"] / denom).float(), mean=(sums["sum"] / denom).float(),
                         n_tokens=n_tokens, top_values=None if top is None else top.values,
                         top_texts=None if top is None else top.texts,
                         top_positions=None if top is None else top.positions)
    sae.stats = stats
    return stats


def _reduce_across(group, sums: dict, top: Optional[TopExamples], n_tokens: int, n_texts: int) -> int:
    """Reduces per-rank statistics of a corpus split across ``group`` (in rank order) in place;
    returns the corpus's token count."""
    from .distributed import _comm
    group = _comm.resolve_group(None if group == "world" else group)
    sums["max"] = _comm.all_reduce(sums["max"], "the features' maxima (feature_stats)", group, "max")
    both = _comm.all_reduce_sum(torch.stack([sums["count"], sums["sum"]]), "the features' counts (feature_stats)", group)
    sums["count"], sums["sum"] = both[0], both[1]
    counts = _comm.all_gather(torch.tensor([n_tokens, n_texts, top.e if top is not None else 0], dtype=torch.int64),
                              "the ranks' token counts (feature_stats)", group)
    if len({int(c[2]) for c in counts}) > 1:
        raise ValueError("top_examples: the ranks passed different values (" +
                         ", ".join(f"rank {r} {int(c[2])}" for r, c in enumerate(counts)) + ")")
    if top is not None:
        # Each rank's table with its texts renumbered after the earlier ranks' texts, merged in
        # rank order: ties go to the earlier text, as in one pass over the whole corpus.
        offsets = torch.tensor([0] + [int(c[1]) for c in counts]).cumsum(0)
        parts = _comm.all_gather(torch.stack([top.values.double(), top.texts.double(), top.positions.double()]),
                                 "the top examples (feature_stats)", group)
        merged = TopExamples(top.d_sae, top.e, top.values.device)
        for r, part in enumerate(parts):
            values, texts, positions = part[0].float(), part[1].long(), part[2].long()
            used = texts >= 0
            features = torch.arange(top.d_sae, device=values.device)[:, None].expand_as(values)
            merged.add(features[used], values[used], texts[used] + int(offsets[r]), positions[used])
        top.values, top.texts, top.positions = merged.values, merged.texts, merged.positions
    return sum(int(c[0]) for c in counts)
