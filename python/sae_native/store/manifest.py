"""The store's manifest (``manifest.json``): what was cached and how, and the shards that are
complete. It is the only source of truth: a shard file it does not list is not part of the store
(a writer killed after renaming a shard but before listing it leaves such a file; the next writer
replaces it)."""
from __future__ import annotations

import json
import os
from typing import Dict, List

import torch

from .shards import DTYPES

NAME = "manifest.json"
FORMAT = "sae-native-activations"
VERSION = 1


def path_of(folder: str) -> str:
    return os.path.join(folder, NAME)


def new(sites: Dict[str, int], dtype: torch.dtype, source: dict) -> dict:
    """``source``: what the activations were computed from (model, texts, tokenization); a rerun
    with a different source does not resume this store."""
    return {"format": FORMAT, "version": VERSION, "sites": dict(sites), "dtype": DTYPES[dtype],
            "source": source, "shards": [], "tokens": 0, "batches_done": 0, "complete": False}


def read(folder: str) -> dict:
    p = path_of(folder)
    try:
        with open(p) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {NAME}: not an activation store (sae-native cache writes one)") from None
    except ValueError as e:
        raise ValueError(f"{p}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{p}: not an sae-native activation store manifest")
    if m.get("version") != VERSION:
        raise ValueError(f"{p}: manifest version {m.get('version')}, this sae-native reads version {VERSION}")
    return m


def write(folder: str, m: dict) -> None:
    """Replaces the manifest atomically (written aside, flushed, renamed)."""
    p = path_of(folder)
    tmp = p + ".tmp"
    with open(tmp, "w") as f:
        json.dump(m, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.safetensors"


def listed(m: dict) -> List[str]:
    return [s["file"] for s in m["shards"]]
