"""sparsify (EleutherAI, `eai-sparsify`): one folder per hookpoint with cfg.json and sae.safetensors.

Tensors: encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in];
activations topk and groupmax. Transcoders (transcode) and skip connections (W_skip) are not
supported: their output is not a reconstruction of their input.
"""
from __future__ import annotations

import os

from ._common import FormatError, Spec, cfg_int, read_json, read_safetensors, tensor

CFG, WEIGHTS = "cfg.json", "sae.safetensors"


def _is_hookpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CFG)) and os.path.isfile(os.path.join(path, WEIGHTS))


def detect(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    if _is_hookpoint(path):
        return True
    return any(_is_hookpoint(os.path.join(path, d)) for d in os.listdir(path))


def load(path: str, progress=None) -> Spec:
    if not _is_hookpoint(path):
        hooks = sorted(d for d in os.listdir(path) if _is_hookpoint(os.path.join(path, d)))
        raise FormatError(f"{path}: a sparsify run with one SAE per hookpoint; load one of its folders: "
                          f"{', '.join(os.path.join(path, h) for h in hooks)}")
    cfg_path, weights_path = os.path.join(path, CFG), os.path.join(path, WEIGHTS)
    cfg = read_json(cfg_path)
    if cfg.get("transcode"):
        raise FormatError(f"{cfg_path}: sparsify transcoders are not supported (transcode=true)")
    if cfg.get("skip_connection"):
        raise FormatError(f"{cfg_path}: sparsify skip connections (W_skip) are not supported")
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise FormatError(f"{cfg_path}: activation {activation!r} is not supported (topk, groupmax)")
    k = cfg_int(cfg, "k", cfg_path)
    state = read_safetensors(weights_path, progress=progress)
    if "W_skip" in state:
        raise FormatError(f"{weights_path}: has a W_skip tensor (skip connection), which is not supported")
    enc = tensor(state, "encoder.weight", weights_path)
    if enc.dim() != 2:
        raise FormatError(f"{weights_path}: tensor 'encoder.weight' has shape {list(enc.shape)}, expected [d_sae, d_in]")
    d_sae, d_in = enc.shape
    for key, want in (("d_in", d_in), ("num_latents", d_sae)):
        if cfg.get(key) not in (None, 0, want):
            raise FormatError(f"{weights_path}: tensor 'encoder.weight' has shape {list(enc.shape)}, but {cfg_path} "
                              f"says {key}={cfg[key]}")
    if cfg.get("num_latents") in (None, 0) and cfg.get("expansion_factor") and cfg.get("d_in"):
        if d_sae != cfg["expansion_factor"] * cfg["d_in"]:
            raise FormatError(f"{weights_path}: {d_sae} latents, but {cfg_path} says expansion_factor "
                              f"{cfg['expansion_factor']} x d_in {cfg['d_in']}")
    return Spec(enc.t(), tensor(state, "encoder.bias", weights_path, (d_sae,)),
                tensor(state, "W_dec", weights_path, (d_sae, d_in)), tensor(state, "b_dec", weights_path, (d_in,)),
                activation, k=k, apply_b_dec_to_input=True, metadata={"hookpoint": os.path.basename(
                    os.path.normpath(path))})
