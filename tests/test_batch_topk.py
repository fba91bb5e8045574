"""BatchTopK and Matryoshka-BatchTopK: the batch selection over the fused encode's candidates
against a dense float64 reference (odd sizes, ties, rows that need more than 2k latents), its
gradients, and what the trained SAEs are."""
import pytest
import torch

import sae_native as sn
from sae_native.training import batch_topk
from sae_native.training.synthetic import superposition


def dense_batch_topk(x, W_enc, b_enc, b_dec, k):
    """The definition, in float64: relu of every pre-activation, the batch's B * k largest
    positive ones kept; ties to the earlier row, then the lower latent index."""
    pre = torch.relu((x.double() - b_dec.double()) @ W_enc.double() + b_enc.double())
    flat = pre.flatten()
    budget = int(x.shape[0] * k)
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:budget]
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order] = True
    return torch.where(keep & (flat > 0), flat, torch.zeros_like(flat)).view_as(pre)


def as_dense(values, indices, d_sae):
    out = torch.zeros(values.shape[0], d_sae, dtype=torch.float64)
    valid = indices >= 0
    rows = torch.arange(values.shape[0])[:, None].expand_as(indices)
    out[rows[valid], indices[valid]] = values[valid].double()
    return out


def integer_sae(B, d_in, d_sae, seed, spread=3):
    """Small integers everywhere: every pre-activation is exact in float32 and float64, and equal
    values (ties) are common."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-spread, spread + 1, (B, d_in), generator=g).float()
    W = torch.randint(-1, 2, (d_in, d_sae), generator=g).float()
    b_enc = torch.randint(-2, 3, (d_sae,), generator=g).float()
    b_dec = torch.randint(-1, 2, (d_in,), generator=g).float()
    return x, W, b_enc, b_dec


@pytest.mark.parametrize("B,d_in,d_sae,k", [(1, 1, 1, 1), (1, 7, 13, 2), (5, 3, 1, 1), (17, 11, 31, 3),
                                            (64, 16, 97, 5), (3, 5, 7, 7), (13, 9, 23, 2.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_topk_matches_the_dense_definition(B, d_in, d_sae, k, seed):
    x, W, b_enc, b_dec = integer_sae(B, d_in, d_sae, seed)
    values, indices = batch_topk.encode(x, W, b_enc, b_dec, k)
    torch.testing.assert_close(as_dense(values, indices, d_sae), dense_batch_topk(x, W, b_enc, b_dec, k),
                               rtol=0, atol=0)


def test_rows_that_need_many_latents_are_widened_until_exact():
    # One row far larger than the others takes most of the batch's budget: 2k candidates per
    # row are not enough for it, the encode widens it (twice here) and stays exact.
    x, W, b_enc, b_dec = integer_sae(8, 6, 64, seed=3, spread=1)
    x[2] *= 40
    values, indices = batch_topk.encode(x, W, b_enc, b_dec, 2)
    dense = as_dense(values, indices, 64)
    torch.testing.assert_close(dense, dense_batch_topk(x, W, b_enc, b_dec, 2), rtol=0, atol=0)
    assert int((dense[2] > 0).sum()) > 8 and values.shape[1] > 4


def test_batch_topk_gradients_match_dense_autograd():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 6, generator=g)
    W = torch.randn(6, 19, generator=g).requires_grad_()
    b_enc = torch.randn(19, generator=g).requires_grad_()
    b_dec = torch.randn(6, generator=g).requires_grad_()
    weights = torch.randn(9, 19, generator=g, dtype=torch.float64)
    values, indices = batch_topk.encode(x, W, b_enc, b_dec, 3)
    (as_dense(values, indices, 19) * weights).sum().backward()
    got = [t.grad.clone() for t in (W, b_enc, b_dec)]
    ref = [t.detach().double().requires_grad_() for t in (W, b_enc, b_dec)]
    pre = torch.relu((x.double() - ref[2]) @ ref[0] + ref[1])
    keep = dense_batch_topk(x, W.detach(), b_enc.detach(), b_dec.detach(), 3) > 0
    (pre * keep * weights).sum().backward()
    for a, r in zip(got, ref):
        torch.testing.assert_close(a.double(), r.grad, rtol=1e-4, atol=1e-4)


def test_select_budget_edges():
    v = torch.tensor([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    assert batch_topk.select(v, 0).sum() == 0
    assert batch_topk.select(v, 100).tolist() == [[True, True, False], [True, True, False]]   # never a zero
    assert batch_topk.select(v, 1).tolist() == [[True, False, False], [False, False, False]]  # tie: earlier row


def test_matryoshka_prefixes_reconstruct_on_their_own():
    # What the nested losses buy: the first d_sae/16 latents alone reconstruct far better than the
    # same prefix of a plain BatchTopK SAE, whose latents carry no order.
    x, _ = superposition(n=30_000, d=24, n_features=96, l0=4.0, seed=2)
    common = dict(d_sae=192, k=6, batch_size=1024, steps=300, progress=False, seed=1)
    plain = sn.train(x, architecture="batchtopk", **common)
    nested = sn.train(x, architecture="matryoshka_batchtopk", **common)

    def prefix_fvu(sae, width):
        codes = sae.encode(x[:5000])
        keep = codes.indices < width
        x_hat = sn.functional.decode(codes.values * keep, codes.indices, sae.W_dec, sae.b_dec)
        return float((x[:5000] - x_hat).pow(2).sum() / (x[:5000] - x[:5000].mean(0)).pow(2).sum())

    assert prefix_fvu(nested, 12) < 0.8 * prefix_fvu(plain, 12)
    assert nested.activation == "jumprelu" and nested.metadata["architecture"] == "matryoshka_batchtopk"
    assert sn.TrainConfig(architecture="matryoshka_batchtopk", d_sae=192, k=6).widths == [12, 24, 48, 96, 192]
    assert sn.TrainConfig(architecture="matryoshka_batchtopk", d_sae=10, k=1, matryoshka_widths=[2, 5]).widths \
        == [2, 5, 10]


@pytest.mark.parametrize("topk_warmup", [0.0, 0.5])
def test_the_topk_phase_selects_k_per_token_then_the_batch_takes_over(topk_warmup):
    # Rows of very different norms: the batch-wide selection gives the large rows more than k
    # latents and the small rows fewer; the TopK phase gives every row exactly k.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 12, generator=g) * torch.logspace(-1, 1, 256).unsqueeze(1)
    cfg = sn.TrainConfig(architecture="batchtopk", d_sae=48, k=4, batch_size=256, topk_warmup=topk_warmup, seed=1)
    trainer = sn.Trainer(12, cfg)
    steps = 6
    for step in range(steps):
        trainer.scale = trainer.scale or 1.0
        z, _, indices = trainer._encode(x, trainer._kernel_weights(), trainer.b_dec, steps)
        per_row = ((z != 0) & (indices >= 0)).sum(1)
        batch_phase = step >= topk_warmup * steps
        assert cfg.batch_selection_at(step, steps) == batch_phase
        if batch_phase:
            assert int(per_row.sum()) == 4 * 256 and int(per_row.max()) > 4 and int(per_row.min()) < 4
        else:
            assert torch.all(per_row == 4)
        had_threshold = trainer.batch_threshold is not None
        trainer.step(x, steps)
        # the inference threshold is learned from the batch-wide selection only
        assert (trainer.batch_threshold is not None) == (batch_phase or had_threshold)


def test_batch_topk_config_errors():
    x = torch.randn(64, 8)
    for kw, msg in ((dict(architecture="batchtopk", k=0), r"k: a batchtopk SAE needs a number in \(0, d_sae=16\]"),
                    (dict(architecture="batchtopk", k=2, l1=1.0), "l1: batchtopk SAEs are sparse by construction"),
                    (dict(architecture="matryoshka_batchtopk", k=2, matryoshka_widths=[4, 4]),
                     "matryoshka_widths: expected strictly increasing ints"),
                    (dict(architecture="matryoshka_batchtopk", k=2, matryoshka_widths=[4, 32]),
                     "matryoshka_widths: expected strictly increasing ints in \\[1, d_sae=16\\]"),
                    (dict(architecture="batchtopk", k=2, matryoshka_widths=[4]),
                     "matryoshka_widths: only matryoshka_batchtopk"),
                    (dict(architecture="batchtopk", k=2, threshold_rate=0.0), r"threshold_rate: expected a number in \(0, 1\]"),
                    (dict(architecture="batchtopk", k=2, topk_warmup=1.0), r"topk_warmup: expected a fraction in \[0, 1\)"),
                    (dict(architecture="relu", k=2), "k: only topk, batchtopk, matryoshka_batchtopk SAEs take k"),
                    (dict(architecture="relu", sparsity_warmup=1.5), r"sparsity_warmup: expected a fraction in \[0, 1\)"),
                    (dict(architecture="relu", holdout=-0.1), r"holdout: expected a fraction in \[0, 1\)"),
                    (dict(architecture="relu", eval_every=0), "eval_every: expected an int >= 1")):
        with pytest.raises(ValueError, match=msg):
            sn.train(x, d_sae=16, steps=1, progress=False, **kw)
