"""sn.dashboard on a model whose activations are known exactly (token t's hidden state is the t-th
basis vector, so feature t fires on token t), checked in the files and in a real headless browser;
the collection pass against a dense float64 reference on a tiny Llama; the CLI on SmolLM2."""
import os
import re

import pytest
import torch

import sae_native as sn
from sae_native.feature_browser import collect

from browser import rendered
from models import random_sae, tiny_llama, tokens
import smollm2

V = 16


class ToyLM(torch.nn.Module):
    """Embedding = identity (token 5 at 2.0), an identity block (the site), and an unembedding
    whose column f has +1 at token (f+1)%V and -1 at token (f+2)%V."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, V)
        self.block = torch.nn.Identity()
        self.lm_head = torch.nn.Linear(V, V, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(V))
            self.embed.weight[5, 5] = 2.0
            W_U = torch.zeros(V, V)
            for f in range(V):
                W_U[(f + 1) % V, f], W_U[(f + 2) % V, f] = 1.0, -1.0
            self.lm_head.weight.copy_(W_U)

    def forward(self, input_ids):
        return self.lm_head(self.block(self.embed(input_ids)))

    def get_output_embeddings(self):
        return self.lm_head


class WordTokenizer:
    """'w3 w5' -> [3, 5]; decode([t]) -> ' w{t}'; EOS is token 0."""
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w[1:]) for w in text.split()]}

    def decode(self, ids):
        return "".join(f" w{i}" for i in ids)


def toy_sae():
    """Feature f reads coordinate f; decoder row 4 leans towards row 3 (their nearest neighbours)."""
    eye = torch.eye(V)
    W_dec = eye.clone()
    W_dec[4] += 0.9 * eye[3]
    return sn.SAE(eye.clone(), torch.zeros(V), W_dec, torch.zeros(V), activation="relu", apply_b_dec_to_input=False)


TEXTS = ["w1 w7 w7 w3", "w5 w2 w7", "w9 w5 w4 w3 w7", "w11 w12 w13"]
SEQ = 6


def stream():
    """The token stream dashboard builds: texts joined with EOS, cut in rows of SEQ."""
    ids = []
    for t in TEXTS:
        ids += [int(w[1:]) for w in t.split()] + [0]
    rows = len(ids) // SEQ
    return torch.tensor(ids[:rows * SEQ]).reshape(rows, SEQ)


@pytest.fixture(scope="module")
def toy_dash(tmp_path_factory):
    out = tmp_path_factory.mktemp("dash")
    index = sn.dashboard(ToyLM(), "block", toy_sae(), TEXTS, out, tokenizer=WordTokenizer(), seq_len=SEQ,
                         batch_size=2, examples=3, context=(2, 1), progress=False)
    return out, index


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_pages_hold_the_exact_statistics(toy_dash):
    out, index = toy_dash
    assert index == os.path.join(out, "index.html")
    ids = stream()
    counted = ids[:, 1:].flatten()          # each row's first position is left out
    alive = sorted(set(counted.tolist()))
    assert sorted(int(n[:-5]) for n in os.listdir(out / "features")) == alive
    for f in alive:
        page = read(out / "features" / f"{f}.html")
        count = int((counted == f).sum())
        assert f"{count} tokens" in page
        assert f"{count / counted.numel():.4%}" in page
        assert f'<td id="max">{2.0 if f == 5 else 1.0:.4g}</td>' in page
        bars = [int(c) for c in re.findall(r"<title>[^<]*: (\d+)</title>", page)]
        assert sum(bars) == count            # the histogram holds every activation


def test_contexts_are_the_peaks_with_their_neighbours_shaded(toy_dash):
    out, _ = toy_dash
    page = read(out / "features" / "7.html")
    ctx = page[page.index('<div id="contexts">'):page.index("</div>\n<div class=\"cols\">")]
    rows = re.findall(r'<div class="ctx">(.*?)</div>', ctx)
    assert len(rows) == 3                    # examples=3 of its 4 counted occurrences
    for row in rows:
        peak = re.search(r'class="tok peak"[^>]*data-act="([^"]+)">([^<]*)<', row)
        assert peak.group(2) == " w7" and float(peak.group(1)) == 1.0
        for act, text in re.findall(r'data-act="([^"]+)">([^<]*)<', row):
            assert float(act) == (1.0 if text == " w7" else 0.0)    # f's activation on every token shown
        assert len(re.findall(r'class="tok', row)) <= 4             # before 2 + peak + after 1
    first = re.findall(r'data-act="[^"]+">([^<]*)</span>', rows[0])
    ids = stream().flatten().tolist()
    at = ids.index(7, 1)                     # first counted occurrence, the first of equal values
    assert first == [f" w{t}" for t in ids[max(at - 2, (at // SEQ) * SEQ):at + 2]]


def test_logit_effects_and_neighbours(toy_dash):
    out, _ = toy_dash
    page = read(out / "features" / "7.html")
    logits = re.findall(r'<table class="logits">(.*?)</table>', page)
    assert re.findall(r'class="tok">([^<]*)<', logits[0])[0] == " w8"       # promotes (f+1)
    assert re.findall(r'class="tok">([^<]*)<', logits[1])[0] == " w9"       # suppresses (f+2)
    page4 = read(out / "features" / "4.html")
    near = re.findall(r'<table class="neighbours">(.*?)</table>', page4)[0]
    assert re.findall(r"feature (\d+)", near)[0] == "3"
    assert '<a href="3.html">' in near       # feature 3 has a page: linked


def test_index_renders_and_searches_in_a_browser(toy_dash):
    out, index = toy_dash
    dom = rendered("file://" + index)
    shown = re.findall(r'<tr class="feature" data-feature="(\d+)"', dom)
    alive = sorted(set(stream()[:, 1:].flatten().tolist()))
    assert sorted(int(f) for f in shown) == alive                  # the script built the table
    dom = rendered("file://" + index + "#q=w7")
    assert re.findall(r'<tr class="feature" data-feature="(\d+)"', dom) == ["7"]
    assert f"1 of {len(alive)} features" in dom
    page = rendered("file://" + str(out / "features" / "5.html"))
    assert "<h1>Feature 5</h1>" in page and page.count("<rect") > 0


def test_collect_matches_a_dense_reference(encode_path):
    model, site = tiny_llama()
    sae = random_sae("topk", k=5)
    batches = [tokens(3, 9, seed=s) for s in range(3)]
    col = collect(model, site, sae, batches, progress=False)
    hidden = []
    h = model.get_submodule(site).register_forward_hook(lambda m, i, o: hidden.append(o[0] if isinstance(o, tuple)
                                                                                        else o))
    with torch.no_grad():
        for b in batches:
            model(b)
    h.remove()
    x = torch.cat(hidden).double()                                   # [rows, seq, d_in]
    pre = (x - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
    top = torch.topk(pre, 5, dim=-1)
    dense = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    dense[:, 0] = 0                                                  # first positions are not counted
    assert col.n_tokens == 3 * 3 * 8
    assert torch.equal(col.tokens, torch.cat(batches))
    for f in range(sae.d_sae):
        values, where = col.activations(f)
        ref = dense.reshape(-1, sae.d_sae)[:, f]
        assert values.numel() == int((ref > 0).sum())
        assert torch.all(values[:-1] >= values[1:])                 # largest first
        torch.testing.assert_close(values.double(), ref[where], rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_named(tmp_path):
    model, sae, tok = ToyLM(), toy_sae(), WordTokenizer()
    cases = [(dict(texts="w1 w2"), "texts: expected an iterable of strings"),
             (dict(texts=["w1 w2", 3]), "texts[1]: expected a string"),
             (dict(features=[99]), "features: 99 is out of range"),
             (dict(examples=-1), "examples: expected an int >= 0"),
             (dict(context=(1,)), "context: expected (before, after)"),
             (dict(seq_len=1), "seq_len: expected an int >= 2"),
             (dict(texts=[]), "texts: the corpus gave no token batch"),
             (dict(unembed=torch.zeros(V, 3)), "unembed: expected a tensor"),
             (dict(site="nope"), "nope")]
    for change, msg in cases:
        kwargs = dict(site="block", texts=TEXTS, tokenizer=tok, seq_len=SEQ, progress=False) | change
        site, texts = kwargs.pop("site"), kwargs.pop("texts")
        with pytest.raises((ValueError, TypeError, AttributeError, KeyError), match=re.escape(msg)):
            sn.dashboard(model, site, sae, texts, tmp_path / "d", **kwargs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="out: .* is not a folder"):
        sn.dashboard(model, "block", sae, TEXTS, tmp_path / "file", tokenizer=tok, seq_len=SEQ, progress=False)


def test_chosen_features_and_a_rerun_replace_the_pages(tmp_path):
    kw = dict(tokenizer=WordTokenizer(), seq_len=SEQ, progress=False)
    sn.dashboard(ToyLM(), "block", toy_sae(), TEXTS, tmp_path, **kw)
    sn.dashboard(ToyLM(), "block", toy_sae(), TEXTS, tmp_path, features=[7, 15], **kw)
    assert sorted(os.listdir(tmp_path / "features")) == ["15.html", "7.html"]
    assert "never active in this corpus" in read(tmp_path / "features" / "15.html")


@pytest.mark.skipif(bool(smollm2.available()), reason=smollm2.available() or "-")
def test_cli_on_smollm2(tmp_path):
    from sae_native.cli import main
    sae = random_sae("topk", d_in=576, d_sae=64, k=4)
    sae.save(tmp_path / "sae")
    (tmp_path / "corpus.txt").write_text("The Golden Gate Bridge is in San Francisco.\n\nCats sleep a lot.\n"
                                         "A bridge crosses the bay; fog rolls in.\n")
    assert main(["dashboard", "--site", smollm2.SITE, "--sae", str(tmp_path / "sae"), "--texts",
                 str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "dash"), "--seq-len", "8",
                 "--max-features", "5", "--no-progress"]) == 0
    pages = os.listdir(tmp_path / "dash" / "features")
    assert 1 <= len(pages) <= 5
    page = read(tmp_path / "dash" / "features" / pages[0])
    assert "Promotes (logit effect)" in page and 'class="ctx"' in page
    with pytest.raises(SystemExit):
        main(["dashboard", "--site", smollm2.SITE, "--sae", str(tmp_path / "sae"), "--texts", "missing.txt",
              "--out", str(tmp_path / "d2")])
