"""Every supported format, loaded from its documented layout, against the source's own forward."""
import os
import pathlib

import pytest
import torch
from safetensors.torch import save_file

import format_fixtures as ff
import sae_native as sn
from sae_native.formats import FormatError

D_IN, D_SAE = 13, 29


def x_batch(d_in=D_IN, n=8, seed=11):
    return ff.rand(n, d_in, seed=seed) + 0.3


def check(sae, ref_z, ref_out, x):
    """The loaded SAE's codes and reconstruction equal the source's dense formula (float64)."""
    torch.testing.assert_close(sae.encode(x).to_dense().double(), ref_z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae(x).double(), ref_out, atol=1e-4, rtol=1e-4)


def round_trip(sae, tmp_path, x):
    """load -> save (SAELens format) -> load is exact."""
    sae.save(tmp_path / "resaved")
    again = sn.load(tmp_path / "resaved")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        a, b = getattr(sae, name), getattr(again, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b.to(a.dtype)), name
    assert (again.activation, again.k, again.normalize, again.apply_b_dec_to_input) == \
           (sae.activation, sae.k, sae.normalize, sae.apply_b_dec_to_input)
    assert torch.equal(again(x), sae(x))
    return again


# ---- SAELens -------------------------------------------------------------------------------------

SAELENS_CASES = [
    dict(architecture="standard"),
    dict(architecture="topk", k=5),
    dict(architecture="topk", k=5, rescale_acts_by_decoder_norm=True),
    dict(architecture="jumprelu"),
    dict(architecture="gated"),
    dict(architecture="jumprelu", apply_b_dec_to_input=False),
    dict(architecture="topk", k=5, normalize_activations="layer_norm"),
    dict(architecture="standard", normalize_activations="constant_norm_rescale"),
    dict(architecture="jumprelu", normalize_activations="expected_average_only_in"),
]


@pytest.mark.parametrize("case", SAELENS_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_saelens(tmp_path, case):
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "metadata": {"hook_name": "blocks.3.hook_resid_post",
                                                           "sae_lens_version": "6.5.0"}, **case}
    w = ff.saelens_weights(D_IN, D_SAE, case["architecture"])
    ff.write_saelens(tmp_path / "sae", cfg, w)
    sae = sn.load(tmp_path / "sae")
    assert sae.metadata["hook_name"] == "blocks.3.hook_resid_post" and sae.metadata["format"] == "saelens"
    x = 2.0 * x_batch()
    check(sae, *ff.saelens_forward(cfg, w, x), x)
    round_trip(sae, tmp_path, x)


def test_saelens_pre_6_config_log_threshold_and_scaling(tmp_path):
    w = ff.saelens_weights(D_IN, D_SAE, "topk")
    w["finetuning_scaling_factor"] = ff.rand(D_SAE, seed=9).abs() + 0.5
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "hook_point": "blocks.2.hook_resid_pre",
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6}, "normalize_activations": False,
           "finetuning_scaling_factor": True}
    ff.write_saelens(tmp_path / "old", cfg, w)
    sae = sn.load(tmp_path / "old")
    assert (sae.activation, sae.k, sae.metadata["hook_name"]) == ("topk", 6, "blocks.2.hook_resid_pre")
    x = x_batch()
    check(sae, *ff.saelens_forward({**cfg, "architecture": "topk", "k": 6}, w, x), x)
    # JumpReLU checkpoints that store log(threshold)
    wj = ff.saelens_weights(D_IN, D_SAE, "jumprelu")
    wj["log_threshold"] = wj.pop("threshold").log()
    ff.write_saelens(tmp_path / "log", {"d_in": D_IN, "d_sae": D_SAE, "architecture": "jumprelu"}, wj)
    torch.testing.assert_close(sn.load(tmp_path / "log").threshold, wj["log_threshold"].exp())


def test_saelens_sparsity_file_and_dtype(tmp_path):
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "architecture": "standard", "dtype": "bfloat16"}
    w = {k: v.to(torch.bfloat16) for k, v in ff.saelens_weights(D_IN, D_SAE, "standard").items()}
    ff.write_saelens(tmp_path / "sae", cfg, w)
    save_file({"sparsity": torch.linspace(-5, -1, D_SAE)}, tmp_path / "sae" / "sparsity.safetensors")
    sae = sn.load(tmp_path / "sae")
    assert sae.W_enc.dtype == torch.bfloat16
    assert torch.equal(sae.metadata["log_feature_sparsity"], torch.linspace(-5, -1, D_SAE))
    assert sn.load(tmp_path / "sae", dtype="float32").W_enc.dtype == torch.float32
    again = round_trip(sae, tmp_path, x_batch())
    assert torch.equal(again.metadata["log_feature_sparsity"], torch.linspace(-5, -1, D_SAE))


