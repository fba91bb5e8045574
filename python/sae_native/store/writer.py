"""Writing a store: one pass of a model over token batches, each site's activations appended to
shards on disk. Crash-safe and resumable: a shard becomes part of the store only when its file is
complete and the manifest (rewritten atomically) lists it, and shards end at batch boundaries, so a
rerun skips the batches the listed shards hold and continues from there."""
from __future__ import annotations

import os
import time
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from . import manifest as mf
from . import shards

DEFAULT_SHARD_BYTES = 256 * 2 ** 20


def _check_sites(sites) -> List[str]:
    if isinstance(sites, str):
        sites = [sites]
    if not isinstance(sites, (list, tuple)) or not sites or not all(isinstance(s, str) and s for s in sites):
        raise TypeError(f"sites: expected a module path or a list of them, got {sites!r}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"sites: {sites} names a site twice")
    return list(sites)


def _keep_mask(inputs: dict, shape, skip_first: int, exclude: Sequence[int]) -> Tensor:
    """[batch, seq] bool: the positions whose activations are stored."""
    mask = inputs.get("attention_mask")
    keep = torch.ones(shape, dtype=torch.bool) if mask is None else mask.bool().cpu().clone()
    keep[:, :skip_first] = False
    if exclude:
        keep &= ~torch.isin(inputs["input_ids"].cpu(), torch.tensor(list(exclude)))
    return keep


def _clean(out: str, keep: Sequence[str]) -> None:
    """Removes what a killed writer left: temporary files and shards the manifest does not list."""
    for name in os.listdir(out):
        if name.endswith(".tmp") or (name.startswith("shard-") and name not in keep):
            os.remove(os.path.join(out, name))


def write_store(model: torch.nn.Module, sites: Union[str, Sequence[str]], batches: Iterable, out, *,
                dtype: torch.dtype = torch.bfloat16, shard_tokens: Optional[int] = None, skip_first: int = 1,
                exclude_token_ids: Sequence[int] = (), max_norm_ratio: Optional[float] = None,
                source: Optional[dict] = None, overwrite: bool = False, progress: bool = True,
                total: Optional[int] = None) -> dict:
    """Runs ``model`` on every item of ``batches`` (token ids ``[batch, seq]`` or dicts of model
    inputs; padding, attention_mask 0, is left out) and stores the activations at ``sites`` in
    folder ``out``; returns the manifest.

    ``dtype``: float32, bfloat16 or float16 on disk. ``shard_tokens``: tokens per shard (default:
    about 256 MB per shard); shards end at batch boundaries. ``skip_first`` leaves out each
    sequence's first positions (BOS / attention-sink outliers); ``exclude_token_ids`` leaves out
    positions holding those tokens (pad, BOS, EOS). ``max_norm_ratio`` leaves out positions whose
    activation norm, at any site, is above that multiple of the median over the batch's other
    kept positions: massive activations (in SmolLM2's middle layers about 1 token in 1000 has
    100x the usual norm and holds most of the variance, so a squared-error loss would spend the
    SAE on them). ``source`` describes what ``batches`` come from
    (model, corpus, tokenization): a rerun into the same folder with the same source and settings
    resumes where the last complete shard ended, skipping the batches it holds (so ``batches`` must
    come in the same order); a different one is refused unless ``overwrite``. The forward stops
    at the deepest site: later layers are not computed."""
    from ..hooks import SiteCapture, check_max_norm_ratio, within_norm_ratio

    sites = _check_sites(sites)
    if dtype not in shards.DTYPES:
        raise ValueError(f"dtype: expected one of {[str(d) for d in shards.DTYPES]}, got {dtype}")
    if shard_tokens is not None and (isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int)
                                     or shard_tokens < 1):
        raise ValueError(f"shard_tokens: expected an int >= 1, got {shard_tokens!r}")
    if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
        raise ValueError(f"skip_first: expected an int >= 0, got {skip_first!r}")
    source = dict(source or {})
    max_norm_ratio = check_max_norm_ratio(max_norm_ratio)
    settings = {"skip_first": skip_first, "exclude_token_ids": sorted(int(t) for t in exclude_token_ids)}
    if max_norm_ratio is not None:               # (only when set: stores written before it resume as they were)
        settings["max_norm_ratio"] = float(max_norm_ratio)
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"out: {out!r} exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    capture = SiteCapture(model, sites)       # resolves the sites: a wrong name fails before any file is touched

    m = None
    if os.path.exists(mf.path_of(out)):
        m = mf.read(out)
        same = (m["source"] == {**source, **settings} and list(m["sites"]) == sites
                and m["dtype"] == shards.DTYPES[dtype])
        if not same and not overwrite:
            raise FileExistsError(f"out: {out!r} holds a store of other activations (source, sites or dtype differ); "
                                  f"give a new folder or overwrite=True")
        if not same:
            m = None
    if m is not None and m["complete"]:
        return m
    resume_from = 0 if m is None else m["batches_done"]
    _clean(out, [] if m is None else mf.listed(m))

    pending: Dict[str, List[Tensor]] = {s: [] for s in sites}
    pending_rows, done = 0, resume_from
    forward_s = write_s = 0.0
    from .._progress import bar as progress_bar
    bar = progress_bar(progress, total=total, initial=resume_from, desc="cache", unit="batch")

    def flush(final: bool) -> None:
        nonlocal m, pending_rows, write_s
        t0 = time.perf_counter()
        if pending_rows:
            tensors = {s: torch.cat(pending[s]) for s in sites}
            name = mf.shard_name(len(m["shards"]))
            size, crc = shards.write(os.path.join(out, name), tensors)
            m["shards"].append({"file": name, "tokens": pending_rows, "bytes": size, "crc32": crc})
            m["tokens"] += pending_rows
        m["batches_done"] = done
        m["complete"] = final
        mf.write(out, m)
        for s in sites:
            pending[s].clear()
        pending_rows = 0
        write_s += time.perf_counter() - t0

    try:
        with capture:
            for n, item in enumerate(batches):
                if n < resume_from:
                    continue                      # held by a shard already listed
                inputs = item if isinstance(item, dict) else {"input_ids": item}
                ids = inputs.get("input_ids")
                if not isinstance(ids, Tensor) or ids.dim() != 2:
                    raise TypeError(f"batches[{n}]: expected token ids [batch, seq] or a dict with 'input_ids'")
                t0 = time.perf_counter()
                captured = capture(inputs)
                keep = _keep_mask(inputs, ids.shape, skip_first, settings["exclude_token_ids"])
                if max_norm_ratio is not None:
                    for acts in captured.values():     # (at every site: the sites' rows stay aligned)
                        keep = keep & within_norm_ratio(acts, max_norm_ratio, keep).cpu()
                for s in sites:
                    pending[s].append(captured[s].cpu()[keep].to(dtype))
                forward_s += time.perf_counter() - t0
                if m is None:
                    m = mf.new({s: int(captured[s].shape[-1]) for s in sites}, dtype, {**source, **settings})
                if shard_tokens is None:
                    shard_tokens = max(1, DEFAULT_SHARD_BYTES // (sum(m["sites"].values()) * dtype.itemsize))
                pending_rows += int(keep.sum())
                done = n + 1
                if pending_rows >= shard_tokens:
                    flush(final=False)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tokens=m["tokens"] + pending_rows)
    finally:
        if bar is not None:
            bar.close()
    if m is None:
        raise ValueError("batches: yielded nothing to store")
    flush(final=True)
    m = dict(m)
    m["timing"] = {"forward_s": forward_s, "write_s": write_s}
    return m
