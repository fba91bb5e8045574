"""Forward hooks on real (tiny, random) Hugging Face models: record, splice, steer, generation."""
import pytest
import torch

import sae_native as sn
from models import MODELS, orthonormal_sae, random_sae, tokens

pytest.importorskip("transformers")


@pytest.fixture(params=sorted(MODELS))
def model_site(request):
    return MODELS[request.param]()


def layer_output(model, ids, layer_index=1):
    """The hidden state after decoder layer `layer_index` (what the site hook sees)."""
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[layer_index + 1]


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_record_equals_encode_of_hidden_state(model_site, activation):
    model, site = model_site
    sae = random_sae(activation)
    ids = tokens()
    with sn.record(model, site, sae) as rec, torch.no_grad():
        model(ids)
        model(ids[:1])
    assert len(rec.codes) == 2
    want = sae.encode(layer_output(model, ids))
    assert torch.equal(rec.codes[0].values, want.values) and torch.equal(rec.codes[0].indices, want.indices)
    assert rec.codes[0].values.shape[:2] == ids.shape
    assert rec.all().values.shape[0] == ids.numel() + ids.shape[1]


def test_record_with_stop_skips_every_later_layer(model_site):
    """stop=True: the same codes, and nothing after the site runs (the later decoder layers and
    the head see no call); a plain model() call reports the stop as an error; stop must be a bool."""
    model, site = model_site
    sae = random_sae()
    ids = tokens()
    later = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in ("2", "3", "lm_head")]
    assert len(later) == 3
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in later]
    try:
        with sn.record(model, site, sae, stop=True) as rec:
            assert rec.forward(ids) is None
            rec.forward(input_ids=ids[:1])
        assert calls == []
        want = sae.encode(layer_output(model, ids))
        assert torch.equal(rec.codes[0].values, want.values) and torch.equal(rec.codes[0].indices, want.indices)
        assert rec.codes[1].values.shape[:2] == (1, ids.shape[1])
        with sn.record(model, site, sae, stop=True), pytest.raises(Exception), torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    with pytest.raises(TypeError, match="stop: expected a bool"):
        sn.record(model, site, sae, stop="yes")


def test_record_with_a_position_mask(model_site):
    model, site = model_site
    sae = random_sae()
    ids = tokens()
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, -2:] = True
    with sn.record(model, site, sae, positions=mask) as rec, torch.no_grad():
        model(ids)
    want = sae.encode(layer_output(model, ids)[mask])
    assert torch.equal(rec.codes[0].indices, want.indices)
    assert rec.positions[0].shape == (4, 2)


