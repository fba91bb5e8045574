"""Tiny random Hugging Face models built from configs (no download), and SAEs that fit them."""
from __future__ import annotations

import math

import torch

import sae_native as sn

D = 32  # hidden size of the tiny models


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=D, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
    return LlamaForCausalLM(cfg).eval(), "model.layers.1"


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=128, n_embd=D, n_layer=4, n_head=4, n_positions=128, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval(), "transformer.h.1"


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def random_sae(activation="topk", d_in=D, d_sae=96, k=8, seed=0) -> sn.SAE:
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in)
    W_dec = torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_in)
    thr = 0.05 * torch.rand(d_sae, generator=g) if activation == "jumprelu" else None
    return sn.SAE(W_enc, 0.01 * torch.randn(d_sae, generator=g), W_dec, 0.01 * torch.randn(d_in, generator=g),
                  activation=activation, k=k if activation == "topk" else None, threshold=thr)


def orthonormal_sae(d=D, seed=0) -> sn.SAE:
    """Tied ReLU SAE with orthonormal features and no biases: encode(decode(z)) == z for z >= 0,
    so a record hook after a steer hook (keep_error=False) reads back exactly the clamped value."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return sn.SAE(q.t().contiguous(), torch.zeros(d), q.contiguous(), torch.zeros(d), activation="relu")


def tokens(batch=2, seq=7, seed=1):
    return torch.randint(3, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))
