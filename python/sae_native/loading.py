"""``sn.load``: any supported SAE file or folder (sae_native/formats/), a Hugging Face repo path or a
SAELens release (hub.py), as an ``SAE``."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .formats import FORMATS, FormatError, Spec, detect
from .formats._common import parse_dtype
from .sae import SAE


def load(path, sae_id: Optional[str] = None, *, revision: Optional[str] = None, cache_dir=None, device=None,
         dtype=None, format: Optional[str] = None, progress: Optional[bool] = None):
    """Loads an SAE in any supported format as an sn.SAE, from

    - a local folder or file;
    - ``"hf://org/repo[@revision]/path"``: a folder or file of a Hugging Face repo, through
      huggingface_hub's cache (downloaded once; offline, the cached copy serves);
    - ``(release, sae_id)``: a release of SAELens's pretrained registry (needs sae-lens), e.g.
      ``sn.load("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")``.

    ``revision`` picks a branch, tag or commit of the repo; ``cache_dir`` overrides the Hugging
    Face cache folder. ``format`` skips detection (one of FORMATS). ``dtype`` converts the
    weights (default: the format's own, float32 where it has none); ``device`` places them. Files
    over 1 GiB show a progress bar (``progress=True/False`` forces it). `.pt` files are read with
    ``torch.load(weights_only=True)``: a pickle that would run code is refused.
    """
    source, extra = None, {}
    if sae_id is not None:
        from . import hub
        repo_id, inner, extra = hub.resolve(path, sae_id)
        source = f"hf://{repo_id}/{inner}"
        path = hub.fetch(repo_id, inner, revision, cache_dir)
    elif isinstance(path, str) and path.startswith("hf://"):
        from . import hub
        repo_id, inner, pinned = hub.parse(path)
        if pinned is not None and revision is not None and pinned != revision:
            raise ValueError(f"revision: {revision!r} given twice, differently ({path!r} names {pinned!r})")
        source = f"hf://{repo_id}{'@' + pinned if pinned else ''}{'/' + inner if inner else ''}"
        path = hub.fetch(repo_id, inner, pinned or revision, cache_dir)
    path = os.fspath(path)
    if source is None and not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder (a SAELens release needs its sae_id: "
                                f"sn.load(release, sae_id); a Hugging Face repo: sn.load('hf://org/repo/path'))")
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
    sae = build(spec, device=device, dtype=dtype, fmt=format, path=path)
    if source is not None:
        sae.metadata.update(extra, source=source)
    return sae


def build(spec: Spec, device=None, dtype=None, fmt: str = "", path: str = ""):
    """The SAE of a Spec, with weights in `dtype` (default: the format's, or float32 for formats
    sae-native cannot compute in) on `device`."""
    if dtype is None:
        dtype = spec.dtype or spec.W_enc.dtype
        if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            dtype = torch.float32
    else:
        dtype = parse_dtype(dtype, "dtype")

    where = path or fmt
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(spec, name)
        if t is not None and not bool(torch.isfinite(t).all()):
            raise FormatError(f"{where}: {name} holds non-finite values (inf or NaN): a broken or overflowing "
                              "checkpoint (a log_threshold too large to exponentiate, a zero norm scale, ...)")

    def put(t):
        return None if t is None else t.to(device=device or "cpu", dtype=dtype)
    # W_enc may stay a transposed view: the encode kernel packs it into panels from any strides.
    # Decode gathers W_dec rows, which must be contiguous to be fast: formats storing the decoder
    # as [d_in, d_sae] are transposed once here (the file's copy is dropped after).
    W_enc, W_dec = put(spec.W_enc), put(spec.W_dec).contiguous()
    # Biases and thresholds stay float32 at least: they are small, and bf16 rounding of a
    # threshold would move which latents fire.
    small = torch.float64 if dtype == torch.float64 else torch.float32

    def put_small(t):
        return None if t is None else t.to(device=device or "cpu", dtype=small)
    metadata = {"format": fmt, "path": os.path.abspath(path), **spec.metadata}
    try:
        return SAE(W_enc, put_small(spec.b_enc), W_dec, put_small(spec.b_dec), activation=spec.activation, k=spec.k,
                   threshold=put_small(spec.threshold), apply_b_dec_to_input=spec.apply_b_dec_to_input,
                   normalize=spec.normalize, metadata=metadata)
    except (ValueError, TypeError) as e:
        raise FormatError(f"{where}: describes an invalid SAE: {e}") from None
