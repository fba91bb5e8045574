"""OpenAI's sparse_autoencoder (openai/sparse_autoencoder): a torch state dict (.pt).

Tensors: pre_bias [d_in] (subtracted before encoding, added after decoding), encoder.weight
[d_sae, d_in], latent_bias [d_sae], decoder.weight [d_in, d_sae]; "activation" names the class
("TopK" with activation_state_dict {"k": ...}, or "ReLU"). As in its from_state_dict, a TopK
autoencoder layer-normalizes its input ((x - mean) / (std + 1e-5), reconstructions mapped back).
"""
from __future__ import annotations

import os

from ._common import FormatError, Spec, cfg_int, tensor, torch_load

KEYS = ("pre_bias", "latent_bias", "encoder.weight", "decoder.weight")


def detect_state(state) -> bool:
    return isinstance(state, dict) and all(k in state for k in KEYS)


def load_state(state, file: str) -> Spec:
    enc = tensor(state, "encoder.weight", file)
    if enc.dim() != 2:
        raise FormatError(f"{file}: tensor 'encoder.weight' has shape {list(enc.shape)}, expected [d_sae, d_in]")
    d_sae, d_in = enc.shape
    dec = tensor(state, "decoder.weight", file, (d_in, d_sae))
    activation = state.get("activation", "ReLU")
    meta = {"activation_class": activation}
    if activation == "TopK":
        extra = state.get("activation_state_dict") or {}
        if not isinstance(extra, dict):
            raise FormatError(f"{file}: activation_state_dict must be a dict, got {type(extra).__name__}")
        k = cfg_int(extra, "k", f"{file}: activation_state_dict", 1, d_sae)
        post = extra.get("postact_fn", "ReLU")
        if post != "ReLU":
            raise FormatError(f"{file}: TopK with postact_fn {post!r} is not supported (ReLU)")
        return Spec(enc.t(), tensor(state, "latent_bias", file, (d_sae,)), dec.t(),
                    tensor(state, "pre_bias", file, (d_in,)), "topk", k=k, normalize="layer_norm", metadata=meta)
    if activation == "ReLU":
        return Spec(enc.t(), tensor(state, "latent_bias", file, (d_sae,)), dec.t(),
                    tensor(state, "pre_bias", file, (d_in,)), "relu", metadata=meta)
    raise FormatError(f"{file}: activation {activation!r} is not supported (TopK, ReLU)")


def detect(path: str) -> bool:
    return os.path.isfile(path) and path.endswith((".pt", ".pth")) and os.path.basename(path) != "ae.pt"


def load(path: str, progress=None) -> Spec:
    state = torch_load(path)
    if not detect_state(state):
        have = ", ".join(sorted(map(str, state))) if isinstance(state, dict) else type(state).__name__
        raise FormatError(f"{path}: not an OpenAI sparse_autoencoder state dict (needs {', '.join(KEYS)}; has {have})")
    return load_state(state, path)
