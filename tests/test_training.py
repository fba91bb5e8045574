"""Training: ground-truth recovery, the straight-through estimator, resume, data sources, evaluation."""
import json

import pytest
import torch

import sae_native as sn
from sae_native.training.losses import JumpReLUCodes, StepL0
from sae_native.training.synthetic import recovery, superposition


def toy(n_feat=256, d=64, n=100_000, p_active=0.02, seed=0):
    """'Toy Models of Superposition' data (sn.training.synthetic), sized for quick runs."""
    return superposition(n=n, d=d, n_features=n_feat, l0=p_active * n_feat, seed=seed)


@pytest.fixture(scope="module")
def data():
    return toy()


def test_bf16_weights_option(encode_path):
    # bf16 kernel weights (float32 Adam masters) learn as well as float32 ones.
    x, dirs = toy(n_feat=64, d=24, n=20_000, p_active=3 / 64)
    common = dict(architecture="topk", d_sae=128, k=4, batch_size=1024, steps=300, progress=False)
    bf16 = sn.train(x, weight_dtype="bfloat16", **common)
    fp32 = sn.train(x, **common)
    assert bf16.W_enc.dtype == torch.bfloat16 and fp32.W_enc.dtype == torch.float32
    assert recovery(bf16, dirs) >= recovery(fp32, dirs) - 0.03 and recovery(fp32, dirs) >= 0.85


