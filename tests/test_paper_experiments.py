"""The three seed-paper experiments (experiments/offline_rlhf.py, tree_vs_chain.py, srpo_revisions.py) end to end in
miniature: every result file written, and the numbers the scripts derive agree with what the protocol measured.
These check the pipeline, not the papers' outcomes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _run(name, tmp_path):
    module = _script(name)
    assert module.main(["--miniature", "--out", str(tmp_path / "runs"), "--results", str(tmp_path)]) == 0
    task = next(tmp_path.glob("*_miniature.json")).stem
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"{task}.{ext}").exists(), ext
    report = json.loads((tmp_path / "runs" / "report.json").read_text())
    return json.loads((tmp_path / f"{task}.json").read_text()), report, (tmp_path / f"{task}.md").read_text()


def test_offline_rlhf_miniature(tmp_path):
    result, report, text = _run("offline_rlhf", tmp_path)
    assert set(result["methods"]) == {"dt", "mle_filter", "rwr", "rloo", "ppo"}
    gains = result["dt_bins"]["gain_by_bin"]
    assert len(gains) == 4
    # asking DT for its top bin is what the protocol's held-out test did: the same prompts and keys, the same gain
    assert gains[-1]["mean"] == pytest.approx(report["methods"]["dt"]["gain"]["mean"], abs=1e-9)
    # DT − filtered MLE is the protocol's paired difference, signs flipped
    assert result["methods"]["mle_filter"]["dt_minus"]["mean"] == \
        pytest.approx(-report["methods"]["mle_filter"]["minus_base"]["mean"])
    assert all(row["chosen"] is not None for row in result["methods"].values())  # each chose on validation
    # every grid variant is listed with its validation gold: per variant, the mean over seeds of the protocol's
    # per-seed validation results (its selection file), the chosen one the best of them
    selection = json.loads((tmp_path / "runs" / "results" / "selection.json").read_text())
    assert set(result["variants"]) == set(result["methods"])
    for name, v in result["variants"].items():
        per_seed = selection[name]["validation_gold"]
        assert v["validation_gold"] == pytest.approx([sum(g) / len(g) for g in per_seed])
        assert len(v["settings"]) == len(per_seed) == 2
        assert v["validation_gold"][v["chosen"]] == max(v["validation_gold"])
        assert v["settings"][v["chosen"]] == result["methods"][name]["chosen"]
    assert "DT vs filtered MLE" in text and "The conditioning check" in text and "Every grid variant" in text


def test_tree_vs_chain_miniature(tmp_path, capsys):
    result, report, text = _run("tree_vs_chain", tmp_path)
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[best-of-")]
    assert len(progress) == 2 * len(result["seeds"]) and " done in " in progress[-1]
    assert result["comparisons"]["tree_rm"] == result["comparisons"]["chain_rm"]  # the same labelled budget
    assert 0 < result["token_ratio"]
    assert 0 <= result["best_of_n"]["tree_win_rate"]["mean"] <= 1
    assert result["solver_tree_minus_chain"] == report["methods"]["tree_rm"]["minus_base"]
    assert "annotated tokens" in text.lower()


def test_srpo_revisions_miniature(tmp_path):
    result, report, text = _run("srpo_revisions", tmp_path)
    assert set(result["methods"]) == {"srpo", "dpo", "ipo"}
    for name, m in result["methods"].items():
        assert len(m["win"]) == 3  # the direct answer and two revisions
        # i = 0 is the direct answer the protocol tested
        assert m["win"][0]["mean"] == pytest.approx(report["methods"][name]["win_ref"]["mean"])
        assert m["gold"][0]["mean"] == pytest.approx(report["methods"][name]["gold"]["mean"])
    assert "SRPO − DPO, win rate at i = 2" in text
