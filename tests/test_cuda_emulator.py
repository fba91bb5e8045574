"""The CPU emulator of the CUDA execution model (tests/cuda_emu) checks itself here: collectives
give the hardware's results, and the bugs it is there to expose do show (divergent collectives, a
missing barrier, reading a cp.async stage before its wait, shared memory over the limits). Then the
CUDA kernels under every schedule it offers, and launch limits as on an A100.
"""
import contextlib
from unittest import mock

import pytest
import torch

import sae_native as sn
from cuda_emu.backend import emulated_cuda
from helpers import check_topk_codes, randn
from test_cuda import WDTYPES, dev_sae, reference_for

THREADS = 64


def test_ballot_and_shuffles(emulator):
    lanes = [t % 32 for t in range(THREADS)]
    ballot = sum(1 << lane for lane in range(32) if lane % 3 == 0)
    assert emulator.selftest("ballot")[:THREADS] == [ballot] * THREADS
    out = emulator.selftest("shuffle")
    sums, from_next, xored = out[0:3 * THREADS:3], out[1:3 * THREADS:3], out[2:3 * THREADS:3]
    assert [sums[t] for t in (0, 32)] == [496, 496]   # lane 0 of each warp holds the warp's sum
    assert from_next == [((lane + 1) % 32) * 10 for lane in lanes]
    assert xored == [lane ^ 1 for lane in lanes]


def test_wmma_product_and_alignment_rule(emulator):
    a = torch.tensor([[i + 2 * k for k in range(16)] for i in range(16)])
    b = torch.tensor([[k - j for j in range(16)] for k in range(16)])
    assert emulator.selftest("wmma") == (a @ b).flatten().tolist()
    with pytest.raises(RuntimeError, match="256-bit aligned"):
        emulator.selftest("wmma_misaligned")


@pytest.mark.parametrize("name", ["divergent_ballot", "collective_vs_barrier"])
@pytest.mark.parametrize("greedy", [False, True])
def test_divergent_collectives_fail_the_launch(emulator, name, greedy):
    emulator.set_warp_greedy(greedy)
    try:
        with pytest.raises(RuntimeError, match="divergent warp collective"):
            emulator.selftest(name)
        assert emulator.selftest("ballot")[0] != -7   # the next launch runs normally
    finally:
        emulator.set_warp_greedy(False)


def test_a_missing_barrier_shows_under_some_schedule(emulator):
    outcomes = []
    try:
        for seed in range(4):
            for greedy in (False, True):
                emulator.set_schedule_seed(seed)
                emulator.set_warp_greedy(greedy)
                assert emulator.selftest("publish_barrier")[:THREADS] == [42] * THREADS
                outcomes.append(emulator.selftest("publish")[:THREADS])
    finally:
        emulator.set_schedule_seed(0)
        emulator.set_warp_greedy(False)
    assert outcomes[0] == [42] * THREADS         # thread order: the writer happens to run first
    assert any(-1 in o for o in outcomes[1:])     # others read the 0xFF-filled shared memory first


def test_cp_async_lands_at_the_wait(emulator):
    before, after = emulator.selftest("cp_async")[:2]
    assert (before, after) == (-1, 11)
    with pytest.raises(RuntimeError, match="pending"):
        emulator.selftest("cp_async_no_wait")
    emulator.set_copies_at_issue(True)
    try:
        assert emulator.selftest("cp_async")[:2] == [11, 11]
    finally:
        emulator.set_copies_at_issue(False)


def test_shared_memory_limits(emulator):
    emulator.reset_kernel_attributes()
    assert emulator.selftest("big_smem", 48 * 1024)[:THREADS] == [7] * THREADS
    with pytest.raises(RuntimeError, match="over the kernel's limit"):
        emulator.selftest("big_smem", 60000)
    assert emulator.selftest("big_smem", 60000, True)[:THREADS] == [7] * THREADS
    with pytest.raises(RuntimeError, match="over the device's"):
        emulator.selftest("big_smem", 300000, True)
    emulator.reset_kernel_attributes()


# ---- the CUDA kernels under the emulator's schedules and limits ----------------------------------

# (resume-order seed, cp.async lands at issue, warp-greedy): the default runs warps in step with
# copies landing at the wait (a read before its wait sees stale data); copies at issue with greedy
# warps (a stage refilled while other warps still read it shows); shuffled orders.
SCHEDULES = [(0, False, False), (0, True, True), (1, True, True), (2, False, False), (3, True, False),
             (4, False, True)]


