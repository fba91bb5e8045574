"""The backend layer: the op contract checked once for every device, the ``check`` argument, the
pure-torch kernels any device runs, and the package's import graph.

- The default kernels (backends/default.py) are registered as the CPU's for a while, and the public
  API is checked against the float64 reference through them: what an MPS or XPU tensor would run.
- An edited clamp or index tensor never reaches memory out of range, eagerly and compiled.
"""
import ast
import math
import os

import pytest
import torch

import sae_native as sn
from helpers import check_groupmax_codes, check_threshold_codes, check_topk_codes, make_pair, randn
from reference import RefSAE
from sae_native.backends import contract, default, registry

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "sae_native")


@pytest.fixture
def torch_kernels():
    """The pure-torch kernels registered for the CPU inside the test."""
    with registry.registered("cpu", {op: getattr(default, op) for op in registry.OPS}):
        yield


# ---- the pure-torch kernels through the public API -------------------------------------------------

@pytest.mark.parametrize("activation, k", [("topk", 5), ("topk", 40), ("jumprelu", None), ("relu", None),
                                           ("groupmax", 8)])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.float64])
def test_torch_kernels_encode_and_decode(torch_kernels, activation, k, wdtype):
    sae, ref = make_pair(17, 120, activation, k, dtype=wdtype, seed=3)
    x = randn(2, 9, 17, seed=4, dtype=torch.float64 if wdtype == torch.float64 else torch.float32)
    codes = sae.encode(x)
    check = {"topk": check_topk_codes, "groupmax": check_groupmax_codes}.get(activation, check_threshold_codes)
    check(codes, RefSAE(**{**ref.__dict__, "W_enc": ref.W_enc.float(), "W_dec": ref.W_dec.float()})
          if wdtype == torch.bfloat16 else ref, x)
    want = ref.decode_dense(codes.flatten().to_dense().double())
    torch.testing.assert_close(sae.decode(codes).reshape(-1, 17).double(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize("mode", ["set", "scale", "add"])
@pytest.mark.parametrize("keep_error, where", [(True, "always"), (False, "active")])
def test_torch_kernels_steer(torch_kernels, activation, mode, keep_error, where):
    sae, ref = make_pair(23, 97, activation, 11, seed=4)
    x = randn(17, 23, seed=2)
    fired = [f for f in torch.unique(sae.encode(x).indices).tolist() if f >= 0]
    clamp = {fired[0]: 5.0, fired[-1]: 0.0, 96: 2.5}
    got = sae.steer(x, clamp, mode=mode, keep_error=keep_error, where=where)
    torch.testing.assert_close(got.double(), ref.steer(x, clamp, mode, keep_error, where), atol=5e-5, rtol=5e-5)


def test_torch_kernels_gradients_match_the_native_ones():
    sae, _ = make_pair(12, 60, "topk", 6, seed=1)
    x = randn(9, 12, seed=2)

    def grads():
        params = [p.detach().clone().requires_grad_(True) for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
        y = sn.functional.reconstruct(x, *params, activation="topk", k=6)
        y.square().sum().backward()
        return [p.grad for p in params]
    native = grads()
    with registry.registered("cpu", {op: getattr(default, op) for op in registry.OPS}):
        torchs = grads()
    for a, b in zip(native, torchs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_torch_kernels_follow_the_nan_rules(torch_kernels):
    sae, _ = make_pair(12, 50, "jumprelu", seed=2)
    x = randn(5, 12)
    x[2, 3] = math.nan
    compact, full = sae.encode(x), sae.encode(x, nan="propagate")
    assert int(compact.counts[2]) == 1 and int(full.counts[2]) == 50 and full.k == 50


# ---- the default encodes on contract records (also the CUDA backend's fallbacks) ----------------------

def _args(op, sae, x, **kw):
    if op == "encode_threshold":
        return contract.encode_threshold(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.threshold, None, True)
    return getattr(contract, op)(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.k, None)


@pytest.mark.parametrize("d_sae, k", [(13, 13), (300, 7), (600, 250)])
def test_default_topk_matches_reference(d_sae, k):
    sae, ref = make_pair(17, d_sae, "topk", k, seed=d_sae)
    x = randn(37, 17, seed=k)
    values, indices = default.encode_topk(_args("encode_topk", sae, x))
    check_topk_codes(sn.SparseCodes(values, indices, d_sae), ref, x)


def test_default_topk_ties_and_nan_follow_the_contract():
    W = torch.zeros(2, 6)
    a = contract.encode_topk(torch.tensor([[1.0, 1.0], [math.nan, 0.0]]), W,
                             torch.tensor([0.0, 1.0, 1.0, -1.0, 1.0, 0.0]), None, 3, None)
    values, indices = default.encode_topk(a)
    assert indices[0].tolist() == [1, 2, 4] and values[0].tolist() == [1.0, 1.0, 1.0]
    assert indices[1].tolist() == [0, 1, 2] and all(math.isnan(v) for v in values[1].tolist())


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_default_threshold_matches_reference(activation):
    sae, ref = make_pair(19, 257, activation, seed=4)
    x = randn(41, 19, seed=2)
    values, indices, counts = default.encode_threshold(_args("encode_threshold", sae, x))
    check_threshold_codes(sn.SparseCodes(values, indices, 257, counts), ref, x)
    empty = default.encode_threshold(_args("encode_threshold", sae, x[:0]))
    assert empty[0].shape == (0, 0) and empty[2].shape == (0,)


def test_default_groupmax_matches_reference():
    sae, ref = make_pair(23, 120, "groupmax", 8, seed=3)
    x = randn(29, 23, seed=5)
    values, indices = default.encode_groupmax(_args("encode_groupmax", sae, x))
    check_groupmax_codes(sn.SparseCodes(values, indices, 120), ref, x)


def test_default_kernels_bound_their_memory(monkeypatch):
    # Row blocks: temporaries of at most _BUDGET elements exist at once; results agree.
    sae, ref = make_pair(9, 100, "topk", 5, seed=8)
    x = randn(50, 9, seed=1)
    whole = default.encode_topk(_args("encode_topk", sae, x))
    codes = sae.encode(x)
    decoded = sae.decode(codes)
    monkeypatch.setattr(default, "_BUDGET", 300)        # 3 rows at a time
    blocked = default.encode_topk(_args("encode_topk", sae, x))
    assert torch.equal(whole[1], blocked[1]) and torch.allclose(whole[0], blocked[0])
    d = default.decode(contract.decode(codes.values, codes.indices, sae.W_dec, sae.b_dec, True))
    torch.testing.assert_close(d, decoded, atol=1e-5, rtol=1e-5)
    sae_t, ref_t = make_pair(9, 100, "relu", seed=8)
    v, i, c = default.encode_threshold(_args("encode_threshold", sae_t, x))
    check_threshold_codes(sn.SparseCodes(v, i, 100, c), ref_t, x)


# ---- the contract: check=False never reads out of range; eager and compiled alike --------------------

def _steer_codes_call(sae, x, features, check):
    codes = sae.encode(x)
    return torch.ops.sae_native.steer_codes(x, codes.values, codes.indices, sae.W_dec, sae.b_dec, features,
                                            torch.ones(features.shape), "set", False, True, check)


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_check_false_skips_bad_entries_without_reading_them(kernels):
    """check=False: the kernels skip an out-of-range index or feature (never read) and the result is
    the op without it; the torch kernels say nothing, the CPU's raise anyway (reading their count is
    free). check=True raises on every backend."""
    sae, _ = make_pair(16, 40, "topk", 4)
    x = randn(5, 16)
    good = _steer_codes_call(sae, x, torch.tensor([3]), True)[0]
    bad = torch.tensor([3, 40])
    table = {op: getattr(default, op) for op in registry.OPS} if kernels == "torch" else {}
    with registry.registered("cpu", table):
        with pytest.raises(ValueError, match="features must lie in"):
            _steer_codes_call(sae, x, bad, True)
        if kernels == "torch":
            torch.testing.assert_close(_steer_codes_call(sae, x, bad, False)[0], good)
        else:
            with pytest.raises(ValueError, match="features must lie in"):
                _steer_codes_call(sae, x, bad, False)
        codes = sae.encode(x)
        wrong = codes.indices.clone()
        wrong[0, 0] = 10 ** 9
        with pytest.raises(ValueError, match="out of range"):
            torch.ops.sae_native.decode(codes.values, wrong, sae.W_dec, sae.b_dec, True)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_an_edited_clamp_never_reaches_memory_eager_or_compiled(compiled, activation):
    sae, _ = make_pair(16, 40, activation, 4)
    x = randn(3, 16)
    parsed = sae.parse_clamp({1: 5.0, 2: 1.0})
    fn = (lambda t: sae.steer(t, parsed))
    if compiled:
        fn = torch.compile(fn)
    fn(x)
    parsed.features.data[0] = 10 ** 11      # unseen by the version counter
    with pytest.raises(ValueError, match=r"features must lie in \[0, 40\)"):
        fn(x)


def test_edited_codes_never_reach_memory_compiled():
    sae, _ = make_pair(16, 40, "topk", 4)
    codes = sae.encode(randn(3, 16))
    decode = torch.compile(lambda v, i: sn.functional.decode(v, i, sae.W_dec, sae.b_dec))
    decode(codes.values, codes.indices)
    codes.indices.data[1, 2] = -(2 ** 40)
    with pytest.raises(ValueError, match="out of range"):
        decode(codes.values, codes.indices)


def test_every_op_checks_its_contract_once_for_every_device():
    # One check per op in contract.py, run by _ops in front of whatever kernel the device has.
    assert set(contract.CHECKS) == set(registry.OPS)
    assert set(registry.kernels_for("cpu")) == set(registry.OPS)
    with pytest.raises(ValueError, match=r"sae_native::decode: W_dec must be"):
        with registry.registered("cpu", {op: getattr(default, op) for op in registry.OPS}):
            torch.ops.sae_native.decode(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.int64), torch.ones(4, 5, 6),
                                        None, True)


# ---- the import graph ----------------------------------------------------------------------------------

def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, name: str, modules):
    """The package modules ``path`` imports, anywhere in the file (function-level imports too):
    ``from X import a`` is an edge to X.a when that is a module, else to X."""
    is_pkg = path.endswith("__init__.py")
    base = name if is_pkg else name.rsplit(".", 1)[0]
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parts = parts[:len(parts) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("sae_native"):
                for alias in node.names:
                    yield f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sae_native"):
                    yield alias.name


def test_the_import_graph_has_no_cycles():
    modules = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                modules[_module_name(path)] = path
    native = {"sae_native._C", "sae_native._cuda", "sae_native._cuda_test"}   # extension modules: leaves
    known = set(modules) | native
    graph = {m: sorted({t for t in _imports(p, m, known) if t in modules and t != m}) for m, p in modules.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m)
