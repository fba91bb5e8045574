"""sn.load by name, offline: hf://org/repo[@revision]/path and SAELens registry releases, read from
a Hugging Face cache laid out by huggingface_hub's own helpers (blobs, snapshots, refs, tree
listing) and checked with its scan_cache_dir. The Hub is never contacted (offline mode)."""
import hashlib
import os

import pytest
import torch

import sae_native as sn
from sae_native import hub

from format_fixtures import gemma_weights, write_gemma_npz
from models import random_sae

huggingface_hub = pytest.importorskip("huggingface_hub")
import huggingface_hub.constants as hf_constants  # noqa: E402
COMMIT_MAIN, COMMIT_V1 = "a" * 40, "b" * 40


def cache_snapshot(cache, repo_id, files, revision, commit):
    """Puts ``files`` ({path in repo: bytes}) into the cache as a download of ``revision`` (at
    ``commit``) would: content-addressed blobs, snapshot symlinks, the ref, the tree listing."""
    from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, _create_symlink, \
        repo_folder_name
    storage = os.path.join(cache, repo_folder_name(repo_id=repo_id, repo_type="model"))
    entries = {}
    for rel, data in files.items():
        blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()     # git's blob id
        blob = os.path.join(storage, "blobs", blob_id)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        pointer = os.path.join(storage, "snapshots", commit, rel)
        os.makedirs(os.path.dirname(pointer), exist_ok=True)
        _create_symlink(blob, pointer, new_blob=False)
        entries[rel] = blob_id, len(data)
    _cache_commit_hash_for_specific_revision(storage, revision, commit)
    try:
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    except ImportError:          # older huggingface_hub: no tree listing in the cache
        return
    write_tree_cache(storage, commit, {rel: TreeCacheEntry(size=n, blob_id=b) for rel, (b, n) in entries.items()})


def folder_bytes(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def cached_repo(tmp_path, offline_cache):
    """org/saes: main holds layer_3 (a TopK SAE), tag v1 holds layer_3 as a JumpReLU SAE."""
    saes = {"main": random_sae("topk", d_sae=40, k=4, seed=1), "v1": random_sae("jumprelu", d_sae=40, seed=2)}
    for (rev, sae), commit in zip(saes.items(), (COMMIT_MAIN, COMMIT_V1)):
        sae.save(tmp_path / rev)
        cache_snapshot(str(offline_cache), "org/saes", {f"layer_3/{n}": b for n, b in folder_bytes(tmp_path / rev).items()},
                       rev, commit)
    return saes


def same(a, b):
    assert (a.activation, a.k, a.d_in, a.d_sae) == (b.activation, b.k, b.d_in, b.d_sae)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_the_cache_is_one_huggingface_hub_recognizes(cached_repo, offline_cache):
    info = huggingface_hub.scan_cache_dir(offline_cache)
    (repo,) = info.repos
    assert repo.repo_id == "org/saes" and {r.commit_hash for r in repo.revisions} == {COMMIT_MAIN, COMMIT_V1}
    assert huggingface_hub.try_to_load_from_cache("org/saes", "layer_3/cfg.json", revision="v1").endswith("cfg.json")


def test_hf_paths_load_offline_at_a_revision(cached_repo):
    same(sn.load("hf://org/saes/layer_3"), cached_repo["main"])
    same(sn.load("hf://org/saes@v1/layer_3"), cached_repo["v1"])
    same(sn.load("hf://org/saes/layer_3", revision="v1"), cached_repo["v1"])
    sae = sn.load("hf://org/saes/layer_3/", dtype=torch.bfloat16)
    assert sae.dtype == torch.bfloat16 and sae.metadata["source"] == "hf://org/saes/layer_3"
    assert sae.metadata["path"].startswith(str(hf_constants.HF_HUB_CACHE))


def test_what_the_cache_lacks_is_named(cached_repo):
    with pytest.raises(FileNotFoundError, match="hf://org/saes/layer_9: .*not in"):
        sn.load("hf://org/saes/layer_9")
    with pytest.raises(FileNotFoundError, match="hf://org/saes@v2/layer_3: not in the Hugging Face cache"):
        sn.load("hf://org/saes@v2/layer_3")
    with pytest.raises(FileNotFoundError, match="hf://other/repo/x: not in the Hugging Face cache"):
        sn.load("hf://other/repo/x")
    with pytest.raises(ValueError, match="revision: 'v1' given twice"):
        sn.load("hf://org/saes@main/layer_3", revision="v1")


@pytest.mark.parametrize("url", ["hf://", "hf://org", "hf://org/../x", "hf://org/@v1/x", "hf://org/r@/x"])
def test_malformed_hf_paths(url):
    with pytest.raises(ValueError, match="path: "):
        hub.parse(url)


class Lookup:
    """Shaped as SAELens's PretrainedSAELookup."""
    def __init__(self, repo_id, saes_map):
        self.repo_id, self.saes_map, self.model = repo_id, saes_map, "toy-model"
        self.neuronpedia_id = {k: f"toy/{k}" for k in saes_map}


def test_a_registry_release_resolves_to_its_repo_and_path(cached_repo, monkeypatch):
    # The registry stands in for SAELens's (the next test uses the real one where sae-lens is installed).
    monkeypatch.setattr(hub, "registry", lambda: {"toy-release": Lookup("org/saes", {"l3": "layer_3"})})
    sae = sn.load("toy-release", "l3")
    same(sae, cached_repo["main"])
    assert sae.metadata["release"] == "toy-release" and sae.metadata["neuronpedia_id"] == "toy/l3"
    same(sn.load("toy-release", "l3", revision="v1"), cached_repo["v1"])
    with pytest.raises(ValueError, match="release: 'toy-relase' is not in SAELens's registry; close: toy-release"):
        sn.load("toy-relase", "l3")
    with pytest.raises(ValueError, match="sae_id: 'l4' is not in release 'toy-release'"):
        sn.load("toy-release", "l4")
    with pytest.raises(FileNotFoundError, match="a SAELens release needs its sae_id"):
        sn.load("toy-release")


def test_gemma_scope_by_name_through_saelens_registry(offline_cache, tmp_path):
    pytest.importorskip("sae_lens")
    repo_id, path, meta = hub.resolve("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
    assert repo_id == "google/gemma-scope-2b-pt-res" and path.startswith("layer_20/width_16k/average_l0_")
    w = gemma_weights(16, 48)                    # a small stand-in for the real 2304 x 16384 file
    write_gemma_npz(tmp_path / "g", w)
    cache_snapshot(str(offline_cache), repo_id, {f"{path}/params.npz": (tmp_path / "g" / "params.npz").read_bytes()},
                   "main", COMMIT_MAIN)
    sae = sn.load("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
    assert sae.activation == "jumprelu" and (sae.d_in, sae.d_sae) == (16, 48)
    assert torch.equal(sae.W_enc, w["W_enc"].float())
    assert sae.metadata["neuronpedia_id"] == meta["neuronpedia_id"] == "gemma-2-2b/20-gemmascope-res-16k"
