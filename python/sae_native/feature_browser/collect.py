"""One pass over a corpus: the tokens and every token's sparse codes, grouped by feature.

The codes are what the package's encode returns ([tokens, k] values and indices), never a
[tokens, d_sae] matrix: a million tokens of a k=32 SAE take 256 MB here, whatever d_sae is. Grouped
by feature once at the end, they give each feature's exact activations for its histogram, its top
contexts and the shading of the tokens around them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import Tensor


@dataclass
class Collected:
    """``tokens [rows, seq]``: the corpus as the model read it. ``feature_starts [d_sae + 1]``:
    feature f's activations are entries ``feature_starts[f]:feature_starts[f+1]`` of ``token``
    (flat token index, row * seq + position) and ``value``, largest value first. ``n_tokens``:
    tokens counted (every position but each row's first, whose activations are attention-sink
    outliers in most models)."""
    tokens: Tensor
    feature_starts: Tensor
    token: Tensor
    value: Tensor
    n_tokens: int

    @property
    def seq(self) -> int:
        return self.tokens.shape[1]

    def activations(self, f: int):
        """(values, flat token indices) of feature f, largest first."""
        a, b = int(self.feature_starts[f]), int(self.feature_starts[f + 1])
        return self.value[a:b], self.token[a:b]

    def value_at(self, f: int, flat: Tensor) -> Tensor:
        """Feature f's activation at each flat token index of ``flat`` (0 where it is inactive)."""
        values, where = self.activations(f)
        out = torch.zeros(flat.shape)
        if where.numel() == 0:
            return out
        order = torch.argsort(where)
        where, values = where[order], values[order]
        pos = torch.searchsorted(where, flat).clamp(max=where.numel() - 1)
        hit = where[pos] == flat
        out[hit] = values[pos][hit]
        return out

def collect(model: torch.nn.Module, site, sae, batches: Iterable[Tensor], *, progress: bool = True,
            total: Optional[int] = None) -> Collected:
    """Runs ``model`` on every ``[batch, seq]`` token batch (one sequence length throughout) with
    the SAE recording at ``site``, and keeps each token's active latents."""
    from ..hooks import record

    rows, tok, feat, val = [], [], [], []
    seq, n_rows = None, 0
    from .._progress import wrap
    iterator = wrap(batches, progress, desc="dashboard", unit="batch", total=total)
    with torch.no_grad(), record(model, site, sae) as rec:
        for n, ids in enumerate(iterator):
            if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point or ids.numel() == 0:
                raise TypeError(f"batches[{n}]: expected a non-empty integer token tensor [batch, seq]")
            if seq is None:
                seq = ids.shape[1]
            elif ids.shape[1] != seq:
                raise ValueError(f"batches[{n}]: sequence length {ids.shape[1]}, expected {seq} as in the first batch")
            rec.clear()
            model(ids.to(sae.device))
            if not rec.codes:
                raise RuntimeError(f"dashboard: the model never ran the site {site!r}")
            codes = rec.codes[-1]
            if tuple(codes.values.shape[:2]) != tuple(ids.shape):
                raise ValueError(f"site {site!r}: recorded codes for {list(codes.values.shape[:-1])} tokens, "
                                 f"expected the batch's {list(ids.shape)}")
            values, indices = codes.values.float().cpu(), codes.indices.cpu()
            values[:, 0], indices[:, 0] = 0.0, -1          # each row's first position is not counted
            active = (indices >= 0) & (values > 0)
            b, s, w = values.shape
            flat = (torch.arange(n_rows * s, (n_rows + b) * s).reshape(b, s, 1)).expand(b, s, w)
            tok.append(flat[active])
            feat.append(indices[active].long())
            val.append(values[active])
            rows.append(ids.cpu())
            n_rows += b
    if seq is None:
        raise ValueError("texts: the corpus gave no token batch (empty texts, or shorter than one sequence)")
    token, feature, value = torch.cat(tok), torch.cat(feat), torch.cat(val)
    # Group by feature, largest value first within a feature (two stable sorts).
    order = torch.argsort(value, descending=True, stable=True)
    order = order[torch.argsort(feature[order], stable=True)]
    counts = torch.bincount(feature, minlength=sae.d_sae)
    starts = torch.zeros(sae.d_sae + 1, dtype=torch.int64)
    starts[1:] = torch.cumsum(counts, 0)
    return Collected(torch.cat(rows), starts, token[order], value[order], n_rows * (seq - 1))
