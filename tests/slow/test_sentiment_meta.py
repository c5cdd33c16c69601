"""The meta-learned vs Bradley–Terry reward-model comparison on sentiment_domains with SmolLM2-135M + LoRA, in the
configuration experiments/configs/meta_sentiment.yaml (results: experiments/results/meta_vs_bt_sentiment.md).
Both reward models train on the same pairs of the 12 meta-train domains; each then guides the same projected
policy optimisation from the reference policy on every held-out domain, and VADER judges both policies."""

import json
import math
from pathlib import Path

import pytest

from metapl.cli import main
from metapl.train.run import read_metrics
from tests.slow.conftest import SENTIMENT_BUILD

CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "meta_sentiment.yaml"
# The same solver for both reward models, given explicitly as meta_vs_bt.py gives it.
TEST = ["--prompts", "2", "--eval-prompts", "6", "--samples", "4", "--steps", "2", "--lr", "0.05", "--beta", "0.5",
        "--seed", "0", "--no-progress"]


@pytest.mark.timeout(1800)  # the whole comparison: ~17 min on a 2-core CPU (the suite's default limit is 15)
def test_meta_and_bradley_terry_reward_models_on_heldout_sentiment_domains(sentiment_data, tmp_path):
    build_line = next(line for line in CONFIG.read_text().splitlines() if line.startswith("# build:"))
    assert build_line.split(":", 1)[1].split() == SENTIMENT_BUILD  # the config names the build the test uses

    common = ["--config", str(CONFIG), f"data.data_dir={sentiment_data}", "--no-progress"]
    assert main(["train", "meta", "--run-dir", str(tmp_path / "meta"), *common]) == 0
    assert main(["train", "rm", "--run-dir", str(tmp_path / "bt"), *common, "data.batch_size=8"]) == 0
    results = {}
    for name in ("meta", "bt"):
        assert main(["meta-test", "--run", str(tmp_path / name), *TEST]) == 0
        results[name] = json.loads((tmp_path / name / "meta_test_heldout.json").read_text())
    print(json.dumps({name: {k: r[k] for k in ("gold_reference", "gold_adapted", "gold_gain", "win_rate",
                                                "rm_pair_accuracy")} for name, r in results.items()}))

    for name, r in results.items():
        assert r["domains"] >= 20, name
        assert r["solver"]["steps"] == 2 and r["checkpoint_step"] == 16, name
        for row in r["per_domain"]:
            assert all(math.isfinite(row[k]) for k in ("gold_adapted", "gold_reference", "win_rate")), row
        assert abs(r["gold_gain"]["mean"] - (r["gold_adapted"]["mean"] - r["gold_reference"]["mean"])) < 1e-9
    # Same domains, prompts, reference samples and keys: the reference policy's gold scores agree exactly.
    assert [row["gold_reference"] for row in results["meta"]["per_domain"]] == \
        [row["gold_reference"] for row in results["bt"]["per_domain"]]
    # Meta-training lowered the outer loss on its fixed evaluation episodes (inner steps, then DPO agreement).
    evals = read_metrics(tmp_path / "meta", "eval")
    assert evals[-1]["eval_outer_loss"] < evals[0]["eval_outer_loss"], evals
