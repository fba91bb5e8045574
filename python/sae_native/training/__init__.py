"""Training SAEs with the package's sparse kernels, forward and backward.

    sae = sn.train(acts, architecture="topk", d_sae=16384, k=32, steps=2000)
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Union

from torch import Tensor

from .config import ARCHITECTURES, TrainConfig
from .data import IterableBatches, TensorBatches, check_tensor, stream_activations
from .evaluate import ce_loss_recovered, evaluate
from .trainer import Trainer

# What Trainer.fit takes, and the run options train() takes besides them.
_FIT_OPTIONS = ("log_path", "checkpoint_dir", "checkpoint_every", "eval_data", "eval_model", "eval_site", "eval_tokens",
                "wandb_project")
_RUN_OPTIONS = _FIT_OPTIONS + ("device", "resume", "group")


def train(activations: Union[Tensor, Iterable[Tensor]], *, architecture: str = "topk", d_sae: int,
          k: Optional[float] = None, l1: Optional[float] = None, steps: Optional[int] = None,
          tokens: Optional[int] = None, batch_size: int = 4096, lr: Optional[float] = None, seed: int = 0,
          progress: bool = True, **options):
    """Trains an SAE on ``activations`` (a tensor [N, d_in], an sn.ActivationStore, or an iterable
    of [n, d_in] batches, e.g. ``stream_activations(model, site, token_batches)``) and returns it
    as an sn.SAE. The budget is ``steps`` or ``tokens``; without either, one pass over a tensor or
    store but at least 1000 steps.

    The last ``holdout`` (5%, at most 65,536 rows) of a tensor or store is kept out of training
    and evaluated every ``eval_every`` steps and at the end (sn.evaluate's metrics: explained
    variance, MSE, cosine, L0, L1, dead and dense latents); ``eval_data`` gives held-out
    activations instead (needed for an iterable source). With ``eval_model``, ``eval_site`` and
    ``eval_tokens`` (token batches of held-out texts) the evaluation adds the CE-loss and KL
    scores. The end of the run prints the held-out FVU, L0 and dead fraction (with ``progress``),
    also in ``sae.metadata["evaluation"]``, and warns when the run looks too short to have
    converged.

    Options: every TrainConfig field (warmup_steps, decay_from, auxk_coef, dead_tokens,
    normalize_decoder, bandwidth, init_threshold, sparsity_warmup, matryoshka_widths,
    threshold_rate, topk_warmup, weight_dtype, log_every, holdout, eval_every), and ``log_path`` (JSONL
    metrics; evaluations as ``eval/...`` keys), ``wandb_project`` (the same records to Weights &
    Biases, if the wandb package is installed), ``checkpoint_dir`` / ``checkpoint_every``
    (SAELens-format checkpoints with training state), ``resume`` (a checkpoint folder to continue
    from), ``device``, ``eval_data``, ``eval_model``, ``eval_site``, ``eval_tokens``, ``group``.

    Data-parallel: under torchrun (or any initialised torch.distributed job with more than one
    rank) every rank calls sn.train with the same arguments; each takes an equal share of every
    global batch (``batch_size`` must divide evenly) and the gradients are averaged, so the run
    takes the steps one process would (within rounding). Rank 0 shows progress, logs, evaluates
    and writes checkpoints; every rank returns the same weights. ``group``: a process group, or
    False for an independent run on each rank.
    """
    run = {key: options.pop(key) for key in list(options) if key in _RUN_OPTIONS}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"train: unknown option(s) {', '.join(unknown)}; expected TrainConfig fields or "
                        f"{', '.join(_RUN_OPTIONS)}")
    cfg = TrainConfig(architecture=architecture, d_sae=d_sae, k=k, l1=l1, steps=steps, tokens=tokens,
                      batch_size=batch_size, lr=lr, seed=seed, **options).validate()
    device = run.get("device", "cpu")
    from ..store import ActivationStore
    if isinstance(activations, Tensor):
        check_tensor(activations)
    if isinstance(activations, (Tensor, ActivationStore)) and run.get("eval_data") is None:
        # The held-out split: the last rows (in a store written from texts, other texts).
        n = activations.shape[0] if isinstance(activations, Tensor) else len(activations)
        held = cfg.holdout_rows(n)
        if held:
            if isinstance(activations, Tensor):
                activations, run["eval_data"] = activations[:n - held], activations[n - held:]
            else:
                activations, run["eval_data"] = activations.rows(0, n - held), activations.rows(n - held, n)
    n_rows = (activations.shape[0] if isinstance(activations, Tensor) else
              len(activations) if isinstance(activations, ActivationStore) else None)
    if isinstance(activations, ActivationStore):
        # Shuffled across shards, seeded, epoch after epoch for as many steps as the budget asks.
        activations = activations.batches(batch_size, seed=seed, epochs=None)
    if run.get("resume"):
        trainer = Trainer.from_checkpoint(run["resume"], device=device, group=run.get("group"),
                                          latent_shards=options.get("latent_shards"))
        if cfg.steps or cfg.tokens:
            trainer.cfg.steps, trainer.cfg.tokens = cfg.steps, cfg.tokens
    else:
        if isinstance(activations, Tensor):
            data = TensorBatches(activations, batch_size, seed)
            d_in = data.d_in
        else:
            data = IterableBatches(activations, batch_size)
            first = data.next()
            if first is None:
                raise ValueError("activations: the iterable yielded nothing")
            d_in = first.shape[1]
            data.pending, data.pending_rows = [first], first.shape[0]
        trainer = Trainer(d_in, cfg, device=device, group=run.get("group"))
        activations = data
    return trainer.fit(activations, trainer.cfg.total_steps(n_rows), progress=progress,
                       **{key: run[key] for key in _FIT_OPTIONS if key in run})


__all__ = ["train", "Trainer", "TrainConfig", "ARCHITECTURES", "evaluate", "ce_loss_recovered", "stream_activations",
           "TensorBatches", "IterableBatches"]
