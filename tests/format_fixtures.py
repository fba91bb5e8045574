"""Writers of each SAE format's documented layout (random weights), and each source library's own
forward formula in float64, as the reference the loaded sn.SAE must match."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

F64 = torch.float64


def rand(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def layer_norm(x):
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).std(-1, keepdim=True)
    return (x - mu) / (std + 1e-5), mu, std


def topk_dense(pre, k):
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


# ---- SAELens -------------------------------------------------------------------------------------

def saelens_weights(d_in, d_sae, arch, seed=0):
    w = {"W_enc": rand(d_in, d_sae, seed=seed) / d_in ** 0.5, "W_dec": rand(d_sae, d_in, seed=seed + 1) / d_in ** 0.5,
         "b_dec": rand(d_in, seed=seed + 2, scale=0.1)}
    if arch == "gated":
        w.update(b_gate=rand(d_sae, seed=seed + 3, scale=0.2), b_mag=rand(d_sae, seed=seed + 4, scale=0.2),
                 r_mag=rand(d_sae, seed=seed + 5, scale=0.3))
    else:
        w["b_enc"] = rand(d_sae, seed=seed + 3, scale=0.1)
    if arch == "jumprelu":
        w["threshold"] = rand(d_sae, seed=seed + 6, scale=0.2).abs()
    return w


def write_saelens(path, cfg, tensors):
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "sae_weights.safetensors"))
    with open(os.path.join(path, "cfg.json"), "w") as f:
        json.dump(cfg, f)


def saelens_forward(cfg, w, x):
    """SAELens 6.x's encode / decode (saes/*.py), float64."""
    w = {k: v.to(F64) for k, v in w.items()}
    x = x.to(F64)
    norm = cfg.get("normalize_activations", "none")
    shift, scale = torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
    if norm == "constant_norm_rescale":
        coeff = cfg["d_in"] ** 0.5 / x.norm(dim=-1, keepdim=True)
        x, scale = x * coeff, 1 / coeff
    elif norm == "layer_norm":
        x, shift, scale = layer_norm(x)
    u = x - w["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
    arch = cfg.get("architecture", "standard")
    dec = w["W_dec"]
    if "finetuning_scaling_factor" in w:
        dec = dec * w["finetuning_scaling_factor"][:, None]
    if arch == "gated":
        gate = (u @ w["W_enc"] + w["b_gate"]) > 0
        z = gate * (u @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]).relu()
    else:
        pre = u @ w["W_enc"] + w["b_enc"]
        if arch == "topk":
            if cfg.get("rescale_acts_by_decoder_norm"):
                pre = pre * w["W_dec"].norm(dim=-1)
                dec = dec / w["W_dec"].norm(dim=-1)[:, None]
            z = topk_dense(pre, cfg["k"])
        elif arch == "jumprelu":
            z = pre.relu() * (pre > w["threshold"])
        else:
            z = pre.relu()
    out = (z @ dec + w["b_dec"]) * scale + shift
    return z, out


# ---- sparsify ------------------------------------------------------------------------------------

def write_sparsify(path, d_in, d_sae, k, activation="topk", seed=0, **extra_cfg):
    os.makedirs(path, exist_ok=True)
    w = {"encoder.weight": rand(d_sae, d_in, seed=seed) / d_in ** 0.5, "encoder.bias": rand(d_sae, seed=seed + 1, scale=0.1),
         "W_dec": rand(d_sae, d_in, seed=seed + 2) / d_in ** 0.5, "b_dec": rand(d_in, seed=seed + 3, scale=0.1)}
    save_file(w, os.path.join(path, "sae.safetensors"))
    cfg = {"activation": activation, "expansion_factor": 32, "normalize_decoder": True, "num_latents": d_sae, "k": k,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d_in, **extra_cfg}
    with open(os.path.join(path, "cfg.json"), "w") as f:
        json.dump(cfg, f)
    return w


