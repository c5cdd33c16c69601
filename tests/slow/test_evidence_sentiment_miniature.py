"""The real-text cell of experiments/evidence.py (H5) on a miniature: a tiny sentiment_targets build sampled by
SmolLM2, then the study's own settings (SmolLM2 + LoRA, the solver grid, both judges) with a few steps and one seed.
Every stage runs on real text, the held-out measurement covers every held-out domain, and the second judge's scores
reach the report."""

import dataclasses
import json

import pytest

from metapl.cli import main
from metapl.data.tfds_builders import build_fingerprint
from tests.evidence_script import load_evidence


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_real_text_cell_on_its_miniature(tmp_path):
    data = tmp_path / "data"
    assert main(["data", "build", "sentiment_targets", "--data-dir", str(data), "--pairs-per-domain", "6",
                 "--heldout-pairs-per-domain", "1", "--prompts-per-domain", "4", "--max-new-tokens", "8",
                 "--positive-fraction", "0.75"]) == 0
    evidence = load_evidence()
    full = evidence.SENTIMENT
    common = tuple(f"data.data_dir={data}" if c.startswith("data.data_dir=") else c for c in full.common)
    study = dataclasses.replace(
        full, seeds=(0,), rm_steps=2, meta_steps=1, dpo_steps=2, checkpoint_every=1,
        common=common + ("data.max_response_tokens=8", "data.eval_prompts=2"),
        meta=full.meta + ("meta.support_pool=2", "meta.query_pairs=2"),
        solver_grid=full.solver_grid[:1],  # tuning is tested by the synthetic miniature; one setting keeps this short
        test={**full.test, "prompts": 1, "eval_prompts": 1, "samples_per_prompt": 2, "bootstrap": 100})
    out, results = tmp_path / "runs", tmp_path / "results"
    report = evidence.run_cell(study, "sentiment_targets", out, False, "miniature", results)
    assert set(report["methods"]) == {"bt", "meta", "gold", "dpo"}
    heldout = json.loads((data / "sentiment_targets" / "pairs" / "1.0.0" / "metadata.json").read_text())
    assert len(report["heldout_domains"]) == len(heldout["heldout_domains"]) >= 20  # every held-out domain
    kinds = set(report["domain_kinds"].values())
    assert kinds == {"wants positive", "wants negative"}
    for method in ("bt", "meta", "dpo"):
        assert report["methods"][method]["cross"]["judge"].startswith("textblob-")
    assert "second judge" in (results / "sentiment_targets.md").read_text()
    assert (out / "sentiment_targets" / "bt" / "seed0" / "checkpoints").exists()
    # the seed is a unit kept with the results (amendment 5), naming the build it was measured on
    units = results / "sentiment_targets" / "units" / "seed0"
    kept = {g: json.loads((units / f"{g}.json").read_text()) for g in ("bt", "meta", "dpo")}
    assert {u["data_fingerprint"] for u in kept.values()} == {build_fingerprint(data, "sentiment_targets")}
    assert report["data_fingerprint"] == kept["bt"]["data_fingerprint"] and report["seeds"] == [0]
    assert {g: set(u["heldout"]) for g, u in kept.items()} == {"bt": {"bt", "gold"}, "meta": {"meta"},
                                                                "dpo": {"dpo"}}
