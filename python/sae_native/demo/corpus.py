"""The demo's corpus: texts SmolLM2 itself writes about a list of topics.

Why model-generated text: nothing may be downloaded at run time, and no registry package ships a
general corpus that covers our concepts; the model's own writing also matches the activations it
produces when it later answers questions, which is the distribution the SAE must explain.
"""
from __future__ import annotations

import json
import os
import random
from typing import List, Sequence, Tuple

import torch


def chat_prompt(tok, question: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)


def generate(model, tok, questions: Sequence[str], *, max_new_tokens: int, batch_size: int = 32, sample: bool,
             seed: int = 0, progress=None) -> List[str]:
    """Answers to chat questions, batched (left padding), sampled with a seed or greedy."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out: List[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = [chat_prompt(tok, q) for q in questions[start:start + batch_size]]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed + start)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample, temperature=0.8 if sample
                                 else None, top_p=0.9 if sample else None, top_k=None, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        if progress is not None:
            progress(len(out))
    return out


def build_corpus(model, tok, topics: Sequence[Tuple[str, int]], templates: Sequence[str], *, max_new_tokens: int,
                 seed: int, path: str, batch_size: int = 32, progress=None) -> List[dict]:
    """[{"topic", "prompt", "text"}] for `count` texts per (topic, count), cached as JSON lines."""
    if os.path.isfile(path):
        with open(path) as f:
            return [json.loads(line) for line in f]
    rng = random.Random(seed)
    jobs = [(topic, rng.choice(templates).format(topic=topic)) for topic, count in topics for _ in range(count)]
    texts = generate(model, tok, [q for _, q in jobs], max_new_tokens=max_new_tokens, batch_size=batch_size,
                     sample=True, seed=seed, progress=progress)
    rows = [{"topic": t, "prompt": q, "text": x.strip()} for (t, q), x in zip(jobs, texts)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows
