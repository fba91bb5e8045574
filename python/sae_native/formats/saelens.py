"""SAELens: a folder with cfg.json, sae_weights.safetensors and optionally sparsity.safetensors.

Architectures standard (ReLU), topk, jumprelu (also what BatchTopK saves for inference) and gated
(loaded as the equivalent JumpReLU, one GEMM). cfg keys: d_in, d_sae, dtype ("float32" or
"torch.float32"), apply_b_dec_to_input, normalize_activations (none, expected_average_only_in,
constant_norm_rescale, layer_norm), k and rescale_acts_by_decoder_norm (topk), hook_name (kept as
metadata). Pre-6.0 configs (hook_point, activation_fn_str, activation_fn_kwargs.k, boolean
normalize_activations, finetuning_scaling_factor) are read as SAELens itself reads them.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import torch

from ._common import (FormatError, Spec, cfg_int, cfg_number, gated_as_jumprelu, parse_dtype, read_json,
                      read_safetensors, tensor)

CFG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
META_KEYS = ("hook_name", "hook_head_index", "model_name", "context_size", "prepend_bos", "dataset_path",
             "reshape_activations", "sae_lens_version", "neuronpedia_id")


def detect(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CFG)) and \
        os.path.isfile(os.path.join(path, WEIGHTS))


def _defaults(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """SAELens's handling of pre-6.0 configs (handle_pre_6_0_config)."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    cfg = {renames.get(k, k): v for k, v in cfg.items()}
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    for key in META_KEYS:  # 6.x keeps these under "metadata"
        if key not in cfg and key in meta:
            cfg[key] = meta[key]
    cfg.setdefault("apply_b_dec_to_input", True)
    cfg.setdefault("architecture", "standard")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if cfg.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        cfg["architecture"] = "topk"
        cfg["k"] = kwargs["k"]
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else "none"
    cfg["normalize_activations"] = norm or "none"
    return cfg


def load(path: str, progress=None) -> Spec:
    cfg_path, weights_path = os.path.join(path, CFG), os.path.join(path, WEIGHTS)
    cfg = _defaults(read_json(cfg_path))
    d_in, d_sae, arch = cfg_int(cfg, "d_in", cfg_path), cfg_int(cfg, "d_sae", cfg_path), cfg["architecture"]
    state = read_safetensors(weights_path, progress=progress)
    W_enc = tensor(state, "W_enc", weights_path, (d_in, d_sae))
    W_dec = tensor(state, "W_dec", weights_path, (d_sae, d_in))
    b_dec = tensor(state, "b_dec", weights_path, (d_in,))
    threshold, k = None, None
    if arch == "gated":
        W_enc, b_enc, threshold = gated_as_jumprelu(
            W_enc, tensor(state, "b_gate", weights_path, (d_sae,)), tensor(state, "b_mag", weights_path, (d_sae,)),
            tensor(state, "r_mag", weights_path, (d_sae,)))
        activation = "jumprelu"
    else:
        b_enc = tensor(state, "b_enc", weights_path, (d_sae,))
        if arch == "standard":
            activation = "relu"
        elif arch == "topk":
            activation, k = "topk", cfg_int(cfg, "k", cfg_path, 1, d_sae)
        elif arch == "jumprelu":
            activation = "jumprelu"
            if "threshold" in state:
                threshold = tensor(state, "threshold", weights_path, (d_sae,))
            else:  # older checkpoints store log(threshold)
                threshold = tensor(state, "log_threshold", weights_path, (d_sae,)).exp()
        elif arch in ("batchtopk", "matryoshka_batchtopk"):
            raise FormatError(f"{cfg_path}: architecture {arch!r} is a training checkpoint; SAELens saves BatchTopK "
                              "SAEs for inference as 'jumprelu' (save_inference_model): load that save")
        else:
            raise FormatError(f"{cfg_path}: architecture {arch!r} is not supported (standard, topk, jumprelu, gated)")
    spec = Spec(W_enc, b_enc, W_dec, b_dec, activation, k=k, threshold=threshold,
                apply_b_dec_to_input=bool(cfg["apply_b_dec_to_input"]),
                dtype=parse_dtype(cfg.get("dtype", "float32"), f"{cfg_path}: dtype"),
                metadata={key: cfg[key] for key in META_KEYS if key in cfg})
    if cfg.get("rescale_acts_by_decoder_norm"):
        if activation != "topk":
            raise FormatError(f"{cfg_path}: rescale_acts_by_decoder_norm is a topk option")
        spec.fold_decoder_norm_rescale()
    scale = state.get("finetuning_scaling_factor", state.get("scaling_factor"))
    if scale is not None and not bool(torch.all(scale == 1)):
        spec.fold_feature_scale(tensor(state, "finetuning_scaling_factor", weights_path, (d_sae,), "scaling_factor"))
    norm = cfg["normalize_activations"]
    if norm == "expected_average_only_in":
        # SAELens folds this constant into the weights when training ends; a factor given in the
        # config is folded here the same way, otherwise the weights are used as they are (as
        # SAELens's own loader does).
        scale = cfg_number(cfg, "norm_scaling_factor", cfg_path, positive=True)
        if scale is not None:
            spec.fold_input_scale(scale)
    elif norm in ("constant_norm_rescale", "layer_norm"):
        spec.normalize = norm
    elif norm != "none":
        raise FormatError(f"{cfg_path}: normalize_activations {norm!r} is not supported "
                          "(none, expected_average_only_in, constant_norm_rescale, layer_norm)")
    sparsity_path = os.path.join(path, SPARSITY)
    if os.path.isfile(sparsity_path):
        spec.metadata["log_feature_sparsity"] = tensor(read_safetensors(sparsity_path), "sparsity", sparsity_path,
                                                       (d_sae,))
    return spec


def save(sae, path: str) -> None:
    """Writes `sae` as a SAELens folder that SAELens (6.x) and sn.load read back exactly."""
    from safetensors.torch import save_file
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}.get(sae.activation)
    if arch is None:
        raise ValueError(f"sae: SAELens has no {sae.activation!r} architecture to save it as")
    os.makedirs(path, exist_ok=True)
    dtype = sae.W_enc.dtype
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}, os.path.join(path, WEIGHTS))
    meta = {k: v for k, v in sae.metadata.items() if k in META_KEYS and k != "sae_lens_version"}
    cfg = {"architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": str(dtype).replace("torch.", ""),
           "device": "cpu", "apply_b_dec_to_input": sae.apply_b_dec_to_input,
           "normalize_activations": sae.normalize, "reshape_activations": meta.pop("reshape_activations", "none"),
           "metadata": {**meta, "sae_lens_version": "6.0.0", "saved_by": "sae-native"}}
    if arch == "topk":
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = False
    with open(os.path.join(path, CFG), "w") as f:
        json.dump(cfg, f, indent=1)
    sparsity = sae.metadata.get("log_feature_sparsity")
    if sparsity is None and sae.stats is not None:
        sparsity = torch.log10(sae.stats.frequency.float() + 1e-10)
    if sparsity is not None:
        save_file({"sparsity": sparsity.detach().float().cpu().contiguous()}, os.path.join(path, SPARSITY))
