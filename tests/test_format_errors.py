"""Broken and hostile files: every load error is a FormatError naming the file and the field, and
nothing loads a broken SAE or reads more than it needs."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import format_fixtures as ff
import sae_native as sn
from sae_native.formats import FormatError


def _saelens(tmp_path, arch="topk", **cfg):
    path = tmp_path / "sae"
    w = ff.saelens_weights(8, 32, arch)
    ff.write_saelens(path, {"architecture": arch, "d_in": 8, "d_sae": 32, **cfg}, w)
    return path, w


@pytest.mark.parametrize("k, match", [(0, r"'k' must be in \[1, 32\], got 0"), (True, "expected an integer 'k', got True"),
                                      (10**9, r"'k' must be in \[1, 32\], got 1000000000"),
                                      ("4", "expected an integer 'k', got '4'"), (None, "expected an integer 'k'")])
def test_saelens_bad_k(tmp_path, k, match):
    path, _ = _saelens(tmp_path, k=k)
    with pytest.raises(FormatError, match=match) as e:
        sn.load(path)
    assert "cfg.json" in str(e.value)


@pytest.mark.parametrize("value, match", [("abc", "expected a number 'norm_scaling_factor'"),
                                          (0, "'norm_scaling_factor' must be > 0"),
                                          (-2.0, "'norm_scaling_factor' must be > 0"),
                                          (True, "expected a number 'norm_scaling_factor'")])
def test_saelens_bad_norm_scaling_factor(tmp_path, value, match):
    path, _ = _saelens(tmp_path, "standard", normalize_activations="expected_average_only_in",
                       norm_scaling_factor=value)
    with pytest.raises(FormatError, match=match) as e:
        sn.load(path)
    assert "cfg.json" in str(e.value)


def test_saelens_log_threshold_that_overflows(tmp_path):
    path = tmp_path / "sae"
    w = ff.saelens_weights(8, 32, "jumprelu")
    w["log_threshold"] = w.pop("threshold").log()
    w["log_threshold"][3] = 1000.0          # exp(1000) is inf in float32
    ff.write_saelens(path, {"architecture": "jumprelu", "d_in": 8, "d_sae": 32}, w)
    with pytest.raises(FormatError, match=r"sae: threshold holds non-finite values"):
        sn.load(path)


def test_saelens_d_in_is_not_a_bool(tmp_path):
    path, _ = _saelens(tmp_path, "standard")
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["d_in"] = True
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"cfg.json: expected an integer 'd_in', got True"):
        sn.load(path)


def test_deeply_nested_json(tmp_path):
    path, _ = _saelens(tmp_path)
    (path / "cfg.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(FormatError, match=r"cfg.json: JSON nested too deeply"):
        sn.load(path)


@pytest.mark.parametrize("norm, match", [("abc", "expected a number 'in'"), (0, "'in' must be > 0"),
                                         ({"in": "x"}, "expected a number 'in'"), (float("nan"), "must be finite")])
def test_llama_scope_bad_norm(tmp_path, norm, match):
    path = tmp_path / "llama"
    ff.write_llama_scope(path, 8, 32)
    hp = json.loads((path / "hyperparams.json").read_text())
    hp["dataset_average_activation_norm"] = norm
    (path / "hyperparams.json").write_text(json.dumps(hp))
    with pytest.raises(FormatError, match=match) as e:
        sn.load(path)
    assert "hyperparams.json: dataset_average_activation_norm" in str(e.value)


def _npz(path, extra=None, **drop):
    w = ff.gemma_weights(8, 32)
    for name in drop:
        w.pop(name)
    os.makedirs(path, exist_ok=True)
    np.savez_compressed(path / "params.npz", **{k: v.numpy() for k, v in w.items()}, **(extra or {}))
    return path / "params.npz"


def test_npz_truncated(tmp_path):
    file = _npz(tmp_path / "g")
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"params.npz: cannot read as .npz \(BadZipFile"):
        sn.load(tmp_path / "g")


def test_npz_array_of_the_wrong_shape_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "g"
    w = ff.gemma_weights(8, 32)
    w["b_enc"] = torch.zeros(2 ** 20)
    os.makedirs(path)
    np.savez_compressed(path / "params.npz", **{k: v.numpy() for k, v in w.items()})
    with pytest.raises(FormatError, match=r"array 'b_enc' has shape \[1048576\], expected \[32\]"):
        sn.load(path)


def test_npz_header_that_lies_about_its_size(tmp_path):
    file = _npz(tmp_path / "g")
    # Rewrite b_enc's entry: a header declaring [32] float32 but only half the bytes behind it.
    with zipfile.ZipFile(file) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    entries["b_enc.npy"] = entries["b_enc.npy"][:-64]
    with zipfile.ZipFile(file, "w") as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    with pytest.raises(FormatError, match=r"array 'b_enc' declares \[32\] float32 \(128 bytes\) but its entry holds 64"):
        sn.load(tmp_path / "g")


def test_npz_reads_only_the_arrays_it_needs(tmp_path):
    """A 2 MiB params.npz with a 2 GiB zero array beside the weights loaded with a 2.27 GB peak."""
    path = tmp_path / "g"
    _npz(path, extra={"junk": np.zeros(2 ** 29, np.float32)})
    assert os.path.getsize(path / "params.npz") < 4 * 2 ** 20
    code = (f"import resource, sae_native as sn; r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"sae = sn.load({str(path)!r}); "
            f"print(sae.d_sae, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r) * 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    d_sae, grew = map(int, out.stdout.split())
    assert d_sae == 32 and grew < 64 * 2 ** 20, f"peak grew by {grew / 2**20:.0f} MiB"


def _dl(tmp_path, cls="AutoEncoderTopK"):
    path = tmp_path / "dl"
    state = ff.dl_state(cls, 8, 32)
    ff.write_dl(path, cls, state, 8, 32)
    return path, state


@pytest.mark.parametrize("edit, match", [
    (lambda s, c: c.update(trainer=[1, 2]), r"config.json: 'trainer' must be an object"),
    (lambda s, c: c["trainer"].update(dict_class=7), r"trainer.dict_class must be a string, got 7"),
    (lambda s, c: s.update(k=torch.tensor([1, 2])), r"ae.pt: 'k' must be one integer"),
    (lambda s, c: s.update(k=torch.tensor(0)), r"ae.pt: 'k' must be in \[1, 32\], got 0"),
    (lambda s, c: s.update(k=torch.tensor(2.5)), r"ae.pt: 'k' must be one integer"),
    (lambda s, c: s.update({"encoder.weight": torch.zeros(8)}), r"'encoder.weight' has shape \[8\], expected"),
    (lambda s, c: s.update({"decoder.weight": torch.zeros(3, 3)}), r"'decoder.weight' has shape \[3, 3\]"),
    (lambda s, c: s.update({"b_dec": "text"}), r"ae.pt: 'b_dec' is a str, expected a tensor"),
])
def test_malformed_dictionary_learning(tmp_path, edit, match):
    path, state = _dl(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    edit(state, cfg)
    torch.save(state, path / "ae.pt")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=match):
        sn.load(path)


def test_batchtopk_threshold_must_be_one_number(tmp_path):
    path, state = _dl(tmp_path, "BatchTopKSAE")
    state["threshold"] = torch.ones(3)
    torch.save(state, path / "ae.pt")
    with pytest.raises(FormatError, match=r"ae.pt: a BatchTopKSAE threshold is one number, got shape \[3\]"):
        sn.load(path)


def test_errors_name_the_file_even_from_deep_inside_a_loader(tmp_path, monkeypatch):
    from sae_native.formats import saelens
    path, _ = _saelens(tmp_path)

    def broken(*_a, **_k):
        raise KeyError("something unforeseen")
    monkeypatch.setattr(saelens, "read_safetensors", broken)
    with pytest.raises(FormatError, match=r"sae: cannot load as saelens \(KeyError"):
        sn.load(path)


def test_nonfinite_weights_are_refused(tmp_path):
    path = tmp_path / "sae"
    w = ff.saelens_weights(8, 32, "standard")
    w["W_dec"][4, 2] = float("inf")
    ff.write_saelens(path, {"architecture": "standard", "d_in": 8, "d_sae": 32}, w)
    with pytest.raises(FormatError, match=r"W_dec holds non-finite values"):
        sn.load(path)

