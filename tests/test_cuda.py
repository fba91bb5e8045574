"""The CUDA kernels against the float64 reference (tests/reference.py) and the CUDA reference
kernels (cuda/reference.cu, in the test-only module): odd sizes, every weight dtype, ties, NaN inputs, empty batches, bad
indices, steering, autograd; on a GPU also poisoned memory, streams, CUDA graphs, compile, hooks.

Every test taking ``dev`` runs twice (and the encode tests once more per encode path: the fused
kernels, and cuBLAS + the same epilogues reading its pre-activations):
- ``gpu``: on a CUDA GPU (skips without one or without the CUDA module). benchmarks/gpu_check.py
  runs these on a GPU session.
- ``emulated``: the same kernel sources built for the CPU emulator (tests/cuda_emu), registered as
  the CPU kernels of every op, on CPU tensors: real coverage of the kernels' logic, indexing and
  synchronisation on a machine without a GPU (skips only without CUDA's headers). Every buffer a
  kernel writes starts as NaN / junk keys there, as the GPU half poisons the caching allocator.
"""
import contextlib
import math

import pytest
import torch

import sae_native as sn
from cuda_emu.backend import cpu_kernels, emulated_cuda
from helpers import check_groupmax_codes, check_threshold_codes, check_topk_codes, make_weights, randn
from reference import RefSAE, sorted_codes, topk_indices

GPU = torch.cuda.is_available() and sn.build_info()["cuda_compiled"]
HALF = (torch.bfloat16, torch.float16)
WDTYPES = [torch.float32, torch.bfloat16, torch.float16]
gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and a build with the CUDA module")


@pytest.fixture(params=["gpu", "emulated"])
def dev(request):
    """The device the test's tensors go to: "cuda", or "cpu" with the emulated CUDA kernels."""
    if request.param == "gpu":
        if not GPU:
            pytest.skip("needs a CUDA GPU and a build with the CUDA module")
        # Memory the caching allocator hands out next holds NaN bytes, so an output entry a kernel
        # fails to write shows up as NaN / garbage instead of a lucky zero.
        junk = torch.full((2 ** 26,), float("nan"), device="cuda")
        del junk
        yield "cuda"
        torch.cuda.synchronize()
    else:
        lib = request.getfixturevalue("emulator")
        lib.set_schedule_seed(0)
        lib.set_copies_at_issue(False)
        lib.set_warp_greedy(False)
        with emulated_cuda(lib):
            yield "cpu"


@pytest.fixture
def raw(dev, request):
    """(test-kernel module, stream) for calling the reference kernels directly: on a GPU
    sae_native._cuda_test (built with -DSAE_NATIVE_CUDA_TEST_KERNELS=ON), on the emulator its module."""
    if dev == "cuda":
        _cuda_test = pytest.importorskip("sae_native._cuda_test",
                                         reason="built without -DSAE_NATIVE_CUDA_TEST_KERNELS=ON")
        return _cuda_test, torch.cuda.current_stream().cuda_stream
    return request.getfixturevalue("emulator"), 0


def dev_sae(dev, d_in, d_sae, activation, k=None, wdtype=torch.float32, seed=0, **kw):
    """(SAE on dev with weights in wdtype, the weights dict on the CPU)."""
    w = make_weights(d_in, d_sae, activation, k, seed=seed, **kw)
    w["W_enc"], w["W_dec"] = w["W_enc"].to(wdtype), w["W_dec"].to(wdtype)
    return sn.SAE(**w).to(dev), w


def reference_for(w, x):
    """(RefSAE, x as the reference should see it). With 16-bit weights the CUDA encode rounds
    u = x - b_dec to the weights' dtype before the tensor cores: the reference gets that u."""
    if w["W_enc"].dtype in HALF:
        u = (x - w["b_dec"].float()).to(w["W_enc"].dtype).float()
        return RefSAE(**{**w, "apply_b_dec_to_input": False}), u
    return RefSAE(**w), x


def encode_on(dev, sae, x):
    return sae.encode(x.to(dev)).to("cpu")


# ---- TopK -----------------------------------------------------------------------------------

