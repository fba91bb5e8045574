"""One rank of the multi-process tests in tests/test_distributed.py (gloo on 127.0.0.1).

    python tests/distributed_worker.py CASE RANK WORLD PORT DIR

Writes what it computed (or the error it raised) to DIR/rank{RANK}.pt; the test compares it with
the unsharded SAE in its own process. The SAEs and inputs come from ``case_sae`` / ``case_input``,
which the test imports, so both sides build the same ones.
"""
from __future__ import annotations

import datetime
import os
import sys
import traceback

import torch

D_IN, D_SAE, K, N = 13, 37, 5, 29
# uneven latent ranges, one narrower than k (it sends all of its latents)
SIZES = {2: [11, 26], 3: [3, 21, 13], 4: [9, 9, 9, 10]}


def case_sae(activation: str):
    """A small SAE with exact ties: integer-valued weights, and a row (x = b_dec) whose
    pre-activations are all b_enc: -1 but for two latents, so a TopK row keeps zero-valued picks."""
    import sae_native as sn
    g = torch.Generator().manual_seed({"topk": 1, "jumprelu": 2, "relu": 3}[activation])
    W_enc = torch.randint(-3, 4, (D_IN, D_SAE), generator=g).float()
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    b_enc = torch.full((D_SAE,), -1.0)
    b_enc[[4, 30]] = 2.0
    b_dec = torch.randint(-2, 3, (D_IN,), generator=g).float()
    threshold = torch.rand(D_SAE, generator=g) * 3 if activation == "jumprelu" else None
    return sn.SAE(W_enc, b_enc, W_dec, b_dec, activation=activation, k=K if activation == "topk" else None,
                  threshold=threshold, apply_b_dec_to_input=activation != "jumprelu")


def case_input(seed: int = 0):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randint(-2, 3, (N, D_IN), generator=g).float()
    x[3] = case_sae("topk").b_dec          # pre-activations = b_enc: 35 latents tied at -1
    x[5] = x[3] + x[0] / 64            # 2 positive latents, the rest distinct negatives: TopK
                                           # picks the largest of those as zero values
    x[7] = x[6]                            # a repeated row
    return x


CLAMP = {2: 4.0, 30: -1.5, 36: 0.0}
# Data-parallel training against one process: the same global batches of 64 rows, AuxK active
# (dead_tokens small), BatchTopK past its TopK phase.
TRAIN_COMMON = dict(d_sae=D_SAE, batch_size=64, steps=12, seed=3, holdout=0.1)
TRAIN_RUNS = {"topk": dict(k=K, dead_tokens=128), "batchtopk": dict(k=3.5, topk_warmup=0.25, dead_tokens=128),
              "relu": {}, "jumprelu": {}}

LATENT_RUNS = {"topk": dict(k=K, dead_tokens=128), "relu": {}, "jumprelu": {}}
RESUMED_STEPS = 15


def hook_tokens():
    g = torch.Generator().manual_seed(7)
    return torch.randint(3, 128, (5, 9), generator=g)


def train_data():
    from sae_native.training.synthetic import superposition
    return superposition(n=900, d=D_IN, n_features=40, l0=3.0, seed=4)[0]


