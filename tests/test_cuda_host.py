"""The CUDA backend's host side, on any machine where the module was built (nvcc present): the
candidate-key encoding the kernels sort by (its host copy is in the test-kernel module, or the
emulator's), the key sort fallback in torch, the launch planning, the launchers' own argument
guards, and the op registration. The kernels themselves run in tests/test_cuda.py (GPU and
emulator); the torch encodes the backend falls back to are the default kernels
(tests/test_backends.py)."""
import math
import random
import struct

import pytest
import torch

import sae_native as sn
_cuda = pytest.importorskip("sae_native._cuda", reason="built without nvcc: no CUDA module")

from sae_native.backends import registry  # noqa: E402
from sae_native.backends.cuda import candidate_keys as cuda_keys  # noqa: E402
from sae_native.backends.cuda import plan as cuda_plan  # noqa: E402


@pytest.fixture
def keys(request):
    """A module with the host copies of the kernels' key functions: sae_native._cuda_test where it
    was built, else the CPU emulator's module (the same cuda/test_bindings.cpp)."""
    try:
        from sae_native import _cuda_test
        return _cuda_test
    except ImportError:
        return request.getfixturevalue("emulator")

def f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


SPECIALS = [f32(v) for v in (0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 3.4e38, -3.4e38, math.inf, -math.inf, math.nan,
                             2.5, 2.5, -7.0)]


def expected_order(entries):
    """(value, latent) sorted as codes are: value descending, NaN first, -0 == +0, latent ascending."""
    def key(e):
        v, j = e
        return (0 if math.isnan(v) else 1, -v if not math.isnan(v) else 0.0, j)
    return sorted(entries, key=key)


def canon(entries):
    """(value, latent) pairs comparable with ==: NaN as a marker, -0 as 0."""
    return [("nan" if math.isnan(v) else (0.0 if v == 0 else v), j) for v, j in entries]


def as_int64(key: int) -> int:
    return key - 2 ** 64 if key >= 2 ** 63 else key


def test_module_constants_match_the_planner():
    assert (_cuda.TILE_M, _cuda.TILE_N) == (cuda_plan.TILE_M, cuda_plan.TILE_N)
    assert tuple(_cuda.CAPS) == cuda_plan.CAPS and _cuda.SORT_MAX == cuda_plan.SORT_MAX
    info = sn.build_info()
    assert info["cuda_compiled"] and info["cuda_archs"] == list(_cuda.ARCHS)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert any(a.startswith("80") for a in info["cuda_archs"]), "the default build targets sm_80"


def test_cuda_kernels_are_registered_for_every_op():
    assert set(registry.kernels_for("cuda")) == set(registry.OPS)


def test_reference_kernels_are_not_in_the_production_module():
    assert not any(name.startswith("ref_") or name.startswith("candidate_") for name in dir(_cuda))


def test_candidate_keys_order_like_codes_and_round_trip(keys):
    _cuda = keys
    rng = random.Random(0)
    values = SPECIALS + [f32(rng.uniform(-10, 10)) for _ in range(200)]
    entries = [(v, rng.randrange(0, 2 ** 31)) for v in values] + [(2.5, 0), (2.5, 2 ** 31 - 1), (math.nan, 5)]
    keys = {(_cuda.candidate_key(v, j)): (v, j) for v, j in entries}
    by_key = [keys[k] for k in sorted(keys, reverse=True)]
    want = expected_order(list(keys.values()))
    assert canon(by_key) == canon(want)
    for k, (v, j) in keys.items():
        assert k != 0 and _cuda.candidate_latent(k) == j
        back = _cuda.candidate_value(k)
        assert (math.isnan(back) and math.isnan(v)) or back == v


def test_key_sort_fallback_matches_the_expected_order(keys):
    _cuda = keys
    rng = random.Random(1)
    n, m, width = 6, 40, 40
    rows, valid = [], []
    expect = []
    for r in range(n):
        count = [0, 1, 7, 40, 23, 40][r]
        entries = [(f32(rng.choice(SPECIALS + [rng.uniform(-3, 3)])), j) for j in rng.sample(range(10 ** 6), count)]
        keys = [as_int64(_cuda.candidate_key(v, j)) for v, j in entries]
        rows.append(keys + [rng.randrange(-2 ** 63, 2 ** 63) for _ in range(m - count)])  # garbage past count
        valid.append(count)
        expect.append(expected_order(entries))
    values, latents = cuda_keys.sort_keys(torch.tensor(rows), torch.tensor(valid), width)
    assert values.dtype == torch.float32 and latents.dtype == torch.int64 and values.shape == (n, width)
    for r in range(n):
        got = list(zip(values[r].tolist(), latents[r].tolist()))
        assert canon(got) == canon(expect[r] + [(0.0, -1)] * (width - valid[r]))


# Devices as the planner sees them (occupancy of the fused encode per candidate buffer size):
# an H100 / H200, an A100 (163 KiB per block), an sm_86 card (99 KiB per block: only cap 64 fits).
H100 = cuda_plan.Device(132, {64: 3, 128: 2, 256: 1}, 2)
A100 = cuda_plan.Device(108, {64: 2, 128: 1, 256: 1}, 2)
SM86 = cuda_plan.Device(82, {64: 1, 128: 0, 256: 0}, 1)


