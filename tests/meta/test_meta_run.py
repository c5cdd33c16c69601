"""`metapl train meta` on synthetic_domains: a run directory with the meta metrics, exact resume, config errors."""

import dataclasses

import jax
import numpy as np
import pytest

from metapl.config import ConfigError
from metapl.runs import prepare_run_dir, read_metrics, train
from metapl.train.checkpoints import checkpoint_manager

TINY = ["algo=meta", "data.synthetic.num_domains=12", "data.synthetic.num_heldout=6", "model.hidden_size=16",
        "model.num_layers=1", "data.synthetic.pairs_per_domain=16", "log_every=2", "eval_every=1000",
        "checkpoint_every=2", "optim.learning_rate=1e-3", "meta.inner_steps=2", "meta.inner_lr=0.05",
        "meta.domains_per_episode=2", "meta.support_prompts=2", "meta.query_pairs=2", "meta.samples_per_prompt=2",
        "meta.support_pool=4", "meta.feedback_budget=8"]


def _run(tmp_path, name, overrides, resume=False):
    run_dir = tmp_path / name
    cfg = prepare_run_dir(run_dir, None, TINY + overrides, resume)
    return run_dir, train(run_dir, cfg, resume=resume, progress=False)


@pytest.mark.parametrize("extra", [[], ["model.lora_rank=2", "meta.method=implicit", "meta.prox=1.0"],
                                   pytest.param(["meta.inner_solver=onpolicy", "meta.onpolicy_samples=2"],
                                                marks=pytest.mark.slow)])
def test_meta_run_resumes_exactly(tmp_path, extra):
    straight, final = _run(tmp_path, "straight", ["steps=4"] + extra)
    _run(tmp_path, "half", ["steps=2"] + extra)
    resumed, _ = _run(tmp_path, "half", ["steps=4"] + extra, resume=True)
    a, b = read_metrics(straight, "train"), read_metrics(resumed, "train")
    assert [r["step"] for r in a] == [2, 4] and [r["step"] for r in b] == [2, 4]
    for key in ("outer_loss", "grad_norm", "query_accuracy", "inner_loss_first", "inner_loss_last"):
        assert np.isfinite(a[-1][key]), key
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-5), key
    assert a[-1]["loss"] == pytest.approx(a[-1]["meta_loss"], rel=1e-6)  # the step differentiates the meta loss
    assert 0.0 <= final["pair_accuracy"] <= 1.0 and np.isfinite(final["eval_outer_loss"])
    restore = lambda d: checkpoint_manager(d).restore(4)["state"]  # noqa: E731
    for x, y in zip(jax.tree.leaves(restore(straight)), jax.tree.leaves(restore(resumed))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_meta_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) meta.inner_stepz"):
        _run(tmp_path, "bad", ["steps=1", "meta.inner_stepz=3"])
    with pytest.raises(ConfigError, match="meta.method: expected one of"):
        _run(tmp_path, "bad2", ["steps=1", "meta.method=newton"])


