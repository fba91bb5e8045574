"""dictionary_learning (Marks et al.): ae.pt (a state dict) with config.json.

config.json's trainer.dict_class picks the class: AutoEncoder (ReLU: encoder.weight [d_sae, d_in],
encoder.bias, decoder.weight [d_in, d_sae], bias = b_dec), AutoEncoderTopK (top-k of relu(pre),
k in the state dict), BatchTopKSAE / MatryoshkaBatchTopKSAE (inference uses the learned scalar
threshold on relu(pre)), JumpReluAutoEncoder (W_enc, b_enc, W_dec, b_dec, threshold; x not shifted
by b_dec) and GatedAutoEncoder (loaded as the equivalent JumpReLU). Without config.json the class
is read from the tensor names where that is unambiguous.
"""
from __future__ import annotations

import os

import torch

from ._common import FormatError, Spec, cfg_int, gated_as_jumprelu, read_json, tensor, torch_load


def _file(path: str) -> str:
    return path if path.endswith(".pt") else os.path.join(path, "ae.pt")


def detect(path: str) -> bool:
    f = _file(path)
    return os.path.isfile(f) and os.path.basename(f) == "ae.pt"


def _guess_class(state) -> str:
    if "W_enc" in state and "threshold" in state:
        return "JumpReluAutoEncoder"
    if "r_mag" in state and "gate_bias" in state:
        return "GatedAutoEncoder"
    if "bias" in state and "encoder.weight" in state and "k" not in state:
        return "AutoEncoder"
    return ""


def load(path: str, progress=None) -> Spec:
    file = _file(path)
    state = torch_load(file)
    if not isinstance(state, dict):
        raise FormatError(f"{file}: expected a state dict, got {type(state).__name__}")
    cfg_path = os.path.join(os.path.dirname(file), "config.json")
    trainer = read_json(cfg_path).get("trainer", {}) if os.path.isfile(cfg_path) else {}
    if not isinstance(trainer, dict):
        raise FormatError(f"{cfg_path}: 'trainer' must be an object, got {type(trainer).__name__}")
    cls = trainer.get("dict_class") or _guess_class(state)
    if not isinstance(cls, str):
        raise FormatError(f"{cfg_path}: trainer.dict_class must be a string, got {cls!r}")
    if not cls:
        raise FormatError(f"{file}: cannot tell AutoEncoderTopK from BatchTopKSAE without {cfg_path} "
                          "(trainer.dict_class)")
    meta = {"dict_class": cls, **{k: trainer[k] for k in ("lm_name", "layer", "submodule_name") if k in trainer}}
    if cls == "JumpReluAutoEncoder":
        W_enc = tensor(state, "W_enc", file)
        if W_enc.dim() != 2:
            raise FormatError(f"{file}: tensor 'W_enc' has shape {list(W_enc.shape)}, expected [d_in, d_sae]")
        d_in, d_sae = W_enc.shape
        return Spec(W_enc, tensor(state, "b_enc", file, (d_sae,)), tensor(state, "W_dec", file, (d_sae, d_in)),
                    tensor(state, "b_dec", file, (d_in,)), "jumprelu",
                    threshold=tensor(state, "threshold", file, (d_sae,)), apply_b_dec_to_input=False, metadata=meta)
    enc = tensor(state, "encoder.weight", file)
    if enc.dim() != 2:
        raise FormatError(f"{file}: tensor 'encoder.weight' has shape {list(enc.shape)}, expected [d_sae, d_in]")
    d_sae, d_in = enc.shape
    _check_cfg(trainer, d_in, d_sae, file, cfg_path)
    dec = tensor(state, "decoder.weight", file, (d_in, d_sae))
    if cls == "AutoEncoder":
        return Spec(enc.t(), tensor(state, "encoder.bias", file, (d_sae,)), dec.t(),
                    tensor(state, "bias", file, (d_in,)), "relu", metadata=meta)
    if cls == "GatedAutoEncoder":
        W, b, thr = gated_as_jumprelu(enc.t(), tensor(state, "gate_bias", file, (d_sae,)),
                                      tensor(state, "mag_bias", file, (d_sae,)), tensor(state, "r_mag", file, (d_sae,)))
        return Spec(W, b, dec.t(), tensor(state, "decoder_bias", file, (d_in,)), "jumprelu", threshold=thr,
                    metadata=meta)
    b_enc, b_dec = tensor(state, "encoder.bias", file, (d_sae,)), tensor(state, "b_dec", file, (d_in,))
    if cls == "AutoEncoderTopK":
        if "k" in state:
            k = state["k"]
            if isinstance(k, torch.Tensor):
                if k.numel() != 1 or k.is_floating_point():
                    raise FormatError(f"{file}: 'k' must be one integer, got a {k.dtype} tensor of shape "
                                      f"{list(k.shape)}")
                k = int(k)
            k = cfg_int({"k": k}, "k", file, 1, d_sae)
        else:
            k = cfg_int(trainer, "k", f"{cfg_path}: trainer", 1, d_sae)
        return Spec(enc.t(), b_enc, dec.t(), b_dec, "topk", k=k, metadata=meta)
    if cls in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        # relu(pre) * (relu(pre) > t): a JumpReLU at max(t, 0) (t < 0 before training sets it).
        t = tensor(state, "threshold", file)
        if t.numel() != 1:
            raise FormatError(f"{file}: a {cls} threshold is one number, got shape {list(t.shape)}")
        t = float(t)
        return Spec(enc.t(), b_enc, dec.t(), b_dec, "jumprelu", threshold=torch.full((d_sae,), max(t, 0.0)),
                    metadata=meta)
    raise FormatError(f"{cfg_path}: dict_class {cls!r} is not supported (AutoEncoder, AutoEncoderTopK, "
                      "BatchTopKSAE, MatryoshkaBatchTopKSAE, JumpReluAutoEncoder, GatedAutoEncoder)")


def _check_cfg(trainer, d_in: int, d_sae: int, file: str, cfg_path: str) -> None:
    for key, have in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in trainer and trainer[key] != have:
            raise FormatError(f"{file}: tensors give {key}={have} but {cfg_path} says {trainer[key]}")
