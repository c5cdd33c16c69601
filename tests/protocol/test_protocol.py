"""The OOD protocol: its config and errors, the stage plan, the report against hand-computed rows, and a tiny
protocol end to end (every file written, finished sub-runs reused, a changed protocol refused)."""

import csv
import json
import math

import numpy as np
import pytest

from metapl.cli import main
from metapl.config import ConfigError
from metapl.protocol import load_protocol, plan, protocol_from_mapping, run_protocol
from metapl.protocol.report import domain_rows
from metapl.protocol.runner import ordered_methods, sub_run_mapping

TINY_RUN = {"data": {"benchmark": "mechanism_domains", "mechanisms": {"attributes": 2},
                     "synthetic": {"num_domains": 12, "num_heldout": 6, "pairs_per_domain": 16}},
            "model": {"hidden_size": 16, "num_layers": 1}}
TINY_TEST = {"prompts": 2, "eval_prompts": 3, "samples_per_prompt": 2, "bootstrap": 200, "domains_per_batch": 2}


def _tiny(**changes):
    data = {"name": "tiny", "seeds": [0], "run": TINY_RUN, "baseline": "bt", "test": TINY_TEST,
            "methods": {"rloo": {"steps": 2}, "bt": {"steps": 3}, "reference": {}, "gold": {}, "dpo": {"steps": 3}}}
    data.update(changes)
    return protocol_from_mapping(data)


def test_the_config_keeps_the_method_order_and_resolves_each_sub_run(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("methods:\n  rloo: {steps: 5}\n  bt: {run: {data: {batch_size: 4}}}\n  dpo: {}\n"
                    "run:\n  data: {benchmark: mechanism_domains, batch_size: 2}\n  optim: {learning_rate: 0.01}\n")
    cfg = load_protocol(path, ["methods.dpo.steps=7"])
    assert list(cfg.methods) == ["rloo", "bt", "dpo"]
    assert ordered_methods(cfg) == ["bt", "rloo", "dpo"]  # rloo is rewarded by bt's run
    assert cfg.steps("dpo") == 7 and cfg.steps("bt") == 150  # given, the method's default
    bt = sub_run_mapping(cfg, tmp_path, "bt", 3)
    assert bt["data"] == {"benchmark": "mechanism_domains", "batch_size": 4} and bt["optim"]["learning_rate"] == 0.01
    assert (bt["algo"], bt["steps"], bt["seed"], bt["eval_every"], bt["checkpoint_every"]) == ("rm", 150, 3, 150, 150)
    rloo = sub_run_mapping(cfg, tmp_path, "rloo", 3)
    assert rloo["reward"]["model"] == str(tmp_path / "runs" / "bt" / "seed3") and rloo["data"]["batch_size"] == 2


def test_with_gold_feedback_the_methods_that_need_a_reward_are_rewarded_by_the_gold_judge(tmp_path):
    cfg = _tiny(feedback="gold", baseline="rloo", methods={"rloo": {"steps": 2}, "dt": {"steps": 2}, "reference": {}})
    assert ordered_methods(cfg) == ["rloo", "dt", "reference"]  # no bt run to train first
    for name in ("rloo", "dt"):
        assert "reward" not in sub_run_mapping(cfg, tmp_path, name, 0)  # the run's default: the gold judge
    from metapl.protocol import method

    assert method("dt").title("gold") == "reward-conditioned SFT (DT) on samples scored by the gold judge"
    assert method("rloo").title() == "RLOO with the BT RM" and method("bt").title("gold") == method("bt").label
    with pytest.raises(ConfigError, match="methods.gold uses the 'bt' runs"):  # the oracle still rides on bt
        _tiny(feedback="gold", baseline="dt", methods={"dt": {}, "gold": {}})


@pytest.mark.parametrize("changes, message", [
    ({"methods": {"dpo": {}, "sft": {}}}, "unknown method 'sft'; the protocol knows reference, bt"),
    ({"methods": {"rloo": {}}, "baseline": "rloo"}, "methods.rloo uses the 'bt' runs: add bt to methods"),
    ({"baseline": "meta"}, "baseline: 'meta' is not one of the methods"),
    ({"baseline": "reference"}, "baseline: every method is already compared with the reference policy"),
    ({"run": {"steps": 3}}, "run.steps: the protocol sets it"),
    ({"solver_grid": [{"beta": 0.1, "temperature": 1}]},
     r"solver_grid\[0\]: unknown solver setting\(s\) \['temperature'\]"),
    ({"methods": {"bt": {"steps": 0}}}, "methods.bt.steps: must be >= 1, got 0"),
    ({"methods": {"bt": {"stepz": 3}}}, r"unknown key\(s\) methods.bt.stepz"),
    ({"seeds": [0, 0]}, r"seeds: \[0, 0\] repeats a seed"),
    ({"feedback": "human"}, "feedback: 'human'; use bt .* or gold"),
    ({"test": {"prompts": "many"}}, "test.prompts: expected an integer"),
    ({"run": {"optim": {"learning_rate": float("nan")}}}, "run.optim.learning_rate: expected a finite number"),
    ({"run": {"optim": {"learning_rate": -1}}}, "the rloo runs: optim.learning_rate: must be >= 0, got -1"),
    ({"methods": {"bt": {"run": {"loss": {"centering": -1}}}}}, r"the bt runs: loss.centering: must be >= 0"),
])
def test_bad_settings_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        _tiny(**changes)


def test_the_plan_trains_what_others_use_first_and_tunes_only_with_a_grid():
    cfg = _tiny(seeds=[0, 1])
    stages = [(s.kind, s.method, s.seed) for s in plan(cfg)]
    assert stages[:3] == [("train", "bt", 0), ("train", "rloo", 0), ("train", "dpo", 0)]
    assert [s for s in stages if s[0] == "tune"] == []
    assert ("test", "reference", 0) not in stages and ("test", "gold", 1) in stages
    tuned = plan(_tiny(solver_grid=[{"beta": 0.1}, {"beta": 1.0}]))
    assert [(s.kind, s.method) for s in tuned if s.kind == "tune"] == [("tune", "bt"), ("tune", "gold")]


def _row(domain, adapted, reference, adapted_samples, reference_samples, **extra):
    return {"domain": domain, "gold_adapted": adapted, "gold_reference": reference, "win_rate": extra.pop("win", 0.5),
            "gold_adapted_samples": adapted_samples, "gold_reference_samples": reference_samples,
            "rm_pair_accuracy": extra.pop("acc", float("nan")), "kl": 0.2, "length_adapted": 4.0,
            "length_reference": 5.0, **extra}


def test_domain_rows_by_hand():
    base = {"per_domain": [_row("d0", 0.5, 0.2, [1.0, 0.0], [0.1, 0.3]), _row("d1", 0.1, 0.0, [0.2, 0.0], [0.0, 0.0])]}
    mine = {"per_domain": [_row("d0", 0.7, 0.2, [1.0, 0.4], [0.1, 0.3], win=1.0, acc=0.75),
                           _row("d1", 0.0, 0.0, [0.0, 0.0], [0.0, 0.0], win=0.5, acc=0.5)]}
    rows = domain_rows("meta", mine, base)
    nan = float("nan")  # no LLM judge here
    assert rows[0] == pytest.approx({"domain": "d0", "gold": 0.7, "gain": 0.5, "win_ref": 1.0, "win_base": 0.75,
                                     "minus_base": 0.2, "kl": 0.2, "length": 4.0, "rm_acc": 0.75,
                                     "llm_win_ref": nan, "llm_win_base": nan}, nan_ok=True)
    assert rows[1]["win_base"] == 0.25 and rows[1]["minus_base"] == pytest.approx(-0.1)  # a tie and a loss
    ref = domain_rows("reference", None, base)
    assert ref[0] == pytest.approx({"domain": "d0", "gold": 0.2, "gain": 0.0, "win_ref": 0.5, "win_base": 0.5,
                                    "minus_base": -0.3, "kl": 0.0, "length": 5.0, "rm_acc": nan,
                                    "llm_win_ref": nan, "llm_win_base": nan}, nan_ok=True)
    assert math.isnan(domain_rows("dpo", mine, base)[0]["rm_acc"])  # a policy has no reward model


def test_a_tiny_protocol_end_to_end_reuses_its_runs_and_refuses_a_changed_protocol(tmp_path, capsys):
    cfg, out = _tiny(), tmp_path / "out"
    report = run_protocol(cfg, out, progress=True)
    err = capsys.readouterr().err
    assert "(1/7) training bt (seed 0, 3 steps)" in err and "ETA" in err and "done in" in err
    assert list(report["methods"]) == ["rloo", "bt", "reference", "gold", "dpo"] and len(report["domains"]) == 6
    for name in ("report.md", "report.json", "per_domain.csv", "protocol.yaml", "configs/rloo_seed0.yaml",
                 "plots/win_rates.png", "plots/gains.png", "plots/training.png"):
        assert (out / name).exists(), name
    with (out / "per_domain.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 5 * 6
    bt = report["methods"]["bt"]
    assert bt["win_base"]["mean"] == 0.5 and bt["minus_base"]["mean"] == 0.0  # the baseline against itself
    assert "rewarded by reward-model:bt/seed0@3" in (out / "report.md").read_text()
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    again = run_protocol(cfg, out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == stamp  # nothing retrained
    assert json.dumps(again["methods"], sort_keys=True) == json.dumps(report["methods"], sort_keys=True)
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").exists()  # re-rendered from report.json
    assert "# Protocol tiny: 5 methods on 6 held-out domains" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="holds another protocol"):
        run_protocol(_tiny(methods={"bt": {"steps": 4}, "gold": {}}), out, progress=False)
    with pytest.raises(ConfigError, match="holds another protocol"):
        run_protocol(_tiny(test={**TINY_TEST, "eval_prompts": 4}), out, progress=False)
    # how many domains a test batches changes its speed, not its numbers: a resume may change it
    faster = run_protocol(_tiny(test={**TINY_TEST, "domains_per_batch": 3}), out, progress=False)
    assert json.dumps(faster["methods"], sort_keys=True) == json.dumps(report["methods"], sort_keys=True)


def test_the_cli_names_bad_input(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["protocol", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["protocol", "--out", str(tmp_path / "o"), "methods.sft={}"]) == 2
    assert "unknown method 'sft'" in capsys.readouterr().err
    assert main(["protocol", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_every_method_of_the_registry_runs_in_a_protocol(tmp_path):
    from metapl.protocol import METHODS

    tiny_meta = {"meta": {"inner_steps": 2, "domains_per_episode": 2, "support_prompts": 2, "query_pairs": 2,
                          "support_pool": 4, "onpolicy_samples": 2}}
    special = {"meta": tiny_meta, "meta_onpolicy": tiny_meta, "tree_rm": {"data": {"tree_prompts": 8}},
               **{m: {"data": {"sample_prompts": 12, "samples_per_prompt": 2}} for m in ("mle_filter", "rwr", "dt")}}
    methods = {name: {"steps": 2, "run": special.get(name, {})} if METHODS[name].algo else {} for name in METHODS}
    report = run_protocol(_tiny(methods=methods), tmp_path / "all", progress=False)
    assert list(report["methods"]) == list(METHODS)
    for name, s in report["methods"].items():
        assert math.isfinite(s["gold"]["mean"]) and math.isfinite(s["win_base"]["mean"]), name
        assert math.isfinite(s["rm_acc"]["mean"]) == (METHODS[name].kind == "reward"), name


def test_the_chain_rm_labels_as_many_comparisons_as_the_tree_rm_of_its_seed(tmp_path):
    cfg = _tiny(baseline="chain_rm", methods={"chain_rm": {"steps": 2}, "tree_rm": {"steps": 2, "run": {
        "data": {"tree_prompts": 8}}}})
    assert ordered_methods(cfg) == ["tree_rm", "chain_rm"]
    run_protocol(cfg, tmp_path / "tc", progress=False)
    setups = {m: json.loads((tmp_path / "tc" / "runs" / m / "seed0" / "setup.json").read_text())
              for m in ("tree_rm", "chain_rm")}
    assert setups["chain_rm"]["comparisons"] == setups["tree_rm"]["comparisons"]
    assert setups["chain_rm"]["trees"] == setups["chain_rm"]["comparisons"]  # one pair per prompt


def test_policies_revise_their_answers_in_context_when_asked(tmp_path):
    cfg = _tiny(methods={"bt": {"steps": 2}, "srpo": {"steps": 2}, "dpo": {"steps": 2}}, revisions=2)
    report = run_protocol(cfg, tmp_path / "rev", progress=False)
    assert set(report["revisions"]) == {"srpo", "dpo"}  # policies only; a reward model has no answer to revise
    for name, curve in report["revisions"].items():
        assert len(curve) == 3
        assert curve[0]["mean"] == pytest.approx(report["methods"][name]["gold"]["mean"])  # i = 0: the direct answer
        wins = report["revision_win_rates"][name]
        assert wins[0]["mean"] == pytest.approx(report["methods"][name]["win_ref"]["mean"])
    # each revision's win rate over the reference, recomputed from the kept per-sample golds of the direct answer
    held = json.loads((tmp_path / "rev" / "results" / "srpo_seed0.json").read_text())["per_domain"][0]
    assert held["win_rate_revisions"][0] == pytest.approx(held["win_rate"])
    assert (tmp_path / "rev" / "plots" / "revisions.png").exists()
    assert "In-context revisions" in (tmp_path / "rev" / "report.md").read_text()
    with pytest.raises(ConfigError, match="revisions: must be >= 0, got -1"):
        _tiny(revisions=-1)


def test_an_llm_judge_over_http_adds_win_rates(tmp_path):
    """A loopback "LLM" that prefers the longer answer (ties when equal): the report's LLM win rates equal the ones
    computed here from the answers the tests kept, in both orders, per domain and then over domains."""
    from tests.eval.test_http_judge import _Server

    def longer(a, b):
        return "A" if len(a.split()) > len(b.split()) else "B" if len(a.split()) < len(b.split()) else "tie"

    with _Server(rule=longer) as server:
        cfg = _tiny(methods={"bt": {"steps": 2}, "reference": {}, "dpo": {"steps": 2}},
                    judge={"base_url": server.url, "model": "judge-model", "backoff": 0.0})
        report = run_protocol(cfg, tmp_path / "llm", progress=False)
    results = {m: json.loads((tmp_path / "llm" / "results" / f"{m}_seed0.json").read_text()) for m in ("bt", "dpo")}

    def expected(rows, mine, theirs):
        per_domain = [np.mean([(len(a.split()) > len(b.split())) + 0.5 * (len(a.split()) == len(b.split()))
                               for a, b in zip(mine(r), theirs(r))]) for r in rows]
        return float(np.mean(per_domain))

    base = {r["domain"]: r for r in results["bt"]["per_domain"]}
    for name in ("bt", "dpo"):
        rows = results[name]["per_domain"]
        want_ref = expected(rows, lambda r: r["responses_adapted"], lambda r: r["responses_reference"])
        want_base = expected(rows, lambda r: r["responses_adapted"], lambda r: base[r["domain"]]["responses_adapted"])
        got = report["methods"][name]
        assert got["llm_win_ref"]["mean"] == pytest.approx(want_ref) and got["llm_win_base"]["mean"] == pytest.approx(
            want_base), name
    assert report["methods"]["bt"]["llm_win_base"]["mean"] == 0.5
    assert report["methods"]["reference"]["llm_win_base"]["mean"] == pytest.approx(
        1 - report["methods"]["bt"]["llm_win_ref"]["mean"])
    assert "LLM judge (judge-model)" in (tmp_path / "llm" / "report.md").read_text()
    assert (tmp_path / "llm" / "results" / "judge_cache" / "verdicts.jsonl").exists()
    with pytest.raises(ConfigError, match="judge: give model"):
        _tiny(judge={"base_url": server.url})
    with pytest.raises(ConfigError, match="judge: .*unexpected keyword"):
        _tiny(judge={"base_url": server.url, "model": "m", "temperature": 0.3})


def test_a_policy_method_with_a_grid_is_tested_with_the_variant_best_on_the_validation_split(tmp_path, capsys):
    grid = [{"steps": 2}, {"steps": 3, "run": {"optim": {"learning_rate": 0.01}}}]
    cfg = _tiny(methods={"bt": {"steps": 2}, "dpo": {"grid": grid}})
    assert [(s.kind, s.variant) for s in plan(cfg) if s.method == "dpo"] == \
        [("train", 0), ("train", 1), ("select", None), ("test", None)]
    out = tmp_path / "grid"
    report = run_protocol(cfg, out, progress=True)
    assert "choosing dpo's variant on the validation split (2 variants)" in capsys.readouterr().err
    selection = json.loads((out / "results" / "selection.json").read_text())["dpo"]
    assert (out / "runs" / "dpo" / "v1" / "seed0" / "config.yaml").exists()
    assert "learning_rate: 0.01" in (out / "configs" / "dpo_v1_seed0.yaml").read_text()
    # the choice is the argmax of the validation gold (ties to the earlier), recomputed here from what was kept
    means = [np.mean(g) for g in selection["validation_gold"]]
    assert selection["best"] == int(np.argmax(means)) and selection["setting"] == grid[selection["best"]]
    held = json.loads((out / "results" / "dpo_seed0.json").read_text())
    assert held["run_dir"].endswith(f"dpo/v{selection['best']}/seed0")
    assert report["methods"]["dpo"]["selection"]["best"] == selection["best"]
    assert "Variants chosen on the validation split" in (out / "report.md").read_text()
    assert "steps=3, optim.learning_rate=0.01" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="methods.bt.grid: only policy methods"):
        _tiny(methods={"bt": {"grid": grid}})
    with pytest.raises(ConfigError, match=r"methods.dpo.grid\[0\]: expected a mapping with steps and/or run"):
        _tiny(methods={"bt": {}, "dpo": {"grid": [{"lr": 1}]}})
    with pytest.raises(ConfigError, match=r"the dpo runs \(grid\[0\]\): optim.learning_rate"):
        _tiny(methods={"bt": {}, "dpo": {"grid": [{"run": {"optim": {"learning_rate": -1}}}]}})
