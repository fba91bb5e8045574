"""A store writer run as its own process, so a test can kill -9 it mid-run (tests/test_store.py),
and ``write_rows``, which writes given activations as a store (for tests that need known rows).

    python tests/store_writer.py OUT SLEEP_S

Writes the activations of a tiny seeded Llama at two sites for 12 fixed token batches, 3 batches
per shard; SLEEP_S seconds of sleep per forward leave the killer time to strike mid-run.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import tiny_llama  # noqa: E402

from sae_native.store import ActivationStore, write_store  # noqa: E402
from sae_native.store import manifest as mf, shards  # noqa: E402

SITES = ["model.layers.1", "model.layers.2"]


def batches():
    for i in range(12):
        yield torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(100 + i))


def write_rows(folder, acts: torch.Tensor, shard_tokens: int) -> ActivationStore:
    """``acts`` [N, d] as a complete one-site ("acts") store in ``folder``, shard by shard as
    write_store writes them."""
    os.makedirs(folder)
    m = mf.new({"acts": acts.shape[1]}, acts.dtype, {})
    for i, start in enumerate(range(0, acts.shape[0], shard_tokens)):
        rows = acts[start:start + shard_tokens]
        name = mf.shard_name(i)
        size, crc = shards.write(os.path.join(folder, name), {"acts": rows})
        m["shards"].append({"file": name, "tokens": rows.shape[0], "bytes": size, "crc32": crc})
    m["tokens"], m["complete"] = acts.shape[0], True
    mf.write(os.fspath(folder), m)
    return ActivationStore(folder)


def main() -> None:
    out, sleep_s = sys.argv[1], float(sys.argv[2])
    model, _ = tiny_llama()
    if sleep_s > 0:
        model.register_forward_pre_hook(lambda m, a: time.sleep(sleep_s))
    write_store(model, SITES, batches(), out, dtype=torch.bfloat16, shard_tokens=3 * 2 * 8, source={"test": 1},
                progress=False)
    print("written")


if __name__ == "__main__":
    main()
