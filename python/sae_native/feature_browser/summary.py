"""What a feature's page shows, computed from the collected codes and the weights: statistics,
histogram, top contexts with their activations, logit effects and decoder neighbours."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .collect import Collected

Token = Tuple[str, float]            # (text of a token, the feature's activation on it)


@dataclass
class Context:
    """One top-activating example: the tokens around it, which of them is the peak, its value."""
    tokens: List[Token]
    peak: int
    value: float


@dataclass
class FeatureSummary:
    feature: int
    count: int                        # tokens where it is active
    density: float                    # count / tokens counted
    max: float
    mean_active: float                # mean over the tokens where it is active
    histogram: List[Tuple[float, float, int]] = field(default_factory=list)    # (low, high, count)
    contexts: List[Context] = field(default_factory=list)
    top_tokens: List[Tuple[str, int]] = field(default_factory=list)            # tokens it fires on most, counts
    promoted: List[Token] = field(default_factory=list)                        # (token, logit effect)
    suppressed: List[Token] = field(default_factory=list)
    neighbours: List[Tuple[int, float]] = field(default_factory=list)          # (feature, decoder cosine)


def histogram(values: Tensor, bins: int) -> List[Tuple[float, float, int]]:
    """``bins`` equal bins from 0 to the largest value (activations are positive)."""
    if values.numel() == 0:
        return []
    top = float(values.max())
    counts = torch.histc(values.double(), bins=bins, min=0.0, max=top if top > 0 else 1.0)
    width = (top if top > 0 else 1.0) / bins
    return [(i * width, (i + 1) * width, int(c)) for i, c in enumerate(counts.tolist())]


def contexts(col: Collected, f: int, decode: Callable[[int], str], *, examples: int, before: int,
             after: int) -> List[Context]:
    """The ``examples`` highest activations of f, each with ``before`` / ``after`` tokens of its
    row around it, every token carrying f's activation there."""
    values, where = col.activations(f)
    values, where = values[:examples], where[:examples]
    out = []
    if where.numel() == 0:
        return out
    seq = col.seq
    row, pos = where // seq, where % seq
    offsets = torch.arange(-before, after + 1)
    window = pos[:, None] + offsets[None, :]
    inside = (window >= 0) & (window < seq)
    flat = row[:, None] * seq + window.clamp(0, seq - 1)
    acts = col.value_at(f, flat)
    ids = col.tokens.reshape(-1)[flat]
    for e in range(where.numel()):
        keep = inside[e]
        toks = [(decode(int(t)), float(a)) for t, a in zip(ids[e][keep].tolist(), acts[e][keep].tolist())]
        out.append(Context(toks, int(before - (~keep[:before]).sum()), float(values[e])))
    return out


def top_tokens(col: Collected, f: int, decode: Callable[[int], str], n: int) -> List[Tuple[str, int]]:
    """The token texts f is active on most often (over all its activations)."""
    _, where = col.activations(f)
    if where.numel() == 0:
        return []
    ids, counts = torch.unique(col.tokens.reshape(-1)[where], return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)[:n]
    return [(decode(int(ids[i])), int(counts[i])) for i in order]


def logit_effects(W_dec: Tensor, W_U: Tensor, features: Sequence[int], decode: Callable[[int], str],
                  n: int) -> List[Tuple[List[Token], List[Token]]]:
    """Per feature, the ``n`` output tokens its decoder direction promotes most and suppresses
    most: the largest and smallest entries of ``W_U @ W_dec[f]`` (the direct path to the logits)."""
    out = []
    for start in range(0, len(features), 256):
        chunk = list(features[start:start + 256])
        effect = W_dec[chunk].float() @ W_U.float().t()            # [chunk, vocab]
        k = min(n, effect.shape[1])
        hi, lo = torch.topk(effect, k, dim=1), torch.topk(effect, k, dim=1, largest=False)
        for r in range(len(chunk)):
            out.append(([(decode(int(t)), float(v)) for v, t in zip(hi.values[r].tolist(), hi.indices[r].tolist())],
                        [(decode(int(t)), float(v)) for v, t in zip(lo.values[r].tolist(), lo.indices[r].tolist())]))
    return out


def neighbours(W_dec: Tensor, features: Sequence[int], n: int) -> List[List[Tuple[int, float]]]:
    """Per feature, the ``n`` other features whose decoder rows have the largest cosine with its own."""
    unit = torch.nn.functional.normalize(W_dec.float(), dim=1)
    out = []
    k = min(n + 1, unit.shape[0])
    for start in range(0, len(features), 256):
        chunk = list(features[start:start + 256])
        cos = unit[chunk] @ unit.t()
        cos[torch.arange(len(chunk)), torch.tensor(chunk)] = -2.0      # not itself
        best = torch.topk(cos, k, dim=1)
        for r in range(len(chunk)):
            out.append([(int(i), float(c)) for c, i in zip(best.values[r].tolist(), best.indices[r].tolist())
                        if c > -2.0][:n])
    return out


def summarize(col: Collected, sae, features: Sequence[int], decode: Callable[[int], str], W_U: Optional[Tensor], *,
              examples: int, before: int, after: int, bins: int = 32, n_logits: int = 10,
              n_neighbours: int = 8) -> List[FeatureSummary]:
    W_dec = sae.W_dec.detach().cpu()
    effects = logit_effects(W_dec, W_U.detach().cpu(), features, decode, n_logits) if W_U is not None else None
    near = neighbours(W_dec, features, n_neighbours)
    out = []
    for i, f in enumerate(features):
        values, _ = col.activations(f)
        count = values.numel()
        s = FeatureSummary(f, count, count / max(col.n_tokens, 1), float(values.max()) if count else 0.0,
                           float(values.double().mean()) if count else 0.0, histogram(values, bins),
                           contexts(col, f, decode, examples=examples, before=before, after=after),
                           top_tokens(col, f, decode, 8), neighbours=near[i])
        if effects is not None:
            s.promoted, s.suppressed = effects[i]
        out.append(s)
    return out