def _schedule_outputs(lib):
    """Every kernel family once, at sizes with partial tiles, several chunks and compactions."""
    out = {}
    for wdtype, d_in in ((torch.float32, 40), (torch.bfloat16, 64), (torch.float16, 17)):
        sae, _ = dev_sae("cpu", d_in, 700, "topk", 40, wdtype, seed=d_in)
        codes = sae.encode(randn(70, d_in, seed=3))
        out[f"topk {wdtype}"] = (codes.values, codes.indices)
        out[f"decode {wdtype}"] = sae.decode(codes)
    sae, _ = dev_sae("cpu", 32, 500, "jumprelu", None, torch.bfloat16, seed=5)
    x = randn(66, 32, seed=4)
    codes = sae.encode(x)
    out["threshold"] = (codes.values, codes.indices, codes.counts)
    out["steer"] = sae.steer(x, {3: 2.0, 400: 1.0}, keep_error=False)
    clamp = {f: 0.5 + f % 5 for f in range(0, 2200, 2)}   # 1100 features: two rounds of deltas
    for activation in ("jumprelu", "topk"):
        sae, _ = dev_sae("cpu", 16, 2200, activation, 16, seed=6)
        out[f"steer {activation}, 2 rounds"] = sae.steer(randn(9, 16, seed=7), clamp)
    return out


def test_emulated_results_do_not_depend_on_the_schedule(emulator):
    """A race between threads, or a read of a cp.async stage outside its window, makes results depend
    on the order threads run in. Every schedule must give the default's results, bit for bit."""
    results = []
    try:
        for seed, at_issue, greedy in SCHEDULES:
            emulator.set_schedule_seed(seed)
            emulator.set_copies_at_issue(at_issue)
            emulator.set_warp_greedy(greedy)
            with emulated_cuda(emulator, sm_count=1):   # few chunks: each CTA walks several tiles
                results.append(_schedule_outputs(emulator))
    finally:
        emulator.set_schedule_seed(0)
        emulator.set_copies_at_issue(False)
        emulator.set_warp_greedy(False)
    for schedule, got in zip(SCHEDULES[1:], results[1:]):
        for name, want in results[0].items():
            for a, b in zip(torch.utils._pytree.tree_leaves(got[name]), torch.utils._pytree.tree_leaves(want)):
                assert torch.equal(a, b), f"{name} differs under schedule {schedule}"


def test_emulated_ops_run_the_cuda_kernels(emulator):
    """Guards the fixture: inside emulated_cuda the ops launch emulated kernels, outside they do not."""
    x = randn(5, 16)
    before = emulator.launches()
    dev_sae("cpu", 16, 300, "topk", 8, torch.bfloat16)[0].encode(x)
    assert emulator.launches() == before
    with emulated_cuda(emulator):   # (an SAE made here: SAEs pack W_enc for the kernels they meet first)
        dev_sae("cpu", 16, 300, "topk", 8, torch.bfloat16)[0].encode(x)
    assert emulator.launches() == before + 2   # the fused encode, then the merge


@pytest.mark.parametrize("wdtype", WDTYPES)
def test_the_plan_follows_the_devices_shared_memory(emulator, wdtype):
    """The fused encode's candidate buffer is chosen from what fits the device (the occupancy
    calculator's answer): the largest (256 slots, k = 200) on an A100's 163 KiB per block; on an
    sm_86 card's 99 KiB only the smallest fits, so k = 200 encodes through torch instead of a
    launch that would fail. A launch over the ceiling fails with the kernel's name, and the next
    one works."""
    x = randn(20, 64)
    try:
        for ceiling, per_sm, fused in ((163 * 1024, 164 * 1024, True), (99 * 1024, 100 * 1024, False)):
            emulator.set_smem_ceiling(ceiling)
            emulator.set_device(108, per_sm)
            emulator.reset_kernel_attributes()
            with emulated_cuda(emulator):
                sae, w = dev_sae("cpu", 64, 2000, "topk", 200, wdtype, seed=1)
                before = emulator.launches()
                codes = sae.encode(x)
                ref, xr = reference_for(w, x)   # the torch path rounds u the same way
                check_topk_codes(codes, ref, xr)
                assert (emulator.launches() > before) == fused   # the dense path launches no kernel
        emulator.set_smem_ceiling(64 * 1024)
        lib_cap = 256
        with pytest.raises(RuntimeError, match="encode_topk"):
            u = emulator.Mat(data=0, dtype=2, rows=20, cols=64, row_stride=64, col_stride=1)
            w = emulator.Mat(data=0, dtype=2, rows=64, cols=2000, row_stride=2000, col_stride=1)
            emulator.encode_topk(u=u, w=w, b_enc=0, k=200, cap=lib_cap, chunk_latents=2048, chunks=1, vec=False,
                                 cand=0, stream=0)
        emulator.set_smem_ceiling(227 * 1024)
        emulator.set_device(132, 228 * 1024)
        with emulated_cuda(emulator):   # the failed call's error does not leak into the next launch
            sae, w = dev_sae("cpu", 64, 2000, "topk", 200, wdtype, seed=1)
            ref, xr = reference_for(w, x)
            check_topk_codes(sae.encode(x), ref, xr)
    finally:
        emulator.set_smem_ceiling(227 * 1024)
        emulator.set_device(132, 228 * 1024)
        emulator.reset_kernel_attributes()


def test_load_kernels_and_device_queries(emulator):
    emulator.load_kernels()
    limits = emulator.device_limits()
    assert limits["sm_count"] == 132 and limits["smem_optin"] == 227 * 1024
    assert [emulator.topk_blocks_per_sm(2, cap) for cap in (64, 128, 256)] == [3, 2, 1]
    assert emulator.threshold_blocks_per_sm(0) >= 1


