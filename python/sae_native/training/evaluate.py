"""How good an SAE is: variance unexplained, sparsity, dead latents, and the language-model loss
recovered when its reconstruction replaces the activation."""
from __future__ import annotations

from typing import Dict, Iterable

import torch
from torch import Tensor, nn


def evaluate(sae, activations, *, batch_size: int = 4096) -> Dict[str, float]:
    """``fvu`` (fraction of variance unexplained), ``l0`` (mean active latents per token),
    ``dead_fraction`` (latents that never fire on these activations), ``mse`` per element, over a
    tensor [N, d_in], an sn.ActivationStore, or an iterable of such batches."""
    from ..store import ActivationStore
    if isinstance(activations, ActivationStore):
        activations = activations.batches(batch_size, shuffle=False)
    batches = activations.split(batch_size) if isinstance(activations, Tensor) else activations
    err = total = l0 = 0.0
    n = 0
    mean_sum = sq_sum = None
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.device)
    with torch.no_grad():
        for x in batches:
            x = x.reshape(-1, sae.d_in).to(sae.device)
            codes = sae.encode(x)
            err += float((x.float() - sae.decode(codes).float()).pow(2).sum())
            active = (codes.values != 0) & (codes.indices >= 0)
            l0 += float(active.sum())
            fired[codes.indices[active]] = True
            xd = x.double()
            mean_sum = xd.sum(0) if mean_sum is None else mean_sum + xd.sum(0)
            sq_sum = xd.pow(2).sum() if sq_sum is None else sq_sum + xd.pow(2).sum()
            n += x.shape[0]
    if n == 0:
        raise ValueError("activations: no rows to evaluate on")
    total = float(sq_sum - mean_sum.pow(2).sum() / n)
    return {"fvu": err / total if total > 0 else float("nan"), "l0": l0 / n,
            "dead_fraction": float((~fired).float().mean()), "mse": err / (n * sae.d_in), "tokens": n}


def ce_loss_recovered(model: nn.Module, site, sae, token_batches: Iterable) -> Dict[str, float]:
    """Next-token cross-entropy of ``model`` clean, with the SAE's reconstruction spliced in at
    ``site``, and with the activation zero-ablated; ``recovered`` = (zero - spliced) /
    (zero - clean): 1 is a perfect SAE, 0 no better than deleting the activation."""
    from ..hooks import resolve_site, split_output, splice

    module = resolve_site(model, site)

    def zero_hook(mod, args, output):
        hidden, rebuild = split_output(output)
        return rebuild(torch.zeros_like(hidden))

    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    count = 0
    with torch.no_grad():
        for item in token_batches:
            inputs = item if isinstance(item, dict) else {"input_ids": item}
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            target_mask = torch.ones_like(ids[:, 1:], dtype=torch.bool) if mask is None else mask[:, 1:].bool()

            def ce(logits):
                lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                nll = -lp.gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1)
                return float(nll[target_mask.to(nll.device)].sum())

            sums["clean"] += ce(model(**inputs).logits)
            with splice(model, site, sae):
                sums["spliced"] += ce(model(**inputs).logits)
            handle = module.register_forward_hook(zero_hook)
            try:
                sums["zero"] += ce(model(**inputs).logits)
            finally:
                handle.remove()
            count += int(target_mask.sum())
    if count == 0:
        raise ValueError("token_batches: no target tokens")
    out = {k: v / count for k, v in sums.items()}
    gap = out["zero"] - out["clean"]
    out["recovered"] = (out["zero"] - out["spliced"]) / gap if gap != 0 else float("nan")
    return out