def test_straight_through_estimator_matches_the_dense_formula():
    g = torch.Generator().manual_seed(0)
    pre = torch.rand(6, 5, generator=g, dtype=torch.float64) * 2
    idx = torch.stack([torch.randperm(9, generator=g)[:5] for _ in range(6)])
    idx[0, 4] = -1
    theta = (torch.rand(9, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    eps = 0.3
    pre_l = pre.clone().requires_grad_()
    z = JumpReLUCodes.apply(pre_l, idx, theta, eps)
    upstream = torch.randn(6, 5, generator=g, dtype=torch.float64)
    (z * upstream).sum().backward()
    th = theta.detach()[idx.clamp_min(0)]
    valid = idx >= 0
    kernel = ((pre - th).abs() < eps / 2).double() * valid
    want_theta = torch.zeros(9, dtype=torch.float64).index_add_(
        0, idx.clamp_min(0).flatten(), (-(th / eps) * kernel * upstream).flatten())
    torch.testing.assert_close(theta.grad, want_theta)
    torch.testing.assert_close(pre_l.grad, upstream * ((pre > th) & valid))
    torch.testing.assert_close(z.detach(), pre * ((pre > th) & valid))
    theta.grad = None
    l0 = StepL0.apply(pre, idx, theta, eps)
    assert float(l0) == float(((pre > th) & valid).sum())
    l0.backward()
    want = torch.zeros(9, dtype=torch.float64).index_add_(0, idx.clamp_min(0).flatten(), (-kernel / eps).flatten())
    torch.testing.assert_close(theta.grad, want)


@pytest.mark.parametrize("arch,kw", [("topk", dict(k=4)), ("jumprelu", dict()), ("batchtopk", dict(k=4)),
                                     ("matryoshka_batchtopk", dict(k=4))])
def test_checkpoint_resume_equals_uninterrupted(tmp_path, arch, kw, encode_path):
    x, _ = toy(n_feat=64, d=16, n=4096)
    # (holdout 0: the interrupted half below runs Trainer.fit on all of x, which holds nothing out)
    common = dict(architecture=arch, d_sae=48, batch_size=256, steps=24, progress=False, log_every=4, holdout=0.0, **kw)
    straight = sn.train(x, **common)
    trainer = sn.Trainer(16, sn.TrainConfig(**{k: v for k, v in common.items() if k != "progress"}))
    trainer.fit(x, 24, until=12, progress=False, checkpoint_dir=str(tmp_path / "ck"))  # "interrupted" at 12
    resumed = sn.train(x, resume=str(tmp_path / "ck"), **common)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        a, b = getattr(straight, name), getattr(resumed, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b), name
    ck = sn.load(tmp_path / "ck")  # a checkpoint is a loadable SAELens folder
    assert ck.d_sae == 48 and "log_feature_sparsity" in ck.metadata
    assert json.load(open(tmp_path / "ck" / "training_config.json"))["architecture"] == arch


def test_metrics_log_and_iterable_input(tmp_path):
    x, _ = toy(n_feat=64, d=16, n=6000)
    log = tmp_path / "m.jsonl"
    chunks = (x[i:i + 700] for i in range(0, 6000, 700))
    sae = sn.train(chunks, d_sae=32, k=4, batch_size=512, steps=10, progress=False, log_path=str(log), log_every=5)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert {"loss", "mse", "fvu", "l0", "dead", "lr", "tokens"} <= set(records[0])
    assert sae.d_in == 16 and sae.stats.n_tokens == 5120


def test_input_scale_is_folded_into_the_weights(data, encode_path):
    x, _ = data
    big = 37.0 * x[:20000]
    sae = sn.train(big, d_sae=256, k=8, batch_size=1024, steps=100, progress=False)
    m = sn.evaluate(sae, big)
    assert m["fvu"] < 0.5
    torch.testing.assert_close(sae.encode(big[:5]).indices, sae.encode(big[:5]).indices)


def test_config_and_argument_errors():
    x = torch.randn(100, 8)
    with pytest.raises(ValueError, match=r"k: a topk SAE needs an int in \[1, d_sae=16\]"):
        sn.train(x, d_sae=16, progress=False)
    with pytest.raises(ValueError, match="architecture: expected one of"):
        sn.train(x, architecture="gated", d_sae=16, progress=False)
    with pytest.raises(ValueError, match="l1: topk SAEs are sparse by construction"):
        sn.train(x, d_sae=16, k=2, l1=1.0, progress=False)
    with pytest.raises(TypeError, match="train: unknown option"):
        sn.train(x, d_sae=16, k=2, momentum=0.9, progress=False)
    with pytest.raises(ValueError, match="steps or tokens: required when activations is an iterable"):
        sn.train(iter([x]), d_sae=16, k=2, progress=False)
    with pytest.raises(ValueError, match=r"activations: expected a floating tensor \[N, d_in\]"):
        sn.train(torch.ones(10, 4, dtype=torch.int64), d_sae=16, k=2, progress=False)
    for bad in (torch.tensor(1.0), torch.ones(5), torch.ones(2, 3, 4)):   # before the held-out split, too
        with pytest.raises(ValueError, match=r"activations: expected a floating tensor \[N, d_in\]"):
            sn.train(bad, d_sae=16, k=2, progress=False)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        sn.train(x, d_sae=16, k=2, batch_size=0, progress=False)


def test_the_budget_in_tokens_and_the_default_budget():
    cfg = lambda **kw: sn.TrainConfig(d_sae=8, k=2, batch_size=100, **kw).validate()   # noqa: E731
    assert cfg(tokens=1050).total_steps(10 ** 6) == 11
    assert cfg().total_steps(500) == 1000           # a small tensor: several passes, at least 1000 steps
    assert cfg().total_steps(10 ** 6) == 10_000     # a large one: one pass
    assert cfg(steps=7).total_steps(10 ** 6) == 7
    with pytest.raises(ValueError, match="steps and tokens: give one of them"):
        cfg(steps=3, tokens=10)
    with pytest.raises(ValueError, match="tokens: expected an int >= 1"):
        cfg(tokens=0)
    x, _ = toy(n_feat=32, d=8, n=600)
    trainer = sn.Trainer(8, sn.TrainConfig(d_sae=16, k=2, batch_size=64, tokens=640))
    with pytest.warns(UserWarning, match="too short"):
        trainer.fit(x, progress=False)
    assert trainer.step_count == 10 and trainer.tokens == 640


def test_the_end_of_a_run_reports_and_warns_when_too_short(capsys):
    x, _ = toy(n_feat=64, d=16, n=4096)
    with pytest.warns(UserWarning, match="the run looks too short to have converged"):
        sn.train(x, d_sae=48, k=4, batch_size=256, steps=5, progress=True)
    err = capsys.readouterr().err
    assert "trained 5 steps (1,280 tokens): FVU" in err and "L0 4.0" in err and "dead" in err
    # Long enough on this easy data: no warning.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sn.train(x, d_sae=48, k=4, batch_size=256, steps=400, progress=False)


def test_stream_activations_from_a_model():
    from models import tiny_llama, tokens
    model, site = tiny_llama()
    batches = [tokens(batch=4, seq=9, seed=s) for s in range(5)]
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[0, 6:] = 0
    items = batches[:4] + [{"input_ids": batches[4], "attention_mask": mask}]
    out = list(sn.stream_activations(model, site, items, batch_size=16, buffer_tokens=40, seed=0))
    rows = torch.cat(out)
    assert rows.shape == (4 * 4 * 8 + 4 * 8 - 3, 32)     # BOS positions and padding dropped
    with torch.no_grad():
        want = torch.cat([model(b, output_hidden_states=True).hidden_states[2][:, 1:].reshape(-1, 32)
                          for b in batches[:4]])
    # every streamed row is one of the site's activations (order is shuffled)
    assert torch.cdist(rows[:10], want).min(dim=1).values.max() < 1e-4
    sae = sn.train(sn.stream_activations(model, site, batches * 4, batch_size=32), d_sae=64, k=4, batch_size=32,
                   steps=10, progress=False)
    assert sae.d_in == 32


def test_ce_loss_recovered_of_a_perfect_sae():
    from models import tiny_llama, tokens
    model, site = tiny_llama()
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(3)))
    W_dec = torch.cat([q, -q])           # +/- each direction: relu(qx) - relu(-qx) = qx, so x is rebuilt
    perfect = sn.SAE(W_dec.t().contiguous(), torch.zeros(64), W_dec, torch.zeros(32), activation="relu")
    out = sn.ce_loss_recovered(model, site, perfect, [tokens(seed=s) for s in range(2)])
    assert abs(out["recovered"] - 1.0) < 1e-3 and out["zero"] > out["clean"]
    noisy = sn.SAE(torch.randn(32, 64) / 6, torch.zeros(64), torch.randn(64, 32) / 6, torch.zeros(32), k=2)
    assert sn.ce_loss_recovered(model, site, noisy, [tokens()])["recovered"] < 0.99
    # max_norm_ratio reaches the splice (tests/test_hooks.py checks what it does there): at 1 the
    # positions above the median pass through; no position is 1e9x the median
    plain = sn.ce_loss_recovered(model, site, noisy, [tokens()])
    assert sn.ce_loss_recovered(model, site, noisy, [tokens()], max_norm_ratio=1e9) == plain
    half = sn.ce_loss_recovered(model, site, noisy, [tokens()], max_norm_ratio=1.0)
    assert half["spliced"] != plain["spliced"] and (half["clean"], half["zero"]) == (plain["clean"], plain["zero"])


