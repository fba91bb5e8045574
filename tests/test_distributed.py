"""Latent-sharded SAEs (issue 14): real gloo processes on 127.0.0.1 (tests/distributed_worker.py),
compared with the unsharded SAE in this process. Few, small, bounded processes: CI has 2 cores."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import sae_native as sn
from sae_native.distributed import merge
from sae_native import reference
from sae_native.cli import main as cli_main

sys.path.insert(0, os.path.dirname(__file__))
from distributed_worker import (CLAMP, N, SIZES, TRAIN_COMMON, TRAIN_RUNS, case_input, case_sae,  # noqa: E402
                                LATENT_RUNS, RESUMED_STEPS, hook_tokens, train_data)

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
HANG_GUARD_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(case: str, world: int, tmp) -> list:
    """Runs ``world`` ranks of ``case``; returns each rank's results (a dict)."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, WORKER, case, str(r), str(world), str(port), str(tmp)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=HANG_GUARD_S)[0].decode(errors="replace"))
    finally:
        for p in procs:
            p.kill()
    results = []
    for r in range(world):
        path = os.path.join(tmp, f"rank{r}.pt")
        if case == "dead" and r == 1:
            results.append(None)
            continue
        assert os.path.exists(path), f"rank {r} wrote nothing:\n" + "\n".join(logs)
        res = torch.load(path, weights_only=False)
        os.remove(path)
        assert "crash" not in res, f"rank {r}:\n{res['crash']}\n" + "\n".join(logs)
        results.append(res)
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_codes_are_bit_identical_and_decode_steer_match(world, tmp_path):
    results = launch("encode", world, tmp_path)
    x = case_input()
    for activation in ("topk", "jumprelu", "relu"):
        sae = case_sae(activation)
        ref = sae.encode(x)
        ranges = [res[activation]["range"] for res in results]
        bounds = [0] + list(torch.tensor(SIZES[world]).cumsum(0).tolist())
        assert ranges == list(zip(bounds[:-1], bounds[1:]))
        for res in results:
            got = res[activation]
            assert torch.equal(got["values"], ref.values) and torch.equal(got["indices"], ref.indices), activation
            assert torch.equal(got["codes3d"], ref.indices.view(1, N, -1))
            assert got["empty"][0] == 0 and tuple(got["decode_rows0"]) == (0, 13)
            assert torch.equal(got["decode_width0"], sae.b_dec.expand(3, -1))
            assert got["bad_width"] == "x: expected shape [..., 13], got [4, 14]"
            torch.testing.assert_close(got["decode"], sae.decode(ref), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got["call"], sae(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got["steer"], sae.steer(x, CLAMP), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got["steer_no_error"], sae.steer(x, CLAMP, keep_error=False), rtol=1e-5,
                                       atol=1e-5)
            torch.testing.assert_close(got["steer_scale_active"],
                                       sae.steer(x, {2: 3.0, 30: 0.5}, mode="scale", where="active"),
                                       rtol=1e-5, atol=1e-5)
    # the tie row: 35 latents tied at pre-activation -1 behind the two positive ones
    topk = case_sae("topk").encode(x)
    assert topk.indices[3].tolist()[:2] == [4, 30] and topk.values[3, 2:].eq(0).all()
    assert topk.indices[3, 2:].tolist() == [0, 1, 2]                 # the ties go to the lowest latents
    # a row whose zero-valued picks are its largest negative pre-activations, not the lowest latents
    assert topk.values[5, 2:].eq(0).all() and topk.indices[5, 2:].tolist() != [0, 1, 2]


def test_a_2d_mesh_of_replicas_and_shards_agrees(tmp_path):
    results = launch("mesh", 4, tmp_path)
    for res in results:
        for activation in ("topk", "jumprelu"):
            got = res[activation]
            sae, x = case_sae(activation), case_input(seed=got["replica"])
            ref = sae.encode(x)
            assert torch.equal(got["values"], ref.values) and torch.equal(got["indices"], ref.indices)
            torch.testing.assert_close(got["decode"], sae.decode(ref), rtol=1e-5, atol=1e-5)
    assert sorted(r["topk"]["replica"] for r in results) == [0, 0, 1, 1]
    assert {r["topk"]["range"] for r in results} == {(0, 18), (18, 37)}
    one = sn.train(train_data(), architecture="topk", progress=False, **TRAIN_COMMON, **TRAIN_RUNS["topk"])
    for r in results:                       # 2 replicas x 2 latent shards trained as one process
        a, b = r["train"]["range"]
        torch.testing.assert_close(r["train"]["W_enc"], one.W_enc[:, a:b], rtol=2e-4, atol=2e-5)
        torch.testing.assert_close(r["train"]["W_dec"], one.W_dec[a:b], rtol=2e-4, atol=2e-5)
        torch.testing.assert_close(r["train"]["b_dec"], one.b_dec, rtol=2e-4, atol=2e-5)


def test_checkpoint_round_trip_2_to_3_to_1_processes(tmp_path):
    sae, x = case_sae("jumprelu"), case_input()
    first = launch("save", 2, tmp_path)
    assert all("already holds a sharded SAE" in r["again"] for r in first)
    ckpt = tmp_path / "ckpt"
    assert sorted(os.listdir(ckpt)) == ["shard-00000-of-00002.safetensors", "shard-00001-of-00002.safetensors",
                                         "sharded.json"]
    loaded = sn.load(ckpt)                                     # one process reads it as one SAE
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name)), name
    assert loaded.activation == "jumprelu" and not loaded.apply_b_dec_to_input
    assert loaded.metadata["hook_name"] == "blocks.3.hook_resid_post"
    second = launch("load", 3, tmp_path)                      # re-sharded 2 -> 3 on load, saved as 3
    ref = sae.encode(x)
    assert [r["load"]["range"] for r in second] == [(0, 12), (12, 24), (24, 37)]
    for r in second:
        assert torch.equal(r["load"]["values"], ref.values) and torch.equal(r["load"]["indices"], ref.indices)
        assert r["load"]["hook_name"] == "blocks.3.hook_resid_post"
    assert sorted(os.listdir(ckpt)) == [f"shard-0000{r}-of-00003.safetensors" for r in range(3)] + ["sharded.json"]
    again = sn.load(ckpt)
    assert torch.equal(again.W_enc, sae.W_enc) and torch.equal(again.threshold, sae.threshold)


