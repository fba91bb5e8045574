"""Training hyperparameters, with defaults that follow the published recipes."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

ARCHITECTURES = ("topk", "relu", "jumprelu", "batchtopk", "matryoshka_batchtopk")
# The architectures that take k, and those saved with a JumpReLU threshold learned in training.
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka_batchtopk")
BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")
# The fewest steps a default budget gives: one pass over 60k activations at batch 4096 is 15 steps,
# far from converged (docs/performance.md#training-quality: what 1000 steps recover).
MIN_DEFAULT_STEPS = 1000


@dataclass
class TrainConfig:
    """What sn.train / sn.Trainer / ``sae-native train`` take.

    architecture  "topk" (k active latents, AuxK loss for dead ones; OpenAI's recipe), "relu"
                  (L1 penalty weighted by decoder norms; Anthropic's April 2024 recipe),
                  "jumprelu" (L0 penalty through a straight-through estimator; DeepMind's recipe),
                  "batchtopk" (the batch's B * k largest activations, so k on average per token;
                  Bussmann et al. 2024; saved as a JumpReLU SAE with the learned threshold, as
                  SAELens saves it), or "matryoshka_batchtopk" (BatchTopK plus a reconstruction
                  loss for every nested prefix of the latents; Bussmann et al. 2025)
    d_sae         number of latents
    k             active latents per token (topk), on average (batchtopk: a number > 0)
    l1            sparsity coefficient: L1 for relu (default 5.0), L0 for jumprelu (default 1e-2;
                  it picks L0 as k does for topk, docs/design.md)
    sparsity_warmup  fraction of the steps over which the l1 / L0 coefficient rises linearly from
                  0 (default 0.05, as Anthropic and Gemma Scope warm it up)
    matryoshka_widths  the nested prefix sizes (matryoshka_batchtopk), increasing, the last
                  d_sae (added when missing); default d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae
    topk_warmup   batchtopk / matryoshka_batchtopk: the fraction of the steps that select k
                  latents per token (plain TopK) before the batch-wide selection takes over
                  (default 0.5; 0 is the papers' recipe). From the start, the batch-wide selection
                  lets a few early latents take the budget of rows whose features have no latent
                  yet: on the synthetic data it recovered 0.83-0.89 of the features, against
                  0.97 with the TopK phase (docs/performance.md#training-quality)
    threshold_rate  batchtopk: the rate of the moving average that learns the inference
                  threshold from the smallest chosen activation of each batch (default 0.01)
    steps         optimizer steps; or
    tokens        the training budget in tokens (steps = tokens / batch_size). With neither: one
                  pass over a tensor or store of activations, but at least 1000 steps (several
                  passes over a small tensor); an iterable of unknown length needs one of them
    batch_size    tokens per step
    lr            Adam learning rate (default: 2e-4 / sqrt(d_sae / 16384), Gao et al.'s scaling)
    seed          weights, data order and everything random
    warmup_steps  linear lr warm-up (default: 1% of steps, at most 1000)
    decay_from    fraction of the steps after which lr decays linearly to 0 (default 0.8)
    auxk_coef     weight of the AuxK loss (topk), 1/32
    dead_tokens   a latent is dead once it has not fired for this many tokens (default 10M, or a
                  quarter of the run's tokens when that is smaller)
    normalize_decoder  keep decoder rows at unit norm, removing the gradient's parallel component
                  (default: True for the k architectures; relu penalizes norms through its L1
                  instead, and jumprelu's L0 does not see norms: unconstrained, from rows of norm
                  0.1, it recovered 0.88-0.91 of the synthetic features, against 0.50 constrained)
    bandwidth     the straight-through estimator's kernel width (jumprelu), in units of the
                  scaled inputs (mean norm sqrt(d_in)), default 0.05
    init_threshold  initial JumpReLU threshold, same units, default 0.1. The threshold is learned
                  on a log scale with the learning rate times sqrt(d_in): it lives in units of
                  pre-activations, sqrt(d_in) times the size of the weight entries Adam moves at
                  rate lr, and at rate lr alone a 1000-step run moves it only ~3x from its start
    weight_dtype  "float32", or "bfloat16": the encode's product runs on a bf16 copy of W_enc
                  (the Adam master weights and their gradients stay float32; the decoder reads
                  the float32 master), and the SAE is handed out in bf16
    log_every     steps between metrics records (progress bar and JSONL log)
    holdout       the fraction of a tensor or store kept out of training for evaluation (its
                  last rows: other texts than the ones trained on), default 0.05 but at most
                  65,536 rows; 0 trains on every row. Iterables take ``eval_data=`` instead.
    eval_every    steps between evaluations on the held-out rows (default: only at the end)
    latent_shards  split the latents over this many ranks of a torch.distributed job (topk, relu,
                  jumprelu); the job's other ranks form data-parallel replicas of that split
                  (world / latent_shards of them). Default 1: every rank holds every latent.
                  The result is an sn.distributed.ShardedSAE, the checkpoints sharded ones
    """
    architecture: str = "topk"
    d_sae: int = 4096
    k: Optional[float] = None
    l1: Optional[float] = None
    sparsity_warmup: float = 0.05
    matryoshka_widths: Optional[List[int]] = None
    topk_warmup: float = 0.5
    threshold_rate: float = 0.01
    steps: Optional[int] = None
    tokens: Optional[int] = None
    batch_size: int = 4096
    lr: Optional[float] = None
    seed: int = 0
    warmup_steps: Optional[int] = None
    decay_from: float = 0.8
    auxk_coef: float = 1 / 32
    dead_tokens: Optional[int] = None
    normalize_decoder: Optional[bool] = None
    bandwidth: float = 0.05
    init_threshold: float = 0.1
    weight_dtype: str = "float32"
    log_every: int = 10
    holdout: float = 0.05
    eval_every: Optional[int] = None
    latent_shards: int = 1
    extra: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
        for name in ("d_sae", "batch_size", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if self.architecture == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise ValueError(f"k: a topk SAE needs an int in [1, d_sae={self.d_sae}], got {self.k!r}")
        elif self.architecture in BATCH_TOPK:
            if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not 0 < self.k <= self.d_sae:
                raise ValueError(f"k: a {self.architecture} SAE needs a number in (0, d_sae={self.d_sae}] (the mean "
                                 f"active latents per token), got {self.k!r}")
        elif self.k is not None:
            raise ValueError(f"k: only {', '.join(K_ARCHITECTURES)} SAEs take k (architecture={self.architecture!r})")
        if self.architecture in K_ARCHITECTURES and self.l1 is not None:
            raise ValueError(f"l1: {self.architecture} SAEs are sparse by construction and take no sparsity coefficient")
        if self.matryoshka_widths is not None:
            w = self.matryoshka_widths
            if self.architecture != "matryoshka_batchtopk":
                raise ValueError(f"matryoshka_widths: only matryoshka_batchtopk SAEs take them "
                                 f"(architecture={self.architecture!r})")
            if (not isinstance(w, (list, tuple)) or not w or any(isinstance(v, bool) or not isinstance(v, int) for v in w)
                    or any(b <= a for a, b in zip(w, w[1:])) or w[0] < 1 or w[-1] > self.d_sae):
                raise ValueError(f"matryoshka_widths: expected strictly increasing ints in [1, d_sae={self.d_sae}], "
                                 f"got {w!r}")
        for name in ("sparsity_warmup", "holdout", "topk_warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1), got {v!r}")
        if isinstance(self.threshold_rate, bool) or not isinstance(self.threshold_rate, (int, float)) \
                or not 0 < self.threshold_rate <= 1:
            raise ValueError(f"threshold_rate: expected a number in (0, 1], got {self.threshold_rate!r}")
        if isinstance(self.latent_shards, bool) or not isinstance(self.latent_shards, int) or self.latent_shards < 1:
            raise ValueError(f"latent_shards: expected an int >= 1, got {self.latent_shards!r}")
        if self.eval_every is not None and (isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int)
                                            or self.eval_every < 1):
            raise ValueError(f"eval_every: expected an int >= 1, got {self.eval_every!r}")
        if self.l1 is not None and (not isinstance(self.l1, (int, float)) or self.l1 < 0 or math.isnan(self.l1)):
            raise ValueError(f"l1: expected a number >= 0, got {self.l1!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps: expected an int >= 1, got {self.steps!r}")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 1):
            raise ValueError(f"tokens: expected an int >= 1, got {self.tokens!r}")
        if self.steps is not None and self.tokens is not None:
            raise ValueError(f"steps and tokens: give one of them (steps={self.steps}, tokens={self.tokens})")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if not 0 < self.decay_from <= 1:
            raise ValueError(f"decay_from: expected a fraction in (0, 1], got {self.decay_from!r}")
        if self.weight_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"weight_dtype: expected 'float32' or 'bfloat16', got {self.weight_dtype!r}")
        if self.bandwidth <= 0 or self.init_threshold <= 0:
            raise ValueError("bandwidth and init_threshold: expected numbers > 0")
        return self

    # ---- resolved defaults -----------------------------------------------------------------
    @property
    def sparsity(self) -> float:
        if self.l1 is not None:
            return float(self.l1)
        return {"relu": 5.0, "jumprelu": 1e-2}.get(self.architecture, 0.0)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 2e-4 / math.sqrt(self.d_sae / 16384)

    def batch_selection_at(self, step: int, steps: int) -> bool:
        """Whether a BatchTopK step selects across the batch (else per token, the TopK phase)."""
        return self.architecture in BATCH_TOPK and step >= self.topk_warmup * steps

    def sparsity_at(self, step: int, steps: int) -> float:
        """The l1 / L0 coefficient at ``step``: linear warm-up over sparsity_warmup * steps."""
        warm = self.sparsity_warmup * steps
        return self.sparsity * (min(1.0, (step + 1) / warm) if warm >= 1 else 1.0)

    @property
    def widths(self) -> List[int]:
        """The matryoshka prefixes, the last one d_sae."""
        if self.matryoshka_widths is not None:
            w = list(self.matryoshka_widths)
        else:
            w = sorted({max(1, self.d_sae // f) for f in (16, 8, 4, 2)})
        return w if w[-1] == self.d_sae else w + [self.d_sae]

    def holdout_rows(self, n_rows: int) -> int:
        """How many of ``n_rows`` are held out for evaluation (at least one row stays to train on)."""
        return min(65_536, int(self.holdout * n_rows), max(0, n_rows - 1))

    @property
    def unit_decoder(self) -> bool:
        if self.normalize_decoder is None:
            return self.architecture not in ("relu", "jumprelu")
        return bool(self.normalize_decoder)

    def total_steps(self, n_rows: Optional[int] = None) -> int:
        """The run's steps: ``steps``, else ``tokens / batch_size``, else one pass over ``n_rows``
        activations with at least MIN_DEFAULT_STEPS."""
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / self.batch_size))
        if n_rows is None:
            raise ValueError("steps or tokens: required when activations is an iterable of unknown length "
                             "(the lr schedule needs the total)")
        return max(math.ceil(n_rows / self.batch_size), MIN_DEFAULT_STEPS)

    def warmup(self, steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else min(1000, max(1, steps // 100))

    def dead_after(self, total_tokens: int) -> int:
        if self.dead_tokens is not None:
            return int(self.dead_tokens)
        return max(1, min(10_000_000, total_tokens // 4))

    def lr_at(self, step: int, steps: int) -> float:
        """Linear warm-up, constant, then linear decay to 0 from decay_from * steps."""
        base, warm = self.learning_rate, self.warmup(steps)
        if step < warm:
            return base * (step + 1) / warm
        start = int(self.decay_from * steps)
        if step >= start and steps > start:
            return base * max(0.0, (steps - step) / (steps - start))
        return base

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)