# ---- out-of-bounds accesses: the kernels on the AddressSanitizer build ------------------------------

@pytest.fixture(scope="module")
def sanitized(emulator):
    from cuda_emu import build, sanitized
    if sanitized.runtime_libraries() is None:
        pytest.skip("g++ has no AddressSanitizer runtime here")
    build.build(sanitize="address")
    return sanitized


def test_the_sanitizer_catches_an_out_of_bounds_read(sanitized):
    proc = sanitized.run(["-c", "import sys; sys.path.insert(0, 'tests'); from cuda_emu import build; "
                                "build.load().selftest('read_past_end')"])
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-2000:]


def test_kernels_stay_in_bounds_under_the_sanitizer(sanitized):
    """A sample of the emulated kernel tests (every kernel family, odd sizes, bad indices) on the
    sanitizer build; the whole emulated suite: python tests/cuda_emu/sanitized.py tests/test_cuda.py -k emulated."""
    select = ("emulated and (test_topk_matches_reference and 1031-17 or test_topk_nan_rows or "
              "test_threshold_rows_with_many_hits or test_threshold_nan_row or test_decode_matches_reference and 17 "
              "or bad_index or test_sparse_dot_and_outer_match_dense and 13-7 or test_steer_odd_sizes "
              "or test_steer_skips_clamp_features_edited)")
    proc = sanitized.run(["-m", "pytest", "tests/test_cuda.py", "-q", "-x", "-p", "no:cacheprovider", "-k", select])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert " passed" in proc.stdout


# ---- when the CUDA backend reads back its index check ----------------------------------------------

def test_index_readback_only_for_codes_from_outside(emulator, monkeypatch):
    """The count of out-of-range indices is read back (on a GPU: a synchronisation) for codes a
    user hands in, and not for the package's own: forward, steering from fresh codes, training's
    backward. Bad indices from outside still raise."""
    from sae_native.backends.cuda import launch
    reads = []
    real = launch._Report.raise_if_any

    def spy(self, op, rows, *what):
        if self.t is not None:
            reads.append(op)
        return real(self, op, rows, *what)

    monkeypatch.setattr(launch._Report, "raise_if_any", spy)
    with emulated_cuda(emulator):
        sae, _ = dev_sae("cpu", 16, 300, "topk", 8)
        x = randn(5, 16)
        sae(x)
        sae.steer(x, {3: 2.0}, keep_error=False)
        params = [p.detach().clone().requires_grad_(True) for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
        y = sn.functional.reconstruct(x, *params, activation="topk", k=8)
        y.square().sum().backward()
        assert reads == [] and params[0].grad is not None
        codes = sae.encode(x)
        sae.decode(codes)
        assert reads == ["decode"]
        bad = codes.indices.clone()
        bad[0, 0] = 300
        with pytest.raises(ValueError, match="out of range"):
            sn.functional.decode(codes.values, bad, sae.W_dec, sae.b_dec)


@contextlib.contextmanager
def host_readbacks():
    """Records every Python-level read of a tensor's values into the host (on a GPU each is a
    synchronisation): int(), bool(), float(), .item(), .tolist()."""
    calls = []
    names = ["__int__", "__bool__", "__float__", "__index__", "item", "tolist"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def spy(name, real):
        def method(self, *args, **kwargs):
            calls.append(name)
            return real(self, *args, **kwargs)
        return method

    for name, real in saved.items():
        setattr(torch.Tensor, name, spy(name, real))
    try:
        yield calls
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_reconstruction_and_steering_read_nothing_back(emulator, activation):
    """Steering (both paths), the steering hook in every position mode and a TopK sae(x) run with
    no value read back to the host: on a GPU, no synchronisation per call or generated token. (A
    threshold encode does read its width back: JumpReLU's sae(x) is left out.)"""
    with emulated_cuda(emulator):
        sae, _ = dev_sae("cpu", 16, 300, activation, 8)
        clamp = sae.parse_clamp({3: 2.0, 250: 0.5})
        x = randn(2, 5, 16)
        model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
        modes = ("all", "prompt", "generated")
        sae(x), sae.steer(x, clamp)   # warm-up: first calls may set things up
        on_cpu = []
        for p in modes:   # the hook's CPU branch reads its mask (free there) to skip positions
            with sn.steer(model, "0", sae, clamp, positions=p):
                on_cpu.append(model(x))
        with mock.patch("sae_native.hooks._host_reads_free", lambda t: False), host_readbacks() as calls:
            sae.steer(x, clamp)                      # jumprelu: the O(|C| d_in) threshold path
            if activation == "topk":
                sae(x)
                sae.steer(x, clamp, keep_error=False)   # steering from fresh codes
            on_gpu = []
            for p in modes:                          # the branch a GPU takes
                with sn.steer(model, "0", sae, clamp, positions=p):   # (attaches here, parses nothing)
                    on_gpu.append(model(x))
        assert calls == []
        for a, b in zip(on_cpu, on_gpu):
            torch.testing.assert_close(a, b)
