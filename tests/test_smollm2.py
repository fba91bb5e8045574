"""Integration: record and steer the real SmolLM2-135M-Instruct at its middle layer."""
import math

import pytest
import torch

import sae_native as sn
import smollm2

pytestmark = pytest.mark.skipif(bool(smollm2.available()), reason=smollm2.available() or "available")


@pytest.fixture(scope="module")
def model_tok():
    return smollm2.load()


@pytest.fixture(scope="module")
def sae():
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 576, 4096
    W_enc = torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in)
    b_enc = torch.zeros(d_sae)
    W_enc[:, 0] = 0.0       # feature 0 can never fire: its pre-activation is always -100
    b_enc[0] = -100.0
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return sn.SAE(W_enc, b_enc, W_dec, torch.zeros(d_in), activation="topk", k=32)


def generate(model, ids, mask, n=24):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)[0, ids.shape[1]:]


def test_record_steer_and_null_clamp(model_tok, sae):
    model, tok = model_tok
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    ids, mask = smollm2.chat_ids(tok, "What is your physical form?")

    with sn.record(model, smollm2.SITE, sae) as rec, torch.no_grad():
        model(ids, attention_mask=mask)
    codes = rec.codes[0]
    assert codes.indices.shape == (1, ids.shape[1], 32)
    assert not (codes.indices == 0).any()

    stats = sn.feature_stats(model, smollm2.SITE, sae, [{"input_ids": ids, "attention_mask": mask}], progress=False)
    assert float(stats.max[0]) == 0.0 and stats.n_tokens == ids.shape[1]

    plain = generate(model, ids, mask)
    f = int(codes.indices[0, -1, 0])  # the strongest feature on the last prompt token
    with sn.steer(model, smollm2.SITE, sae, {f: 400.0}):
        steered = generate(model, ids, mask)
    with sn.steer(model, smollm2.SITE, sae, {0: ("max", 0)}):      # 0 x an inactive feature's max
        unchanged = generate(model, ids, mask)
    assert tok.decode(steered) != tok.decode(plain), tok.decode(steered)
    assert torch.equal(unchanged, plain)


def test_the_gguf_conversion_is_kept_and_read_back_identically(tmp_path, monkeypatch):
    """load_model("smollm2") keeps its float32 conversion under SAE_NATIVE_CACHE; the next load
    reads it without touching the GGUF, with the same weights, logits and tokenization; a folder
    left without its weights is converted again."""
    import transformers

    from sae_native import models
    monkeypatch.setenv("SAE_NATIVE_CACHE", str(tmp_path))
    first, tok = models.load_model("smollm2")
    kept = models._converted_folder(f"{models.smollm2_folder()}/{models.SMOLLM2_GGUF}")
    assert kept.startswith(str(tmp_path)) and sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == \
        [kept.rsplit("/", 1)[-1]]
    real = transformers.AutoModelForCausalLM.from_pretrained

    def no_gguf(*args, **kw):
        assert "gguf_file" not in kw, "the kept conversion was not used"
        return real(*args, **kw)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    again, tok2 = models.load_model("smollm2")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", real)
    a, b = first.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    text = "The Golden Gate Bridge überspannt 金门大桥"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert tok2(text)["input_ids"] == ids[0].tolist() and tok2.chat_template == tok.chat_template
    with torch.no_grad():
        assert torch.equal(first(ids).logits, again(ids).logits)
    bf16, _ = models.load_model("smollm2", dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    # a kept folder without its weights (a copy cut short) is converted again
    import os
    os.remove(os.path.join(kept, "model.safetensors"))
    models.load_model("smollm2")
    assert os.path.isfile(os.path.join(kept, "model.safetensors"))
