"""experiments/evidence.py end to end on its miniature study (tiny model, 12 domains, 2 seeds): every stage runs,
tuning reads only the validation split, the held-out measurement uses the tuned settings, the report's paired
differences are the per-domain differences of the measurements, and a re-run reuses every finished stage."""

import json

import numpy as np
import pytest

from tests.evidence_script import load_evidence


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_evidence_pipeline_on_its_miniature(tmp_path, capsys):
    evidence = load_evidence()
    out, results = tmp_path / "runs", tmp_path / "results"
    assert evidence.main(["--miniature", "--out", str(out), "--results", str(results)]) == 0
    report = json.loads((results / "attributes.json").read_text())
    assert (results / "attributes.md").exists() and (results / "attributes.png").stat().st_size > 1000
    assert set(report["methods"]) == {"bt", "meta", "gold", "dpo"}
    tuning = json.loads((out / "attributes" / "tuning.json").read_text())
    assert all(t["split"] == "validation" for t in tuning.values())
    for method in ("bt", "meta", "gold"):
        measured = json.loads((out / "attributes" / "heldout" / f"{method}.json").read_text())
        assert len(measured) == 2 and all(m["split"] == "heldout" and m["domains"] == 6 for m in measured)
        chosen = tuning[method]["best"]
        assert all(m["solver"]["steps"] == chosen["steps"] and m["solver"]["beta"] == chosen["beta"]
                   for m in measured)
    bt = json.loads((out / "attributes" / "heldout" / "bt.json").read_text())
    meta = json.loads((out / "attributes" / "heldout" / "meta.json").read_text())
    diff = np.asarray([[a["gold_adapted"] - b["gold_adapted"] for a, b in zip(m["per_domain"], t["per_domain"])]
                       for m, t in zip(meta, bt)])
    paired = report["methods"]["meta"]["minus_bt"]
    assert paired["all"]["mean"] == pytest.approx(diff.mean())
    assert paired["all"]["wins_per_seed"] == (diff > 0).sum(axis=1).tolist()
    kinds = report["domain_kinds"]
    assert sorted(set(kinds.values())) == ["extrapolation", "interpolation"]
    assert paired["interpolation"]["domains"] + paired["extrapolation"]["domains"] == 6
    regime = json.loads((results / "regime_attributes.json").read_text())
    assert [(r["steps"], r["beta"], r["lr"]) for r in regime["rows"]] == [(1, 0.3, 0.05), (2, 0.3, 0.05),
                                                                          (2, 1.0, 0.1)]
    # a re-run trains, tunes and measures nothing again
    capsys.readouterr()
    assert evidence.main(["--miniature", "--out", str(out), "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert "trained" not in err and "tuning" not in err and "held-out measurement" not in err and \
        "regime attributes: K" not in err, err
