"""What tests/test_processes.py runs in child processes (a module, so spawned children import it).

Each ``main_*`` is run as ``python tests/process_workers.py NAME [ARGS]`` and prints one line the
test reads; exit code 0 means the check inside passed.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import torch

import sae_native as sn


def small_sae(activation: str = "topk", d_in: int = 64, d_sae: int = 512) -> "sn.SAE":
    g = torch.Generator().manual_seed(0)
    return sn.SAE(torch.randn(d_in, d_sae, generator=g) / 8, torch.zeros(d_sae), torch.randn(d_sae, d_in,
                  generator=g) / 8, torch.zeros(d_in), activation=activation,
                  k=8 if activation == "topk" else None,
                  threshold=torch.full((d_sae,), 0.5) if activation == "jumprelu" else None)


class EncodeDataset(torch.utils.data.Dataset):
    """Each item is the encode of one batch: the DataLoader-worker case that used to hang."""

    def __init__(self, sae, xs):
        self.sae, self.xs = sae, xs

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.sae.encode(self.xs[i]).indices


def main_dataloader(method: str) -> None:
    sae = small_sae()
    xs = torch.randn(6, 300, 64, generator=torch.Generator().manual_seed(1))
    sae.encode(xs[0])                                  # the parent's thread team is up and warm
    torch.randn(500, 500) @ torch.randn(500, 500)      # and torch's
    loader = torch.utils.data.DataLoader(EncodeDataset(sae, xs), batch_size=None, num_workers=2,
                                         multiprocessing_context=method)
    got = list(loader)
    ok = all(torch.equal(g, sae.encode(x).indices) for g, x in zip(got, xs))
    print(f"dataloader {method}: {len(got)} batches, equal={ok}")
    sys.exit(0 if ok and len(got) == len(xs) else 1)


def main_fork() -> None:
    """A child forked after the parent ran parallel kernels (on torch's OpenMP team or our pool)
    encodes correctly, and can set its own thread count."""
    sae = small_sae("jumprelu")
    x = torch.randn(400, 64, generator=torch.Generator().manual_seed(2))
    want = sae.encode(x)
    pid = os.fork()
    if pid == 0:
        # (Compared through numpy: torch's own parallel ops, torch.equal among them, hang in a forked
        # child unless torch.set_num_threads(1) is called there, as DataLoader workers do.)
        code = 1
        try:
            one = sae.encode(x)
            sn.set_num_threads(2)
            two = sae.encode(x)
            code = 0 if all(np.array_equal(a.indices.numpy(), want.indices.numpy()) and
                            np.array_equal(a.values.numpy(), want.values.numpy()) for a in (one, two)) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    print(f"fork: child status {status}")
    sys.exit(0 if ok else 1)


def main_interrupt(activation: str) -> None:
    """Ctrl-C 0.5 s into an encode that takes about a minute raises KeyboardInterrupt from it;
    the package works afterwards."""
    d_in, d_sae = 256, 16384
    sae = small_sae(activation, d_in, d_sae)
    x = torch.randn(16384, d_in, generator=torch.Generator().manual_seed(3))
    sae.encode(x[:8])
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        sae.encode(x)
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
    after = time.monotonic() - start
    small = sae.encode(x[:4])
    sane = small.values.shape[0] == 4 and bool(torch.isfinite(small.values).all())
    print(f"{outcome} after {after:.2f} s; encode afterwards sane={sane}")
    sys.exit(0 if outcome == "interrupted" and sane else 1)


if __name__ == "__main__":
    globals()["main_" + sys.argv[1]](*sys.argv[2:])
