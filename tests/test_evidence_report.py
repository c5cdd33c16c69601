"""experiments/evidence.py's report on made-up measurements: paired differences and the second judge's section are
the per-domain arithmetic of the rows (by hand), so the study's tables say what the measurements say."""

import numpy as np
import pytest

from tests.evidence_script import load_evidence


@pytest.fixture(scope="module")
def evidence():
    return load_evidence()


def _result(gold, cross, samples, cross_samples):
    """One seed's measurement of one method on two domains."""
    return {"per_domain": [
        {"domain": d, "gold_adapted": g, "gold_reference": 0.0, "win_rate": 0.5, "rm_pair_accuracy": 0.6,
         "gold_adapted_samples": s, "cross_judge": "judge-2", "cross_adapted": c, "cross_reference": 0.1,
         "cross_adapted_samples": cs}
        for d, g, c, s, cs in zip(("a", "b"), gold, cross, samples, cross_samples)]}


def test_cell_report_pairs_methods_by_domain_under_both_judges(evidence):
    seeds = 3
    bt = [_result([0.1, 0.3], [0.2, 0.2], [[0.0, 1.0], [1.0]], [[1.0, 0.0], [0.0]])] * seeds
    meta = [_result([0.2, 0.2], [0.4, 0.0], [[1.0, 1.0], [0.0]], [[1.0, 1.0], [0.0]])] * seeds
    tuning = {m: {"best": {"beta": 0.3}, "criterion": 0.0} for m in ("bt", "meta")}
    report = evidence.cell_report(evidence.MINIATURE, "attributes", {"bt": bt, "meta": meta}, tuning,
                                  {"a": None, "b": None}, "python experiments/evidence.py --miniature")
    m = report["methods"]["meta"]
    assert m["minus_bt"]["all"]["mean"] == pytest.approx(0.0)  # +0.1 on a, -0.1 on b
    assert m["minus_bt"]["all"]["wins_per_seed"] == [1] * seeds
    # head-to-head, ties 1/2: domain a [1, 1] vs [0, 1] -> 3/4; domain b [0] vs [1] -> 0
    assert m["win_rate_vs_bt"]["mean"] == pytest.approx(0.375)
    assert m["cross"]["judge"] == "judge-2" and m["cross"]["minus_bt"]["mean"] == pytest.approx(0.0)  # +0.2, -0.2
    assert m["cross"]["gain"]["mean"] == pytest.approx(0.1)  # (0.3 - 0.1) / 2
    assert m["cross"]["win_rate_vs_bt"]["mean"] == pytest.approx((0.75 + 0.5) / 2)
    assert report["methods"]["bt"]["cross"]["gain"]["mean"] == pytest.approx(0.1)
    text = evidence.cell_markdown(report)
    assert "second judge (judge-2)" in text and "| meta-learned RM (projected) | +0.1000" in text
    assert np.isclose(m["gain"]["mean"], 0.2)


def _unit(seed, beta, criterion, fingerprint="abc"):
    result = _result([0.1 + seed, 0.3], [0.2, 0.2], [[0.0], [1.0]], [[1.0], [0.0]])
    return {"seed": seed, "data_fingerprint": fingerprint, "domain_kinds": {"a": "wants positive", "b": None},
            "tuning": {m: {"best": {"beta": beta}, "criterion": criterion} for m in ("bt", "meta")},
            "heldout": {"bt": [result], "meta": [result]}}