def sparsify_forward(w, x, k, activation):
    w = {kk: v.to(F64) for kk, v in w.items()}
    pre = ((x.to(F64) - w["b_dec"]) @ w["encoder.weight"].t() + w["encoder.bias"]).relu()
    if activation == "topk":
        z = topk_dense(pre, k)
    else:
        best = pre.unflatten(-1, (k, -1)).max(-1)
        idx = best.indices + torch.arange(0, pre.shape[-1], pre.shape[-1] // k)
        z = torch.zeros_like(pre).scatter(-1, idx, best.values)
    return z, z @ w["W_dec"] + w["b_dec"]


# ---- Gemma Scope ---------------------------------------------------------------------------------

def gemma_weights(d_in, d_sae, seed=0):
    return {"W_enc": rand(d_in, d_sae, seed=seed) / d_in ** 0.5, "W_dec": rand(d_sae, d_in, seed=seed + 1) / d_in ** 0.5,
            "b_enc": rand(d_sae, seed=seed + 2, scale=0.1), "b_dec": rand(d_in, seed=seed + 3, scale=0.1),
            "threshold": rand(d_sae, seed=seed + 4, scale=0.2).abs()}


def write_gemma_npz(path, w):
    os.makedirs(path, exist_ok=True)
    np.savez(os.path.join(path, "params.npz"), **{k: v.numpy() for k, v in w.items()})


def write_gemma2(path, w, **cfg):
    os.makedirs(path, exist_ok=True)
    save_file({k.lower(): v.contiguous() for k, v in w.items()}, os.path.join(path, "params.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "hf_hook_point_in":
                   "model.layers.5.output", **cfg}, f)


def gemma_forward(w, x):
    """The Gemma Scope tutorial's JumpReLU: no b_dec subtraction."""
    w = {k: v.to(F64) for k, v in w.items()}
    pre = x.to(F64) @ w["W_enc"] + w["b_enc"]
    z = (pre > w["threshold"]) * pre.relu()
    return z, z @ w["W_dec"] + w["b_dec"]


# ---- dictionary_learning -------------------------------------------------------------------------

def dl_state(cls, d_in, d_sae, k=4, seed=0):
    enc = rand(d_sae, d_in, seed=seed) / d_in ** 0.5
    dec = rand(d_in, d_sae, seed=seed + 1) / d_in ** 0.5
    if cls == "AutoEncoder":
        return {"bias": rand(d_in, seed=seed + 2, scale=0.1), "encoder.weight": enc,
                "encoder.bias": rand(d_sae, seed=seed + 3, scale=0.1), "decoder.weight": dec}
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {"k": torch.tensor(k, dtype=torch.int), "threshold": torch.tensor(0.15), "decoder.weight": dec,
                "encoder.weight": enc, "encoder.bias": rand(d_sae, seed=seed + 3, scale=0.1),
                "b_dec": rand(d_in, seed=seed + 2, scale=0.1)}
    if cls == "JumpReluAutoEncoder":
        return {"W_enc": enc.t().contiguous(), "b_enc": rand(d_sae, seed=seed + 3, scale=0.1),
                "W_dec": dec.t().contiguous(), "b_dec": rand(d_in, seed=seed + 2, scale=0.1),
                "threshold": rand(d_sae, seed=seed + 4, scale=0.2).abs()}
    if cls == "GatedAutoEncoder":
        return {"decoder_bias": rand(d_in, seed=seed + 2, scale=0.1), "encoder.weight": enc,
                "r_mag": rand(d_sae, seed=seed + 5, scale=0.3), "gate_bias": rand(d_sae, seed=seed + 6, scale=0.2),
                "mag_bias": rand(d_sae, seed=seed + 7, scale=0.2), "decoder.weight": dec}
    raise ValueError(cls)


def write_dl(path, cls, state, d_in, d_sae, k=4):
    os.makedirs(path, exist_ok=True)
    torch.save(state, os.path.join(path, "ae.pt"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"trainer": {"dict_class": cls, "activation_dim": d_in, "dict_size": d_sae, "k": k,
                               "lm_name": "EleutherAI/pythia-70m", "layer": 3}, "buffer": {"ctx_len": 128}}, f)


def dl_forward(cls, s, x):
    """dictionary_learning's encode / decode for each class, float64."""
    s = {k: (v.to(F64) if v.is_floating_point() else v) for k, v in s.items()}
    x = x.to(F64)
    if cls == "AutoEncoder":
        z = ((x - s["bias"]) @ s["encoder.weight"].t() + s["encoder.bias"]).relu()
        return z, z @ s["decoder.weight"].t() + s["bias"]
    if cls == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        z = (pre * (pre > s["threshold"])).relu()
        return z, z @ s["W_dec"] + s["b_dec"]
    if cls == "GatedAutoEncoder":
        x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].t()
        z = ((x_enc + s["gate_bias"]) > 0) * (s["r_mag"].exp() * x_enc + s["mag_bias"]).relu()
        return z, z @ s["decoder.weight"].t() + s["decoder_bias"]
    post = ((x - s["b_dec"]) @ s["encoder.weight"].t() + s["encoder.bias"]).relu()
    if cls == "AutoEncoderTopK":
        z = topk_dense(post, int(s["k"]))
    else:  # BatchTopKSAE, use_threshold=True
        z = post * (post > s["threshold"])
    return z, z @ s["decoder.weight"].t() + s["b_dec"]


