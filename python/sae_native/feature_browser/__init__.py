"""``sn.dashboard``: a static, self-contained HTML feature browser built from one pass over a corpus.

For each feature: top-activating contexts with tokens shaded by activation, the activation
histogram and density, the output tokens its decoder direction promotes and suppresses
(``W_U @ W_dec[f]``), and the nearest features by decoder cosine; an index page searches by token.
The pass keeps only the sparse codes (see collect.py), never a [tokens, d_sae] matrix.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Tuple

import torch

from .collect import Collected, collect
from .html import feature_page, index_page
from .summary import FeatureSummary, summarize

__all__ = ["dashboard", "collect", "summarize", "Collected", "FeatureSummary"]


def _unembedding(model, unembed, d_in: int):
    """W_U [vocab, d_in]: the given one, else the model's output embedding when its width fits."""
    if unembed is not None:
        if not isinstance(unembed, torch.Tensor) or unembed.dim() != 2 or unembed.shape[1] != d_in:
            raise ValueError(f"unembed: expected a tensor [vocab, {d_in}], got "
                             f"{list(unembed.shape) if isinstance(unembed, torch.Tensor) else type(unembed).__name__}")
        return unembed
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == d_in:
        return weight
    return None


def _check_features(features, d_sae: int):
    try:
        out = [int(f) for f in features]
    except (TypeError, ValueError):
        raise TypeError(f"features: expected a sequence of feature ids, got {features!r}") from None
    bad = [f for f in out if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"features: {bad[0]} is out of range [0, {d_sae})")
    return list(dict.fromkeys(out))


def dashboard(model: torch.nn.Module, site, sae, texts: Iterable[str], out, *, tokenizer,
              features: Optional[Sequence[int]] = None, max_features: int = 1000, examples: int = 20,
              context: Tuple[int, int] = (12, 4), seq_len: int = 128, batch_size: int = 8, max_tokens: int = 0,
              unembed: Optional[torch.Tensor] = None, title: Optional[str] = None, progress: bool = True) -> str:
    """Writes the feature browser for ``sae`` at ``site`` of ``model`` over ``texts`` into folder
    ``out`` (``index.html`` and ``features/<id>.html``) and returns the index page's path.

    The texts are tokenized, joined with EOS and cut into ``[batch_size, seq_len]`` blocks, as
    activation datasets are (``max_tokens`` stops early; 0 reads all). Each block's first position
    is left out of the statistics: most models put attention-sink outliers there. Pages are made
    for ``features`` (ids), or else for the features active in the corpus, lowest ids first, at
    most ``max_features``. ``examples`` top contexts per feature, each ``context = (before,
    after)`` tokens around its peak. Logit effects use ``unembed [vocab, d_in]``, by default the
    model's output embedding."""
    from ..models import token_batches

    for name, value, low in (("max_features", max_features, 1), ("examples", examples, 0), ("seq_len", seq_len, 2),
                             ("batch_size", batch_size, 1), ("max_tokens", max_tokens, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if (not isinstance(context, (tuple, list)) or len(context) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in context)):
        raise ValueError(f"context: expected (before, after), two ints >= 0, got {context!r}")
    if isinstance(texts, str):
        raise TypeError("texts: expected an iterable of strings, got one string (wrap it in a list)")
    if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
        raise TypeError("tokenizer: expected a tokenizer (callable, with .decode)")
    chosen = None if features is None else _check_features(features, sae.d_sae)
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"out: {out!r} exists and is not a folder")
    W_U = _unembedding(model, unembed, sae.d_in)

    def texts_checked():
        for n, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{n}]: expected a string, got {type(t).__name__}")
            yield t

    col = collect(model, site, sae, token_batches(tokenizer, texts_checked(), seq_len=seq_len,
                                                  batch_size=batch_size, max_tokens=max_tokens), progress=progress)
    counts = col.feature_starts[1:] - col.feature_starts[:-1]
    alive = int((counts > 0).sum())
    if chosen is None:
        chosen = torch.nonzero(counts > 0).flatten()[:max_features].tolist()
    cache = {}

    def decode(t: int) -> str:
        if t not in cache:
            cache[t] = tokenizer.decode([t])
        return cache[t]

    summaries = summarize(col, sae, chosen, decode, W_U, examples=examples, before=context[0], after=context[1])
    title = title or f"SAE features at {site}"
    facts = [f"SAE: d_in {sae.d_in}, d_sae {sae.d_sae}, {sae.activation}" + (f", k {sae.k}" if sae.k else ""),
             f"corpus: {col.tokens.numel()} tokens in {col.tokens.shape[0]} blocks of {col.seq}; "
             f"{col.n_tokens} counted (each block's first position left out)",
             f"{alive} of {sae.d_sae} features active at least once; {sae.d_sae - alive} never",
             f"{len(summaries)} feature pages"]
    pages = os.path.join(out, "features")
    os.makedirs(pages, exist_ok=True)
    for name in os.listdir(pages):        # pages of an earlier run of a different selection
        if name.endswith(".html"):
            os.remove(os.path.join(pages, name))
    have = {s.feature for s in summaries}
    for s in summaries:
        with open(os.path.join(pages, f"{s.feature}.html"), "w", encoding="utf-8") as fh:
            fh.write(feature_page(s, title, have))
    index = os.path.join(out, "index.html")
    with open(index, "w", encoding="utf-8") as fh:
        fh.write(index_page(summaries, title, facts))
    return index
