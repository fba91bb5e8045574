"""sharded: folder: sharded.json + shard-RRRRR-of-WWWWW.safetensors (a latent-sharded SAE).

Written by ShardedSAE.save (sae_native/distributed/checkpoint.py). Each shard file holds one
contiguous range of latents: W_enc [d_in, n], b_enc [n], W_dec [n, d_in], threshold [n]
(jumprelu), and a replica of b_dec [d_in]. The manifest lists the files with their ranges, which
cover [0, d_sae) in order, and the settings (d_in, d_sae, activation, k, apply_b_dec_to_input,
dtype, metadata). Any range of latents can be read without the others (``read_range``): a
checkpoint written by W ranks loads on any other number of ranks.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ._common import FormatError, Spec, cfg_int, parse_dtype, read_json

MANIFEST = "sharded.json"
FORMAT_NAME = "sae-native-sharded"
ACTIVATIONS = ("topk", "jumprelu", "relu")


def shard_file(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}.safetensors"


def detect(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(path: str) -> Dict[str, Any]:
    """The manifest, checked: known activation, ranges covering [0, d_sae) in order."""
    where = os.path.join(path, MANIFEST)
    m = read_json(where)
    if m.get("format") != FORMAT_NAME:
        raise FormatError(f"{where}: expected format {FORMAT_NAME!r}, got {m.get('format')!r}")
    d_in, d_sae = cfg_int(m, "d_in", where), cfg_int(m, "d_sae", where)
    if m.get("activation") not in ACTIVATIONS:
        raise FormatError(f"{where}: activation: expected one of {ACTIVATIONS}, got {m.get('activation')!r}")
    if m["activation"] == "topk":
        cfg_int(m, "k", where, 1, d_sae)
    parse_dtype(m.get("dtype", "float32"), f"{where}: dtype")
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        raise FormatError(f"{where}: shards: expected a list of {{file, start, stop}}")
    at = 0
    for s in shards:
        if not isinstance(s, dict) or not isinstance(s.get("file"), str) or os.path.basename(s["file"]) != s["file"] \
                or s.get("start") != at or not isinstance(s.get("stop"), int) or s["stop"] <= at:
            raise FormatError(f"{where}: shards: expected files in this folder with ranges covering [0, d_sae={d_sae}) "
                              f"in order, got {s!r} after latent {at}")
        at = s["stop"]
    if at != d_sae:
        raise FormatError(f"{where}: shards: the ranges end at latent {at}, expected d_sae={d_sae}")
    m["d_in"], m["d_sae"] = d_in, d_sae
    return m


def read_range(path: str, manifest: Dict[str, Any], start: int, stop: int) -> Dict[str, Optional[Tensor]]:
    """Latents [start, stop) of a sharded checkpoint, read from the shard files that hold them
    (only those slices are read): W_enc, b_enc, W_dec, threshold (or None), b_dec."""
    from safetensors import safe_open
    d_in = manifest["d_in"]
    has_threshold = manifest["activation"] == "jumprelu"
    names = ["W_enc", "b_enc", "W_dec"] + (["threshold"] if has_threshold else [])
    parts: Dict[str, List[Tensor]] = {n: [] for n in names}
    b_dec = None
    for s in manifest["shards"]:
        lo, hi = max(start, s["start"]), min(stop, s["stop"])
        if lo >= hi:
            continue
        file = os.path.join(path, s["file"])
        n = s["stop"] - s["start"]
        expected = {"W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_in), "threshold": (n,), "b_dec": (d_in,)}
        a, b = lo - s["start"], hi - s["start"]
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in names + ["b_dec"]:
                    if name not in f.keys():
                        raise FormatError(f"{file}: no tensor {name!r}")
                    sl = f.get_slice(name)
                    if tuple(sl.get_shape()) != expected[name]:
                        raise FormatError(f"{file}: {name}: expected shape {list(expected[name])} (latents "
                                          f"[{s['start']}, {s['stop']}) of the manifest), got {list(sl.get_shape())}")
                    if name == "b_dec":
                        if b_dec is None:
                            b_dec = sl[:]
                    elif name == "W_enc":
                        parts[name].append(sl[:, a:b])
                    else:
                        parts[name].append(sl[a:b])
        except FileNotFoundError:
            raise FormatError(f"{file}: missing (listed in {MANIFEST})") from None
        except FormatError:
            raise
        except Exception as e:                     # safetensors' errors on a truncated file
            raise FormatError(f"{file}: cannot read as safetensors ({type(e).__name__}: {e})") from None
    out: Dict[str, Optional[Tensor]] = {"W_enc": torch.cat(parts["W_enc"], 1), "b_enc": torch.cat(parts["b_enc"]),
                                        "W_dec": torch.cat(parts["W_dec"]), "b_dec": b_dec,
                                        "threshold": torch.cat(parts["threshold"]) if has_threshold else None}
    return out


def spec_settings(manifest: Dict[str, Any]) -> Tuple[str, Optional[int], bool]:
    return manifest["activation"], manifest.get("k") if manifest["activation"] == "topk" else None, \
        bool(manifest.get("apply_b_dec_to_input", True))


def load(path: str, progress=None) -> Spec:
    m = read_manifest(path)
    w = read_range(path, m, 0, m["d_sae"])
    activation, k, apply_b_dec = spec_settings(m)
    return Spec(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], activation, k=k, threshold=w["threshold"],
                apply_b_dec_to_input=apply_b_dec, dtype=parse_dtype(m.get("dtype", "float32"), "dtype"),
                metadata=dict(m.get("metadata") or {}))
