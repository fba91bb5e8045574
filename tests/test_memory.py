"""Fused encode never materialises [N, d_sae]: peak resident memory, measured in a subprocess."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(r"""
    import json, os, re, resource, sys
    import torch
    import sae_native as sn

    activation = sys.argv[1]
    n, d_in, d_sae, k = 8192, 8, 32768, 32          # dense pre-activations: 8192 * 32768 * 4 B = 1 GiB
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5    # pre-activations ~ N(0, 1)
    b_enc = torch.full((d_sae,), -3.0) if activation == "jumprelu" else torch.zeros(d_sae)  # ~8 active per row
    W_dec, b_dec = torch.randn(d_sae, d_in, generator=g), torch.zeros(d_in)
    thr = torch.full((d_sae,), 0.5) if activation == "jumprelu" else None
    sae = sn.SAE(W_enc, b_enc, W_dec, b_dec, activation=activation, k=k if activation == "topk" else None,
                 threshold=thr)
    x = torch.randn(n, d_in, generator=g)
    sae.encode(x[:64])                                 # warm up allocators and the thread pool

    def peak_kib():
        try:  # Linux: the peak since the last reset below
            return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current resident size
    except OSError:
        pass
    before = peak_kib()
    codes = sae.encode(x)
    x_hat = sae.decode(codes)
    y = sae.steer(x, {5: 3.0})
    after = peak_kib()
    print(json.dumps({"growth_mib": (after - before) / 1024, "dense_mib": n * d_sae * 4 / 2**20,
                      "width": codes.values.shape[1], "mean_count": float(codes.counts.float().mean())}))
""")


@pytest.mark.parametrize("path", ["own", "gemm"])
@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_encode_peak_memory_far_below_dense(activation, path):
    env = dict(os.environ, OMP_NUM_THREADS="2", SAE_NATIVE_ENCODE=path)
    out = subprocess.run([sys.executable, "-c", SCRIPT, activation], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["dense_mib"] >= 1024
    # Codes are n * width * 12 B (a few MiB here); allow allocator slack, nothing near 1 GiB.
    codes_mib = 8192 * r["width"] * 12 / 2**20
    assert r["growth_mib"] < 64 + 3 * codes_mib, r
    assert r["growth_mib"] < r["dense_mib"] / 8, r