@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("d_in", [1, 7, 16, 17, 64, 96])
@pytest.mark.parametrize("d_sae", [1, 13, 128, 129, 300, 1031])
def test_topk_matches_reference(dev, wdtype, d_in, d_sae, encode_path):
    for k in sorted({1, min(d_sae, 32), min(d_sae, 224), d_sae}):   # d_sae > 224: the torch path
        sae, w = dev_sae(dev, d_in, d_sae, "topk", k, wdtype, seed=d_in * 7 + d_sae)
        for n in (1, 65, 130):
            x = randn(n, d_in, seed=n + k)
            ref, xr = reference_for(w, x)
            check_topk_codes(encode_on(dev, sae, x), ref, xr)


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("n, d_in, d_sae, k", [(300, 64, 5000, 64), (8, 128, 65536, 32), (70, 40, 3000, 192),
                                               (129, 72, 2048, 1), (3, 256, 24576, 128)])
def test_topk_many_chunks_and_compactions(dev, wdtype, n, d_in, d_sae, k, encode_path):
    sae, w = dev_sae(dev, d_in, d_sae, "topk", k, wdtype, seed=k)
    x = randn(n, d_in, seed=d_sae)
    ref, xr = reference_for(w, x)
    check_topk_codes(encode_on(dev, sae, x), ref, xr)


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("k", [1, 50, 200, 260])
def test_topk_exact_ties_go_to_the_lower_latent(dev, wdtype, k, encode_path):
    # Zero weights: every pre-activation is its bias, drawn from {-1, 0, 1, 2}: ties everywhere,
    # across tiles and chunks. Selection and order must be exactly the reference's.
    d_in, d_sae = 16, 1000
    g = torch.Generator().manual_seed(k)
    b_enc = torch.randint(-1, 3, (d_sae,), generator=g).float()
    sae = sn.SAE(torch.zeros(d_in, d_sae, dtype=wdtype), b_enc, torch.zeros(d_sae, d_in, dtype=wdtype),
                 torch.zeros(d_in), activation="topk", k=k).to(dev)
    codes = encode_on(dev, sae, randn(5, d_in))
    pre = b_enc.double().expand(5, d_sae)
    idx = topk_indices(pre, k)
    want_values, want_idx = sorted_codes(pre.gather(-1, idx).relu(), idx)
    assert torch.equal(codes.indices, want_idx)
    assert torch.equal(codes.values.double(), want_values)


@pytest.mark.parametrize("wdtype", WDTYPES)
def test_topk_nan_rows(dev, wdtype, encode_path):
    sae, w = dev_sae(dev, 16, 500, "topk", 20, wdtype)
    x = randn(4, 16)
    x[1, 3] = math.nan
    codes = encode_on(dev, sae, x)
    assert codes.indices[1].tolist() == list(range(20)) and torch.isnan(codes.values[1]).all()
    ref, xr = reference_for(w, x[[0, 2, 3]])
    check_topk_codes(sn.SparseCodes(codes.values[[0, 2, 3]], codes.indices[[0, 2, 3]], 500), ref, xr)


def test_topk_reference_kernels_agree(dev, raw):
    _cuda, stream = raw
    sae, w = dev_sae(dev, 40, 700, "topk", 24, torch.bfloat16, seed=3)
    x = randn(50, 40, seed=4)
    ref, xr = reference_for(w, x)
    u = xr.to(torch.bfloat16).to(dev)
    W = sae.W_enc.contiguous()
    b = sae.b_enc.float().contiguous()
    pre = torch.empty(50, 700, device=dev)
    values = torch.empty(50, 24, device=dev)
    indices = torch.empty(50, 24, dtype=torch.int64, device=dev)
    _cuda.ref_preact(2, 50, 40, 700, u.data_ptr(), W.data_ptr(), b.data_ptr(), pre.data_ptr(), stream)
    _cuda.ref_select_topk(50, 700, 24, pre.data_ptr(), values.data_ptr(), indices.data_ptr(), stream)
    slow = sn.SparseCodes(values.cpu(), indices.cpu(), 700)
    check_topk_codes(slow, ref, xr)
    fast = encode_on(dev, sae, x)
    assert (fast.indices == slow.indices).float().mean() > 0.99


# ---- threshold (JumpReLU / ReLU) ---------------------------------------------------------------

@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
@pytest.mark.parametrize("d_in, d_sae", [(1, 1), (7, 13), (16, 128), (17, 129), (64, 1031), (96, 300)])
def test_threshold_matches_reference(dev, wdtype, activation, d_in, d_sae, encode_path):
    sae, w = dev_sae(dev, d_in, d_sae, activation, None, wdtype, seed=d_sae)
    for n in (1, 65, 130):
        x = randn(n, d_in, seed=n)
        ref, xr = reference_for(w, x)
        check_threshold_codes(encode_on(dev, sae, x), ref, xr)


