"""The demo's corpus: texts SmolLM2 itself writes about a list of topics.

Why model-generated text: nothing may be downloaded at run time, and no registry package ships a
general corpus that covers our concepts; the model's own writing also matches the activations it
produces when it later answers questions, which is the distribution the SAE must explain.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import random
import re
import time
from typing import List, Sequence, Tuple

import torch


def chat_prompt(tok, question: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)


def text_batches(tok, texts: Sequence[str], size: int = 16):
    """The texts tokenized in batches of ``size``, right-padded (padding follows every real token,
    so causal attention never reads it): {"input_ids", "attention_mask"} per batch."""
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for i in range(0, len(texts), size):
        enc = tok(list(texts[i:i + size]), return_tensors="pt", padding=True)
        yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def generate(model, tok, questions: Sequence[str], *, max_new_tokens: int, batch_size: int = 32) -> List[str]:
    """Greedy answers to chat questions, batched (left padding), through the model's own generate:
    the steering hooks run on every forward it makes. (The corpus is sampled by `sample`.)"""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out: List[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = [chat_prompt(tok, q) for q in questions[start:start + batch_size]]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def writer_model(model, log=print):
    """The model the demo runs on: it writes the bulk corpus, gives the activations the SAE trains
    on, and is searched and steered. A bfloat16 copy where this CPU's bf16 matmul is measured
    faster than fp32 (4x on AVX512-BF16 / AMX parts), else the model itself. Its layer-15
    activations differ from the fp32 model's by about 1% (relative norm); the SAE is evaluated on
    the fp32 model's activations, so any cost of that shows in its FVU and CE loss recovered."""
    a, w = torch.randn(512, 576), torch.randn(576, 1536)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), w.to(dtype)
        x @ y
        t0 = time.perf_counter()
        for _ in range(5):
            x @ y
        times[dtype] = time.perf_counter() - t0
    if times[torch.bfloat16] * 1.5 < times[torch.float32]:
        log(f"model: running in bfloat16 (its matmul is {times[torch.float32] / times[torch.bfloat16]:.1f}x faster "
            f"than fp32 here)")
        return copy.deepcopy(model).to(torch.bfloat16)
    return model


def _cache_kwarg(model) -> str:
    # (recent transformers renamed past_key_values to cache, in the forward and in its output)
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def sample(model, tok, questions: Sequence[str], *, max_new_tokens: int, seed: int, temperature: float = 0.8,
           top_k: int = 50, top_p: float = 0.9) -> Tuple[List[str], int]:
    """Sampled answers to one batch of chat questions and the number of tokens written. A plain
    decode loop: top-k then nucleus sampling over the k best (HF's generate sorts and samples the
    whole 49k vocabulary every step, over half of its time on a CPU; this is 2.3x faster)."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok([chat_prompt(tok, q) for q in questions], return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    gen = torch.Generator().manual_seed(seed)
    rows = mask.shape[0]
    done = torch.zeros(rows, dtype=torch.bool)
    written: List[torch.Tensor] = []
    cache_kw = _cache_kwarg(model)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        pos = pos[:, -1:] + 1
        for _ in range(max_new_tokens):
            best, ids = (out.logits[:, -1].float() / temperature).topk(top_k)
            p = best.softmax(-1)
            p = torch.where(p.cumsum(-1) - p < top_p, p, 0)
            nxt = ids.gather(1, torch.multinomial(p, 1, generator=gen)).squeeze(1)
            nxt = torch.where(done, tok.pad_token_id, nxt)
            written.append(nxt)
            done |= nxt == tok.eos_token_id
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype)], 1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                        logits_to_keep=1, **{cache_kw: out["cache"] if "cache" in out else out.past_key_values})
            pos = pos + 1
    ids = torch.stack(written, 1)
    tokens = int(((ids != tok.pad_token_id) & (ids != tok.eos_token_id)).sum())
    return [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)], tokens


def build_corpus(model, tok, topics: Sequence[Tuple[str, int]], templates: Sequence[str], *, max_new_tokens: int,
                 seed: int, path: str, batch_size: int = 32, progress=None) -> List[dict]:
    """[{"topic", "prompt", "text"}] for `count` texts per (topic, count), sampled, cached as JSON
    lines. The file grows a batch at a time, so an interrupted run resumes where it stopped."""
    rng = random.Random(seed)
    jobs = [(topic, rng.choice(templates).format(topic=topic)) for topic, count in topics for _ in range(count)]
    rows: List[dict] = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break                      # a line cut short by an interrupted write
        if [(r["topic"], r["prompt"]) for r in rows] != jobs[:len(rows)]:
            rows = []                          # written for other topics or another seed: start over
    if len(rows) == len(jobs):
        return rows                            # complete: nothing to sample or rewrite
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:                 # (rewritten: drops a cut-short last line)
        for r in rows:
            f.write(json.dumps(r) + "\n")
    start = len(rows)
    for first in range(start - start % batch_size, len(jobs), batch_size):
        chunk = jobs[first:first + batch_size]
        texts, tokens = sample(model, tok, [q for _, q in chunk], max_new_tokens=max_new_tokens, seed=seed + first)
        new = [{"topic": t, "prompt": q, "text": x} for (t, q), x in zip(chunk, texts)][len(rows) - first:]
        with open(path, "a") as f:
            for r in new:
                f.write(json.dumps(r) + "\n")
        rows += new
        if progress is not None:
            progress(len(rows), len(jobs), tokens)
    return rows


def read_texts(path: str, *, min_chars: int = 200, max_chars: int = 4000) -> List[str]:
    """The texts of a user corpus: every .txt file under ``path`` (a folder, or one file) split into
    paragraphs at blank lines, short ones joined up to ``min_chars`` and long ones cut at
    ``max_chars``; every .jsonl file's "text" fields. Sorted by file name, so reruns agree."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"corpus: {path!r} does not exist")
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, n) for d, _, names in os.walk(path) for n in names if n.endswith((".txt", ".jsonl")))
    texts: List[str] = []
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as f:
            if name.endswith(".jsonl"):
                for i, line in enumerate(f):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                            raise ValueError(f"corpus: {name} line {i + 1}: expected an object with a 'text' string")
                        texts.append(row["text"])
                continue
            buf = ""
            for para in re.split(r"\n\s*\n", f.read()):
                para = " ".join(para.split())
                buf = f"{buf} {para}".strip() if buf else para
                while len(buf) >= max_chars:
                    texts.append(buf[:max_chars])
                    buf = buf[max_chars:]
                if len(buf) >= min_chars:
                    texts.append(buf)
                    buf = ""
            if buf:
                texts.append(buf)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"corpus: no text in {path!r} (expected .txt or .jsonl files)")
    return texts