def test_orientation_comes_from_names_when_d_in_equals_d_sae(tmp_path):
    d = 16
    cfg = {"d_in": d, "d_sae": d, "architecture": "topk", "k": 3}
    w = ff.saelens_weights(d, d, "topk")
    ff.write_saelens(tmp_path / "sq", cfg, w)
    sae = sn.load(tmp_path / "sq")
    assert torch.equal(sae.W_enc, w["W_enc"]) and torch.equal(sae.W_dec, w["W_dec"])
    x = x_batch(d)
    check(sae, *ff.saelens_forward(cfg, w, x), x)


# ---- sparsify ------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation,k,d_sae", [("topk", 5, D_SAE), ("groupmax", 4, 32)])
def test_sparsify(tmp_path, activation, k, d_sae):
    w = ff.write_sparsify(tmp_path / "layers.3", D_IN, d_sae, k, activation)
    sae = sn.load(tmp_path / "layers.3")
    assert (sae.activation, sae.k, sae.metadata["hookpoint"]) == (activation, k, "layers.3")
    x = x_batch()
    check(sae, *ff.sparsify_forward(w, x, k, activation), x)
    if activation == "topk":
        round_trip(sae, tmp_path, x)
    else:
        with pytest.raises(ValueError, match="SAELens has no 'groupmax' architecture"):
            sae.save(tmp_path / "nope")


def test_sparsify_run_folder_and_unsupported(tmp_path):
    ff.write_sparsify(tmp_path / "run" / "layers.1", D_IN, D_SAE, 5)
    ff.write_sparsify(tmp_path / "run" / "layers.2", D_IN, D_SAE, 5)
    with pytest.raises(FormatError, match=r"one SAE per hookpoint; load one of its folders: .*layers.1, .*layers.2"):
        sn.load(tmp_path / "run")
    ff.write_sparsify(tmp_path / "tc", D_IN, D_SAE, 5, transcode=True)
    with pytest.raises(FormatError, match="transcoders are not supported"):
        sn.load(tmp_path / "tc")
    ff.write_sparsify(tmp_path / "skip", D_IN, D_SAE, 5, skip_connection=True)
    with pytest.raises(FormatError, match=r"skip connections \(W_skip\) are not supported"):
        sn.load(tmp_path / "skip")


# ---- Gemma Scope -----------------------------------------------------------------------------------

def test_gemma_scope_npz(tmp_path):
    w = ff.gemma_weights(D_IN, D_SAE)
    ff.write_gemma_npz(tmp_path / "layer_5", w)
    for path in (tmp_path / "layer_5", tmp_path / "layer_5" / "params.npz"):
        sae = sn.load(path)
        assert sae.apply_b_dec_to_input is False and sae.activation == "jumprelu"
        x = x_batch()
        check(sae, *ff.gemma_forward(w, x), x)
    round_trip(sae, tmp_path, x)


def test_gemma_scope_2(tmp_path):
    w = ff.gemma_weights(D_IN, D_SAE, seed=3)
    ff.write_gemma2(tmp_path / "resid_post" / "layer_5", w)
    sae = sn.load(tmp_path / "resid_post" / "layer_5")
    assert sae.metadata["variant"] == "gemma-scope-2"
    x = x_batch()
    check(sae, *ff.gemma_forward(w, x), x)
    round_trip(sae, tmp_path, x)
    ff.write_gemma2(tmp_path / "tc", w, affine_connection=True)
    with pytest.raises(FormatError, match="affine_connection"):
        sn.load(tmp_path / "tc")


# ---- dictionary_learning ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder",
                                 "GatedAutoEncoder"])
def test_dictionary_learning(tmp_path, cls):
    state = ff.dl_state(cls, D_IN, D_SAE)
    ff.write_dl(tmp_path / "ae", cls, state, D_IN, D_SAE)
    sae = sn.load(tmp_path / "ae")
    assert sae.metadata["dict_class"] == cls
    x = x_batch()
    check(sae, *ff.dl_forward(cls, state, x), x)
    round_trip(sae, tmp_path, x)


def test_dictionary_learning_without_config(tmp_path):
    state = ff.dl_state("AutoEncoder", D_IN, D_SAE)
    os.makedirs(tmp_path / "ae")
    torch.save(state, tmp_path / "ae" / "ae.pt")
    x = x_batch()
    check(sn.load(tmp_path / "ae" / "ae.pt"), *ff.dl_forward("AutoEncoder", state, x), x)
    torch.save(ff.dl_state("AutoEncoderTopK", D_IN, D_SAE), tmp_path / "ae" / "ae.pt")
    with pytest.raises(FormatError, match="cannot tell AutoEncoderTopK from BatchTopKSAE without"):
        sn.load(tmp_path / "ae")


