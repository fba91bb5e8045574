"""The training loop: sparse forward and backward through the package's own ops, Adam."""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import Tensor

from ..stats import FeatureStats
from . import batch_topk, parallel
from .config import BATCH_TOPK, K_ARCHITECTURES, TrainConfig
from .data import IterableBatches, TensorBatches
from .evaluate import evaluate
from .kernel_weights import KernelWeights, decode
from .losses import JumpReLUCodes, StepL0

# A ReLU SAE starts dense (about half its latents fire on a random init) and the L1 penalty thins
# it over the first part of the run. Above this share of active latents per token its step runs
# as dense matmuls: at 50% density the sparse kernels take 18x the dense step (d_sae 16384, d_in
# 576, B 1024, AMD EPYC Zen 5, one thread); their cost scales with L0, a matmul's does not.
DENSE_RELU_FRACTION = 1 / 32

STATE_FILE, CONFIG_FILE = "training_state.pt", "training_config.json"


class Trainer:
    """Trains one SAE on activations of width ``d_in``.

    The weights live as float32 Adam parameters on ``device``; each step encodes with the fused
    kernel, decodes sparsely and back-propagates through the ops' sparse backward (the decoder
    gradient touches only active latents' rows, the encoder's only their columns). Inputs are
    scaled so their mean norm is sqrt(d_in) (measured on the first batch); the scale is folded
    back into the weights of every SAE this trainer hands out, which therefore work on raw
    activations.
    """

    def __init__(self, d_in: int, config: TrainConfig, *, device="cpu", group=None):
        self.cfg = config.validate()
        if isinstance(d_in, bool) or not isinstance(d_in, int) or d_in < 1:
            raise ValueError(f"d_in: expected an int >= 1, got {d_in!r}")
        if config.latent_shards > 1 and config.architecture not in ("topk", "relu", "jumprelu"):
            raise ValueError(f"latent_shards: sharding the latents trains topk, relu and jumprelu SAEs, not "
                             f"{config.architecture!r} (train it data-parallel: latent_shards=1)")
        # Data-parallel over ``group`` (parallel.make: by default every rank of an initialised
        # torch.distributed job; the replicas take identical steps), and with latent_shards > 1
        # ``lat``: this rank holds only latents [start, stop) (parallel.LatentShards); else None.
        layout = parallel.make(group, config.latent_shards, config.d_sae, str(device))
        self.dp, self.lat = layout.dp, layout.latent
        self.d_in, self.device = d_in, torch.device(device)
        start, stop = (self.lat.start, self.lat.stop) if self.lat else (0, config.d_sae)
        d_sae = stop - start                  # this rank's latents
        W_dec = _init_rows(config.seed, start, stop, config.d_sae, d_in)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if not config.unit_decoder:
            W_dec *= 0.1  # Anthropic's init for an unconstrained decoder: small random directions
        self.W_dec = torch.nn.Parameter(W_dec.to(self.device))
        # The encoder is stored as W_enc^T [d_sae, d_in] and used through a transposed view: its
        # sparse gradient is accumulated row by row, which is this layout (no transposing copy).
        self.W_enc_t = torch.nn.Parameter(W_dec.clone().to(self.device))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=self.device))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in, device=self.device))
        groups = [{"params": [self.W_enc_t, self.b_enc, self.W_dec, self.b_dec], "lr_scale": 1.0}]
        self.log_threshold = None
        if config.architecture == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.full((d_sae,), math.log(config.init_threshold),
                                                               device=self.device))
            # (why sqrt(d_in): see TrainConfig.init_threshold)
            groups.append({"params": [self.log_threshold], "lr_scale": d_in ** 0.5})
        # BatchTopK's inference threshold (scaled units, which the weight folding leaves unchanged).
        self.batch_threshold: Optional[float] = None
        try:  # fused Adam (one pass per tensor) where this torch has it for the device
            self.optimizer = torch.optim.Adam(groups, lr=config.learning_rate, betas=(0.9, 0.999), fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.Adam(groups, lr=config.learning_rate, betas=(0.9, 0.999))
        self.scale: Optional[float] = None
        self.step_count = 0
        self.tokens = 0
        self.since_fired = torch.zeros(d_sae, dtype=torch.int64, device=self.device)
        # (the ReLU step's form, from the last step's L0: see DENSE_RELU_FRACTION)
        self.relu_dense = config.architecture == "relu"
        self.fired = torch.zeros(d_sae, dtype=torch.float64, device=self.device)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64, device=self.device)
        self.act_max = torch.zeros(d_sae, device=self.device)
        self.last_eval: Optional[Dict[str, float]] = None   # the latest held-out evaluation
        self._kernel_copy: Optional[Tensor] = None           # W_enc^T in bf16, rewritten each step

    # ---- the step --------------------------------------------------------------------------
    def _start(self, x: Tensor) -> None:
        """First (global) batch: the input scale, and b_dec initialised to the data mean."""
        n = x.shape[0] * self.dp.world
        sums = self.dp.sum(torch.cat([x.norm(dim=-1).sum().view(1), x.sum(0)]).double(), "the first batch's statistics")
        norms = sums[0] / n
        self.scale = float(self.d_in ** 0.5 / norms) if float(norms) > 0 else 1.0
        with torch.no_grad():
            self.b_dec.copy_((sums[1:] / n * self.scale).float())

    @property
    def W_enc(self) -> Tensor:
        """W_enc [d_in, d_sae] (a view of the stored transpose)."""
        return self.W_enc_t.t()

    def _kernel_weights(self) -> KernelWeights:
        """This step's encoder, packed once (in bf16 for weight_dtype "bfloat16": see
        kernel_weights.py). The decoder reads the float32 master in either case: a decode gathers
        k rows per token, where bf16 would save little, and its gradient stays float32."""
        if self.cfg.weight_dtype != "bfloat16":
            return KernelWeights(self.W_enc_t, torch.float32)
        if self._kernel_copy is None:
            self._kernel_copy = torch.empty_like(self.W_enc_t, dtype=torch.bfloat16)
        return KernelWeights(self.W_enc_t, torch.bfloat16, self._kernel_copy)

    def step(self, x: Tensor, total_steps: int) -> Dict[str, float]:
        """One optimizer step on a batch of raw activations [B, d_in]."""
        cfg = self.cfg
        x = x.to(self.device, torch.float32)
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"activations: expected batches [B, {self.d_in}], got {list(x.shape)}")
        if self.scale is None:
            self._start(x)
        xs = x * self.scale
        W_dec = self.W_dec
        B = xs.shape[0]                     # this rank's share of the global batch
        B_all = B * self.dp.world
        lat = self.lat
        # b_dec as the encoder reads it: latent shards each use it for their slice, and its
        # gradient from the encoders is the sum over the shards
        b_in = lat.sum_backward(self.b_dec) if lat else self.b_dec
        metrics: Dict[str, float] = {}
        dense = (cfg.architecture == "relu" and self.relu_dense and not lat and cfg.weight_dtype != "bfloat16")
        if dense:                           # the same function and gradients as the sparse step below
            z = torch.relu((xs - b_in) @ self.W_enc + self.b_enc)
            indices = torch.arange(z.shape[1], device=z.device).expand(B, -1)
            x_hat = z @ W_dec + self.b_dec
        else:
            enc = self._kernel_weights()
            z, values, indices = self._encode(xs, enc, b_in, total_steps)
            if lat:                         # this rank's latents' part of the reconstruction, summed
                x_hat = lat.sum_forward(decode(z, indices, W_dec, None), "the partial reconstructions "
                                        "(training step)") + self.b_dec
            else:
                x_hat = decode(z, indices, W_dec, self.b_dec)
        # (one fused op and its one-pass backward: the squared error as its own tensor would add
        # three passes and temporaries of B x d_in a step)
        recon = torch.nn.functional.mse_loss(x_hat, xs, reduction="sum") / (B * self.d_in)
        loss = recon
        coef = cfg.sparsity_at(self.step_count, total_steps)
        if cfg.architecture == "relu":
            norms = self.W_dec.norm(dim=1)
            l1 = (z * norms).sum(-1).mean() if dense else (z * norms[indices.clamp_min(0)] * (indices >= 0)).sum(-1).mean()
            if lat:
                l1 = lat.sum_forward(l1.view(1), "the L1 penalty (training step)")[0]
            loss = loss + coef * l1 / self.d_in
            metrics["l1"] = float(l1.detach())
        elif cfg.architecture == "jumprelu":
            l0 = StepL0.apply(values, indices, self.log_threshold.exp(), cfg.bandwidth) / B
            if lat:
                l0 = lat.sum_forward(l0.view(1), "the L0 penalty (training step)")[0]
            loss = loss + coef * l0
        elif cfg.architecture == "matryoshka_batchtopk":
            # Every nested prefix of the latents reconstructs x on its own (the full width is the
            # main term above): the first latents learn the most general features.
            for width in cfg.widths[:-1]:
                inner = decode(z * (indices < width), indices, W_dec, self.b_dec)
                loss = loss + torch.nn.functional.mse_loss(inner, xs, reduction="sum") / (B * self.d_in)
        active = (z != 0) & (indices >= 0)
        dead = self.since_fired >= cfg.dead_after(total_steps * cfg.batch_size)
        n_dead = int(lat.sum(dead.sum().view(1), "the dead latents' count")[0]) if lat else int(dead.sum())
        if cfg.architecture in K_ARCHITECTURES and n_dead > 0 and cfg.auxk_coef > 0:
            # AuxK (Gao et al. 2024): the dead latents' top-k_aux reconstruct what the live ones miss.
            k_aux = min(self.d_in // 2, n_dead)
            b_aux = torch.where(dead, self.b_enc, torch.full_like(self.b_enc, -math.inf))
            v_aux, i_aux = enc.topk(xs, b_aux, b_in, min(k_aux, len(b_aux)))
            e = (xs - x_hat).detach()
            if lat:                         # the dead latents' global top-k_aux
                v_aux = v_aux * lat.chosen(xs - self.b_dec.detach(), enc.kernel, b_aux, v_aux, i_aux, k_aux,
                                           "AuxK's candidates (training step)")
                e_hat = lat.sum_forward(decode(v_aux, i_aux, W_dec, None), "AuxK's reconstructions")
            else:
                e_hat = decode(v_aux, i_aux, W_dec, None)
            # (the global batch's residual variance: every rank normalises alike)
            e_mean = self.dp.sum(e.sum(0), "AuxK's residual mean") / B_all
            denom = self.dp.sum((e - e_mean).pow(2).sum().view(1), "AuxK's residual variance")[0] / B_all
            if float(denom) > 0:
                aux = (e - e_hat).pow(2).sum(-1).mean() / denom
                loss = loss + cfg.auxk_coef * aux
                metrics["aux"] = float(aux.detach())
        self._zero_grads()
        loss.backward()
        self.dp.average_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        if cfg.unit_decoder and self.W_dec.grad is not None:
            with torch.no_grad():  # the component along each (unit) row would only change its norm
                w, g = self.W_dec, self.W_dec.grad
                # (in place, through a batched dot: no temporary of d_sae x d_in)
                along = torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1, 1)
                g.addcmul_(along, w, value=-1)
        lr = cfg.lr_at(self.step_count, total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()
        with torch.no_grad():
            if cfg.unit_decoder:
                self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            n_active = self._track(z.detach(), indices, active, B_all, dense)
            if lat:
                n_active = int(lat.sum(torch.tensor([n_active]), "the active latents' count")[0])
            if cfg.architecture == "relu":
                self.relu_dense = n_active > DENSE_RELU_FRACTION * len(self.b_enc) * B_all
            if cfg.batch_selection_at(self.step_count, total_steps) and n_active:
                # The inference threshold: a moving average of the smallest activation chosen
                # (from the batch-wide selection only: the TopK phase's cut is another one).
                mine = z.detach()[active].min().view(1) if bool(active.any()) else z.new_full((1,), math.inf)
                smallest = float(self.dp.min(mine, "BatchTopK's smallest chosen activation"))
                rate = cfg.threshold_rate
                self.batch_threshold = smallest if self.batch_threshold is None else \
                    (1 - rate) * self.batch_threshold + rate * smallest
        # (per-column variances, Welford's: no temporary of B x d_in, and no cancellation on data far
        # from zero, as a sum of squares less B |mean|^2 would suffer in float32)
        total_var = float(xs.var(0, correction=0).sum()) * B
        fvu = float(recon.detach()) * (B * self.d_in) / total_var if total_var > 0 else float("nan")
        self.step_count += 1
        self.tokens += B_all
        # (loss, mse and fvu are this rank's share of the batch; l0 and dead the whole batch's)
        metrics.update(step=self.step_count, tokens=self.tokens, loss=float(loss.detach()), mse=float(recon.detach()), fvu=fvu,
                       l0=n_active / B_all, dead=n_dead, lr=lr)
        return metrics

    def _zero_grads(self) -> None:
        """The weight matrices' gradients zeroed in place (the backward adds into them: no fresh
        pages of d_sae x d_in each step, see kernel_weights.py); the others dropped, as
        zero_grad(set_to_none=True) does."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and (p is self.W_enc_t or p is self.W_dec):
                    p.grad.zero_()
                else:
                    p.grad = None

    def _encode(self, xs: Tensor, enc: KernelWeights, b_in: Tensor, total_steps: int):
        """The architecture's training codes: (z, pre, indices), z differentiable to the weights
        (and the JumpReLU threshold), ``pre`` the values the sparsity term reads. With latent
        shards, this rank's latents' codes (local indices; TopK: those in the global top k)."""
        cfg = self.cfg
        if cfg.architecture == "topk" or (cfg.architecture in BATCH_TOPK
                                          and not cfg.batch_selection_at(self.step_count, total_steps)):
            k = max(1, round(cfg.k))         # (BatchTopK's TopK phase: its k may be fractional)
            values, indices = enc.topk(xs, self.b_enc, b_in, min(k, len(self.b_enc)))
            if self.lat:
                values = values * self.lat.chosen(xs - self.b_dec.detach(), enc.kernel, self.b_enc, values, indices, k,
                                                  "the top-k candidates (training step)")
            return values, values, indices
        if cfg.architecture in BATCH_TOPK:
            values, indices = batch_topk.encode(xs, enc, self.b_enc, self.b_dec, cfg.k, self.dp)
            return values, values, indices
        if cfg.architecture == "relu":
            values, indices, _ = enc.threshold(xs, self.b_enc, b_in, None)
            return values, values, indices
        # JumpReLU, as Rajamanoharan et al. train it: no pre-encoder bias (x itself is encoded,
        # the SAE is saved with apply_b_dec_to_input=False, as Gemma Scope's are), and the
        # threshold lowered by half the STE bandwidth for the encode, so the codes also hold the
        # latents just below it, whose pre-activations the threshold's gradient needs.
        theta = self.log_threshold.exp()
        band = (theta - cfg.bandwidth / 2).detach()
        values, indices, _ = enc.threshold(xs, self.b_enc, None, band)
        return JumpReLUCodes.apply(values, indices, theta, cfg.bandwidth), values, indices

    def _track(self, z: Tensor, indices: Tensor, active: Tensor, rows: int, dense: bool = False) -> int:
        """The latents' firing counts, sums and maxima over the global batch of ``rows`` rows
        (``dense``: z is [B, d_sae], the dense ReLU step's); returns the batch's active entries."""
        d_sae = len(self.b_enc)               # this rank's latents
        counts = torch.zeros(2, d_sae, dtype=torch.float64, device=z.device)
        if dense:                             # column sums
            fired = active.float()
            counts[0] = fired.sum(0, dtype=torch.float64)
            counts[1] = (z.float() * fired).sum(0, dtype=torch.float64)
            top = (z.float() * fired).amax(0).clamp_min(0)
        else:
            idx, vals = indices[active], z[active].float()
            counts[0].index_add_(0, idx, torch.ones_like(vals, dtype=torch.float64))
            counts[1].index_add_(0, idx, vals.double())
            top = torch.zeros(d_sae, device=z.device).scatter_reduce_(0, idx, vals, reduce="amax")
        counts = self.dp.sum(counts, "the latents' firing counts")
        top = self.dp.max(top, "the latents' maxima")
        self.since_fired += rows
        self.since_fired[counts[0] > 0] = 0
        self.fired += counts[0]
        self.act_sum += counts[1]
        torch.maximum(self.act_max, top, out=self.act_max)
        return int(counts[0].sum())

    # ---- the loop --------------------------------------------------------------------------
    def fit(self, data: Union[Tensor, Iterable[Tensor], TensorBatches, IterableBatches], steps: Optional[int] = None,
            *, progress: bool = True, log_path: Optional[str] = None, checkpoint_dir: Optional[str] = None,
            checkpoint_every: Optional[int] = None, until: Optional[int] = None, eval_data=None,
            eval_model=None, eval_site=None, eval_tokens=None, wandb_project: Optional[str] = None):
        """Trains until ``steps`` optimizer steps have been taken in total (resumed runs continue
        from ``step_count``), or only until step ``until`` of that schedule (the run can be resumed
        from its checkpoint later). Returns the trained SAE (see ``sae()``).

        ``eval_data`` (held-out activations: a tensor, an sn.ActivationStore or a list of
        batches) is evaluated every ``eval_every`` steps and at the end (sn.evaluate's metrics,
        prefixed ``eval/`` in the log); with ``eval_model``, ``eval_site`` and ``eval_tokens``
        (a list of token batches of held-out texts) also the CE and KL scores. ``wandb_project``
        logs every record to Weights & Biases as well (needs the wandb package)."""
        cfg = self.cfg
        if isinstance(data, Tensor):
            data = TensorBatches(data, cfg.batch_size, cfg.seed)
        elif not isinstance(data, (TensorBatches, IterableBatches)):
            data = IterableBatches(data, cfg.batch_size)
        if steps is None:
            steps = cfg.total_steps(data.acts.shape[0] if isinstance(data, TensorBatches) else None)
        lm = dict(model=eval_model, site=eval_site, token_batches=eval_tokens)
        if any(v is not None for v in lm.values()):
            if any(v is None for v in lm.values()):
                raise ValueError("eval_model, eval_site, eval_tokens: give all three (for the CE / KL scores) or none")
            if eval_data is None:
                raise ValueError("eval_model: the CE / KL scores come with the held-out activations' metrics; "
                                 "give eval_data too (sn.train holds out a split of a tensor or store itself)")
            lm["token_batches"] = list(eval_tokens)          # evaluated more than once
        else:
            lm = {}
        # Data-parallel: rank 0 alone shows progress, logs, evaluates and writes checkpoints (the
        # replicas are identical); every rank reads the same global batches and takes its share.
        # With latent shards, the shards of replica 0 evaluate and checkpoint together (their
        # encode is collective), and global rank 0 shows progress and logs.
        evaluates = self.dp.rank == 0
        lead = evaluates and (self.lat is None or self.lat.rank == 0)
        progress = progress and lead
        if not lead:
            log_path = wandb_project = None
        if not evaluates:
            checkpoint_dir = eval_data = None
        wandb_run = _wandb_run(wandb_project, cfg)
        from .._progress import bar as progress_bar
        bar = progress_bar(progress, total=steps, initial=self.step_count, desc=f"train {cfg.architecture} SAE",
                           unit="step")
        log = open(log_path, "a") if log_path else None
        t0 = time.perf_counter()
        stop = steps if until is None else min(until, steps)
        losses, m = [], None
        postfix: Dict[str, str] = {}

        def record(rec: Dict[str, Any]) -> None:
            if log is not None:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if wandb_run is not None:
                wandb_run.log(rec, step=self.step_count)

        try:
            while self.step_count < stop:
                batch = data.batch(self.step_count) if isinstance(data, TensorBatches) else data.next()
                if batch is None:
                    break
                m = self.step(self.dp.share(batch), steps)
                losses.append(m["loss"])
                if bar is not None:
                    bar.update(1)
                if self.step_count % cfg.log_every == 0 or self.step_count == steps:
                    m["seconds"] = time.perf_counter() - t0
                    postfix.update(loss=f"{m['loss']:.4g}", L0=f"{m['l0']:.1f}", FVU=f"{m['fvu']:.3f}", dead=str(m["dead"]))
                    record(m)
                due = cfg.eval_every is not None and self.step_count % cfg.eval_every == 0
                if eval_data is not None and (due or self.step_count == stop):
                    self.last_eval = evaluate(self.sae(), eval_data, batch_size=cfg.batch_size, **lm)
                    record({"step": self.step_count, "tokens": self.tokens,
                            **{f"eval/{k}": v for k, v in self.last_eval.items()}})
                    postfix["eval EV"] = f"{self.last_eval['explained_variance']:.3f}"
                if bar is not None and postfix:
                    bar.set_postfix(postfix, refresh=False)
                if checkpoint_dir and checkpoint_every and self.step_count % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_dir)
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            if wandb_run is not None:
                wandb_run.finish()
        if checkpoint_dir:
            self.save_checkpoint(checkpoint_dir)
        if m is not None and until is None and lead:
            self._report(m, losses, progress)
        return self.sae()

    def _report(self, m: Dict[str, float], losses: List[float], progress: bool) -> None:
        """The end of a run: FVU, L0 and dead fraction (printed with ``progress``; on the held-out
        rows when there were some), and a warning when the run looks too short to have converged."""
        ev = self.last_eval
        if ev is not None:
            fvu, l0, dead, where = ev["fvu"], ev["l0"], ev["dead_fraction"], f"on {ev['tokens']:,} held-out tokens"
        else:
            fvu, l0, dead, where = m["fvu"], m["l0"], m["dead"] / self.cfg.d_sae, "on the last batch"
        if progress:
            extra = "".join(f", {name} {ev[key]:.3f}" for key, name in
                            (("ce_loss_score", "CE recovered"), ("kl_div_score", "KL recovered")) if ev and key in ev)
            print(f"trained {self.step_count} steps ({self.tokens:,} tokens): FVU {fvu:.3f}, L0 {l0:.1f}, "
                  f"dead {dead:.1%}{extra} ({where})", file=sys.stderr)
        why = []
        tail = max(1, len(losses) // 10)
        if len(losses) >= 20:
            late, before = sum(losses[-tail:]) / tail, sum(losses[-2 * tail:-tail]) / tail
            if before > 0 and (before - late) / before > 0.05:
                why.append(f"the loss still fell {100 * (before - late) / before:.0f}% over the last tenth of the run")
        elif losses:
            why.append(f"only {len(losses)} steps ran")
        if fvu > 0.5 and self.cfg.architecture in K_ARCHITECTURES:
            # (relu / jumprelu trade FVU for sparsity through their coefficient: high FVU there can
            # be the setting, not the budget)
            why.append(f"FVU {fvu:.2f} is high")
        if dead > 0.5:
            why.append(f"{dead:.0%} of the latents are dead")
        if why:
            warnings.warn(f"sn.train: the run looks too short to have converged ({'; '.join(why)}); give a larger "
                          f"budget with tokens= or steps= (this run: {self.tokens:,} tokens, {self.step_count} steps)",
                          stacklevel=3)

    # ---- results and checkpoints -----------------------------------------------------------
    def sae(self):
        """The current SAE, detached, with the input scale folded in (works on raw activations)."""
        from ..sae import SAE
        s = self.scale or 1.0
        cfg = self.cfg
        with torch.no_grad():
            threshold, k = None, cfg.k
            if self.log_threshold is not None:
                threshold = self.log_threshold.exp().clone()
            elif cfg.architecture in BATCH_TOPK:   # saved as JumpReLU, one threshold for all latents
                threshold, k = torch.full_like(self.b_enc, self.batch_threshold or 0.0), None
            activation = {"topk": "topk", "relu": "relu"}.get(cfg.architecture, "jumprelu")
            dtype = torch.bfloat16 if cfg.weight_dtype == "bfloat16" else torch.float32
            sae = SAE((self.W_enc_t * s).to(dtype).t(), self.b_enc.clone(), (self.W_dec / s).to(dtype), self.b_dec / s,
                      activation=activation, k=k if k is None or self.lat is None else min(k, len(self.b_enc)),
                      threshold=threshold,
                      apply_b_dec_to_input=cfg.architecture != "jumprelu",
                      metadata={"trained_by": "sae-native", "architecture": cfg.architecture,
                                "training_steps": self.step_count, "training_tokens": self.tokens, "input_scale": s,
                                **({"evaluation": dict(self.last_eval)} if self.last_eval else {})})
        n = max(self.tokens, 1)
        stats = [self.act_max.double(), self.fired / n, self.act_sum / n]   # (activations: unchanged by the folding)
        if self.lat:                   # every latent's statistics, for ("max", s) clamps
            whole = torch.zeros(3, cfg.d_sae, dtype=torch.float64, device=self.device)
            whole[:, self.lat.start:self.lat.stop] = torch.stack(stats)
            stats = list(self.lat.sum(whole, "the latents' statistics"))
            sae = _sharded(sae, self.lat, k)
        sae.stats = FeatureStats(max=stats[0].float(), frequency=stats[1].float(), mean=stats[2].float(),
                                 n_tokens=self.tokens)
        return sae

    def state_dict(self) -> Dict[str, Any]:
        return {"W_enc_t": self.W_enc_t.detach(), "b_enc": self.b_enc.detach(), "W_dec": self.W_dec.detach(),
                "b_dec": self.b_dec.detach(),
                "log_threshold": None if self.log_threshold is None else self.log_threshold.detach(),
                "optimizer": self.optimizer.state_dict(), "scale": self.scale, "step": self.step_count,
                "tokens": self.tokens, "since_fired": self.since_fired, "fired": self.fired,
                "batch_threshold": self.batch_threshold,
                "act_sum": self.act_sum, "act_max": self.act_max, "d_in": self.d_in}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        with torch.no_grad():
            for name in ("W_enc_t", "b_enc", "W_dec", "b_dec"):
                getattr(self, name).copy_(state[name])
            if self.log_threshold is not None:
                self.log_threshold.copy_(state["log_threshold"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scale, self.step_count, self.tokens = state["scale"], int(state["step"]), int(state["tokens"])
        self.batch_threshold = state.get("batch_threshold")
        for name in ("since_fired", "fired", "act_sum", "act_max"):
            setattr(self, name, state[name].to(self.device).clone())

    def save_checkpoint(self, path: str) -> None:
        """The SAE in SAELens format (with firing frequencies in sparsity.safetensors), plus
        training_state.pt and training_config.json for resuming. With latent shards: the sharded
        checkpoint (docs/formats.md) and one training state per shard."""
        os.makedirs(path, exist_ok=True)
        self.sae().save(path, overwrite=True)   # a checkpoint folder is rewritten
        torch.save(self.state_dict(), os.path.join(path, self._state_file()))
        if self.lat is None or self.lat.rank == 0:
            with open(os.path.join(path, CONFIG_FILE), "w") as f:
                json.dump(self.cfg.to_dict(), f, indent=1)

    def _state_file(self) -> str:
        return STATE_FILE if self.lat is None else _shard_state_file(self.lat.rank, self.lat.world)

    @classmethod
    def from_checkpoint(cls, path: str, *, device="cpu", group=None, latent_shards: Optional[int] = None) -> "Trainer":
        """A trainer that continues the run saved at ``path``: data-parallel over ``group`` as for
        the constructor (any number of replicas: their state is the same), and on
        ``latent_shards`` latent shards (default: as many as the run had; another number
        re-shards the weights, Adam's moments and the firing statistics on load)."""
        from ..formats._common import read_json
        cfg = TrainConfig(**read_json(os.path.join(path, CONFIG_FILE)))
        saved = cfg.latent_shards
        if latent_shards is not None:
            cfg.latent_shards = latent_shards
            cfg.validate()
        files = [os.path.join(path, STATE_FILE if saved == 1 else _shard_state_file(r, saved)) for r in range(saved)]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"resume: {missing[0]}: no such file (the run saved its state on latent_shards="
                                    f"{saved} shard(s); {len(missing)} of its files are missing)")
        # (memory-mapped: a rank reads only the slices of its own latents)
        states = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]
        trainer = cls(int(states[0]["d_in"]), cfg, device=device, group=group)
        start, stop = (trainer.lat.start, trainer.lat.stop) if trainer.lat else (0, cfg.d_sae)
        from ..distributed.ranges import even_ranges
        trainer.load_state_dict(_reshard(states, even_ranges(cfg.d_sae, saved), start, stop))
        return trainer


# Training state entries with one row per latent (sliced when re-sharding); the rest is replicated.
_PER_LATENT = ("W_enc_t", "b_enc", "W_dec", "log_threshold", "since_fired", "fired", "act_sum", "act_max")
_PER_LATENT_PARAMS = (0, 1, 2, 4)      # optimizer parameter ids: W_enc_t, b_enc, W_dec, log_threshold


def _shard_state_file(rank: int, world: int) -> str:
    return f"training_state.shard-{rank:05d}-of-{world:05d}.pt"


def _reshard(states: List[Dict[str, Any]], ranges, start: int, stop: int) -> Dict[str, Any]:
    """The training state of latents [start, stop) from the states of the saved ``ranges``."""
    if len(states) == 1 and ranges[0] == (start, stop):
        return states[0]

    def rows(pick) -> Tensor:
        parts = [pick(st)[max(start, a) - a:min(stop, b) - a] for st, (a, b) in zip(states, ranges)
                 if max(start, a) < min(stop, b)]
        return torch.cat(parts).clone()

    out = dict(states[0])
    for name in _PER_LATENT:
        if states[0].get(name) is not None:
            out[name] = rows(lambda st: st[name])
    opt = states[0]["optimizer"]
    moments = {}
    for pid, entry in opt["state"].items():
        if int(pid) in _PER_LATENT_PARAMS:
            entry = dict(entry, **{m: rows(lambda st: st["optimizer"]["state"][pid][m])
                                   for m in ("exp_avg", "exp_avg_sq") if m in entry})
        moments[pid] = entry
    out["optimizer"] = dict(opt, state=moments)
    return out


def _sharded(sae, lat, k):
    """A trainer's SAE over its latent shard as a ShardedSAE over the shards' group."""
    from ..distributed.sharded import from_slices
    return from_slices(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold, activation=sae.activation, k=k,
                       apply_b_dec_to_input=sae.apply_b_dec_to_input, d_sae=lat.ranges[-1][1], ranges=lat.ranges,
                       group=lat.group, metadata=sae.metadata)


def _init_rows(seed: int, start: int, stop: int, d_sae: int, d_in: int, chunk: int = 4096) -> Tensor:
    """Rows [start, stop) of the initial decoder (Gaussian, before normalising). The d_sae rows
    are drawn in chunks of ``chunk``, chunk c from a generator of its own (chunk 0 from ``seed``
    itself), so a latent shard draws only the chunks holding its rows and gets the numbers one
    process would."""
    out = []
    for c in range(start // chunk, (stop + chunk - 1) // chunk):
        g = torch.Generator().manual_seed(seed if c == 0 else seed * 1_000_003 + c)
        first = c * chunk
        rows = torch.randn(min(chunk, d_sae - first), d_in, generator=g)
        out.append(rows[max(start, first) - first:min(stop, first + chunk) - first])
    return torch.cat(out) if out else torch.empty(0, d_in)


def _wandb_run(project: Optional[str], cfg: TrainConfig):
    """A Weights & Biases run for ``project``, or None without one."""
    if project is None:
        return None
    if not isinstance(project, str) or not project:
        raise ValueError(f"wandb_project: expected a project name, got {project!r}")
    try:
        import wandb
    except ImportError as e:
        raise ImportError("wandb_project: logging to Weights & Biases needs the wandb package (pip install wandb)") from e
    return wandb.init(project=project, config=cfg.to_dict())