@pytest.mark.parametrize("d_sae", [1031, 9000])  # past the first buffer (rerun); past one block's sort
def test_threshold_rows_with_many_hits(dev, d_sae, encode_path):
    w = make_weights(24, d_sae, "relu", seed=1)
    w["b_enc"] = w["b_enc"] + 10.0  # nearly every latent active
    sae = sn.SAE(**w).to(dev)
    x = randn(5, 24, seed=2)
    codes = encode_on(dev, sae, x)
    assert int(codes.counts.max()) > 1000
    check_threshold_codes(codes, RefSAE(**w), x)


def test_threshold_nan_row_activates_everything(dev, encode_path):
    sae, w = dev_sae(dev, 8, 300, "jumprelu")
    x = randn(3, 8)
    x[2, 0] = math.nan
    codes = sae.encode(x.to(dev), nan="propagate").to("cpu")
    assert int(codes.counts[2]) == 300 and torch.isnan(codes.values[2]).all()
    assert sorted(codes.indices[2].tolist()) == list(range(300))
    compact = encode_on(dev, sae, x)   # the default: the row's lowest non-finite latent only
    assert compact.k == max(1, int(codes.counts[:2].max())) and int(compact.counts[2]) == 1
    assert int(compact.indices[2, 0]) == 0 and torch.isnan(compact.values[2, 0])
    assert torch.equal(compact.indices[:2, :compact.k], codes.indices[:2, :compact.k])


def test_threshold_reference_kernels_agree(dev, raw):
    _cuda, stream = raw
    sae, w = dev_sae(dev, 33, 400, "jumprelu", None, torch.float32, seed=6)
    x = randn(40, 33, seed=6)
    u = (x - w["b_dec"]).to(dev)
    pre = torch.empty(40, 400, device=dev)
    _cuda.ref_preact(0, 40, 33, 400, u.data_ptr(), sae.W_enc.data_ptr(), sae.b_enc.data_ptr(), pre.data_ptr(),
                     stream)
    fast = encode_on(dev, sae, x)
    width = fast.values.shape[1]
    values = torch.empty(40, width, device=dev)
    indices = torch.empty(40, width, dtype=torch.int64, device=dev)
    counts = torch.empty(40, dtype=torch.int64, device=dev)
    _cuda.ref_select_threshold(40, 400, pre.data_ptr(), sae.threshold.float().contiguous().data_ptr(), width,
                               values.data_ptr(), indices.data_ptr(), counts.data_ptr(), stream)
    slow = sn.SparseCodes(values.cpu(), indices.cpu(), 400, counts.cpu())
    check_threshold_codes(slow, RefSAE(**w), x)
    assert torch.equal(slow.counts, fast.counts) or (slow.counts - fast.counts).abs().max() <= 1


@pytest.mark.parametrize("wdtype", WDTYPES)
def test_groupmax_matches_reference(dev, wdtype):
    sae, w = dev_sae(dev, 23, 120, "groupmax", 8, wdtype, seed=3)
    x = randn(29, 23, seed=5)
    ref, xr = reference_for(w, x)
    check_groupmax_codes(encode_on(dev, sae, x), ref, xr)


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu", "groupmax"])
def test_empty_batch(dev, activation, encode_path):
    sae, _ = dev_sae(dev, 16, 64, activation, 4, torch.bfloat16)
    codes = sae.encode(torch.empty(0, 16, device=dev))
    assert codes.values.shape[0] == 0 and codes.values.device.type == dev
    assert sae(torch.empty(0, 16, device=dev)).shape == (0, 16)


def test_float64_weights_on_the_gpu(dev):
    sae, w = dev_sae(dev, 13, 200, "topk", 9, torch.float64)
    x = randn(7, 13).double()
    check_topk_codes(encode_on(dev, sae, x), RefSAE(**w), x)


# ---- decode -------------------------------------------------------------------------------------

def _decode_reference(values, indices, W_dec, b_dec):
    out = b_dec.double().expand(values.shape[0], -1).clone()
    for r in range(values.shape[0]):
        for v, i in zip(values[r].tolist(), indices[r].tolist()):
            if i >= 0:
                out[r] += v * W_dec[i].double()
    return out