@pytest.mark.parametrize("device", [H100, A100, SM86], ids=["h100", "a100", "sm86"])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 8192])
@pytest.mark.parametrize("d_sae", [1, 127, 128, 129, 24576, 65536, 1 << 20])
@pytest.mark.parametrize("k", [1, 32, 33, 64, 97, 192, 224, 225, 512])
def test_topk_plan_covers_every_latent_within_the_kernel_limits(device, n, d_sae, k):
    plan = cuda_plan.topk_plan(n, d_sae, k, device)
    fits = [c for c in cuda_plan.CAPS if c >= k + 32 and device.topk_blocks[c] > 0]
    if k > min(d_sae, cuda_plan.MAX_FUSED_K) or not fits:
        assert plan is None   # encoded through torch instead
        return
    g = plan.grid
    assert g.chunk_latents % cuda_plan.TILE_N == 0 and 1 <= g.chunks <= 65535
    assert g.chunks * g.chunk_latents >= d_sae > (g.chunks - 1) * g.chunk_latents  # none empty, all covered
    assert plan.cap == fits[0]
    assert plan.candidates == g.chunks * k <= plan.sort_size <= cuda_plan.SORT_MAX
    assert plan.sort_size & (plan.sort_size - 1) == 0
    row_blocks = -(-n // cuda_plan.TILE_M)
    slots = device.sm_count * device.topk_blocks[plan.cap]
    if g.chunks > 1:   # latents split only to fill the device: never past one wave
        assert row_blocks * g.chunks <= slots


def test_topk_plan_needs_a_buffer_that_fits():
    assert cuda_plan.topk_plan(64, 4096, 40, SM86) is None           # needs cap 128: 0 CTAs fit on sm_86
    assert cuda_plan.topk_plan(64, 4096, 32, SM86).cap == 64
    assert cuda_plan.topk_plan(64, 4096, 200, A100).cap == 256
    assert cuda_plan.topk_plan(64, 4096, 200, cuda_plan.Device(108, {64: 2, 128: 1, 256: 0}, 1)) is None


def test_one_token_fills_one_wave():
    plan = cuda_plan.topk_plan(1, 65536, 64, H100)
    assert plan.grid.chunks == 128   # 512 tiles over 132 x 1 slots (cap 128: 2 per SM -> 264 would do,
    # but the merge caps chunks at SORT_MAX / k = 128)
    plan = cuda_plan.topk_plan(1, 65536, 8, H100)
    assert plan.grid.chunks <= H100.sm_count * H100.topk_blocks[plan.cap]


@pytest.mark.parametrize("n", [1, 64, 4096])
def test_threshold_grid_and_cap(n):
    for d_sae in (1, 129, 65536):
        g = cuda_plan.threshold_grid(n, d_sae, A100)
        assert g.chunks * g.chunk_latents >= d_sae > (g.chunks - 1) * g.chunk_latents
        assert 1 <= cuda_plan.threshold_cap(d_sae) <= d_sae
    assert cuda_plan.threshold_grid(n, 1000, cuda_plan.Device(82, {}, 0)) is None


def test_fused_topk_fits_an_a100s_shared_memory():
    # sm_80 allows 163 KiB of dynamic shared memory per block (H100: 227 KiB).
    for cap in cuda_plan.CAPS:
        for w_dtype in (0, 2, 3):  # float32, bfloat16, float16
            assert 32 * 1024 < _cuda.topk_smem_bytes(w_dtype, cap) <= 163 * 1024
    with pytest.raises(ValueError, match="cap must be"):
        _cuda.topk_smem_bytes(2, 100)


def _mat(dtype, rows, cols):
    return _cuda.Mat(data=0, dtype=dtype, rows=rows, cols=cols, row_stride=cols, col_stride=1)


def test_launchers_reject_bad_arguments_before_touching_the_gpu():
    def topk(u_dtype=0, w_dtype=0, n=1, k=8, cap=64, chunk_latents=256):
        _cuda.encode_topk(u=_mat(u_dtype, n, 8), w=_mat(w_dtype, 8, 256), b_enc=0, k=k, cap=cap,
                          chunk_latents=chunk_latents, chunks=1, vec=False, cand=0, stream=0)

    with pytest.raises(ValueError, match="power of two"):
        _cuda.sort_rows(n=1, keys=0, row_stride=3, m=3, counts=0, size=3, width=1, relu=True, values=0, indices=0,
                        stream=0)
    with pytest.raises(ValueError, match="cap - 32"):
        topk(k=40)
    with pytest.raises(ValueError, match="chunking"):
        topk(chunk_latents=100)
    with pytest.raises(ValueError, match="weights must be"):
        topk(u_dtype=1, w_dtype=1)
    with pytest.raises(ValueError, match="of the same dtype"):
        topk(u_dtype=0, w_dtype=2)
    with pytest.raises(ValueError, match="unsupported dtype pair"):
        _cuda.decode(values=_mat(1, 1, 1), indices=_mat(-1, 1, 1), w=_mat(0, 4, 4), bias=0, out=0, report=0, stream=0)
    # Empty work launches nothing.
    topk(n=0)
    _cuda.decode(values=_mat(0, 0, 3), indices=_mat(-1, 0, 3), w=_mat(0, 4, 4), bias=0, out=0, report=0, stream=0)


@pytest.mark.parametrize("n", [1, 2, 4, 64, 128, 256, 1024, 8192])
def test_bitonic_network_sorts_descending(n, keys):
    _cuda = keys
    rng = random.Random(n)
    for trial in range(3):
        keys = [rng.randrange(0, 2 ** 64) for _ in range(n)]
        if trial == 1:
            keys = [rng.choice([0, 5, 2 ** 63, 2 ** 64 - 1]) for _ in range(n)]   # many equal keys
        assert _cuda.bitonic_sort_desc(keys) == sorted(keys, reverse=True)
    with pytest.raises(ValueError, match="power of two"):
        _cuda.bitonic_sort_desc([1, 2, 3])
