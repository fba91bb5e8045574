"""Pretrained SAEs by name: ``hf://org/repo[@revision]/path`` through huggingface_hub's cache, and
SAELens's registry of releases (``sn.load(release, sae_id)``), which names such a repo and path.

Everything goes through ``huggingface_hub.snapshot_download``, so files land in (and are read from)
the standard Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``), shared with transformers and
SAELens. Offline (``HF_HUB_OFFLINE=1``, or no network), a cached snapshot serves; what the cache
lacks is reported by name.
"""
from __future__ import annotations

import difflib
import os
from typing import Optional, Tuple

PREFIX = "hf://"


def parse(url: str) -> Tuple[str, str, Optional[str]]:
    """``hf://org/repo[@revision][/path]`` -> (repo_id, path inside the repo, revision or None)."""
    if not url.startswith(PREFIX):
        raise ValueError(f"path: expected hf://org/repo[@revision]/path, got {url!r}")
    parts = [p for p in url[len(PREFIX):].split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise ValueError(f"path: expected hf://org/repo[@revision]/path, got {url!r}")
    org, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise ValueError(f"path: an empty repo name or revision in {url!r}")
    return f"{org}/{repo}", "/".join(parts[2:]), revision


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("loading hf:// paths needs huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub


def fetch(repo_id: str, path: str = "", revision: Optional[str] = None, cache_dir=None) -> str:
    """The local path of ``path`` (a file or folder) in ``repo_id`` at ``revision``, downloaded into
    the Hugging Face cache unless it is there already."""
    hub = _hub()
    from huggingface_hub import errors
    where = f"hf://{repo_id}{'@' + revision if revision else ''}{'/' + path if path else ''}"
    patterns = [path, f"{path}/*"] if path else None
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir)
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{where}: revision {revision!r} does not exist in {repo_id}") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
        raise FileNotFoundError(f"{where}: the repository cannot be read (it does not exist, is private or gated; "
                                f"log in with `hf auth login` if you have access): {type(e).__name__}") from None
    except (errors.LocalEntryNotFoundError, errors.IncompleteSnapshotError) as e:
        from huggingface_hub import constants
        cache = cache_dir or constants.HF_HUB_CACHE
        raise FileNotFoundError(f"{where}: not in the Hugging Face cache ({cache}) and the Hub could not be reached "
                                f"(offline, or no network): {str(e).splitlines()[0]}") from None
    local = os.path.join(folder, path) if path else folder
    if not os.path.exists(local):
        have = sorted(os.listdir(os.path.dirname(local))) if os.path.isdir(os.path.dirname(local)) else []
        near = difflib.get_close_matches(os.path.basename(path), have, n=3)
        hint = f"; close: {', '.join(near)}" if near else ""
        raise FileNotFoundError(f"{where}: {path!r} is not in {repo_id} at revision {revision or 'main'}{hint}")
    return local


def registry():
    """SAELens's pretrained-SAE registry (release name -> lookup), which needs sae-lens."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise ImportError("loading a release by name needs SAELens's registry: pip install sae-lens "
                          "(or give the SAE's hf://org/repo/path)") from None
    return get_pretrained_saes_directory()


def resolve(release: str, sae_id: str) -> Tuple[str, str, dict]:
    """(repo_id, path in the repo, metadata) of ``sae_id`` in SAELens's ``release``."""
    if not isinstance(release, str) or not isinstance(sae_id, str):
        raise TypeError(f"release and sae_id: expected strings, got {type(release).__name__} and "
                        f"{type(sae_id).__name__}")
    table = registry()
    if release not in table:
        near = difflib.get_close_matches(release, list(table), n=3)
        raise ValueError(f"release: {release!r} is not in SAELens's registry"
                         + (f"; close: {', '.join(near)}" if near else ""))
    lookup = table[release]
    ids = lookup.saes_map
    if sae_id not in ids:
        near = difflib.get_close_matches(sae_id, list(ids), n=3, cutoff=0.4)
        raise ValueError(f"sae_id: {sae_id!r} is not in release {release!r} ({len(ids)} SAEs"
                         + (f"; close: {', '.join(near)}" if near else "") + ")")
    meta = {"release": release, "sae_id": sae_id, "repo_id": lookup.repo_id, "model": lookup.model}
    neuronpedia = (lookup.neuronpedia_id or {}).get(sae_id)
    if neuronpedia:
        meta["neuronpedia_id"] = neuronpedia
    return lookup.repo_id, ids[sae_id], meta