def test_seed_units_merge_into_one_cell_and_a_partial_report_says_so(evidence):
    results, tuning, kinds = evidence.merged_units([_unit(0, 0.3, 0.1), _unit(2, 1.0, 0.3)])
    assert [r["per_domain"][0]["gold_adapted"] for r in results["bt"]] == [0.1, 2.1]  # one result per seed, in order
    assert tuning["meta"]["best"] == {"seed 0": {"beta": 0.3}, "seed 2": {"beta": 1.0}}  # chosen per seed
    assert tuning["meta"]["criterion"] == pytest.approx(0.2)
    assert evidence.merged_units([_unit(0, 0.3, 0.1), _unit(1, 0.3, 0.5)])[1]["bt"]["best"] == {"beta": 0.3}
    assert kinds == {"a": "wants positive", "b": None}
    with pytest.raises(SystemExit, match="different builds"):
        evidence.merged_units([_unit(0, 0.3, 0.1), _unit(1, 0.3, 0.1, fingerprint="xyz")])
    study = evidence.dataclasses.replace(evidence.MINIATURE, seeds=(0, 1, 2), tune_per_seed=True)
    report = evidence.cell_report(study, "attributes", results, tuning, kinds, "cmd", seeds=[0, 2])
    text = evidence.cell_markdown(report)
    assert "Partial: seeds [0, 2] of the [0, 1, 2]" in text and "for each seed on its own runs" in text
    assert "seed 0: beta=0.3; seed 2: beta=1.0" in text
    # per seed: bt's gain is the mean over domains a (0.1 + seed) and b (0.3) against reference 0
    assert report["methods"]["bt"]["per_seed_gain"] == pytest.approx([0.2, 1.2])
    assert report["methods"]["bt"]["per_seed_rm_pair_accuracy"] == pytest.approx([0.6, 0.6])
    assert "| seed 0 | seed 2 |" in text and "| +0.200, accuracy 0.60 | +1.200, accuracy 0.60 |" in text
    three = evidence.merged_units([_unit(s, 0.3, 0.1) for s in (0, 1, 2)])
    assert "Partial" not in evidence.cell_markdown(evidence.cell_report(study, "attributes", *three, "cmd",
                                                                        seeds=[0, 1, 2]))


def _group_unit(seed, group, methods, value):
    result = _result([value + seed, 0.3], [0.2, 0.2], [[0.0], [1.0]], [[1.0], [0.0]])
    return {"seed": seed, "group": group, "data_fingerprint": "abc", "domain_kinds": {"a": None, "b": None},
            "tuning": {m: {"best": {"beta": value}, "criterion": value} for m in methods},
            "heldout": {m: [result] for m in methods}}


def test_several_units_per_seed_merge_by_method(evidence):
    # each seed measured in three units (bt + gold, meta, dpo), found in any order
    units = [_group_unit(s, g, methods, v) for s in (1, 0) for g, methods, v in
             (("meta", ("meta",), 0.2), ("bt", ("bt", "gold"), 0.1), ("dpo", ("dpo",), 0.5))]
    results, tuning, kinds = evidence.merged_units(units)
    assert set(results) == {"bt", "gold", "meta", "dpo"}
    study = evidence.dataclasses.replace(evidence.MINIATURE, seeds=(0, 1), tune_per_seed=True)
    report = evidence.cell_report(study, "attributes", results, tuning, kinds, "cmd", seeds=[0, 1])
    # the oracle rides on BT's runs, so the pair accuracy in its measurement is BT's RM's: not reported for it
    assert "rm_pair_accuracy" not in report["methods"]["gold"] and "rm_pair_accuracy" in report["methods"]["bt"]
    gold_row = next(line for line in evidence.cell_markdown(report).splitlines()
                    if line.startswith("| gold reward (oracle) | beta"))
    assert gold_row.endswith("| – |")
    assert [r["per_domain"][0]["gold_adapted"] for r in results["dpo"]] == [0.5, 1.5]  # seeds 0, 1 in order
    assert [r["per_domain"][0]["gold_adapted"] for r in results["gold"]] == [0.1, 1.1]
    assert tuning["meta"]["best"] == {"beta": 0.2} and tuning["dpo"]["criterion"] == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="different methods"):  # seed 1 lacks its dpo unit
        evidence.merged_units(units[:2] + units[3:])


def test_the_summary_reads_the_kept_cell_reports_and_names_what_it_cannot_compute(evidence, tmp_path):
    bt = [_result([0.1, 0.3], [0.2, 0.2], [[0.0], [1.0]], [[1.0], [0.0]])] * 2
    meta = [_result([0.2, 0.2], [0.4, 0.0], [[1.0], [0.0]], [[1.0], [0.0]])] * 2
    tuning = {m: {"best": {"beta": 0.3}, "criterion": 0.0} for m in ("bt", "meta")}
    kinds = {"a": "interpolation", "b": "extrapolation"}
    report = evidence.cell_report(evidence.MINIATURE, "attributes", {"bt": bt, "meta": meta}, tuning, kinds, "cmd")
    evidence.write_json(tmp_path / "attributes.json", report)  # no cached stages anywhere: tmp_path / "runs" is empty
    summary = evidence.summary(tmp_path / "runs", tmp_path)
    rows = {r["hypothesis"]: r for r in summary["rows"]}
    assert rows["H1a interpolation"]["meta_minus_bt"]["mean"] == pytest.approx(0.1)  # domain a: 0.2 - 0.1
    assert rows["H1b extrapolation"]["meta_minus_bt"]["mean"] == pytest.approx(-0.1)  # domain b: 0.2 - 0.3
    assert "H2 behaviour shift (behaviour, meta)" in summary["not_computed"]
    assert "H1 (on-policy) (attributes, meta_onpolicy)" in summary["not_computed"]  # not measured in this cell
    assert "Not computed" in (tmp_path / "summary.md").read_text()


def test_the_summary_takes_each_row_from_the_report_and_needs_per_domain_gold_only_for_the_trend(evidence, tmp_path):
    bt = [_result([0.1, 0.3], [0.2, 0.2], [[0.0], [1.0]], [[1.0], [0.0]])] * 2
    meta = [_result([0.2, 0.2], [0.4, 0.0], [[1.0], [0.0]], [[1.0], [0.0]])] * 2
    tuning = {m: {"best": {"beta": 0.3}, "criterion": 0.0} for m in ("bt", "meta")}
    for cell in ("off", "budget4"):
        report = evidence.cell_report(evidence.SYNTHETIC, cell, {"bt": bt, "meta": meta}, tuning,
                                      {"a": None, "b": None}, "cmd")
        if cell == "budget4":  # a report written before reports kept the per-domain gold
            for m in report["methods"].values():
                del m["per_domain_gold"]
        evidence.write_json(tmp_path / f"{cell}.json", report)
    summary = evidence.summary(tmp_path / "runs", tmp_path)
    rows = {r["hypothesis"]: r for r in summary["rows"]}
    assert rows["H3 budget 4 pairs/domain"]["meta_minus_bt"]["mean"] == pytest.approx(0.0)  # (0.1 - 0.1) / 2
    assert rows["H3 budget 64 pairs/domain"]["meta_minus_bt"]["ci95"] == \
        evidence.read_json(tmp_path / "off.json")["methods"]["meta"]["minus_bt"]["all"]["ci95"]
    assert "H3 trend (budget4 − off, meta)" in summary["not_computed"]
    assert not any(r["hypothesis"].startswith("H3 trend") for r in summary["rows"])


def test_h5_gets_a_two_sided_verdict_only_with_every_seed_and_a_bt_rm_that_learned(evidence):
    def report(seeds, accuracy, ci):
        diff = {"mean": sum(ci) / 2, "ci95": ci, "seeds": len(seeds), "domains": 29}
        return {"seeds": seeds, "planned_seeds": [0, 1, 2],
                "methods": {"bt": {"rm_pair_accuracy": {"mean": accuracy, "ci95": [accuracy - 0.1, accuracy]}},
                            "meta": {"minus_bt": {"all": diff, "wants negative": diff}}}}

    assert evidence.h5_rows(None)["rows"] == []
    partial = evidence.h5_rows(report([0, 1], 0.8, [0.01, 0.03]))
    assert partial["rows"][0]["verdict"] == "no verdict (seeds [0, 1] of [0, 1, 2])"
    assert partial["rows"][1]["verdict"] == "exploratory"  # the rows by target tone never get one
    assert evidence.h5_rows(report([0, 1, 2], 0.72, [0.01, 0.03]))["rows"][0]["verdict"] == "meta ahead"
    assert evidence.h5_rows(report([0, 1, 2], 0.72, [-0.03, -0.01]))["rows"][0]["verdict"] == "meta behind"
    assert evidence.h5_rows(report([0, 1, 2], 0.72, [-0.03, 0.01]))["rows"][0]["verdict"] == "no difference"
    untestable = evidence.h5_rows(report([0, 1, 2], 0.65, [0.01, 0.03]))
    assert untestable["rows"][0]["verdict"].startswith("untestable") and not untestable["precondition"]["met"]


def test_rows_an_earlier_summary_computed_are_kept_in_place_and_marked(evidence):
    def row(h, cell="c"):
        return {"hypothesis": h, "cell": cell, "subset": "all"}

    earlier = [row("H0"), row("H3 trend"), row("H4")]
    kept = evidence.with_earlier_rows([row("H0"), row("H4")], earlier)
    assert [(r["hypothesis"], r.get("earlier", False)) for r in kept] == [("H0", False), ("H3 trend", True),
                                                                          ("H4", False)]
    # a row computed now replaces its earlier self; the same hypothesis from another source is a row of its own
    assert evidence.with_earlier_rows([row("H3 trend")], [row("H3 trend")]) == [row("H3 trend")]
    assert len(evidence.with_earlier_rows([row("H3 trend", "reruns")], [row("H3 trend")])) == 2


