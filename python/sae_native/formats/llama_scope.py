"""Llama Scope (OpenMOSS, fnlp/Llama3_1-8B-Base-*): hyperparams.json with a safetensors file
(checkpoints/final.safetensors, or the only .safetensors in the folder).

Tensors: encoder.weight [d_sae, d_in], encoder.bias, decoder.weight [d_in, d_sae], decoder.bias.
hyperparams: d_model, d_sae, jump_relu_threshold (one scalar for every latent), and
dataset_average_activation_norm.in, the norm the inputs were scaled to sqrt(d_model) by. The
conversion is SAELens's (its Llama Scope loader followed by fold_activation_norm_scaling_factor):
with s = sqrt(d_model) / norm_in, W_enc * s, W_dec / s, b_dec / s, threshold = jump_relu_threshold * s,
x not shifted by b_dec. Transcoders (hook_point_in != hook_point_out) are not supported.
"""
from __future__ import annotations

import glob
import os

import torch

from ._common import FormatError, Spec, cfg_int, cfg_number, read_json, read_safetensors, tensor

HYPER = "hyperparams.json"


def detect(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, HYPER))


def _weights(path: str) -> str:
    final = os.path.join(path, "checkpoints", "final.safetensors")
    if os.path.isfile(final):
        return final
    found = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{final}: no such file (and {path} holds {len(found)} .safetensors files, not one)")


def load(path: str, progress=None) -> Spec:
    hp_path = os.path.join(path, HYPER)
    hp = read_json(hp_path)
    d_in, d_sae = cfg_int(hp, "d_model", hp_path), cfg_int(hp, "d_sae", hp_path)
    if hp.get("hook_point_out", hp.get("hook_point_in")) != hp.get("hook_point_in"):
        raise FormatError(f"{hp_path}: hook_point_in != hook_point_out: a transcoder, which is not supported")
    if hp.get("act_fn", "jumprelu") != "jumprelu":
        raise FormatError(f"{hp_path}: act_fn {hp.get('act_fn')!r} is not supported (jumprelu)")
    norm = hp.get("dataset_average_activation_norm")
    norm_in = cfg_number(norm if isinstance(norm, dict) else {"in": norm}, "in",
                         f"{hp_path}: dataset_average_activation_norm", positive=True)
    thr = cfg_number(hp, "jump_relu_threshold", hp_path)
    if thr is None:
        raise FormatError(f"{hp_path}: expected a number 'jump_relu_threshold', got None")
    file = _weights(path)
    state = read_safetensors(file, progress=progress)
    W_enc = tensor(state, "encoder.weight", file, (d_sae, d_in)).t()
    W_dec = tensor(state, "decoder.weight", file, (d_in, d_sae)).t()
    s = d_in ** 0.5 / float(norm_in) if norm_in else 1.0
    spec = Spec(W_enc, tensor(state, "encoder.bias", file, (d_sae,)), W_dec,
                tensor(state, "decoder.bias", file, (d_in,)), "jumprelu",
                threshold=torch.full((d_sae,), float(thr) * s), apply_b_dec_to_input=False,
                metadata={"hook_name": hp.get("hook_point_in"), "norm_scaling_factor": s})
    if norm_in:
        spec.fold_input_scale(s)
    return spec
