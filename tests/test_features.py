"""sn.find_features on a model whose activations are known exactly: token t's embedding is the
t-th basis vector (times a weight), and the SAE's feature f reads that coordinate."""
import pytest
import torch

import sae_native as sn
from sae_native.features import auroc

V = 16  # vocabulary = hidden size = d_sae


class OneHotModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, V)
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(V))
            self.embed.weight[5, 5] = 2.0    # feature 5 fires with value 2 on token 5

    def forward(self, ids):
        return self.embed(ids).sum()


class DigitTokenizer:
    """'1 5 7' -> [[1, 5, 7]]; decode([t]) -> 'tok{t}'."""
    def __call__(self, text, return_tensors="pt"):
        return {"input_ids": torch.tensor([[int(w) for w in text.split()]])}

    def decode(self, ids):
        return "".join(f"tok{i}" for i in ids)


def identity_sae():
    eye = torch.eye(V)
    return sn.SAE(eye, torch.zeros(V), eye, torch.zeros(V), activation="relu", apply_b_dec_to_input=False)


# Features 5 and 7 fire only on the positives; 7 on most of their tokens, 5 on one each.
# Token 5 opens a negative text: the first position is ignored (attention-sink outliers).
POS = ["1 5 7 7 7", "2 7 5 7"]
NEG = ["5 1 2 3", "3 4 2", "9 1 1 9"]


def test_selective_features_rank_first_with_their_tokens():
    matches = sn.find_features(OneHotModel(), "embed", identity_sae(), POS, NEG, top=3, tokenizer=DigitTokenizer())
    assert [m.feature for m in matches[:2]] == [5, 7]
    five = matches[0]
    assert five.auroc == 1.0 and five.pos_frequency == 1.0 and five.neg_frequency == 0.0
    assert five.pos_mean_max == pytest.approx(2.0)
    assert five.top_tokens == [("tok5", 2.0), ("tok5", 2.0)]
    assert five.pos_coverage == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert five.neg_coverage == 0.0
    assert matches[2].auroc < 1.0


def test_coverage_ranking_prefers_the_feature_on_more_tokens():
    matches = sn.find_features(OneHotModel(), "embed", identity_sae(), POS, NEG, top=2, tokenizer=DigitTokenizer(),
                               rank="coverage", min_auroc=0.99)
    assert [m.feature for m in matches] == [7, 5]
    assert matches[0].pos_coverage == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_consistency_ranking_prefers_the_feature_of_every_phrasing():
    # Feature 7 fires on every text of both groups; feature 5 (more tokens per text in the first
    # group) only in the first: it is a feature of one phrasing, not of the concept.
    groups = {"named": ["1 5 5 5 5 7", "2 5 5 7", "3 5 7"], "described": ["1 7 2 3", "4 7 2"]}
    neg = ["3 4 2", "9 1 1 9", "2 3 4"]
    matches = sn.find_features(OneHotModel(), "embed", identity_sae(), groups, neg, top=2,
                               tokenizer=DigitTokenizer(), rank="consistency", min_auroc=0.5)
    assert [m.feature for m in matches] == [7, 5]
    assert matches[0].group_frequency == {"named": 1.0, "described": 1.0}
    assert matches[1].group_frequency == {"named": 1.0, "described": 0.0}
    assert matches[1].pos_frequency == pytest.approx(3 / 5)
    coverage = sn.find_features(OneHotModel(), "embed", identity_sae(), groups, neg, top=1,
                                tokenizer=DigitTokenizer(), rank="coverage", min_auroc=0.5)
    assert coverage[0].feature == 5                           # what the coverage ranking would pick
    assert sn.find_features(OneHotModel(), "embed", identity_sae(), POS, NEG, top=1,
                            tokenizer=DigitTokenizer())[0].group_frequency == {}
    with pytest.raises(ValueError, match="positive_texts: expected a dict of named, non-empty groups"):
        sn.find_features(OneHotModel(), "embed", identity_sae(), {"named": []}, neg, tokenizer=DigitTokenizer())


def test_token_id_texts_need_no_tokenizer():
    pos = [[1, 5, 7, 7, 7], torch.tensor([2, 7, 5, 7])]
    neg = [[5, 1, 2, 3], [3, 4, 2], [9, 1, 1, 9]]
    matches = sn.find_features(OneHotModel(), "embed", identity_sae(), pos, neg, top=1)
    assert matches[0].feature == 5 and matches[0].top_tokens[0] == ("5", 2.0)


def test_auroc_matches_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 4, (7, 5), generator=g).float()
    neg = torch.randint(0, 4, (11, 5), generator=g).float()
    expect = [sum((float(p) > float(q)) + 0.5 * (float(p) == float(q)) for p in pos[:, f] for q in neg[:, f]) / 77
              for f in range(5)]
    assert auroc(pos, neg).tolist() == pytest.approx(expect)


@pytest.mark.parametrize("kwargs, message", [
    ({"top": 0}, "top: expected an int >= 1"),
    ({"rank": "frequency"}, "rank: expected one of \('auroc', 'coverage', 'consistency'\)"),
    ({"min_auroc": 1.5}, "min_auroc: expected a number in [0, 1]"),
    ({"examples": -1}, "examples: expected an int >= 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sn.find_features(OneHotModel(), "embed", identity_sae(), POS, NEG, tokenizer=DigitTokenizer(), **kwargs)


def test_bad_texts():
    model, sae = OneHotModel(), identity_sae()
    with pytest.raises(ValueError, match="at least one text each"):
        sn.find_features(model, "embed", sae, POS, [], tokenizer=DigitTokenizer())
    with pytest.raises(ValueError, match="tokenizer: needed"):
        sn.find_features(model, "embed", sae, POS, NEG)
    with pytest.raises(ValueError, match=r"texts\[1\]: expected a non-empty"):
        sn.find_features(model, "embed", sae, [[1, 5], []], [[1, 2]])
    with pytest.raises(ValueError, match="unknown|site"):
        sn.find_features(model, "no.such.layer", sae, POS, NEG, tokenizer=DigitTokenizer())