def test_the_summary_falls_back_on_reruns_kept_beside_the_registered_reports(evidence, tmp_path):
    bt = [_result([0.1, 0.3], [0.2, 0.2], [[0.0], [1.0]], [[1.0], [0.0]])] * 2
    meta = [_result([0.2, 0.2], [0.4, 0.0], [[1.0], [0.0]], [[1.0], [0.0]])] * 2
    on = [_result([0.3, 0.4], [0.4, 0.0], [[1.0], [0.0]], [[1.0], [0.0]])] * 2
    tuning = {m: {"best": {"beta": 0.3}, "criterion": 0.0} for m in ("bt", "meta", "meta_onpolicy")}
    (tmp_path / "reruns").mkdir()
    for cell in ("off", "budget4"):
        registered = evidence.cell_report(evidence.SYNTHETIC, cell, {"bt": bt, "meta": meta}, tuning,
                                          {"a": None, "b": None}, "cmd")
        for m in registered["methods"].values():  # written before reports kept the per-domain gold
            del m["per_domain_gold"]
        evidence.write_json(tmp_path / f"{cell}.json", registered)
        rerun = evidence.cell_report(evidence.SYNTHETIC, cell, {"bt": bt, "meta": meta, "meta_onpolicy": on},
                                     tuning, {"a": None, "b": None}, "cmd --onpolicy")
        evidence.write_json(tmp_path / "reruns" / f"{cell}_at_{'abc' if cell == 'off' else 'def'}.json", rerun)
    rows = {(r["hypothesis"], r["cell"]): r for r in evidence.summary(tmp_path / "runs", tmp_path)["rows"]}
    on4 = rows[("H3 (on-policy) budget 4 pairs/domain", "budget4 (budget4_at_def)")]
    assert on4["meta_minus_bt"]["mean"] == pytest.approx(0.15)  # (0.3 - 0.1 + 0.4 - 0.3) / 2
    assert rows[("H3 budget 4 pairs/domain", "budget4")]["meta_minus_bt"]["mean"] == pytest.approx(0.0)
    # the trend pairs the two reruns (never a registered report with a rerun): the same runs at both budgets
    trend = rows[("H3 (on-policy) trend (4 minus 64 pairs/domain)", "budget4_at_def − off_at_abc")]
    assert trend["meta_minus_bt"]["mean"] == pytest.approx(0.0)


def test_cached_stages_stand_in_for_per_domain_gold_only_when_they_are_the_reports(evidence, tmp_path):
    bt = [_result([0.1, 0.3], [0.2, 0.2], [[0.0], [1.0]], [[1.0], [0.0]])] * 2
    meta = [_result([0.2, 0.2], [0.4, 0.0], [[1.0], [0.0]], [[1.0], [0.0]])] * 2
    tuning = {m: {"best": {"beta": 0.3}, "criterion": 0.0} for m in ("bt", "meta")}
    report = evidence.cell_report(evidence.SYNTHETIC, "budget4", {"bt": bt, "meta": meta}, tuning,
                                  {"a": None, "b": None}, "cmd")
    for m in report["methods"].values():
        del m["per_domain_gold"]
    evidence.write_json(tmp_path / "budget4.json", report)
    stages = tmp_path / "runs" / "budget4" / "heldout"
    stages.mkdir(parents=True)
    evidence.write_json(stages / "bt.json", bt)
    evidence.write_json(stages / "meta.json", meta)
    diffs = evidence._cell_diffs(tmp_path / "runs", "budget4", "meta", results=tmp_path)
    np.testing.assert_allclose(diffs, [[0.1, -0.1]] * 2)
    # stages a later rerun left behind (another meta RM) are not the report's: refused
    evidence.write_json(stages / "meta.json", [_result([0.3, 0.2], [0.4, 0.0], [[1.0], [0.0]], [[1.0], [0.0]])] * 2)
    assert evidence._cell_diffs(tmp_path / "runs", "budget4", "meta", results=tmp_path) is None
