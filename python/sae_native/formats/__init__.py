"""Loading the SAEs people have, and saving ours in SAELens format.

One module per on-disk format; `load` detects which one a path holds:

    saelens              folder: cfg.json + sae_weights.safetensors [+ sparsity.safetensors]
    sparsify             folder: cfg.json + sae.safetensors (one hookpoint)
    gemma_scope          params.npz, or params.safetensors + config.json (Gemma Scope 2)
    dictionary_learning  ae.pt [+ config.json]
    llama_scope          folder: hyperparams.json + checkpoints/final.safetensors
    openai               a .pt state dict of openai/sparse_autoencoder
"""
from __future__ import annotations

import os
from typing import Optional

from . import dictionary_learning, gemma_scope, llama_scope, openai, saelens, sparsify
from ._common import FormatError, build

FORMATS = {
    "saelens": saelens,
    "sparsify": sparsify,
    "gemma_scope": gemma_scope,
    "dictionary_learning": dictionary_learning,
    "llama_scope": llama_scope,
    "openai": openai,
}


def detect(path: str) -> str:
    """The name of the format at `path`, or a FileNotFoundError / FormatError saying why none fits."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    for name, module in FORMATS.items():
        if module.detect(path):
            return name
    listing = ", ".join(sorted(os.listdir(path))[:12]) if os.path.isdir(path) else os.path.basename(path)
    raise FormatError(f"{path}: not a known SAE format (it holds: {listing}); expected one of: "
                      + "; ".join(f"{n}: {m.__doc__.splitlines()[0].split(':', 1)[-1].strip()}"
                                  for n, m in FORMATS.items()))


def load(path, *, device=None, dtype=None, format: Optional[str] = None, progress: Optional[bool] = None):
    """Loads the SAE at `path` (folder or file) in any supported format as an sn.SAE.

    ``format`` skips detection (one of FORMATS). ``dtype`` converts the weights (default: the
    format's own, float32 where it has none); ``device`` places them. Files over 1 GiB show a
    progress bar (``progress=True/False`` forces it). `.pt` files are read with
    ``torch.load(weights_only=True)``: a pickle that would run code is refused.
    """
    path = os.fspath(path)
    if format is None:
        format = detect(path)
    elif format not in FORMATS:
        raise ValueError(f"format: expected one of {tuple(FORMATS)}, got {format!r}")
    try:
        spec = FORMATS[format].load(path, progress=progress)
    except (FormatError, FileNotFoundError):
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
            RecursionError) as e:
        # Whatever a malformed file trips in a loader still names the file.
        raise FormatError(f"{path}: cannot load as {format} ({type(e).__name__}: {e})") from None
    return build(spec, device=device, dtype=dtype, fmt=format, path=path)


def save(sae, path) -> None:
    """Writes `sae` in SAELens format (cfg.json + sae_weights.safetensors) to folder `path`."""
    saelens.save(sae, os.fspath(path))


__all__ = ["load", "save", "detect", "FORMATS", "FormatError"]
