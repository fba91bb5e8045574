"""Rows with non-finite pre-activations (a NaN or inf token): the nan= rule of encode.

- "compact" (default): TopK codes as the dense formula gives them (k wide anyway); a JumpReLU/ReLU
  row keeps only its lowest non-finite latent, so one bad token cannot widen every row's codes.
- "propagate": every active latent, as the dense formula has it (a NaN row is d_sae wide).
- "raise": a ValueError naming the first such row.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

import sae_native as sn
from helpers import check_threshold_codes, make_pair, randn


def _with_bad_rows(x, rows, value=math.nan):
    x = x.clone()
    for r in rows:
        x[r, r % x.shape[1]] = value
    return x


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_compact_keeps_one_entry_for_a_bad_row(activation, value):
    sae, ref = make_pair(12, 300, activation, seed=3)
    clean = randn(9, 12, seed=4)
    x = _with_bad_rows(clean, [2, 7], value)
    codes = sae.encode(x)
    ok = torch.tensor([r not in (2, 7) for r in range(9)])
    assert codes.k == int(sae.encode(clean[ok]).counts.max())   # as wide as the good rows need
    for r in (2, 7):
        assert int(codes.counts[r]) == 1
        assert not math.isfinite(float(codes.values[r, 0]))
        # the lowest latent whose value is non-finite, as the dense formula computes it
        pre = ref.pre(x[r:r + 1])[0]
        thr = ref.d(ref.threshold) if ref.threshold is not None else torch.zeros_like(pre)
        active = torch.isnan(pre) | ((pre > 0) & (pre > thr))
        lowest = int((active & ~torch.isfinite(pre)).nonzero()[0, 0])
        assert int(codes.indices[r, 0]) == lowest and (codes.indices[r, 1:] == -1).all()
    good = sn.SparseCodes(codes.values[ok], codes.indices[ok], 300, codes.counts[ok])
    check_threshold_codes(good, ref, x[ok])
    recon = sae.decode(codes)
    assert not torch.isfinite(recon[2]).all() and torch.isfinite(recon[ok]).all()


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_propagate_keeps_every_active_latent(activation):
    sae, ref = make_pair(12, 300, activation, seed=3)
    x = _with_bad_rows(randn(5, 12), [1])
    codes = sae.encode(x, nan="propagate")
    assert codes.k == 300 and int(codes.counts[1]) == 300 and torch.isnan(codes.values[1]).all()
    assert torch.isnan(codes.to_dense()[1]).all()


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu", "groupmax"])
def test_raise_names_the_row(activation):
    sae, _ = make_pair(12, 60, activation, 4)
    x = randn(2, 3, 12)
    sae.encode(x, nan="raise")                      # finite: no error
    x[1, 2, 5] = math.nan
    with pytest.raises(ValueError, match=r"x: row \[1, 2\] \(of leading shape \[2, 3\]\) gives non-finite"):
        sae.encode(x, nan="raise")
    with pytest.raises(ValueError, match=r"nan: expected one of \('compact', 'propagate', 'raise'\)"):
        sae.encode(x, nan="ignore")
    with pytest.raises(ValueError, match="x: row"):
        sn.functional.encode(x, sae.W_enc, sae.b_enc, activation=activation, k=sae.k, threshold=sae.threshold,
                             nan="raise")


def test_topk_rows_are_the_same_under_every_rule():
    sae, _ = make_pair(12, 60, "topk", 4)
    x = _with_bad_rows(randn(6, 12), [0, 3])
    a, b = sae.encode(x), sae.encode(x, nan="propagate")
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values.isnan(), b.values.isnan())


def test_one_bad_row_cannot_raise_peak_memory():
    """The issue's case: one NaN row in 5000 x 16384 JumpReLU latents gave 938 MiB of codes and a
    1.6 GB peak. Stated bound: the codes of a batch are no wider than its finite rows need, plus
    one entry; here the peak grows by less than twice the codes of the clean batch plus 64 MiB."""
    code = """
import resource, torch, sae_native as sn
torch.manual_seed(0)
d_in, d_sae, n = 64, 16384, 5000
sae = sn.SAE(torch.randn(d_in, d_sae) / 8, torch.zeros(d_sae), torch.randn(d_sae, d_in) / 8, torch.zeros(d_in),
             activation="jumprelu", threshold=torch.full((d_sae,), 2.5))
x = torch.randn(n, d_in)
clean = sae.encode(x)
clean_bytes = clean.values.numel() * 16
x[17, 3] = float("nan")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
codes = sae.encode(x)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(codes.k, clean.k, grew, clean_bytes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr[-2000:]
    width, clean_width, grew, clean_bytes = map(int, out.stdout.split())
    assert width == max(clean_width, 1)
    assert grew < 2 * clean_bytes + 64 * 2 ** 20, f"peak grew by {grew / 2**20:.0f} MiB"
