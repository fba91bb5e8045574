"""How good an SAE is, in SAELens's terms: reconstruction (explained variance, MSE, cosine),
sparsity (L0, L1, dead and dense latents), and the language model's behaviour when the SAE's
reconstruction replaces the activation (cross-entropy and KL divergence, and the fraction of each
recovered against zero-ablating the activation)."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import Tensor, nn

# A latent that fires on more than this fraction of tokens counts as dense (SAEBench's cut).
DENSE_FREQUENCY = 0.1


def evaluate(sae, activations, *, batch_size: int = 4096, model: Optional[nn.Module] = None, site=None,
             token_batches: Optional[Iterable] = None, max_norm_ratio: Optional[float] = None) -> Dict[str, float]:
    """Metrics of ``sae`` on ``activations`` (a tensor [N, d_in], an sn.ActivationStore, or an
    iterable of such batches):

    ``explained_variance`` (1 - ``fvu``, the residual's squared norm over the activations' total
    variance), ``mse`` (per element), ``cossim`` (mean cosine of each row and its reconstruction),
    ``l0`` and ``l1`` (mean active latents and mean sum of activations per token),
    ``dead_fraction`` (latents that never fire here), ``dense_fraction`` (latents firing on more
    than 10% of tokens), ``tokens``.

    With ``model``, ``site`` and ``token_batches`` (held-out texts, as for ``ce_loss_recovered``)
    also ``ce_loss_score``, ``kl_div_score`` and the losses behind them (see there; with
    ``max_norm_ratio`` the massive activations pass through unspliced)."""
    from ..hooks import check_max_norm_ratio
    from ..store import ActivationStore
    check_max_norm_ratio(max_norm_ratio)
    if (model is None) != (site is None) or (model is None) != (token_batches is None):
        raise ValueError("model, site, token_batches: give all three (for the CE / KL metrics) or none")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if isinstance(activations, ActivationStore):
        activations = activations.batches(batch_size, shuffle=False)
    batches = activations.split(batch_size) if isinstance(activations, Tensor) else activations
    err = l0 = l1 = cos = 0.0
    n = 0
    mean_sum = sq_sum = None
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    with torch.no_grad():
        for x in batches:
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.shape[-1] != sae.d_in:
                raise ValueError(f"activations: expected floating batches [n, {sae.d_in}], got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}")
            x = x.reshape(-1, sae.d_in).to(sae.device)
            codes = sae.encode(x)
            xf = x.float()
            x_hat = sae.decode(codes).float()
            err += float((xf - x_hat).pow(2).sum())
            cos += float(torch.nn.functional.cosine_similarity(xf, x_hat, dim=-1, eps=1e-12).sum())
            active = (codes.values != 0) & (codes.indices >= 0)
            l0 += float(active.sum())
            l1 += float(codes.values.float().abs().mul(active).sum())
            fired.index_add_(0, codes.indices[active], torch.ones(int(active.sum()), dtype=torch.float64,
                                                                  device=fired.device))
            xd = x.double()
            mean_sum = xd.sum(0) if mean_sum is None else mean_sum + xd.sum(0)
            sq_sum = xd.pow(2).sum() if sq_sum is None else sq_sum + xd.pow(2).sum()
            n += x.shape[0]
    if n == 0:
        raise ValueError("activations: no rows to evaluate on")
    total = float(sq_sum - mean_sum.pow(2).sum() / n)
    fvu = err / total if total > 0 else float("nan")
    out = {"explained_variance": 1 - fvu, "fvu": fvu, "mse": err / (n * sae.d_in), "cossim": cos / n,
           "l0": l0 / n, "l1": l1 / n, "dead_fraction": float((fired == 0).double().mean()),
           "dense_fraction": float((fired / n > DENSE_FREQUENCY).double().mean()), "tokens": n}
    if model is not None:
        lm = ce_loss_recovered(model, site, sae, token_batches, max_norm_ratio=max_norm_ratio)
        out.update(ce_loss_score=lm["recovered"], kl_div_score=lm["kl_recovered"],
                   ce_loss_without_sae=lm["clean"], ce_loss_with_sae=lm["spliced"], ce_loss_with_ablation=lm["zero"],
                   kl_div_with_sae=lm["kl_spliced"], kl_div_with_ablation=lm["kl_zero"])
    return out


def ce_loss_recovered(model: nn.Module, site, sae, token_batches: Iterable, *,
                      max_norm_ratio: Optional[float] = None) -> Dict[str, float]:
    """Next-token cross-entropy of ``model`` clean, with the SAE's reconstruction spliced in at
    ``site``, and with the activation zero-ablated, per target token; ``recovered`` = (zero -
    spliced) / (zero - clean): 1 is a perfect SAE, 0 no better than deleting the activation.
    ``kl_spliced`` and ``kl_zero`` are the mean KL divergences of the clean next-token
    distribution from the spliced and the ablated ones, ``kl_recovered`` = 1 - kl_spliced /
    kl_zero (SAELens's kl_div_score). ``max_norm_ratio``: positions whose norm is above that
    multiple of the forward's median keep their activation in the spliced run (sn.splice's
    option), for an SAE trained without massive activations."""
    from ..hooks import resolve_site, split_output, splice

    module = resolve_site(model, site)

    def zero_hook(mod, args, output):
        hidden, rebuild = split_output(output)
        return rebuild(torch.zeros_like(hidden))

    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl_spliced": 0.0, "kl_zero": 0.0}
    count = 0
    with torch.no_grad():
        for item in token_batches:
            inputs = item if isinstance(item, dict) else {"input_ids": item}
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            target_mask = torch.ones_like(ids[:, 1:], dtype=torch.bool) if mask is None else mask[:, 1:].bool()

            def log_probs(logits):
                lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                return lp[target_mask.to(lp.device)]                   # [targets, vocab]

            targets = ids[:, 1:][target_mask].to(torch.int64)
            clean = log_probs(model(**inputs).logits)
            with splice(model, site, sae, max_norm_ratio=max_norm_ratio):
                spliced = log_probs(model(**inputs).logits)
            handle = module.register_forward_hook(zero_hook)
            try:
                zero = log_probs(model(**inputs).logits)
            finally:
                handle.remove()
            p_clean = clean.exp()
            for name, lp in (("clean", clean), ("spliced", spliced), ("zero", zero)):
                sums[name] += float(-lp.gather(-1, targets[:, None].to(lp.device)).sum())
            sums["kl_spliced"] += float((p_clean * (clean - spliced)).sum())
            sums["kl_zero"] += float((p_clean * (clean - zero)).sum())
            count += int(target_mask.sum())
    if count == 0:
        raise ValueError("token_batches: no target tokens")
    out = {k: v / count for k, v in sums.items()}
    gap = out["zero"] - out["clean"]
    out["recovered"] = (out["zero"] - out["spliced"]) / gap if gap != 0 else float("nan")
    out["kl_recovered"] = 1 - out["kl_spliced"] / out["kl_zero"] if out["kl_zero"] != 0 else float("nan")
    return out