# ---- OpenAI -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_openai(tmp_path, activation):
    state = ff.openai_state(D_IN, D_SAE, activation)
    torch.save(state, tmp_path / "v5_32k_layer_8.pt")
    sae = sn.load(tmp_path / "v5_32k_layer_8.pt")
    assert sae.normalize == ("layer_norm" if activation == "TopK" else "none")
    x = 3.0 * x_batch() + 1.0
    check(sae, *ff.openai_forward(state, x), x)
    round_trip(sae, tmp_path, x)


# ---- Llama Scope ------------------------------------------------------------------------------------

@pytest.mark.parametrize("nested", [True, False])
def test_llama_scope(tmp_path, nested):
    w, hp = ff.write_llama_scope(tmp_path / "L3R", D_IN, D_SAE, nested=nested)
    sae = sn.load(tmp_path / "L3R")
    assert sae.metadata["hook_name"] == "blocks.3.hook_resid_post"
    x = 2.0 * x_batch()
    check(sae, *ff.llama_scope_forward(w, hp, x), x)
    round_trip(sae, tmp_path, x)


# ---- safety and errors ------------------------------------------------------------------------------

class _Evil:
    marker = ""

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    state = ff.openai_state(D_IN, D_SAE)
    state["activation_state_dict"] = evil
    torch.save(state, tmp_path / "evil.pt")
    os.makedirs(tmp_path / "dl")
    torch.save({"W_enc": evil}, tmp_path / "dl" / "ae.pt")
    for path in (tmp_path / "evil.pt", tmp_path / "dl"):
        with pytest.raises(FormatError, match="refusing to load: the file holds pickled objects"):
            sn.load(path)
    assert not marker.exists()


def test_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        sn.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a known SAE format"):
        sn.load(tmp_path / "empty")
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "architecture": "standard"}
    w = ff.saelens_weights(D_IN, D_SAE, "standard")
    ff.write_saelens(tmp_path / "nob", cfg, {k: v for k, v in w.items() if k != "b_enc"})
    with pytest.raises(FormatError, match=r"sae_weights.safetensors: missing tensor 'b_enc'"):
        sn.load(tmp_path / "nob")
    ff.write_saelens(tmp_path / "shape", {**cfg, "d_in": D_IN + 1}, w)
    with pytest.raises(FormatError, match=r"tensor 'W_enc' has shape \[13, 29\], expected \[14, 29\]"):
        sn.load(tmp_path / "shape")
    ff.write_saelens(tmp_path / "int", cfg, {**w, "W_enc": torch.ones(D_IN, D_SAE, dtype=torch.int32)})
    with pytest.raises(FormatError, match=r"tensor 'W_enc' has dtype torch.int32, expected a floating-point"):
        sn.load(tmp_path / "int")
    ff.write_saelens(tmp_path / "cut", cfg, w)
    weights = tmp_path / "cut" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(FormatError, match=r"sae_weights.safetensors: cannot read as safetensors"):
        sn.load(tmp_path / "cut")
    ff.write_saelens(tmp_path / "arch", {**cfg, "architecture": "matching_pursuit"}, w)
    with pytest.raises(FormatError, match="architecture 'matching_pursuit' is not supported"):
        sn.load(tmp_path / "arch")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "cfg.json").write_text("{not json")
    save_file(w, tmp_path / "badjson" / "sae_weights.safetensors")
    with pytest.raises(FormatError, match="cfg.json: not valid JSON"):
        sn.load(tmp_path / "badjson")
    with pytest.raises(ValueError, match="format: expected one of"):
        sn.load(tmp_path / "nob", format="pickle")


def test_device_dtype_and_progress(tmp_path, capsys):
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "architecture": "jumprelu"}
    ff.write_saelens(tmp_path / "sae", cfg, ff.saelens_weights(D_IN, D_SAE, "jumprelu"))
    sae = sn.load(tmp_path / "sae", device="cpu", dtype=torch.float16, progress=True)
    assert sae.W_enc.dtype == torch.float16 and sae.threshold.dtype == torch.float32
    assert "sae_weights.safetensors" in capsys.readouterr().err  # the progress bar


# ---- the source libraries themselves, when installed --------------------------------------------------

