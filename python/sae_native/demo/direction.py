"""The concept's own direction at the demo's site: the reference the SAE feature is measured against.

The difference between the mean activation over texts about the concept and over the other
texts is the simplest linear read-out of the concept that the model holds at the site. How well it
separates the concept's phrasings (AUROC), and what adding it to the residual stream makes the
model say, bound what one SAE feature - a direction too - can be expected to do there: where this
direction cannot make the model name the concept at any strength, no clamp of a feature will.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .. import features
from ..hooks import SiteCapture
from .corpus import text_batches

# How hard the direction is added: its norm over the residual stream's median norm at the site
# (the unit the feature's clamp is reported in too, as "clamp / stream").
RATIOS = (0.25, 0.5, 0.75, 1.0)


def per_text_activations(model, tok, site: str, texts: Sequence[str], batch_size: int = 16) -> List[Tensor]:
    """Each text's [tokens, d_model] activations at ``site`` in float32, its first token (an
    attention-sink outlier) and padding left out. Batched, right-padded."""
    out: List[Tensor] = []
    with torch.no_grad(), SiteCapture(model, [site]) as capture:
        for batch in text_batches(tok, list(texts), batch_size):
            hidden = capture(batch)[site].float()
            for row, mask in zip(hidden, batch["attention_mask"]):
                out.append(row[1:int(mask.sum())])
    return out


def concept_direction(model, tok, site: str, concept_texts: Sequence[str], other_texts: Sequence[str]) -> Tuple[Tensor, float]:
    """The unit vector along mean(concept tokens) - mean(other tokens) at ``site``, and that
    difference's norm."""
    for name, texts in (("concept_texts", concept_texts), ("other_texts", other_texts)):
        if len(texts) == 0:
            raise ValueError(f"{name}: expected at least one text")
    pos = torch.cat(per_text_activations(model, tok, site, concept_texts))
    neg = torch.cat(per_text_activations(model, tok, site, other_texts))
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError("concept_texts, other_texts: expected texts of at least two tokens")
    diff = pos.mean(0) - neg.mean(0)
    norm = float(diff.norm())
    if not norm > 0:
        raise ValueError("concept_texts, other_texts: their mean activations are equal; no direction separates them")
    return diff / norm, norm


def direction_aurocs(model, tok, site: str, direction: Tensor, groups: Dict[str, Sequence[str]],
                     other_texts: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """{"peak": {group: AUROC}, "mean": {group: AUROC}}: how well the projection on ``direction``
    separates each group's texts from ``other_texts``, scored per text by its largest token
    projection (the score the feature search gives a feature) and by its mean over the text's tokens
    (a concept is spread over a text, not held by one token)."""
    def scores(texts):
        rows = [a @ direction for a in per_text_activations(model, tok, site, texts)]
        return (torch.tensor([float(r.max()) if len(r) else 0.0 for r in rows]),
                torch.tensor([float(r.mean()) if len(r) else 0.0 for r in rows]))
    neg_peak, neg_mean = scores(other_texts)
    out: Dict[str, Dict[str, float]] = {"peak": {}, "mean": {}}
    for group, texts in groups.items():
        if not texts:
            continue
        peak, mean = scores(texts)
        out["peak"][group] = float(features.auroc(peak[:, None], neg_peak[:, None])[0])
        out["mean"][group] = float(features.auroc(mean[:, None], neg_mean[:, None])[0])
    return out


__all__ = ["RATIOS", "concept_direction", "direction_aurocs", "per_text_activations"]
