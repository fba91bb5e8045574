"""The end-to-end demo on the real SmolLM2, at a smoke-test budget (the full run is `sae-native demo`)."""
import json
import re

import pytest

import smollm2
from browser import rendered
from sae_native.cli import main
from sae_native.demo.direction import RATIOS

pytestmark = pytest.mark.skipif(bool(smollm2.available()), reason=smollm2.available() or "available")

FIELDS = {"concept", "feature", "selectivity_auroc", "baseline_mention_rate", "steered_mention_rate", "coherence",
          "examples", "baseline_weak_mention_rate", "steered_weak_mention_rate", "mention_rule", "group_frequency",
          "inactive", "loose_mention_rate", "best_scale", "best_scale_mention_rate", "architecture", "d_sae",
          "train_tokens", "unnamed_auroc", "per_language", "html", "sae_evaluation", "token_activations", "l1",
          "concept_direction", "site"}


def test_demo_small_budget_runs_both_strategies(tmp_path, capsys):
    out = tmp_path / "demo.json"
    page = tmp_path / "report.html"
    assert main(["demo", "--budget", "small", "--concept", "all", "--cache", str(tmp_path / "cache"),
                 "--json", str(out), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "Strategy 1 - Golden Gate Bridge" in printed and "Strategy 2 - cats" in printed
    assert "a mention is: 'Golden Gate', or 'bridge' (not 'Bay Bridge') in the same sentence" in printed
    assert "inactive: on" in printed
    results = json.loads(out.read_text())
    assert [r["concept"] for r in results] == ["Golden Gate Bridge", "cats"]
    for r in results:
        assert FIELDS <= set(r)
        assert 0.0 <= r["selectivity_auroc"] <= 1.0
        assert 0.0 <= r["baseline_mention_rate"] <= 1.0 and 0.0 <= r["steered_mention_rate"] <= 1.0
        assert r["best_scale"] in [row["scale"] for row in r["sweep"]]
        assert r["best_mention_rate"] == max(row["mention_rate"] for row in r["sweep"])
        # the best coherent scale: the most strict mentions among the coherent scales
        coherent = [row for row in r["sweep"] if row["coherent"]]
        assert r["best_scale_coherent"] == bool(coherent)
        if coherent:
            assert r["best_scale_mention_rate"] == max(row["mention_rate"] for row in coherent)
            ppl = r["coherence"]["median_perplexity_unsteered"]
            assert all(row["median_perplexity"] <= 4 * ppl for row in coherent)
        assert r["loose_mention_rate"] == r["steered_weak_mention_rate"]
        assert r["architecture"] == "relu" and r["d_sae"] == 256 and r["train_tokens"] >= 3000
        assert r["site"] == "model.layers.15"
        assert r["l1"] == 5.0          # (sn.train's default: the small budget sets none)
        ev = r["sae_evaluation"]
        assert 0 <= ev["fvu"] and ev["l0"] > 0 and 0 <= ev["dead_fraction"] <= 1 and ev["ce_loss_recovered"] <= 1
        assert ev["outlier_tokens"] >= 0 and ev["fvu_all_tokens"] >= 0 and ev["tokens"] > 0
        assert 0.0 <= r["unnamed_auroc"] <= 1.0 and set(r["per_language"]) == {"fr", "es", "de"}
        assert r["html"] == str(page)
        assert len(r["examples"]) == 4 and all({"prompt", "unsteered", "steered"} <= set(e) for e in r["examples"])
        # every phrasing group was searched, and the inactive side answered questions about the concept
        assert set(r["group_frequency"]) == {"named (held-out corpus)", "described (no name)", "French", "Spanish",
                                             "German"}
        ina = r["inactive"]
        assert set(ina) == {"prompts", "scale", "features", "label", "baseline_mention_rate", "ablated_mention_rate",
                            "unsteered", "clamps"}
        # the feature at 0 and -2x max, then the search's selective top features (the feature first) at 0
        selective = {m["feature"] for m in r["runner_up_features"] if m["auroc"] >= 0.95} - {r["feature"]}
        assert [c["scale"] for c in ina["clamps"]] == [0.0, -2.0] + [0.0] * bool(selective)
        assert [c["features"] for c in ina["clamps"][:2]] == [[r["feature"]]] * 2 and ina["scale"] in (0.0, -2.0)
        if selective:
            assert ina["clamps"][2]["features"] == [r["feature"], *(m["feature"] for m in r["runner_up_features"]
                                                                    if m["feature"] in selective)]
        assert ina["baseline_mention_rate"] == ina["unsteered"]["mention_rate"]
        used = next(c for c in ina["clamps"] if c["label"] == ina["label"])
        assert ina["ablated_mention_rate"] == used["mention_rate"] and ina["features"] == used["features"]
        for row in [ina["unsteered"], *ina["clamps"]]:
            assert 0.0 <= row["mention_rate"] <= 1.0 and 0.0 <= row["weak_mention_rate"] <= 1.0
            assert len(row["answers"]) == len(ina["prompts"]) >= 2
        assert r["feature_search"] in ("consistency", "named texts (fallback)")
        # the reference: the concept's own direction, read on every phrasing group and added at each ratio
        ref = r["concept_direction"]
        assert [row["ratio"] for row in ref["sweep"]] == list(RATIOS) and ref["norm"] > 0
        assert set(ref["auroc"]) == set(ref["auroc_mean"]) == set(r["group_frequency"])
        assert all(0.0 <= v <= 1.0 for v in [*ref["auroc"].values(), *ref["auroc_mean"].values()])
        assert ref["best_mention_rate"] == max(row["mention_rate"] for row in ref["sweep"])
        assert ref["best_coherent_mention_rate"] == max(
            [row["mention_rate"] for row in ref["sweep"] if row["coherent"]], default=None)
        for row in ref["sweep"]:
            assert row["coherent"] == (row["median_perplexity"] <= 4 * r["coherence"]["median_perplexity_unsteered"]
                                       and row["distinct_words"] >= 0.75 * r["coherence"]["distinct_words_unsteered"])
        assert ref["texts"]["concept"] >= 1 and ref["texts"]["other"] >= 1
        assert len(ref["examples"]["answers"]) == len(r["examples"]) and ref["examples"]["ratio"] in RATIOS
        assert r["residual_norm_median"] > 0 and r["clamp_norm"] > 0
        assert [row["scale"] for row in r["sweep"]] == [float(s) for s in range(1, 11)]     # 1x to 10x by default
        norms = [row["clamp_norm"] for row in r["sweep"]]
        assert norms == sorted(norms) and abs(norms[-1] - 10 * norms[0]) < 1e-3 * norms[-1]
    # the page, as the browser shows it: a section per concept with its shaded tokens, the chart
    # with a point per scale, and the answers side by side
    dom = rendered("file://" + str(page))
    assert re.findall(r'<section class="concept" data-concept="([^"]+)"', dom) == ["Golden Gate Bridge", "cats"]
    for r, part in zip(results, dom.split('<section class="concept"')[1:]):
        shown = sum(len(row["tokens"]) for g, rows in r["token_activations"].items() if g != "top_examples"
                    for row in rows)
        assert part.count('<span class="tok"') >= shown > 0
        assert part.count('<circle class="point strict"') == len(r["sweep"]) == 10
        assert len(re.findall(r"<tr>", part.split('class="answers"')[1].split("</table>")[0])) == 1 + 4
        assert f"feature {r['feature']} on every token" in part
        assert len(re.findall(r"<tr>", part.split('class="direction"')[1].split("</table>")[0])) == 1 + len(RATIOS)
    # the second run reuses the cached corpus and SAE
    assert main(["demo", "--budget", "small", "--cache", str(tmp_path / "cache"), "--prompt", "Who are you?"]) == 0
    assert "SAE: loaded from" in capsys.readouterr().out
    # another layer: the same corpus, its own store and SAE, read and steered at that layer
    assert main(["demo", "--budget", "small", "--cache", str(tmp_path / "cache"), "--prompt", "Who are you?",
                 "--layer", "8", "--sweep", "", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bulk corpus:" in printed and "activations:" in printed and "SAE: training a relu SAE" in printed
    assert "at model.layers.8" in printed and "at model.layers.15" not in printed
    r8 = json.loads(out.read_text())          # (one concept: one record)
    assert r8["site"] == "model.layers.8" and r8["concept_direction"]["method"].startswith("mean activation at "
                                                                                           "model.layers.8 ")
    assert r8["residual_norm_median"] != results[0]["residual_norm_median"]
    folder = next((tmp_path / "cache" / "demo").iterdir())
    assert len(list(folder.glob("store-*-L8-max10x"))) == 1 and len(list(folder.glob("sae-*-L8"))) == 1
    assert len(list(folder.glob("store-*"))) == 2


def test_demo_argument_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--concept", "Statue of Liberty"])
    assert e.value.code == 2 and "--concept: expected one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--scale", "0"])
    assert e.value.code == 2
    for argv, message in ((["--train-tokens", "0"], "--train-tokens: expected an int >= 1"),
                          (["--d-sae", "-3"], "--d-sae: expected an int >= 1"),
                          (["--corpus", "/nonexistent/texts"], "--corpus: /nonexistent/texts: no such file"),
                          (["--architecture", "matryoshka"], "invalid choice"),
                          (["--html", "/nonexistent/dir/report.html"], "--html: the folder of"),
                          (["--l1", "0"], "--l1: expected a finite number > 0"),
                          (["--l1", "nan"], "--l1: expected a finite number > 0"),
                          (["--l1", "5", "--architecture", "topk"], "with --architecture relu"),
                          (["--layer", "30"], "--layer: expected an int in [0, 29]"),
                          (["--layer", "-1"], "--layer: expected an int in [0, 29]")):
        with pytest.raises(SystemExit) as e:
            main(["demo", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_demo_run_checks_l1_and_layer_before_loading_anything():
    from sae_native.demo import run
    for kwargs, message in (({"layer": 30}, r"layer: expected an int in \[0, 29\]"),
                            ({"layer": -1}, r"layer: expected an int in \[0, 29\]"),
                            ({"layer": 8.0}, r"layer: expected an int in \[0, 29\]"),
                            ({"layer": True}, r"layer: expected an int in \[0, 29\]"),
                            ({"l1": 0.0}, "l1: expected a finite number > 0"),
                            ({"l1": float("inf")}, "l1: expected a finite number > 0"),
                            ({"l1": True}, "l1: expected a finite number > 0"),
                            ({"l1": 5.0, "architecture": "topk"}, "only the relu architecture")):
        with pytest.raises(ValueError, match=message):
            run(**kwargs)


def test_direction_layer_scan_script(tmp_path, capsys):
    """benchmarks/demo_layers.py at the small budget: a record per layer with a row per ratio, and
    named errors for bad layers and ratios."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "demo_layers.py")
    spec = importlib.util.spec_from_file_location("demo_layers", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "layers.json"
    assert script.main(["--budget", "small", "--layers", "3,12", "--ratios", "0.5,2", "--cache", str(tmp_path),
                        "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["layer"] for r in rec["layers"]] == [3, 12] and rec["concept"] == "Golden Gate Bridge"
    assert rec["layers"][1]["site"] == "model.layers.12"
    for layer in rec["layers"]:
        assert [row["ratio"] for row in layer["sweep"]] == [0.5, 2.0] and layer["residual_norm_median"] > 0
        for row in layer["sweep"]:
            assert 0.0 <= row["mention_rate"] <= 1.0 and row["median_perplexity"] > 0
    # the harder push changes the answers (a scan that added nothing would not)
    assert rec["layers"][0]["sweep"][0]["first_answer"] != rec["layers"][0]["sweep"][1]["first_answer"]
    assert "layer  3 (stream norm" in capsys.readouterr().out
    for argv, message in ((["--layers", "30"], "--layers: layer: expected an int in [0, 29]"),
                          (["--layers", ","], "--layers: expected at least one layer"),
                          (["--ratios", "0"], "--ratios: expected at least one finite number > 0"),
                          (["--ratios", "x"], "--ratios: expected comma-separated numbers")):
        with pytest.raises(SystemExit) as e:
            script.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