def test_data_parallel_training_takes_the_single_process_steps(tmp_path):
    results = launch("train", 2, tmp_path)
    for arch, kw in TRAIN_RUNS.items():
        one = sn.train(train_data(), architecture=arch, progress=False, **TRAIN_COMMON, **kw)
        for rank, res in enumerate(results):
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                want, got = getattr(one, name), res[arch][name]
                if want is None:
                    assert got is None
                else:
                    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5, msg=f"{arch} {name} rank {rank}")
            assert res[arch]["evaluated"] == (rank == 0)        # rank 0 evaluates the held-out rows
        logged = (tmp_path / f"{arch}.jsonl").read_text().splitlines()
        # one log, rank 0's: steps 10 and 12, and the held-out evaluation at the end
        assert [json.loads(line)["step"] for line in logged] == [10, 12, 12] and "eval/fvu" in logged[2]


def test_latent_sharded_training_takes_the_single_process_steps(tmp_path):
    results = launch("train_latent", 2, tmp_path)
    for arch, kw in LATENT_RUNS.items():
        one = sn.train(train_data(), architecture=arch, progress=False, **TRAIN_COMMON, **kw)
        for res in results:
            got = res[arch]
            a, b = got["range"]
            assert got["type"] == "ShardedSAE" and got["resumed_equal"]
            for name, want in (("W_enc", one.W_enc[:, a:b]), ("b_enc", one.b_enc[a:b]), ("W_dec", one.W_dec[a:b]),
                               ("b_dec", one.b_dec), ("threshold", None if one.threshold is None else one.threshold[a:b])):
                if want is None:
                    assert got[name] is None
                else:
                    torch.testing.assert_close(got[name], want, rtol=2e-4, atol=2e-5, msg=f"{arch} {name}")
            torch.testing.assert_close(got["global_max"], one.stats.max, rtol=2e-4, atol=2e-5)
        saved = sn.load(tmp_path / f"ckpt-{arch}")        # the sharded checkpoint, read whole
        torch.testing.assert_close(saved.W_dec, one.W_dec, rtol=2e-4, atol=2e-5)
        assert saved.activation == one.activation and saved.k == one.k
    # The 2-shard training state re-sharded on load: onto 3 ranks, and onto one process, both
    # continuing to step 15; and the moments agree with a one-process run's checkpoint.
    resumed = launch("resume3", 3, tmp_path)
    for arch, kw in LATENT_RUNS.items():
        ckpt = tmp_path / f"ckpt-{arch}"
        whole = sn.Trainer.from_checkpoint(str(ckpt), latent_shards=1)
        sn.train(train_data(), architecture=arch, progress=False, checkpoint_dir=str(tmp_path / "one"), **TRAIN_COMMON,
                 **kw)
        alone = sn.Trainer.from_checkpoint(str(tmp_path / "one"))
        for p_whole, p_alone in zip(whole.optimizer.state.values(), alone.optimizer.state.values()):
            torch.testing.assert_close(p_whole["exp_avg_sq"], p_alone["exp_avg_sq"], rtol=1e-3, atol=1e-9)
        assert torch.equal(whole.since_fired, alone.since_fired)
        one = sn.train(train_data(), architecture=arch, progress=False, resume=str(ckpt), latent_shards=1,
                       **dict(TRAIN_COMMON, steps=RESUMED_STEPS), **kw)
        assert one.metadata["training_steps"] == RESUMED_STEPS
        for res in resumed:
            got = res[arch]
            a, b = got["range"]
            torch.testing.assert_close(got["W_enc"], one.W_enc[:, a:b], rtol=2e-4, atol=2e-5, msg=arch)
            torch.testing.assert_close(got["W_dec"], one.W_dec[a:b], rtol=2e-4, atol=2e-5, msg=arch)
            torch.testing.assert_close(got["b_dec"], one.b_dec, rtol=2e-4, atol=2e-5, msg=arch)
        assert [r[arch]["range"] for r in resumed] == [(0, 12), (12, 24), (24, 37)]