def run(case: str, rank: int, world: int, out: dict, tmp: str) -> None:
    import sae_native as sn
    from sae_native import distributed as snd
    if case == "encode":
        for activation in ("topk", "jumprelu", "relu"):
            sharded = snd.shard(case_sae(activation), sizes=SIZES[world])
            x = case_input()
            codes = sharded.encode(x)
            out[activation] = {
                "range": sharded.shard_range, "values": codes.values, "indices": codes.indices,
                "codes3d": sharded.encode(x.view(1, N, D_IN)).indices,
                "empty": sharded.encode(x[:0]).values.shape,
                "decode_width0": sharded.decode((torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.int64))),
                "decode_rows0": sharded.decode(sharded.encode(x[:0])).shape,
                "decode": sharded.decode(codes), "call": sharded(x),
                "steer": sharded.steer(x, CLAMP), "steer_no_error": sharded.steer(x, CLAMP, keep_error=False),
                "steer_scale_active": sharded.steer(x, {2: 3.0, 30: 0.5}, mode="scale", where="active")}
            try:
                sharded.encode(torch.zeros(4, D_IN + 1))
            except ValueError as e:
                out[activation]["bad_width"] = str(e)
    elif case == "mesh":
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("data", "latent"))
        replica = mesh.get_local_rank("data")
        x = case_input(seed=replica)                     # each data-parallel replica its own batch
        for activation in ("topk", "jumprelu"):
            sharded = snd.shard(case_sae(activation), mesh)
            codes = sharded.encode(x)
            out[activation] = {"replica": replica, "range": sharded.shard_range, "values": codes.values,
                               "indices": codes.indices, "decode": sharded.decode(codes)}
        # training on the same mesh: 2 data-parallel replicas of 2 latent shards
        sae = sn.train(train_data(), architecture="topk", progress=False, latent_shards=2, **TRAIN_COMMON,
                       **TRAIN_RUNS["topk"])
        out["train"] = {"range": sae.shard_range, "W_enc": sae.local.W_enc, "W_dec": sae.local.W_dec,
                        "b_dec": sae.local.b_dec}
    elif case == "save":
        sae = case_sae("jumprelu")
        sae.metadata["hook_name"] = "blocks.3.hook_resid_post"
        snd.shard(sae, sizes=SIZES[world]).save(os.path.join(tmp, "ckpt"))
        try:
            snd.shard(sae).save(os.path.join(tmp, "ckpt"))
        except FileExistsError as e:
            out["again"] = str(e)
    elif case == "load":
        sharded = snd.load_shard(os.path.join(tmp, "ckpt"))
        x = case_input()
        codes = sharded.encode(x)
        out["load"] = {"range": sharded.shard_range, "values": codes.values, "indices": codes.indices,
                       "hook_name": sharded.metadata.get("hook_name")}
        sharded.save(os.path.join(tmp, "ckpt"), overwrite=True)      # re-saved as `world` shards
    elif case == "train":
        for arch, kw in TRAIN_RUNS.items():
            sae = sn.train(train_data(), architecture=arch, progress=False, log_path=os.path.join(tmp, f"{arch}.jsonl"),
                           **TRAIN_COMMON, **kw)
            out[arch] = {name: getattr(sae, name) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
            out[arch]["evaluated"] = "evaluation" in sae.metadata
    elif case == "hooks":
        from models import random_sae, tiny_llama
        model, site = tiny_llama()
        sharded = snd.shard(random_sae("topk", k=8), sizes=[40, 56])
        ids = hook_tokens()
        with sn.record(model, site, sharded) as rec:
            model(ids)
        out["recorded"] = rec.codes[-1].indices
        with sn.steer(model, site, sharded, {3: 5.0, 70: -2.0}):
            out["steered"] = model(ids).logits
        with sn.splice(model, site, sharded):
            out["spliced"] = model(ids).logits
        stats = sn.feature_stats(model, site, sharded, [ids[:2], ids[2:]], top_examples=3, progress=False)
        out["spmd_stats"] = stats
        # the corpus split across the ranks, each rank the full SAE: the whole corpus's statistics
        mine = [ids[:2]] if rank == 0 else [ids[2:]]     # (the same batches as the one-process run)
        out["split_stats"] = sn.feature_stats(model, site, random_sae("topk", k=8), mine, top_examples=3,
                                              progress=False, group="world")
    elif case == "train_latent":
        for arch, kw in LATENT_RUNS.items():
            ckpt = os.path.join(tmp, f"ckpt-{arch}")
            sae = sn.train(train_data(), architecture=arch, progress=False, latent_shards=world, checkpoint_dir=ckpt,
                           **TRAIN_COMMON, **kw)
            out[arch] = {"range": sae.shard_range, "type": type(sae).__name__, "global_max": sae.stats.max,
                         **{n: getattr(sae.local, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}}
            resumed = sn.Trainer.from_checkpoint(ckpt)
            out[arch]["resumed_equal"] = torch.equal(resumed.sae().local.W_dec, sae.local.W_dec) and \
                resumed.step_count == TRAIN_COMMON["steps"]
    elif case == "resume3":                     # the 2-shard run of "train_latent", resumed on 3 shards
        for arch, kw in LATENT_RUNS.items():
            sae = sn.train(train_data(), architecture=arch, progress=False, resume=os.path.join(tmp, f"ckpt-{arch}"),
                           latent_shards=3, **dict(TRAIN_COMMON, steps=RESUMED_STEPS), **kw)
            out[arch] = {"range": sae.shard_range, "W_enc": sae.local.W_enc, "W_dec": sae.local.W_dec,
                         "b_dec": sae.local.b_dec}
    elif case == "mismatch":
        sae = case_sae("topk")
        if rank == 1:
            sae = sn.SAE(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, activation="topk", k=K + 1)
        try:
            snd.shard(sae)
        except ValueError as e:
            out["shard_error"] = str(e)
        sharded = snd.shard(case_sae("topk"))
        try:
            sharded.encode(case_input()[: 10 + rank])           # the ranks pass different batches
        except ValueError as e:
            out["encode_error"] = str(e)
    elif case == "dead":
        sharded = snd.shard(case_sae("topk"))
        if rank == 1:
            os._exit(0)                                          # dies without a word
        try:
            sharded.encode(case_input())
        except snd.DistributedError as e:
            out["dead_error"] = str(e)
    else:
        raise ValueError(f"unknown case {case!r}")


def main() -> None:
    case, rank, world, port, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    import torch.distributed as dist
    import sae_native as sn
    sn.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    out: dict = {}
    try:
        run(case, rank, world, out, tmp)
    except BaseException:
        out["crash"] = traceback.format_exc()
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    if case != "dead":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