def test_meta_test_of_an_rm_run_and_a_meta_run(tmp_path, capsys):
    from metapl.cli import main
    from metapl.runs import MetaTestConfig, meta_test

    common = TINY[1:] + ["steps=2"]
    rm_dir = tmp_path / "rm"
    train(rm_dir, prepare_run_dir(rm_dir, None, ["algo=rm"] + common, False), progress=False)
    test = MetaTestConfig(prompts=2, eval_prompts=4, samples_per_prompt=2, bootstrap=200)
    result = meta_test(rm_dir, "heldout", test, progress=False)
    assert result["domains"] == 6 and len(result["per_domain"]) == 6
    assert result["solver"]["steps"] == 2 and result["solver"]["lr"] == 0.05  # the rm run config's meta section
    for key in ("gold_adapted", "gold_reference", "gold_gain", "win_rate", "rm_pair_accuracy"):
        lo, hi = result[key]["ci95"]
        assert lo <= result[key]["mean"] <= hi, key
    assert (rm_dir / "meta_test_heldout.json").is_file() and (rm_dir / "meta_test_heldout.md").is_file()
    # Domains are adapted and decoded in vmapped chunks; each domain's numbers do not depend on the chunking.
    chunked = meta_test(rm_dir, "heldout", dataclasses.replace(test, domains_per_batch=4), write=False,
                        progress=False)
    for a, b in zip(result["per_domain"], chunked["per_domain"]):
        assert a["domain"] == b["domain"]
        for key in ("gold_adapted", "gold_reference", "rm_pair_accuracy", "inner_loss_last"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["domain"], key)

    # The oracle: the same solver guided by the gold reward of the same reference samples. With a sharp tilt
    # (small β) it must raise the gold reward (measured: gain +0.037 [0.016, 0.067], win rate 0.63), and by more
    # than this barely trained reward model does; the reference side is unchanged. (lr >= 0.1 diverges here.)
    sharp = dataclasses.replace(test, prompts=8, samples_per_prompt=4, eval_prompts=32, steps=8, lr=0.03, beta=0.05)
    oracle = meta_test(rm_dir, "heldout", dataclasses.replace(sharp, reward="gold"), progress=False)
    guided = meta_test(rm_dir, "heldout", sharp, write=False, progress=False)
    assert oracle["reward"] == "gold" and (rm_dir / "meta_test_heldout_gold.md").is_file()
    assert [r["gold_reference"] for r in oracle["per_domain"]] == [r["gold_reference"] for r in guided["per_domain"]]
    assert oracle["gold_gain"]["ci95"][0] > 0 and oracle["win_rate"]["mean"] > 0.5
    assert oracle["gold_gain"]["mean"] > guided["gold_gain"]["mean"]

    bare = tmp_path / "rm_bare"  # an rm run without a meta section: MetaConfig's defaults
    train(bare, prepare_run_dir(bare, None, ["algo=rm", "steps=1"] + [o for o in common if not o.startswith("meta.")],
                                False), progress=False)
    assert meta_test(bare, "heldout", dataclasses.replace(test, domains_per_batch=6), write=False,
                     progress=False)["solver"]["steps"] == 4

    meta_dir = tmp_path / "meta"
    train(meta_dir, prepare_run_dir(meta_dir, None, TINY + ["steps=2"], False), progress=False)
    assert main(["meta-test", "--run", str(meta_dir), "--domains", "train", "--prompts", "2", "--eval-prompts", "4",
                 "--samples", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert '"split": "train"' in out and '"domains": 6' in out
    assert json_steps(meta_dir / "meta_test_train.json") == 2  # the run's inner steps


def json_steps(path):
    import json

    return json.loads(path.read_text())["solver"]["steps"]


def test_bootstrap_interval_brackets_the_mean():
    from metapl.eval import bootstrap_interval

    assert bootstrap_interval(np.full(5, 0.3), 100, 0) == pytest.approx((0.3, 0.3))
    v = np.random.default_rng(0).normal(size=200)
    lo, hi = bootstrap_interval(v, 2000, 0)
    se = v.std(ddof=1) / np.sqrt(len(v))  # the normal-theory interval, for comparison
    assert lo < v.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_difference_by_hand():
    from metapl.eval import paired_difference

    def result(adapted, ref=(0.1, 0.2, 0.3)):
        return {"per_domain": [{"domain": f"d{i}", "gold_reference": r, "gold_adapted": g}
                               for i, (g, r) in enumerate(zip(adapted, ref))]}

    out = paired_difference(result([0.5, 0.2, 0.4]), result([0.3, 0.3, 0.4]), resamples=500)
    assert out["mean"] == pytest.approx((0.2 - 0.1 + 0.0) / 3) and out["a_better"] == 1 and out["domains"] == 3
    assert out["ci95"][0] <= out["mean"] <= out["ci95"][1]
    with pytest.raises(ValueError, match="reference samples"):
        paired_difference(result([0.5, 0.2, 0.4]), result([0.3, 0.3, 0.4], ref=(0.1, 0.2, 0.31)))


def test_meta_test_refuses_other_runs(tmp_path):
    from metapl.runs import meta_test

    d = tmp_path / "dpo"
    not_meta = [o for o in TINY[1:] if not o.startswith("meta.")]  # a dpo run takes no meta section
    train(d, prepare_run_dir(d, None, ["algo=dpo"] + not_meta + ["steps=1"], False), progress=False)
    with pytest.raises(ConfigError, match="needs a `meta`, `rm` or `tree-rm` run"):
        meta_test(d, progress=False)


def test_a_broken_down_linear_solve_is_warned_in_the_run_log(tmp_path, capsys):
    # inner_lr · prox = 2.5 > 2: the inner steps diverge, the inner Hessian at θ_K is indefinite and conjugate
    # gradients break down (as in test_metagrad); the run goes on, and its log says so at every such step.
    _run(tmp_path, "implicit", ["steps=2", "meta.method=implicit", "meta.prox=5.0", "meta.inner_lr=0.5",
                                "meta.inner_steps=3"])
    err = capsys.readouterr().err
    assert "linear solve broke down" in err, err
    rows = read_metrics(tmp_path / "implicit", "train")
    assert rows[-1]["solver_breakdown"] == 1.0 and rows[-1]["solver_iterations"] < 20


def test_shared_prefix_switch_gives_the_same_meta_run_and_meta_test(tmp_path):
    """model.shared_prefix on and off: the same meta-training (support samples, query pairs and their rewards in
    either layout) and the same meta-test of the result, to float tolerance."""
    from metapl.runs import MetaTestConfig, meta_test

    runs = {flag: _run(tmp_path, f"shared_{flag}", ["steps=4", f"model.shared_prefix={flag}"])[0]
            for flag in ("true", "false")}
    a, b = (read_metrics(runs[f], "train") for f in ("true", "false"))
    for key in ("outer_loss", "grad_norm", "inner_loss_first", "inner_loss_last", "reward_std"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-4), key
    test = MetaTestConfig(prompts=2, eval_prompts=4, samples_per_prompt=2, bootstrap=200)
    shared, rows = (meta_test(runs[f], "heldout", test, write=False, progress=False) for f in ("true", "false"))
    for x, y in zip(shared["per_domain"], rows["per_domain"]):
        for key in ("gold_adapted", "inner_loss_last", "rm_pair_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), (x["domain"], key)
    from metapl.train.spec import algorithm, load_run_config  # the switch reaches the episodes

    for flag in (True, False):
        episode = next(algorithm("meta").setup(load_run_config(None, TINY + [f"model.shared_prefix={flag}"])).batches)
        assert ("response_tokens" in episode["support"]) == ("response_tokens" in episode["query"]) == flag