# ---- OpenAI sparse_autoencoder ---------------------------------------------------------------------

def openai_state(d_in, d_sae, activation="TopK", k=4, seed=0):
    s = {"pre_bias": rand(d_in, seed=seed, scale=0.1), "latent_bias": rand(d_sae, seed=seed + 1, scale=0.1),
         "encoder.weight": rand(d_sae, d_in, seed=seed + 2) / d_in ** 0.5,
         "decoder.weight": rand(d_in, d_sae, seed=seed + 3) / d_in ** 0.5,
         "stats_last_nonzero": torch.zeros(d_sae, dtype=torch.long), "activation": activation}
    if activation == "TopK":
        s["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"}
    return s


def openai_forward(s, x):
    """openai/sparse_autoencoder's Autoencoder: LN preprocessing when the activation is TopK."""
    x = x.to(F64)
    shift, scale = torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
    if s["activation"] == "TopK":
        x, shift, scale = layer_norm(x)
    pre = (x - s["pre_bias"].to(F64)) @ s["encoder.weight"].to(F64).t() + s["latent_bias"].to(F64)
    z = topk_dense(pre, s["activation_state_dict"]["k"]) if s["activation"] == "TopK" else pre.relu()
    return z, (z @ s["decoder.weight"].to(F64).t() + s["pre_bias"].to(F64)) * scale + shift


# ---- Llama Scope -----------------------------------------------------------------------------------

def write_llama_scope(path, d_in, d_sae, thr=0.3, norm_in=5.0, seed=0, nested=True):
    folder = os.path.join(path, "checkpoints") if nested else path
    os.makedirs(folder, exist_ok=True)
    w = {"encoder.weight": rand(d_sae, d_in, seed=seed) / d_in ** 0.5, "encoder.bias": rand(d_sae, seed=seed + 1, scale=0.1),
         "decoder.weight": rand(d_in, d_sae, seed=seed + 2) / d_in ** 0.5, "decoder.bias": rand(d_in, seed=seed + 3, scale=0.1)}
    save_file(w, os.path.join(folder, "final.safetensors"))
    hp = {"d_model": d_in, "d_sae": d_sae, "hook_point_in": "blocks.3.hook_resid_post",
          "hook_point_out": "blocks.3.hook_resid_post", "jump_relu_threshold": thr, "act_fn": "jumprelu",
          "dataset_average_activation_norm": {"in": norm_in, "out": norm_in}, "top_k": 50}
    with open(os.path.join(path, "hyperparams.json"), "w") as f:
        json.dump(hp, f)
    return w, hp


def llama_scope_forward(w, hp, x):
    """SAELens's Llama Scope SAE after its norm fold, float64."""
    s = hp["d_model"] ** 0.5 / hp["dataset_average_activation_norm"]["in"]
    W_enc = w["encoder.weight"].to(F64).t() * s
    pre = x.to(F64) @ W_enc + w["encoder.bias"].to(F64)
    z = pre.relu() * (pre > hp["jump_relu_threshold"] * s)
    return z, z @ (w["decoder.weight"].to(F64).t() / s) + w["decoder.bias"].to(F64) / s