def test_hooks_and_feature_stats_take_a_sharded_sae_and_a_split_corpus(tmp_path):
    from models import random_sae, tiny_llama
    results = launch("hooks", 2, tmp_path)
    model, site = tiny_llama()
    sae, ids = random_sae("topk", k=8), hook_tokens()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the ranks run: the model's float sums depend on the threads
    try:
        with sn.record(model, site, sae) as rec:
            model(ids)
        with torch.no_grad(), sn.steer(model, site, sae, {3: 5.0, 70: -2.0}):
            steered = model(ids).logits
        with torch.no_grad(), sn.splice(model, site, sae):
            spliced = model(ids).logits
        whole = sn.feature_stats(model, site, sae, [ids[:2], ids[2:]], top_examples=3, progress=False)
    finally:
        torch.set_num_threads(threads)
    for res in results:
        assert torch.equal(res["recorded"], rec.codes[-1].indices)
        torch.testing.assert_close(res["steered"], steered, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res["spliced"], spliced, rtol=1e-4, atol=1e-4)
        for got in (res["spmd_stats"], res["split_stats"]):
            assert got.n_tokens == whole.n_tokens == 45
            assert torch.equal(got.max, whole.max)
            torch.testing.assert_close(got.frequency, whole.frequency)
            torch.testing.assert_close(got.mean, whole.mean)
            assert torch.equal(got.top_values, whole.top_values)
            assert torch.equal(got.top_texts, whole.top_texts) and torch.equal(got.top_positions, whole.top_positions)
    assert whole.top_texts.max() >= 3                     # the second rank's texts are in the top examples


def test_ranks_that_disagree_get_the_same_clear_error(tmp_path):
    results = launch("mismatch", 2, tmp_path)
    for r in results:
        assert "the ranks disagree on shard (k: rank 0 5, rank 1 6)" in r["shard_error"]
        assert "the ranks disagree on encode (x rows: rank 0 10, rank 1 11)" in r["encode_error"]


def test_a_dead_rank_fails_the_others_naming_the_collective(tmp_path):
    results = launch("dead", 2, tmp_path)
    msg = results[0]["dead_error"]
    assert "all_gather" in msg and "encode" in msg and "rank 0 of 2" in msg


# ---- the merge, in one process, against the dense float64 definition --------------------------