def test_cli_train(tmp_path, capsys):
    from sae_native.cli import main
    x, _ = toy(n_feat=64, d=16, n=5000)
    torch.save(x, tmp_path / "acts.pt")
    assert main(["train", "--activations", str(tmp_path / "acts.pt"), "--d-sae", "48", "--k", "4", "--batch-size",
                 "500", "--steps", "20", "--out", str(tmp_path / "out"), "--no-progress", "--log",
                 str(tmp_path / "log.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "FVU" in printed and "saved the SAE" in printed
    sae = sn.load(tmp_path / "out")
    assert (sae.d_in, sae.d_sae, sae.k) == (16, 48, 4)
    for argv, msg in ((["--d-sae", "8", "--out", "o"], "give either --activations FILE or --model"),
                      (["--activations", "nope.pt", "--d-sae", "8", "--k", "2", "--out", "o"], "no such file"),
                      (["--activations", str(tmp_path / "acts.pt"), "--d-sae", "8", "--out", "o"], "k: a topk SAE"),
                      (["--model", "smollm2", "--d-sae", "8", "--out", "o"], "--model needs --site and --texts")):
        with pytest.raises(SystemExit) as e:
            main(["train", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_cli_train_help_documents_every_option(capsys):
    from sae_native.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--activations", "--model", "--site", "--texts", "--architecture", "--d-sae", "--k", "--l1",
                   "--steps", "--batch-size", "--lr", "--seed", "--warmup-steps", "--decay-from", "--auxk-coef",
                   "--dead-tokens", "--normalize-decoder", "--bandwidth", "--init-threshold", "--weight-dtype",
                   "--out", "--checkpoint-every", "--resume", "--log", "--log-every", "--device"):
        assert option in text


@pytest.mark.parametrize("d_sae,batch", [(37, 29), (64, 1)])
def test_relu_dense_step_matches_the_sparse_step(d_sae, batch):
    """A ReLU SAE's step runs as dense matmuls while many latents fire: the same function, the
    same gradients and the same latent statistics as the sparse kernels' step."""
    from sae_native.training.config import TrainConfig
    from sae_native.training.trainer import DENSE_RELU_FRACTION, Trainer
    cfg = TrainConfig(architecture="relu", d_sae=d_sae, batch_size=batch, steps=6, seed=3)
    torch.manual_seed(0)
    xs = torch.randn(4, batch, 13) * 2 + 0.5
    dense, sparse = Trainer(13, cfg), Trainer(13, cfg)
    for x in xs:
        dense.relu_dense, sparse.relu_dense = True, False
        md, ms = dense.step(x, 6), sparse.step(x, 6)
        assert md["l0"] == ms["l0"] and md["loss"] == pytest.approx(ms["loss"], rel=1e-5)
        assert dense.relu_dense == (md["l0"] > DENSE_RELU_FRACTION * d_sae)     # the next step's form
    for name in ("W_enc_t", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(dense, name), getattr(sparse, name), rtol=1e-4, atol=1e-5)
    for name in ("fired", "act_sum", "act_max", "since_fired"):
        torch.testing.assert_close(getattr(dense, name), getattr(sparse, name), rtol=1e-5, atol=1e-5)


def _reference_grads(trainer, x, total_steps):
    """The step's gradients of W_enc^T and W_dec in float64, from the codes the step's encode
    picks: dense autograd through z (the codes' values), pre = u @ W_enc at the chosen latents,
    plus the ReLU's L1 on decoder norms and the unit-decoder projection."""
    cfg = trainer.cfg
    f64 = torch.float64
    xs = (x * trainer.scale).double()
    with torch.no_grad():
        z_op, _, idx = trainer._encode(xs.float(), trainer._kernel_weights(), trainer.b_dec, total_steps)
    W_enc = trainer.W_enc_t.detach().double().t().requires_grad_()
    W_dec = trainer.W_dec.detach().double().requires_grad_()
    b_dec = trainer.b_dec.detach().double()
    live = (idx >= 0) & (z_op > 0)
    safe = idx.clamp_min(0)
    u = xs - b_dec
    # z's values are the kernel's (bf16 weights round them); their dependence on W_enc is u's
    pre = (u @ W_enc).gather(1, safe)
    z = (z_op.double() + pre - pre.detach()) * live
    x_hat = torch.zeros(len(xs), W_enc.shape[1], dtype=f64).scatter_add(1, safe, z) @ W_dec + b_dec
    loss = (xs - x_hat).pow(2).sum(-1).mean() / trainer.d_in
    if cfg.architecture == "relu":
        l1 = (z * W_dec.norm(dim=1)[safe]).sum(-1).mean()
        loss = loss + cfg.sparsity_at(trainer.step_count, total_steps) * l1 / trainer.d_in
    loss.backward()
    g_dec = W_dec.grad
    if cfg.unit_decoder:
        g_dec = g_dec - (g_dec * W_dec).sum(-1, keepdim=True) * W_dec
    return W_enc.grad.t(), g_dec


@pytest.mark.parametrize("architecture", ["topk", "relu"])
@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16"])
def test_step_gradients_match_a_float64_reference(architecture, weight_dtype):
    """The step's weight gradients, which its backward adds into kept .grad buffers (in float32
    from the bf16 kernels' codes: training/kernel_weights.py), are the dense float64 gradients of
    its loss, step after step (a buffer not zeroed between steps, or a contribution left out,
    fails this), with odd sizes."""
    from sae_native.training.trainer import Trainer
    extra = dict(k=5, auxk_coef=0.0) if architecture == "topk" else {}
    cfg = sn.TrainConfig(architecture=architecture, d_sae=53, batch_size=31, steps=4, seed=2, weight_dtype=weight_dtype,
                         **extra)
    trainer = Trainer(17, cfg)
    trainer.relu_dense = False
    g = torch.Generator().manual_seed(4)
    for step in range(3):
        x = torch.randn(31, 17, generator=g) * 3 + 1
        if step == 0:
            trainer._start(x)
        want_enc, want_dec = _reference_grads(trainer, x, 4)
        trainer.relu_dense = False
        trainer.step(x, 4)
        torch.testing.assert_close(trainer.W_enc_t.grad.double(), want_enc, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(trainer.W_dec.grad.double(), want_dec, rtol=1e-4, atol=1e-5)
    assert trainer.W_enc_t.grad.dtype == torch.float32 and trainer.W_dec.grad.dtype == torch.float32


def test_step_fvu_is_exact_on_data_far_from_zero():
    """The step's FVU against float64 on activations whose mean is 300x their spread (residual
    streams sit far from zero): a float32 sum of squares less B |mean|^2 would cancel to noise."""
    from sae_native.training.trainer import Trainer
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 23, generator=g) + 300.0
    trainer = Trainer(23, sn.TrainConfig(architecture="topk", d_sae=31, k=3, batch_size=64, steps=2, seed=1))
    trainer._start(x)
    xs = (x * trainer.scale).double()
    before = {n: getattr(trainer, n).detach().double().clone() for n in ("W_enc_t", "b_enc", "W_dec", "b_dec")}
    m = trainer.step(x, 2)
    codes = sn.functional.encode(xs.float(), before["W_enc_t"].t().float(), before["b_enc"].float(),
                                 activation="topk", k=3, b_dec=before["b_dec"].float())
    dense = torch.zeros(64, 31, dtype=torch.float64).scatter(1, codes.indices, codes.values.double())
    err = xs - (dense @ before["W_dec"] + before["b_dec"])
    want = float(err.pow(2).sum() / (xs - xs.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(want, rel=1e-3)
