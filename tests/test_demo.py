"""The end-to-end demo on the real SmolLM2, at a smoke-test budget (the full run is `sae-native demo`)."""
import json

import pytest

import smollm2
from sae_native.cli import main

pytestmark = pytest.mark.skipif(bool(smollm2.available()), reason=smollm2.available() or "available")

FIELDS = {"concept", "feature", "selectivity_auroc", "baseline_mention_rate", "steered_mention_rate", "coherence",
          "examples", "baseline_weak_mention_rate", "steered_weak_mention_rate", "mention_rule", "group_frequency",
          "inactive"}


def test_demo_small_budget_runs_both_strategies(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--budget", "small", "--concept", "all", "--cache", str(tmp_path / "cache"),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Strategy 1 - Golden Gate Bridge" in printed and "Strategy 2 - cats" in printed
    assert "a mention is: 'Golden Gate', or 'bridge' in the same sentence" in printed and "inactive: on" in printed
    results = json.loads(out.read_text())
    assert [r["concept"] for r in results] == ["Golden Gate Bridge", "cats"]
    for r in results:
        assert FIELDS <= set(r)
        assert 0.0 <= r["selectivity_auroc"] <= 1.0
        assert 0.0 <= r["baseline_mention_rate"] <= 1.0 and 0.0 <= r["steered_mention_rate"] <= 1.0
        assert r["best_scale"] in [row["scale"] for row in r["sweep"]]
        assert r["best_mention_rate"] == max(row["mention_rate"] for row in r["sweep"])
        assert len(r["examples"]) == 4 and all({"prompt", "unsteered", "steered"} <= set(e) for e in r["examples"])
        # every phrasing group was searched, and the inactive side answered questions about the concept
        assert set(r["group_frequency"]) == {"named (held-out corpus)", "described (no name)", "French", "Spanish",
                                             "German"}
        assert set(r["inactive"]) == {"prompts", "unsteered", "clamped to 0", "clamped to -2x max"}
        for side in ("unsteered", "clamped to 0", "clamped to -2x max"):
            row = r["inactive"][side]
            assert 0.0 <= row["mention_rate"] <= 1.0 and 0.0 <= row["weak_mention_rate"] <= 1.0
            assert 0.0 < row["distinct_words"] <= 1.0
            assert len(row["answers"]) == len(r["inactive"]["prompts"]) >= 2
        assert r["feature_search"] in ("consistency", "named texts (fallback)")
        assert r["residual_norm_median"] > 0 and r["clamp_norm"] > 0
        assert [row["scale"] for row in r["sweep"]] == [float(s) for s in range(1, 11)]     # 1x to 10x by default
        norms = [row["clamp_norm"] for row in r["sweep"]]
        assert norms == sorted(norms) and abs(norms[-1] - 10 * norms[0]) < 1e-3 * norms[-1]
    # the second run reuses the cached corpus and SAE
    assert main(["demo", "--budget", "small", "--cache", str(tmp_path / "cache"), "--prompt", "Who are you?"]) == 0
    assert "SAE: loaded from" in capsys.readouterr().out


def test_demo_argument_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--concept", "Statue of Liberty"])
    assert e.value.code == 2 and "--concept: expected one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--scale", "0"])
    assert e.value.code == 2
