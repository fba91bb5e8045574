"""The amx kernel variant (csrc/amx_tile.h): off by default, and its code run everywhere as
amx_emulated (the same source on emulated tile instructions). The encode / decode / steer /
training matrix runs on both through the ``isa`` fixture where the CPU supports them; these tests
cover what that matrix does not reach: the choice, and the per-thread cache of weight tiles."""
import os
import subprocess
import sys

import pytest
import torch

import sae_native as sn
from sae_native import _C, _ops

AMX_CODE = [isa for isa in ("amx", "amx_emulated") if isa in _C.supported_isas()]


def test_the_amx_variants_are_compiled_and_never_chosen_by_default():
    if not any(f.startswith("avx512") for f in sn.build_info()["cpu_features"]):
        pytest.skip("an x86 CPU with AVX-512 runs the amx variants' code")
    assert {"amx", "amx_emulated"} <= set(_C.compiled_isas())
    supported = _C.supported_isas()
    assert supported[0] not in ("amx", "amx_emulated")          # auto picks the best measured variant
    assert ("amx" in supported) == ("amx_bf16" in sn.build_info()["cpu_features"])
    out = subprocess.run([sys.executable, "-c", "import sae_native as sn; print(sn.build_info()['cpu_isa'])"],
                         capture_output=True, text=True, env={**os.environ, "SAE_NATIVE_ISA": "amx_emulated"})
    assert out.returncode == 0 and out.stdout.strip() == "amx_emulated", out.stderr


@pytest.fixture(params=AMX_CODE or [pytest.param("amx_emulated", marks=pytest.mark.skip("no AVX-512 BF16 here"))])
def amx_isa(request):
    before = _C.cpu_isa()
    assert _C.select_isa(request.param)
    yield request.param
    _C.select_isa(before)


@pytest.mark.parametrize("d_in, d_sae", [(77, 211), (768, 1000), (32, 64), (1, 17)])
def test_new_weights_in_the_same_packed_buffer_are_read_anew(amx_isa, d_in, d_sae):
    """A thread keeps a group of panels re-laid out as weight tiles between calls; the next encode
    may find other weights at the same address (a trainer re-packs in place), and must use them."""
    g = torch.Generator().manual_seed(d_in)
    x = torch.randn(40, d_in, generator=g)
    W1, W2 = (torch.randn(d_in, d_sae, generator=g).bfloat16() for _ in range(2))
    b = torch.zeros(d_sae)
    packed = _ops.pack_encoder(W1)
    first = _ops.encode_topk(x, W1, b, None, 4, packed)
    packed.copy_(_ops.pack_encoder(W2))                  # the same memory, other weights
    got = _ops.encode_topk(x, W2, b, None, 4, packed)
    want = _ops.encode_topk(x, W2, b, None, 4, None)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    assert torch.equal(got[1], want[1]) and not torch.equal(first[1], want[1])


def test_amx_code_matches_the_avx512_bf16_variant(amx_isa):
    """Both multiply the same bf16 operands with fp32 accumulation: equal up to the order of the
    fp32 sums, at sizes with every kind of tail (d_in not a multiple of 32, odd, fewer than 8
    rows, fewer than 4 panels)."""
    if "avx512_bf16" not in _C.supported_isas():
        pytest.skip("needs the avx512_bf16 variant to compare with")
    for n, d_in, d_sae in [(1, 33, 17), (7, 31, 48), (9, 64, 65), (37, 77, 211), (16, 768, 1024)]:
        g = torch.Generator().manual_seed(n + d_in)
        x = torch.randn(n, d_in, generator=g)
        W = (torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5).bfloat16()
        b, b_dec = torch.randn(d_sae, generator=g) * 0.1, torch.randn(d_in, generator=g) * 0.1
        got = _ops.encode_threshold(x, W, b, b_dec, torch.full((d_sae,), -1e30), None, True)
        _C.select_isa("avx512_bf16")
        want = _ops.encode_threshold(x, W, b, b_dec, torch.full((d_sae,), -1e30), None, True)
        _C.select_isa(amx_isa)
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
