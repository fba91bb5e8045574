"""The activation store: what write_store puts on disk equals the model's activations; the shards
are plain safetensors; reading checks sizes and checksums, shuffles deterministically, splits
ranks disjointly; a writer killed with SIGKILL leaves a store whose listed shards read whole, and
a rerun completes it identically; sn.train / sn.evaluate take a store; the CLI."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import sae_native as sn
from sae_native.store import ActivationStore, ShardError, write_store

from models import tiny_llama, tokens
import smollm2
from store_writer import write_rows

HERE = os.path.dirname(os.path.abspath(__file__))
SITES = ["model.layers.1", "model.layers.2"]


def batches(n=5, seed=0):
    return [tokens(3, 10, seed=seed + i) for i in range(n)]


def captured(model, site, bs, skip_first=1):
    """The activations at ``site`` for every batch, positions after the first, in order."""
    rows = []
    h = model.get_submodule(site).register_forward_hook(lambda m, i, o: rows.append((o[0] if isinstance(o, tuple)
                                                                                     else o)[:, skip_first:]))
    with torch.no_grad():
        for b in bs:
            model(b)
    h.remove()
    return torch.cat([r.reshape(-1, r.shape[-1]) for r in rows])


@pytest.fixture
def store_dir(tmp_path):
    model, _ = tiny_llama()
    write_store(model, SITES, batches(), tmp_path / "s", dtype=torch.float32, shard_tokens=40, progress=False)
    return tmp_path / "s", model


def test_the_store_holds_the_model_activations(store_dir):
    folder, model = store_dir
    store = ActivationStore(folder)
    assert store.complete and store.sites == {s: 32 for s in SITES} and len(store) == 5 * 3 * 9
    for site in SITES:
        assert torch.equal(store.tensor(site), captured(model, site, batches()))
    m = json.load(open(folder / "manifest.json"))
    assert [s["tokens"] for s in m["shards"]] == [54, 54, 27]       # shards end at batch boundaries
    from safetensors import safe_open                             # any safetensors reader reads a shard
    with safe_open(str(folder / m["shards"][0]["file"]), framework="pt") as f:
        assert sorted(f.keys()) == SITES and f.get_tensor(SITES[0]).shape == (54, 32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_stores_and_excluded_tokens(tmp_path, dtype):
    model, _ = tiny_llama()
    bs = batches(3)
    bs[0][0, 4] = 7                                                 # token 7 is excluded below
    write_store(model, SITES[0], bs, tmp_path / "s", dtype=dtype, skip_first=0, exclude_token_ids=[7],
                progress=False)
    store = ActivationStore(tmp_path / "s")
    want = captured(model, SITES[0], bs, skip_first=0)
    keep = torch.cat(bs).reshape(-1) != 7
    assert store.dtype == dtype and store.d_in == 32
    assert torch.equal(store.tensor(dtype=dtype), want[keep].to(dtype))


def test_batches_shuffle_deterministically_and_cover_every_row(store_dir):
    store = ActivationStore(store_dir[0])
    rows = store.tensor(SITES[1])
    plain = torch.cat(list(store.batches(16, site=SITES[1], shuffle=False)))
    assert torch.equal(plain, rows)
    a = list(store.batches(16, site=SITES[1], seed=3, buffer_mb=0.01))
    b = list(store.batches(16, site=SITES[1], seed=3, buffer_mb=0.01))
    c = torch.cat(list(store.batches(16, site=SITES[1], seed=4, buffer_mb=0.01)))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    a = torch.cat(a)
    assert not torch.equal(a, rows) and not torch.equal(a, c)
    key = (lambda t: t[torch.argsort(t[:, 0])])
    assert torch.equal(key(a), key(rows)) and torch.equal(key(c), key(rows))   # a permutation of the rows
    assert [x.shape[0] for x in store.batches(16, site=SITES[1])][:-1] == [16] * (len(rows) // 16)
    assert all(x.shape[0] == 16 for x in store.batches(16, site=SITES[1], drop_last=True))
    two = torch.cat(list(store.batches(16, site=SITES[1], epochs=2)))
    assert two.shape[0] == 2 * len(rows)


def test_ranks_get_disjoint_equal_shares(store_dir):
    store = ActivationStore(store_dir[0])
    rows = store.tensor(SITES[0])
    parts = [torch.cat(list(store.batches(8, site=SITES[0], shuffle=False, rank=r, world_size=3))) for r in range(3)]
    assert torch.equal(torch.cat(parts), rows)
    assert [p.shape[0] for p in parts] == [45, 45, 45]


def test_damaged_shards_are_refused(store_dir, tmp_path):
    folder, _ = store_dir
    m = json.load(open(folder / "manifest.json"))
    first = folder / m["shards"][0]["file"]
    data = bytearray(first.read_bytes())
    data[-5] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum .* differs"):
        ActivationStore(folder).tensor(SITES[0])
    ActivationStore(folder, verify=False).tensor(SITES[0])        # size and header still agree
    first.write_bytes(bytes(data[:-100]))
    with pytest.raises(ShardError, match="bytes, the manifest says"):
        ActivationStore(folder, verify=False).tensor(SITES[0])
    os.remove(first)
    with pytest.raises(ShardError, match="missing"):
        ActivationStore(folder).tensor(SITES[0])


def test_bad_arguments_are_named(store_dir, tmp_path):
    folder, model = store_dir
    store = ActivationStore(folder)
    for kwargs, msg in ((dict(batch_size=0), "batch_size: expected an int >= 1"),
                        (dict(batch_size=4, rank=3, world_size=3), r"rank: expected an int in \[0, 3\)"),
                        (dict(batch_size=4, epochs=0), "epochs: expected an int >= 1 or None"),
                        (dict(batch_size=4, buffer_mb=0), "buffer_mb: expected a positive size"),
                        (dict(batch_size=4, dtype=torch.int8), "dtype: expected a floating torch dtype")):
        with pytest.raises(ValueError, match=msg):
            next(store.batches(site=SITES[0], **kwargs))
    with pytest.raises(ValueError, match="site: the store holds 2 sites"):
        next(store.batches(4))
    with pytest.raises(KeyError, match="'nope' is not in the store"):
        store.tensor("nope")
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        ActivationStore(tmp_path)
    with pytest.raises(FileExistsError, match="holds a store of other activations"):
        write_store(model, SITES[0], batches(), folder, progress=False)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        write_store(model, SITES[0], batches(), tmp_path / "x", dtype=torch.int8, progress=False)
    with pytest.raises(TypeError, match="sites: expected a module path"):
        write_store(model, [], batches(), tmp_path / "x", progress=False)
    for ratio in (0.5, float("nan"), float("inf"), True, "10"):
        with pytest.raises(ValueError, match="max_norm_ratio: expected a finite number >= 1 or None"):
            write_store(model, SITES[0], batches(), tmp_path / "x", max_norm_ratio=ratio, progress=False)


def test_massive_activations_are_left_out_at_every_site(tmp_path):
    """max_norm_ratio drops the positions whose norm at any site is above that multiple of the
    batch's median (here made 100x at the first site only): the rows of both sites stay aligned."""
    model, _ = tiny_llama()
    bs = batches(3)
    massive = {(0, 0, 4), (0, 2, 7), (2, 1, 3)}                    # (batch, row, position)
    calls = []

    def inflate(mod, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        n = len(calls)
        calls.append(n)
        for b, r, t in massive:
            if b == n:
                hidden[r, t] *= 100.0
        return output
    handle = model.get_submodule(SITES[0]).register_forward_hook(inflate)
    try:
        write_store(model, SITES, bs, tmp_path / "s", max_norm_ratio=10.0, progress=False)
        want = {}
        for site in SITES:                                          # (each pass inflates the same rows)
            calls.clear()
            want[site] = captured(model, site, bs)
    finally:
        handle.remove()
    keep = torch.ones(3, 3, 10, dtype=torch.bool)
    for b, r, t in massive:
        keep[b, r, t] = False
    keep = keep[:, :, 1:].reshape(-1)                               # (skip_first=1, as captured)
    store = ActivationStore(tmp_path / "s")
    assert store.n_tokens == int(keep.sum()) == 3 * 3 * 9 - 3
    for site in SITES:
        assert torch.equal(store.tensor(site, dtype=torch.bfloat16), want[site][keep].to(torch.bfloat16))
    assert json.load(open(tmp_path / "s" / "manifest.json"))["source"]["max_norm_ratio"] == 10.0


def test_a_writer_killed_mid_run_leaves_whole_shards_and_a_rerun_completes(tmp_path):
    writer = [sys.executable, os.path.join(HERE, "store_writer.py")]
    subprocess.run(writer + [str(tmp_path / "ref"), "0"], check=True, capture_output=True, timeout=300)
    ref = ActivationStore(tmp_path / "ref")
    out = tmp_path / "killed"
    proc = subprocess.Popen(writer + [str(out), "0.4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240                     # a guard against a hang, not a speed limit
        while time.monotonic() < deadline:
            try:
                if len(json.load(open(out / "manifest.json"))["shards"]) >= 2:
                    break
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = ActivationStore(out)
    assert not partial.complete and 2 <= len(partial.manifest["shards"]) < 4
    n = len(partial)
    for site in ref.sites:                                    # what is listed reads whole and verified
        assert torch.equal(partial.tensor(site), ref.tensor(site)[:n])
    # What a kill at other moments leaves: a shard written but never listed, a half-written file.
    (out / "shard-000007.safetensors").write_bytes(b"half a shard")
    (out / "shard-000008.safetensors.tmp").write_bytes(b"partial")
    res = subprocess.run(writer + [str(out), "0"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "written" in res.stdout, res.stderr[-2000:]
    done = ActivationStore(out)
    assert done.complete and done.manifest["shards"] == ref.manifest["shards"]
    for site in ref.sites:
        assert torch.equal(done.tensor(site), ref.tensor(site))
    assert sorted(os.listdir(out)) == sorted(["manifest.json"] + [s["file"] for s in ref.manifest["shards"]])


def test_train_and_evaluate_read_a_store(tmp_path):
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(3000, 16, generator=g)
    store = write_rows(tmp_path / "s", acts, shard_tokens=1000)
    assert torch.equal(store.tensor(), acts)
    sae = sn.train(store, architecture="topk", d_sae=32, k=4, steps=20, batch_size=256, progress=False)
    assert sae.d_in == 16
    assert sn.evaluate(sae, store) == pytest.approx(sn.evaluate(sae, acts), rel=1e-9)


@pytest.mark.skipif(bool(smollm2.available()), reason=smollm2.available() or "-")
def test_cli_caches_smollm2_activations(tmp_path, capsys):
    from sae_native.cli import main
    (tmp_path / "corpus.txt").write_text("The Golden Gate Bridge is in San Francisco.\nCats sleep a lot.\n" * 4)
    args = ["cache", "--site", smollm2.SITE, "--texts", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "acts"),
            "--seq-len", "8", "--batch-size", "2", "--shard-tokens", "20", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "MB/s" in out
    store = ActivationStore(tmp_path / "acts")
    assert store.complete and store.d_in == 576 and store.dtype == torch.bfloat16 and len(store) > 0
    assert main(args) == 0 and "already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args[:-1] + ["--dtype", "float32", "--no-progress"])    # other activations in the same folder
    # --max-norm-ratio 1 leaves out every token above its batch's median norm
    halved = ["cache", "--site", smollm2.SITE, "--texts", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "b"),
              "--seq-len", "8", "--batch-size", "2", "--no-progress", "--max-norm-ratio", "1"]
    assert main(halved) == 0
    few = ActivationStore(tmp_path / "b")
    assert 0 < len(few) < len(store) and json.load(open(tmp_path / "b" / "manifest.json"))["source"]["max_norm_ratio"] == 1
    with pytest.raises(SystemExit):
        main(halved[:-1] + ["0.5"])
    assert "max_norm_ratio: expected a finite number >= 1" in capsys.readouterr().err
