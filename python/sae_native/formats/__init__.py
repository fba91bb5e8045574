"""Reading the SAEs people have (as a ``Spec``: tensors and settings), and saving ours in SAELens
format. ``sn.load`` (sae_native/loading.py) turns a Spec into an SAE. One module per on-disk format;
``detect`` says which one a path holds:

    saelens              folder: cfg.json + sae_weights.safetensors [+ sparsity.safetensors]
    sparsify             folder: cfg.json + sae.safetensors (one hookpoint)
    gemma_scope          params.npz, or params.safetensors + config.json (Gemma Scope 2)
    dictionary_learning  ae.pt [+ config.json]
    llama_scope          folder: hyperparams.json + checkpoints/final.safetensors
    openai               a .pt state dict of openai/sparse_autoencoder
    sharded              folder: sharded.json + shard-*-of-*.safetensors (ShardedSAE.save)
"""
from __future__ import annotations

import os

from . import dictionary_learning, gemma_scope, llama_scope, openai, saelens, sharded, sparsify
from ._common import FormatError, Spec

FORMATS = {
    "saelens": saelens,
    "sparsify": sparsify,
    "gemma_scope": gemma_scope,
    "dictionary_learning": dictionary_learning,
    "llama_scope": llama_scope,
    "openai": openai,
    "sharded": sharded,
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


FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".json", ".npz", ".ckpt")


def save(sae, path, *, overwrite: bool = False) -> None:
    """Writes `sae` in SAELens format (cfg.json + sae_weights.safetensors) to folder `path`.

    A path that names a file (``x.safetensors``) is refused: the format is a folder. A folder that
    already holds an SAE is replaced only with ``overwrite=True``."""
    path = os.fspath(path)
    if path.lower().endswith(FILE_SUFFIXES):
        raise ValueError(f"path: {path!r} names a file, but an SAE is saved as a folder (cfg.json + "
                         f"{saelens.WEIGHTS}); give a folder name such as {os.path.splitext(path)[0]!r}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"path: {path!r} exists and is not a folder")
    held = [f for f in (saelens.CFG, saelens.WEIGHTS) if os.path.exists(os.path.join(path, f))]
    if held and not overwrite:
        raise FileExistsError(f"path: {path!r} already holds an SAE ({', '.join(held)}); pass overwrite=True to "
                              f"replace it")
    saelens.save(sae, path)


__all__ = ["save", "detect", "FORMATS", "FormatError", "Spec"]
