"""Sharded encode and training on this machine's cores: bytes exchanged, and wall-clock (issue 14).

    python benchmarks/distributed.py [--world 2] [--out benchmarks/results/distributed.json]

Launches ``world`` gloo ranks on 127.0.0.1, one thread each, and times, against one process with
``world`` threads and with one:
- the sharded TopK encode (N 2048, d_in 768, d_sae 24576, k 32, fp32), and the bytes each rank
  receives per token, against gathering the dense pre-activations (what a latent-parallel encode
  without the candidate exchange would move);
- a training step (topk, batch 4096 x 768 -> 24576) data-parallel and with latent shards.
On one machine the ranks share its memory bandwidth and cores: this measures the overhead of the
exchange, not the scaling across devices. Medians of ``--repeats``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

N, D_IN, D_SAE, K = 2048, 768, 24576, 32
TRAIN_BATCH, TRAIN_STEPS = 4096, 6


def make_sae():
    import sae_native as sn
    g = torch.Generator().manual_seed(0)
    return sn.SAE(torch.randn(D_IN, D_SAE, generator=g) / D_IN ** 0.5, torch.zeros(D_SAE),
                  torch.randn(D_SAE, D_IN, generator=g) / D_IN ** 0.5, torch.zeros(D_IN), activation="topk", k=K)


def timed(fn, repeats: int) -> float:
    fn()                                                   # warm-up: packing, path choice
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_seconds(**kw) -> float:
    """Seconds per training step (the last TRAIN_STEPS - 1 steps of a run)."""
    import sae_native as sn
    x = torch.randn(TRAIN_BATCH * TRAIN_STEPS, D_IN, generator=torch.Generator().manual_seed(1))
    trainer = sn.Trainer(D_IN, sn.TrainConfig(architecture="topk", d_sae=D_SAE, k=K, batch_size=TRAIN_BATCH,
                                              holdout=0.0, **kw.pop("cfg", {})), **kw)
    trainer.step(trainer.dp.share(x[:TRAIN_BATCH]), TRAIN_STEPS)
    t0 = time.perf_counter()
    for s in range(1, TRAIN_STEPS):
        trainer.step(trainer.dp.share(x[s * TRAIN_BATCH:(s + 1) * TRAIN_BATCH]), TRAIN_STEPS)
    return (time.perf_counter() - t0) / (TRAIN_STEPS - 1)


def rank_main(rank: int, world: int, port: int, repeats: int, out: dict) -> None:
    import torch.distributed as dist
    import sae_native as sn
    torch.set_num_threads(1)
    sn.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    sharded = sn.distributed.shard(make_sae())
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(2))
    encode = timed(lambda: sharded.encode(x), repeats)
    dp = train_seconds()
    latent = train_seconds(cfg=dict(latent_shards=world))
    if rank == 0:
        out.update(sharded_encode_s=encode, data_parallel_step_s=dp, latent_sharded_step_s=latent)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    import sae_native as sn
    from sae_native.bench.machine import describe
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(2))
    sae = make_sae()
    res = {}
    for threads in sorted({1, args.world}):
        torch.set_num_threads(threads)
        sn.set_num_threads(threads)
        res[f"one_process_{threads}_threads_encode_s"] = timed(lambda: sae.encode(x), args.repeats)
        res[f"one_process_{threads}_threads_step_s"] = train_seconds(group=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shared = mp.Manager().dict()
    mp.spawn(rank_main, args=(args.world, port, args.repeats, shared), nprocs=args.world)
    res.update(shared)
    W = args.world
    # Per token, each rank receives the other ranks' k (key, value, index) float64 triples; the
    # dense alternative gathers every other rank's fp32 pre-activations.
    res["bytes_per_token_received"] = (W - 1) * K * 3 * 8
    res["dense_bytes_per_token_received"] = (W - 1) * (D_SAE // W) * 4
    report = {"machine": describe(torch.device("cpu")), "shape": dict(N=N, d_in=D_IN, d_sae=D_SAE, k=K), "world": W,
              "results": res}
    print(json.dumps(report, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