@pytest.mark.parametrize("wdtype", WDTYPES + [torch.float64])
@pytest.mark.parametrize("d_in", [1, 7, 8, 17, 64, 100])
@pytest.mark.parametrize("strided", [False, True])
def test_decode_matches_reference(dev, raw, wdtype, d_in, strided):
    _cuda, stream = raw
    d_sae, n, k = 97, 33, 5
    T = torch.float64 if wdtype == torch.float64 else torch.float32
    W_dec = randn(d_sae, d_in, seed=d_in).to(wdtype)
    b_dec = randn(d_in, seed=2).to(T)
    values = randn(n, k, seed=3).to(T)
    indices = torch.randint(-1, d_sae, (n, k), generator=torch.Generator().manual_seed(4))
    W_gpu = W_dec.to(dev)
    if strided:  # column stride d_sae: the scalar path
        W_gpu = W_gpu.t().contiguous().t()
    out = sn.functional.decode(values.to(dev), indices.to(dev), W_gpu, b_dec.to(dev))
    want = _decode_reference(values, indices, W_dec, b_dec)
    tol = 1e-12 if T == torch.float64 else 2e-5
    torch.testing.assert_close(out.cpu().double(), want, atol=tol, rtol=tol)
    ref_out = torch.empty(n, d_in, dtype=T, device=dev)
    _cuda.ref_decode(0 if T == torch.float32 else 1, {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2,
                                                       torch.float16: 3}[wdtype], n, k, values.to(dev).data_ptr(),
                     indices.to(dev).data_ptr(), W_gpu.data_ptr(), d_sae, d_in, W_gpu.stride(0), W_gpu.stride(1),
                     b_dec.to(dev).data_ptr(), ref_out.data_ptr(), stream)
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)


def test_decode_bad_index_is_an_error_and_the_gpu_stays_usable(dev, monkeypatch):
    W_dec = randn(10, 16).to(dev)
    values = torch.ones(2, 3, device=dev)
    bad = torch.tensor([[0, 10, -1], [3, -7, 2]], device=dev)
    with pytest.raises(ValueError, match=r"indices: expected latents in \[0, d_sae=10\)"):
        sn.functional.decode(values, bad, W_dec)
    ok = sn.functional.decode(values, bad.clamp(-1, 9), W_dec)
    assert torch.isfinite(ok).all()
    monkeypatch.setenv("SAE_NATIVE_CUDA_INDEX_CHECK", "0")   # unchecked: skipped like padding
    skipped = sn.functional.decode(values, bad, W_dec)
    torch.testing.assert_close(skipped[0], W_dec[0])


@pytest.mark.parametrize("wdtype", WDTYPES + [torch.float64])
@pytest.mark.parametrize("rows, d", [(1, 1), (13, 7), (97, 33), (300, 100)])
@pytest.mark.parametrize("strided", [False, True])
def test_sparse_dot_and_outer_match_dense(dev, wdtype, rows, d, strided):
    T = torch.float64 if wdtype == torch.float64 else torch.float32
    n, k = 11, 3
    g = randn(n, d, seed=rows).to(T)
    W = randn(rows, d, seed=d).to(wdtype)
    idx = torch.randint(-1, rows, (n, k), generator=torch.Generator().manual_seed(rows + d))
    vals = randn(n, k, seed=5).to(T)
    W_gpu = W.to(dev).t().contiguous().t() if strided else W.to(dev)
    got = torch.ops.sae_native.sparse_dot(g.to(dev), idx.to(dev), W_gpu).cpu()
    safe = idx.clamp_min(0)
    want = torch.where(idx >= 0, (W.double()[safe] * g.double()[:, None, :]).sum(-1), torch.zeros(n, k).double())
    tol = 1e-12 if T == torch.float64 else 5e-5
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    for transposed in (False, True):
        out = torch.ops.sae_native.sparse_outer(vals.to(dev), idx.to(dev), g.to(dev), rows, transposed).cpu()
        dense = torch.zeros(rows, d, dtype=torch.float64)
        for r in range(n):
            for j in range(k):
                if idx[r, j] >= 0:
                    dense[idx[r, j]] += vals[r, j].double() * g[r].double()
        torch.testing.assert_close(out.double(), dense.t() if transposed else dense, atol=tol, rtol=tol)
        # sparse_outer_add_: the same sums added into a gradient already there, in either layout
        start = randn(rows, d, seed=7).to(T)
        into = (torch.empty(d, rows, dtype=T, device=dev).t() if transposed
                else torch.empty(rows, d, dtype=T, device=dev)).copy_(start)
        torch.ops.sae_native.sparse_outer_add_(into, vals.to(dev), idx.to(dev), g.to(dev))
        torch.testing.assert_close(into.cpu().double(), start.double() + dense, atol=tol, rtol=tol)