@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_against_saelens_library(tmp_path, arch, norm):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens import SAE as LensSAE
    cfg_cls = {"standard": sae_lens.StandardSAEConfig, "topk": sae_lens.TopKSAEConfig,
               "jumprelu": sae_lens.JumpReLUSAEConfig, "gated": sae_lens.GatedSAEConfig}[arch]
    kwargs = {"k": 5} if arch == "topk" else {}
    model = LensSAE.from_dict(cfg_cls(d_in=D_IN, d_sae=D_SAE, normalize_activations=norm, **kwargs).to_dict())
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(ff.rand(*p.shape, seed=40 + i, scale=0.3).abs() if "threshold" in dict(model.named_parameters())
                    and p is model.threshold else ff.rand(*p.shape, seed=40 + i, scale=0.3))
    model.save_model(tmp_path / "lens")
    ours = sn.load(tmp_path / "lens")
    x = 2.0 * x_batch()
    with torch.no_grad():
        z = model.encode(x)
        out = model.decode(z)
    torch.testing.assert_close(ours.encode(x).to_dense(), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours(x), out, atol=1e-4, rtol=1e-4)
    if arch != "gated":  # our save is read by SAELens and runs the same forward
        ours.save(tmp_path / "ours")
        back = LensSAE.load_from_disk(tmp_path / "ours")
        with torch.no_grad():
            torch.testing.assert_close(back.decode(back.encode(x)), ours(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activation,k,d_sae", [("topk", 5, D_SAE), ("groupmax", 4, 32)])
def test_against_sparsify_library(tmp_path, activation, k, d_sae):
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=d_sae, k=k, activation=activation))
    with torch.no_grad():
        for i, p in enumerate(coder.parameters()):
            p.copy_(ff.rand(*p.shape, seed=60 + i, scale=0.3))
    coder.save_to_disk(tmp_path / "layers.0")
    ours = sn.load(tmp_path / "layers.0")
    x = x_batch()
    with torch.no_grad():
        enc = coder.encode(x)
        out = coder.decode(enc.top_acts, enc.top_indices)
    dense = torch.zeros(x.shape[0], d_sae).scatter(-1, enc.top_indices, enc.top_acts)
    torch.testing.assert_close(ours.encode(x).to_dense(), dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), out, atol=1e-5, rtol=1e-5)


def _dictionary_learning_classes():
    """dictionary_learning's classes, imported without its package __init__ (which needs nnsight)."""
    import importlib.util
    import sys
    import types
    if "dictionary_learning" in sys.modules and hasattr(sys.modules["dictionary_learning"], "__path__"):
        root = list(sys.modules["dictionary_learning"].__path__)[0]
    else:
        spec = importlib.util.find_spec("dictionary_learning")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("dictionary_learning not installed")
        root = list(spec.submodule_search_locations)[0]
    for name, sub in (("dictionary_learning", root), ("dictionary_learning.trainers", os.path.join(root, "trainers"))):
        if name not in sys.modules or not hasattr(sys.modules[name], "__path__"):
            mod = types.ModuleType(name)
            mod.__path__ = [sub]
            sys.modules[name] = mod
    try:
        from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
        from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
        from dictionary_learning.trainers.top_k import AutoEncoderTopK
    except ImportError as e:
        pytest.skip(f"dictionary_learning classes not importable: {e}")
    return {"AutoEncoder": AutoEncoder, "GatedAutoEncoder": GatedAutoEncoder,
            "JumpReluAutoEncoder": JumpReluAutoEncoder, "AutoEncoderTopK": AutoEncoderTopK,
            "BatchTopKSAE": BatchTopKSAE}


@pytest.mark.parametrize("cls", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder",
                                 "GatedAutoEncoder"])
def test_against_dictionary_learning_library(tmp_path, cls):
    classes = _dictionary_learning_classes()
    k = 5
    model = classes[cls](D_IN, D_SAE, k) if cls in ("AutoEncoderTopK", "BatchTopKSAE") else classes[cls](D_IN, D_SAE)
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            p.copy_(ff.rand(*p.shape, seed=80 + i, scale=0.3).abs() if name == "threshold"
                    else ff.rand(*p.shape, seed=80 + i, scale=0.3))
        if cls == "BatchTopKSAE":
            model.threshold.fill_(0.2)
    ff.write_dl(tmp_path / "ae", cls, model.state_dict(), D_IN, D_SAE, k)
    ours = sn.load(tmp_path / "ae")
    x = x_batch()
    with torch.no_grad():
        z = model.encode(x)
        out = model.decode(z)
    torch.testing.assert_close(ours.encode(x).to_dense(), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), out, atol=1e-5, rtol=1e-5)