def test_splice_keep_error_leaves_logits_unchanged(model_site):
    model, site = model_site
    sae = random_sae("jumprelu")
    ids = tokens()
    with torch.no_grad():
        base = model(ids).logits
        with sn.splice(model, site, sae, keep_error=True):
            kept = model(ids).logits
        with sn.splice(model, site, sae):
            spliced = model(ids).logits
        after = model(ids).logits
    torch.testing.assert_close(kept, base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(spliced, base, atol=1e-3)
    assert torch.equal(after, base)


def test_splice_passes_massive_activations_through(model_site):
    """With max_norm_ratio the positions above that multiple of the forward's median norm (two,
    made 100x here) keep their activation; every other one gets the reconstruction."""
    model, site = model_site
    sae = random_sae("jumprelu")
    module = sn.hooks.resolve_site(model, site)
    hidden = lambda out: out[0] if isinstance(out, tuple) else out     # noqa: E731
    seen = {}

    def inflate(mod, args, out):
        h = hidden(out)
        h[0, 2] *= 100.0
        h[1, 5] *= 100.0
        seen["in"] = h.clone()
    first = module.register_forward_hook(inflate)
    try:
        with torch.no_grad(), sn.splice(model, site, sae, max_norm_ratio=10):
            last = module.register_forward_hook(lambda m, a, out: seen.update(out=hidden(out).clone()))
            try:
                model(tokens())
            finally:
                last.remove()
    finally:
        first.remove()
    x, y = seen["in"], seen["out"]
    massive = torch.zeros(x.shape[:2], dtype=torch.bool)
    massive[0, 2] = massive[1, 5] = True
    assert torch.equal(y[massive], x[massive])
    torch.testing.assert_close(y[~massive], sae(x[~massive]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_norm_ratio: expected a finite number >= 1 or None"):
        sn.splice(model, site, sae, max_norm_ratio=0.5)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_empty_clamp_changes_nothing(model_site, activation):
    model, site = model_site
    ids = tokens()
    with torch.no_grad():
        base = model(ids).logits
        with sn.steer(model, site, random_sae(activation), {}):
            steered = model(ids).logits
    assert torch.equal(steered, base)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_steered_output_is_the_formula_at_every_position(model_site, activation):
    model, site = model_site
    sae = random_sae(activation)
    ids = tokens()
    x = layer_output(model, ids)
    f, v = 5, 7.5
    z_f = sae.encode(x).to_dense()[..., f]
    seen = []
    with sn.steer(model, site, sae, {f: v}):
        capture = sn.hooks.resolve_site(model, site).register_forward_hook(
            lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach()))
        try:
            with torch.no_grad():
                model(ids)
        finally:
            capture.remove()
    torch.testing.assert_close(seen[0], x + (v - z_f)[..., None] * sae.W_dec[f], atol=1e-5, rtol=1e-5)


def test_generation_is_steered_on_every_token(model_site):
    model, site = model_site
    sae = orthonormal_sae()
    ids = tokens(batch=1, seq=5)
    f, v = 3, 40.0
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=8, do_sample=False)
        with sn.steer(model, site, sae, {f: v}, keep_error=False), sn.record(model, site, sae) as rec:
            steered = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert not torch.equal(plain, steered)
    # one prefill forward, then one forward per generated token through the KV cache
    assert len(rec.codes) == 8 and rec.codes[0].values.shape[1] == 5 and rec.codes[-1].values.shape[1] == 1
    for codes in rec.codes:
        torch.testing.assert_close(codes.to_dense()[..., f], torch.full(codes.shape, v), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_steer_only_prompt_or_generated_tokens(model_site, positions):
    model, site = model_site
    sae = orthonormal_sae()
    ids = tokens(batch=2, seq=5)
    f, v = 3, 40.0
    with torch.no_grad(), sn.steer(model, site, sae, {f: v}, keep_error=False, positions=positions), \
            sn.record(model, site, sae) as rec:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    prefill, steps = rec.codes[0], rec.codes[1:]
    prompt_held = torch.isclose(prefill.to_dense()[..., f], torch.tensor(v), atol=1e-3).all()
    steps_held = all(torch.isclose(c.to_dense()[..., f], torch.tensor(v), atol=1e-3).all() for c in steps)
    steps_free = all(not torch.isclose(c.to_dense()[..., f], torch.tensor(v), atol=1e-3).any() for c in steps)
    if positions == "prompt":
        assert prompt_held and steps_free
    else:
        assert not torch.isclose(prefill.to_dense()[..., f], torch.tensor(v), atol=1e-3).any() and steps_held


def test_hooks_are_removed_after_the_block_and_on_exceptions(model_site):
    model, site = model_site
    ids = tokens()
    sae = random_sae()
    with torch.no_grad():
        base = model(ids).logits
        with pytest.raises(RuntimeError, match="boom"):
            with sn.steer(model, site, sae, {1: 50.0}) as h:
                assert h.attached
                raise RuntimeError("boom")
        assert not h.attached
        assert torch.equal(model(ids).logits, base)
        handle = sn.attach(model, site, sae, "steer", {1: 50.0})
        assert not torch.equal(model(ids).logits, base)
        handle.remove()
        handle.remove()  # idempotent
        assert torch.equal(model(ids).logits, base)


def test_a_removed_handle_attaches_again(model_site):
    # A second `with h:` once left the model silently unsteered; it re-attaches the hook.
    model, site = model_site
    ids = tokens()
    sae = random_sae()
    with torch.no_grad():
        base = model(ids).logits
        h = sn.steer(model, site, sae, {1: 50.0})
        with h:
            steered = model(ids).logits
        assert not h.attached and torch.equal(model(ids).logits, base)
        with h:
            assert h.attached
            assert torch.equal(model(ids).logits, steered)
        assert not h.attached and torch.equal(model(ids).logits, base)
        h.attach()
        h.attach()   # attached once, not twice
        assert torch.equal(model(ids).logits, steered)
        h.remove()
        with sn.record(model, site, sae) as rec:
            model(ids)
        with rec:
            model(ids)
        assert len(rec.codes) == 2


def test_nesting_and_several_sites():
    model, _ = MODELS["llama"]()
    sae = random_sae()
    ids = tokens()
    with torch.no_grad():
        base = model(ids).logits
        with sn.record(model, "model.layers.2", sae) as outer:
            with sn.steer(model, "model.layers.1", sae, {2: 30.0}), sn.record(model, "model.layers.3", sae) as inner:
                steered = model(ids).logits
            after_inner = model(ids).logits
        assert len(outer.codes) == 2 and len(inner.codes) == 1
        assert not torch.equal(steered, base) and torch.equal(after_inner, base)
        assert not torch.equal(outer.codes[0].indices, outer.codes[1].indices)
        assert torch.equal(model(ids).logits, base)


def test_module_object_as_site():
    model, _ = MODELS["llama"]()
    sae = random_sae()
    with sn.record(model, model.model.layers[1], sae) as rec, torch.no_grad():
        model(tokens())
    assert len(rec.codes) == 1


def test_unknown_site_lists_close_matches():
    model, _ = MODELS["llama"]()
    with pytest.raises(ValueError, match=r"site: no module 'model.layer.1' in LlamaForCausalLM; close matches: "
                                         r"model.layers.1"):
        sn.record(model, "model.layer.1", random_sae())
    with pytest.raises(TypeError, match="site: expected a module path string"):
        sn.record(model, 3, random_sae())


def test_bad_arguments():
    model, site = MODELS["llama"]()
    sae = random_sae()
    with pytest.raises(ValueError, match=r"positions: expected one of \('all', 'prompt', 'generated'\)"):
        sn.steer(model, site, sae, {1: 1.0}, positions="first")
    with pytest.raises(ValueError, match=r"mode: expected one of"):
        sn.steer(model, site, sae, {1: 1.0}, mode="clamp")
    with pytest.raises(ValueError, match=r"clamp: feature 999 is out of range"):
        sn.steer(model, site, sae, {999: 1.0})
    with pytest.raises(ValueError, match=r"action: expected one of"):
        sn.attach(model, site, sae, "erase")
    wide = random_sae(d_in=48)
    with sn.record(model, site, wide), pytest.raises(ValueError, match="its hidden state has width 32 but the SAE's "
                                                                       "d_in is 48"):
        model(tokens())


def test_bf16_model_with_fp32_sae(model_site):
    model, site = model_site
    model = model.to(torch.bfloat16)
    sae = random_sae()
    ids = tokens()
    with torch.no_grad(), sn.steer(model, site, sae, {4: 9.0}), sn.record(model, site, sae) as rec:
        logits = model(ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert rec.codes[0].values.dtype == torch.float32


def test_feature_stats_match_dense_computation(model_site):
    model, site = model_site
    sae = random_sae("jumprelu", d_sae=40)
    batches = [tokens(seed=s) for s in range(3)]
    masked = {"input_ids": tokens(seed=9), "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}
    stats = sn.feature_stats(model, site, sae, batches + [masked], top_examples=3, progress=False)
    assert sae.stats is stats
    zs = [sae.encode(layer_output(model, b)).to_dense().reshape(-1, 40) for b in batches]
    zm = sae.encode(layer_output(model, masked["input_ids"])).to_dense()[masked["attention_mask"].bool()]
    z = torch.cat(zs + [zm])
    assert stats.n_tokens == z.shape[0] == 3 * 14 + 11
    torch.testing.assert_close(stats.max, z.max(0).values)
    torch.testing.assert_close(stats.frequency, (z > 0).float().mean(0))
    torch.testing.assert_close(stats.mean, z.mean(0))
    top3 = z.topk(3, dim=0).values.t()
    fired = (z > 0).sum(0) >= 3
    torch.testing.assert_close(stats.top_values[fired], top3[fired])
    f = int(stats.max.argmax())
    text, pos, value = stats.top(f)[0]
    flat_text = batches + [masked["input_ids"]]
    torch.testing.assert_close(torch.tensor(value), stats.max[f])
    x = layer_output(model, flat_text[text // 2])[text % 2, pos]
    torch.testing.assert_close(sae.encode(x).to_dense()[f], stats.max[f])


def test_clamp_relative_to_recorded_max(model_site):
    model, site = model_site
    sae = random_sae("jumprelu")
    x = torch.randn(3, 32)
    with pytest.raises(ValueError, match=r"clamp: \('max', 10\) for feature 4 needs feature statistics"):
        sae.steer(x, {4: ("max", 10)})
    sn.feature_stats(model, site, sae, [tokens()], progress=False)
    torch.testing.assert_close(sae.steer(x, {4: ("max", 10)}), sae.steer(x, {4: 10 * float(sae.stats.max[4])}))


def test_transformer_lens_hook_name():
    tl = pytest.importorskip("transformer_lens")
    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=64,
                                     act_fn="relu")
    model = tl.HookedTransformer(cfg).eval()
    sae = random_sae()
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        _, cache = model.run_with_cache(ids)
        with sn.record(model, "blocks.0.hook_resid_post", sae) as rec:
            model(ids)
    assert torch.equal(rec.codes[0].indices, sae.encode(cache["blocks.0.hook_resid_post"]).indices)