@pytest.mark.parametrize("d_sae,k,sizes", [(1, 1, [1]), (7, 3, [1, 6]), (31, 4, [2, 2, 27]), (64, 17, [16, 5, 43])])
def test_merge_topk_and_threshold_match_the_dense_definition(d_sae, k, sizes):
    g = torch.Generator().manual_seed(d_sae)
    pre = torch.randint(-4, 5, (23, d_sae), generator=g).double()     # integers: many exact ties
    want_v, want_i = reference.topk_select(pre, k)
    bounds = [0] + torch.tensor(sizes).cumsum(0).tolist()
    keys, vals, idxs, tv, ti = [], [], [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        kk = min(k, b - a)
        order = reference.ranked(pre[:, a:b])[:, :kk]
        v, i = reference.listed(pre[:, a:b].gather(1, order).relu(), order)
        keys.append(torch.nn.functional.pad(torch.where(v > 0, v, pre[:, a:b].gather(1, i).clamp_max(0)),
                                            (0, k - kk), value=-float("inf")))
        vals.append(torch.nn.functional.pad(v, (0, k - kk)))
        idxs.append(torch.nn.functional.pad(i + a, (0, k - kk), value=-1))
        lv, li, _ = reference.threshold_select(pre[:, a:b], None)
        tv.append(lv)
        ti.append(torch.where(li >= 0, li + a, li))
    got_v, got_i = merge.topk(keys, vals, idxs, k)
    assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)
    want = reference.threshold_select(pre, None)
    got = merge.threshold(tv, ti, compact_nonfinite=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_merge_threshold_keeps_the_lowest_nonfinite_latent_of_the_sae():
    v = [torch.tensor([[1.0, 0.0]]), torch.tensor([[float("nan"), 2.0]]), torch.tensor([[float("inf"), 0.0]])]
    i = [torch.tensor([[0, -1]]), torch.tensor([[5, 3]]), torch.tensor([[9, -1]])]
    values, indices, counts = merge.threshold(v, i, compact_nonfinite=True)
    assert indices.tolist() == [[5]] and counts.tolist() == [1] and torch.isnan(values).all()
    values, indices, counts = merge.threshold(v, i, compact_nonfinite=False)
    assert counts.tolist() == [4] and indices.tolist() == [[5, 9, 3, 0]]


def test_shard_needs_torch_distributed_and_a_shardable_sae():
    sae = case_sae("topk")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        sn.distributed.shard(sae)
    with pytest.raises(TypeError, match="sae: expected an sn.SAE"):
        sn.distributed.shard(sae.W_enc)
    assert sn.distributed.even_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]


def test_cli_train_nproc_launches_data_parallel_ranks(tmp_path):
    acts = tmp_path / "acts.pt"
    torch.save(train_data(), acts)
    common = ["train", "--activations", str(acts), "--architecture", "topk", "--d-sae", "37", "--k", "5",
              "--steps", "12", "--batch-size", "64", "--seed", "3", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "sae_native", *common, "--out", str(tmp_path / "two"), "--nproc", "2"],
                         capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("saved the SAE") == 1                     # rank 0 reports
    assert cli_main(common + ["--out", str(tmp_path / "one")]) == 0
    a, b = sn.load(tmp_path / "two"), sn.load(tmp_path / "one")
    torch.testing.assert_close(a.W_enc, b.W_enc, rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(a.W_dec, b.W_dec, rtol=2e-4, atol=2e-5)
    shards = subprocess.run([sys.executable, "-m", "sae_native", *common, "--out", str(tmp_path / "shards"),
                             "--nproc", "2", "--latent-shards", "2"], capture_output=True, text=True,
                            timeout=HANG_GUARD_S, env=env)
    assert shards.returncode == 0 and "saved the SAE (sharded" in shards.stdout, shards.stdout + shards.stderr
    assert "training_state.shard-00001-of-00002.pt" in os.listdir(tmp_path / "shards")
    torch.testing.assert_close(sn.load(tmp_path / "shards").W_dec, b.W_dec, rtol=2e-4, atol=2e-5)
    bad = subprocess.run([sys.executable, "-m", "sae_native", *common, "--out", str(tmp_path / "bad"), "--nproc", "2",
                          "--batch-size", "63"], capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert bad.returncode != 0 and "--batch-size: data-parallel training splits each batch evenly over 2" in bad.stderr
