"""Gemma Scope (Google DeepMind) JumpReLU SAEs.

Gemma Scope: params.npz with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold
(lowercase w_enc / w_dec accepted); x is not shifted by b_dec before encoding.
Gemma Scope 2: params.safetensors (w_enc, w_dec, b_enc, b_dec, threshold) with config.json
(architecture "jump_relu"). Transcoders and affine skip connections are not supported.
"""
from __future__ import annotations

import os

import torch

from ._common import FormatError, Spec, read_json, read_npz, read_safetensors, tensor


def _file(path: str, name: str) -> str:
    return path if os.path.basename(path) == name else os.path.join(path, name)


def _names(npz: str) -> set:
    import zipfile
    with zipfile.ZipFile(npz) as zf:
        return {n[:-4] for n in zf.namelist() if n.endswith(".npy")}


def detect(path: str) -> bool:
    return os.path.isfile(_file(path, "params.npz")) or (
        os.path.isfile(_file(path, "params.safetensors")) and
        os.path.isfile(os.path.join(os.path.dirname(_file(path, "params.safetensors")), "config.json")))


def _spec(state, file: str, metadata) -> Spec:
    W_enc = tensor(state, "W_enc", file, None, "w_enc")
    if W_enc.dim() != 2:
        raise FormatError(f"{file}: tensor 'W_enc' has shape {list(W_enc.shape)}, expected [d_in, d_sae]")
    d_in, d_sae = W_enc.shape
    W_dec = tensor(state, "W_dec", file, None, "w_dec")
    if tuple(W_dec.shape) != (d_sae, d_in):
        raise FormatError(f"{file}: tensor 'W_dec' has shape {list(W_dec.shape)}, expected [{d_sae}, {d_in}] "
                          "(a transcoder, whose output width differs, is not supported)")
    if "affine_skip_connection" in state or "W_skip" in state:
        raise FormatError(f"{file}: has an affine skip connection (a skip transcoder), which is not supported")
    spec = Spec(W_enc, tensor(state, "b_enc", file, (d_sae,)), W_dec, tensor(state, "b_dec", file, (d_in,)),
                "jumprelu", threshold=tensor(state, "threshold", file, (d_sae,)), apply_b_dec_to_input=False,
                metadata=metadata)
    scale = state.get("scaling_factor")
    if scale is not None and not bool(torch.all(torch.as_tensor(scale) == 1)):
        spec.fold_feature_scale(tensor(state, "scaling_factor", file, (d_sae,)))
    return spec


def load(path: str, progress=None) -> Spec:
    npz = _file(path, "params.npz")
    if os.path.isfile(npz):
        # W_enc first: its header gives d_in and d_sae, which every other array is checked against
        # before it is decompressed.
        state = read_npz(npz, ["W_enc", "w_enc"])
        W_enc = tensor(state, "W_enc", npz, None, "w_enc")
        if W_enc.dim() != 2:
            raise FormatError(f"{npz}: tensor 'W_enc' has shape {list(W_enc.shape)}, expected [d_in, d_sae]")
        d_in, d_sae = W_enc.shape
        shapes = {"W_dec": (d_sae, d_in), "w_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
                  "threshold": (d_sae,), "scaling_factor": (d_sae,)}
        state.update(read_npz(npz, shapes, shapes))
        if {"affine_skip_connection", "W_skip"} & _names(npz):
            raise FormatError(f"{npz}: has an affine skip connection (a skip transcoder), which is not supported")
        return _spec(state, npz, {"variant": "gemma-scope"})
    weights = _file(path, "params.safetensors")
    cfg_path = os.path.join(os.path.dirname(weights), "config.json")
    cfg = read_json(cfg_path)
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise FormatError(f"{cfg_path}: architecture {cfg.get('architecture')!r} is not supported (jump_relu)")
    if cfg.get("affine_connection"):
        raise FormatError(f"{cfg_path}: affine_connection (a skip transcoder) is not supported")
    meta = {"variant": "gemma-scope-2", **{k: cfg[k] for k in ("model_name", "hf_hook_point_in") if k in cfg}}
    return _spec(read_safetensors(weights, progress=progress), weights, meta)
