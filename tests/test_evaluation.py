"""Evaluation beside training: sn.evaluate's metrics against a float64 reference, the CE and KL
scores, the held-out split of a tensor or store, evaluations in the log and on the progress bar,
and Weights & Biases when it is installed."""
import json
import sys
import types

import pytest
import torch

import sae_native as sn
from sae_native.training.synthetic import superposition


def small_sae(d_in=7, d_sae=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    b_enc = torch.randn(d_sae, generator=g) * 0.5
    b_enc[3] = -100.0                                        # latent 3 never fires: dead
    b_enc[5] = 100.0                                         # latent 5 always fires: dense
    return sn.SAE(W_dec.t().contiguous(), b_enc, W_dec, torch.randn(d_in, generator=g), activation="relu")


def reference_metrics(sae, x):
    """The definitions, in float64, on the dense activations."""
    xd = x.double()
    pre = (xd - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
    z = torch.relu(pre)
    x_hat = z @ sae.W_dec.double() + sae.b_dec.double()
    err = (xd - x_hat).pow(2).sum()
    total = (xd - xd.mean(0)).pow(2).sum()
    freq = (z > 0).double().mean(0)
    return {"fvu": float(err / total), "explained_variance": float(1 - err / total),
            "mse": float(err / x.numel()),
            "cossim": float(torch.nn.functional.cosine_similarity(xd, x_hat, dim=-1).mean()),
            "l0": float((z > 0).double().sum(1).mean()), "l1": float(z.sum(1).mean()),
            "dead_fraction": float((freq == 0).double().mean()), "dense_fraction": float((freq > 0.1).double().mean()),
            "tokens": x.shape[0]}


@pytest.mark.parametrize("n,batch_size", [(1, 4), (29, 4), (101, 101), (97, 1000)])
def test_evaluate_matches_the_float64_definitions(n, batch_size):
    sae = small_sae()
    x = torch.randn(n, 7, generator=torch.Generator().manual_seed(n))
    got = sn.evaluate(sae, x, batch_size=batch_size)
    want = reference_metrics(sae, x)
    assert set(want) <= set(got)
    for key, value in want.items():
        if n == 1 and key in ("fvu", "explained_variance"):
            continue                                         # one row: no variance to explain
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert got["dead_fraction"] >= 1 / 13 and got["dense_fraction"] >= 1 / 13


def test_evaluate_argument_errors():
    sae = small_sae()
    with pytest.raises(ValueError, match=r"activations: expected floating batches \[n, 7\]"):
        sn.evaluate(sae, torch.randn(4, 5))
    with pytest.raises(ValueError, match="activations: no rows"):
        sn.evaluate(sae, torch.randn(0, 7))
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        sn.evaluate(sae, torch.randn(4, 7), batch_size=0)
    with pytest.raises(ValueError, match="model, site, token_batches: give all three"):
        sn.evaluate(sae, torch.randn(4, 7), model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_norm_ratio: expected a finite number >= 1 or None"):
        sn.evaluate(sae, torch.randn(4, 7), max_norm_ratio=0.5)


def test_ce_and_kl_scores_against_a_direct_computation():
    from models import tiny_llama, tokens
    model, site = tiny_llama()
    g = torch.Generator().manual_seed(4)
    noisy = sn.SAE(torch.randn(32, 64, generator=g) / 6, torch.zeros(64), torch.randn(64, 32, generator=g) / 6,
                   torch.zeros(32), k=4)
    batches = [tokens(seed=s) for s in range(2)]
    out = sn.ce_loss_recovered(model, site, noisy, batches)
    # The KL of the clean next-token distribution from the spliced one, directly.
    kl, count = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            clean = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
            with sn.splice(model, site, noisy):
                spliced = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
            kl += float(torch.nn.functional.kl_div(spliced, clean, log_target=True, reduction="sum"))
            count += ids[:, 1:].numel()
    assert out["kl_spliced"] == pytest.approx(kl / count, rel=1e-3)
    assert out["kl_spliced"] > 0 and out["kl_zero"] > 0 and out["kl_recovered"] == pytest.approx(
        1 - out["kl_spliced"] / out["kl_zero"])
    acts = torch.randn(50, 32)
    m = sn.evaluate(noisy, acts, model=model, site=site, token_batches=batches)
    assert m["ce_loss_score"] == pytest.approx(out["recovered"]) and m["kl_div_score"] == pytest.approx(out["kl_recovered"])
    assert m["ce_loss_with_sae"] == pytest.approx(out["spliced"]) and m["kl_div_with_ablation"] == pytest.approx(out["kl_zero"])


def test_training_holds_out_the_last_rows_and_evaluates_them(tmp_path, capsys):
    x, _ = superposition(n=4000, d=16, n_features=64, l0=4.0, seed=3)
    log = tmp_path / "m.jsonl"
    sae = sn.train(x, d_sae=48, k=4, batch_size=256, steps=30, eval_every=10, log_every=5, log_path=str(log))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    evals = [r for r in records if "eval/explained_variance" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert {"eval/mse", "eval/cossim", "eval/l0", "eval/l1", "eval/dead_fraction", "eval/dense_fraction"} <= set(evals[0])
    held = x[-200:]                                            # 5% of 4000 rows, the last ones
    want = sn.evaluate(sae, held)
    assert sae.metadata["evaluation"] == pytest.approx(want)
    assert evals[-1]["eval/explained_variance"] == pytest.approx(want["explained_variance"])
    err = capsys.readouterr().err
    assert "eval EV=" in err and "(on 200 held-out tokens)" in err
    # The held-out rows were never trained on: 3800 rows, 256 per step.
    assert sae.stats.n_tokens == 30 * 256
    no_split = sn.train(x, d_sae=48, k=4, batch_size=256, steps=3, holdout=0.0, progress=False)
    assert "evaluation" not in no_split.metadata


def test_held_out_store_rows_and_lm_scores(tmp_path):
    from models import tiny_llama, tokens
    from store_writer import write_rows
    acts = torch.randn(3000, 32, generator=torch.Generator().manual_seed(2))
    store = write_rows(tmp_path / "store", acts, shard_tokens=700)
    head, tail = store.rows(0, 2850), store.rows(2850, 3000)
    assert len(head) == 2850 and len(tail) == 150 and "rows=[2850, 3000)" in repr(tail)
    assert torch.equal(tail.tensor(), acts[2850:]) and torch.equal(head.tensor(), acts[:2850])
    seen = torch.cat(list(tail.batches(64, shuffle=True, seed=1)))
    assert torch.equal(seen[seen[:, 0].argsort()], acts[2850:][acts[2850:, 0].argsort()])
    halves = [torch.cat(list(head.batches(100, shuffle=False, rank=r, world_size=2))) for r in range(2)]
    assert torch.equal(torch.cat(halves), acts[:2850])
    for a, b in ((0, 0), (-1, 5), (10, 3001)):
        with pytest.raises(ValueError, match=r"start, stop: expected 0 <= start < stop <= 3000"):
            store.rows(a, b)
    model, site = tiny_llama()
    sae = sn.train(store, d_sae=64, k=4, batch_size=256, steps=6, progress=False, eval_model=model, eval_site=site,
                   eval_tokens=[tokens(seed=7)])
    ev = sae.metadata["evaluation"]
    assert ev["tokens"] == 150 and {"ce_loss_score", "kl_div_score", "ce_loss_with_sae", "kl_div_with_sae"} <= set(ev)
    with pytest.raises(ValueError, match="eval_model, eval_site, eval_tokens: give all three"):
        sn.train(store, d_sae=64, k=4, steps=1, progress=False, eval_model=model)


def test_weights_and_biases_logging(monkeypatch, tmp_path):
    calls = []

    class Run:
        def log(self, record, step):
            calls.append(("log", step, dict(record)))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda project, config: calls.append(("init", project, config)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    x, _ = superposition(n=3000, d=8, n_features=24, l0=2.0, seed=1)
    sn.train(x, d_sae=16, k=2, batch_size=128, steps=10, log_every=5, progress=False, wandb_project="saes")
    assert calls[0][:2] == ("init", "saes") and calls[0][2]["architecture"] == "topk"
    logged = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logged] == [5, 10, 10] and "eval/l0" in logged[-1][2]
    assert calls[-1] == ("finish",)
    monkeypatch.setitem(sys.modules, "wandb", None)                   # not installed
    with pytest.raises(ImportError, match="wandb_project: logging to Weights & Biases needs the wandb package"):
        sn.train(x, d_sae=16, k=2, steps=1, progress=False, wandb_project="saes")