# ---- steering -------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize("mode", ["set", "scale", "add"])
@pytest.mark.parametrize("where", ["always", "active"])
@pytest.mark.parametrize("keep_error", [True, False])
def test_steer_matches_reference(dev, activation, mode, where, keep_error):
    sae, w = dev_sae(dev, 23, 97, activation, 11, torch.float32, seed=4)
    x = randn(17, 23, seed=2)
    codes = encode_on(dev, sae, x)
    fired = torch.unique(codes.indices[codes.values > 0]).tolist()[:3]
    clamp = {f: v for f, v in zip(fired + [96], [5.0, 0.0, 2.5, 7.0])}
    got = sae.steer(x.to(dev), clamp, mode=mode, keep_error=keep_error, where=where).cpu()
    want = RefSAE(**w).steer(x, clamp, mode, keep_error, where)
    torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("d_in, d_sae", [(1, 1), (1, 5), (7, 1), (13, 31), (17, 16)])
def test_steer_odd_sizes(dev, d_in, d_sae):
    for activation in ("topk", "jumprelu"):
        sae, w = dev_sae(dev, d_in, d_sae, activation, 1)
        x = randn(5, d_in)
        for keep_error in (True, False):
            got = sae.steer(x.to(dev), {d_sae - 1: 3.0}, keep_error=keep_error).cpu()
            want = RefSAE(**w).steer(x, {d_sae - 1: 3.0}, "set", keep_error, "always")
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation, keep_error", [("jumprelu", True), ("topk", True), ("topk", False)])
@pytest.mark.parametrize("bad", [97, 10**11, -5])
def test_steer_skips_clamp_features_edited_out_of_range(dev, activation, keep_error, bad):
    # A parsed clamp edited behind its version counter reaches the kernels unchecked (its range
    # report is not read back: that would be a GPU sync per call). The kernels skip the feature,
    # never reading it: the result is the steering by the other features. Called directly, the op
    # reads the report and raises.
    sae, w = dev_sae(dev, 23, 97, activation, 11, torch.float32, seed=4)
    x = randn(9, 23, seed=2)
    parsed = sae.parse_clamp({5: 3.0, 8: 1.5})
    parsed.features.data[0] = bad    # .data: the version counter does not see it
    got = sae.steer(x.to(dev), parsed, keep_error=keep_error).cpu()
    want = RefSAE(**w).steer(x, {8: 1.5}, "set", keep_error, "always")
    torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=5e-5)
    with pytest.raises(ValueError, match="features must lie in"):
        torch.ops.sae_native.steer_codes(x.to(dev), *(lambda c: (c.values, c.indices))(sae.encode(x.to(dev))),
                                         sae.W_dec, sae.b_dec, parsed.features, parsed.targets, "set", False,
                                         keep_error)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_steer_more_features_than_one_round(dev, activation):
    sae, w = dev_sae(dev, 16, 3000, activation, 40, torch.float32, seed=9)
    x = randn(6, 16, seed=1)
    clamp = {f: 0.01 * (f % 7) for f in range(0, 3000, 2)}   # 1500 features
    got = sae.steer(x.to(dev), clamp, mode="add").cpu()
    want = RefSAE(**w).steer(x, clamp, "add", True, "always")
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_steer_bf16_weights_and_empty_clamp(dev):
    sae, w = dev_sae(dev, 32, 256, "jumprelu", None, torch.bfloat16, seed=2)
    x = randn(9, 32, seed=3).to(dev)
    assert torch.equal(sae.steer(x, {}), x)
    y = sae.steer(x, {5: 4.0})
    want = RefSAE(**w).steer(x.cpu(), {5: 4.0}, "set", True, "always")
    torch.testing.assert_close(y.cpu().double(), want, atol=1e-3, rtol=1e-3)


# ---- autograd, compile, streams, graphs, hooks ------------------------------------------------------

@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_gradients_match_the_cpu(dev, activation):
    w = make_weights(24, 300, activation, 16, seed=5)
    x = randn(40, 24, seed=6)
    grads = {}
    for label, where in (("cpu", "cpu"), ("dev", dev)):
        with cpu_kernels() if label == "cpu" else contextlib.nullcontext():
            params = {n: w[n].clone().to(where).requires_grad_(True) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
            xd = x.to(where).requires_grad_(True)
            y = sn.functional.reconstruct(xd, params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"],
                                          activation=activation, k=w["k"],
                                          threshold=None if w["threshold"] is None else w["threshold"].to(where))
            ((y - xd.detach()) ** 2).sum().backward()
            grads[label] = {n: p.grad.cpu() for n, p in params.items()} | {"x": xd.grad.cpu()}
    for name in grads["cpu"]:
        torch.testing.assert_close(grads["dev"][name], grads["cpu"][name], atol=1e-4, rtol=1e-4, msg=name)


@gpu_only
def test_torch_compile_fullgraph():
    pytest.importorskip("triton")
    sae, _ = dev_sae("cuda", 64, 1024, "topk", 32, torch.bfloat16)
    x = randn(48, 64).to("cuda")
    f = torch.compile(lambda t: sae(t), fullgraph=True)
    torch.testing.assert_close(f(x), sae(x))


@gpu_only
def test_side_stream_and_cuda_graph_capture():
    sae, _ = dev_sae("cuda", 64, 4096, "topk", 32, torch.bfloat16, seed=1)
    x = randn(128, 64, seed=1).to("cuda")
    eager = sae.encode(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = sae.encode(x)
        on_side_again = sae.encode(x)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(on_side.indices, eager.indices) and torch.equal(on_side_again.values, eager.values)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = sae.encode(x)
    fresh = randn(128, 64, seed=2).to("cuda")
    x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    want = sae.encode(fresh)
    assert torch.equal(captured.indices, want.indices) and torch.equal(captured.values, want.values)


@gpu_only
def test_cuda_graph_capture_without_an_eager_call_first():
    # With lazy module loading the first launch of a kernel loads it, which a capture forbids; the
    # kernels load when an SAE's weights reach the GPU. A fresh process: nothing loaded before.
    import subprocess
    import sys
    code = """
import torch, sae_native as sn
g = torch.Generator().manual_seed(0)
d_in, d_sae = 64, 4096
w = [t.to("cuda") for t in (torch.randn(d_in, d_sae, generator=g).bfloat16(), torch.zeros(d_sae),
                            torch.randn(d_sae, d_in, generator=g).bfloat16(), torch.zeros(d_in))]
sae = sn.SAE(*w, activation="topk", k=32)
x = torch.randn(128, d_in, device="cuda")
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    y = sae.steer(x, sae.parse_clamp({5: 3.0}))
    codes = sae.encode(x)
graph.replay()
torch.cuda.synchronize()
eager = sae.encode(x)
assert torch.equal(codes.indices, eager.indices), "captured encode differs"
torch.testing.assert_close(y, sae.steer(x, {5: 3.0}))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_hooks_on_a_model(dev):
    pytest.importorskip("transformers")
    from models import random_sae, tiny_llama
    model, site = tiny_llama()
    model = model.to(dev)
    sae = random_sae("jumprelu").to(dev)
    ids = torch.randint(3, 100, (2, 9), device=dev)
    with sn.record(model, site, sae) as rec:
        base = model(ids).logits
    assert rec.codes[0].values.device.type == dev
    with sn.steer(model, site, sae, {5: 50.0}):
        steered = model(ids).logits
    assert not torch.allclose(base, steered)
    with sn.splice(model, site, sae, keep_error=True):
        spliced = model(ids).logits
    torch.testing.assert_close(spliced, base, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu():
    sae, w = dev_sae("cuda", 32, 500, "topk", 16, torch.bfloat16)
    sae1 = sae.copy().to("cuda:1")
    x = randn(20, 32)
    a = sae.encode(x.to("cuda")).to("cpu")
    b = sae1.encode(x.to("cuda:1")).to("cpu")
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_gemm_path_in_several_row_blocks(dev, activation, monkeypatch):
    """The cuBLAS path holds a bounded block of pre-activations: with a buffer of 64 rows, a batch of
    150 rows takes three GEMMs, each followed by the epilogue on its rows, and equals the reference."""
    from sae_native.backends.cuda import launch, plan as launch_plan
    monkeypatch.setattr(launch_plan, "GEMM_BUFFER_FLOATS", 64 * 500)
    calls = []
    real = launch._gemm
    monkeypatch.setattr(launch, "_gemm", lambda u, W, out: (calls.append(u.shape[0]), real(u, W, out)))
    before = sn.set_encode_path("gemm")
    try:
        for wdtype in WDTYPES:
            calls.clear()
            sae, w = dev_sae(dev, 24, 500, activation, 16, wdtype)
            x = randn(150, 24)
            codes = encode_on(dev, sae, x)
            ref, xr = reference_for(w, x)
            (check_topk_codes if activation == "topk" else check_threshold_codes)(codes, ref, xr)
            assert calls[:3] == [64, 64, 22], calls
    finally:
        sn.set_encode_path(before)
