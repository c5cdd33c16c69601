"""Tuning reads only the validation split; it averages over runs and breaks ties towards the earlier setting. A
trained policy's held-out test pairs with a reward model's meta-test (same prompts, keys, reference samples). The
two-level bootstrap interval against a by-hand case and its coverage."""

import dataclasses
import json

import numpy as np
import pytest

from metapl.config import ConfigError
from metapl.eval import two_level_interval, two_level_means, win_rate
from metapl.meta import reference_samples
from metapl.meta.tuning import check_tuning_split, tune_solver
from metapl.runs import MetaTestConfig, meta_test, policy_test, prepare_run_dir, train

DATA = ["data.synthetic.num_domains=12", "data.synthetic.num_heldout=6", "model.hidden_size=16", "model.num_layers=1",
        "data.synthetic.pairs_per_domain=16", "seed=3"]
TEST = MetaTestConfig(prompts=2, eval_prompts=3, samples_per_prompt=2, bootstrap=100, domains_per_batch=2)


@pytest.mark.parametrize("split", ["heldout", "train", "test"])
def test_the_tuner_refuses_every_split_but_validation(split):
    called = []

    def evaluate(*args, **kwargs):  # never reached
        called.append(args)
        return {"gold_adapted": {"mean": 0.0}}

    with pytest.raises(ConfigError, match="tuning reads only the 'validation' split"):
        tune_solver(["run"], [{"beta": 0.5}], split=split, evaluate=evaluate, progress=False)
    assert not called
    with pytest.raises(ConfigError, match="held-out domains are for the final measurement"):
        check_tuning_split("heldout")


def test_the_tuner_averages_runs_and_breaks_ties_towards_the_earlier_setting():
    seen = []
    score = {("a", 0.1): 0.2, ("b", 0.1): 0.4, ("a", 0.3): 0.5, ("b", 0.3): 0.1, ("a", 1.0): 0.3, ("b", 1.0): 0.3}

    def evaluate(run, split, test, write, progress, pair_accuracies):
        seen.append((run, split, test.beta, write))
        return {"gold_adapted": {"mean": score[(run, test.beta)]}}

    grid = [{"beta": 0.1}, {"beta": 0.3}, {"beta": 1.0}]
    out = tune_solver(["a", "b"], grid, evaluate=evaluate, progress=False)
    assert [row["mean"] for row in out["table"]] == pytest.approx([0.3, 0.3, 0.3])
    assert out["best"] == {"beta": 0.1}  # a three-way tie: the first (cheapest) setting
    assert all(split == "validation" and not write for _, split, _, write in seen) and len(seen) == 6
    score[("b", 1.0)] = 0.31
    assert tune_solver(["a", "b"], grid, evaluate=evaluate, progress=False)["best"] == {"beta": 1.0}
    with pytest.raises(ConfigError, match="unknown solver setting"):
        tune_solver(["a"], [{"temperature": 1.0}], evaluate=evaluate, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    rm = root / "rm"
    train(rm, prepare_run_dir(rm, None, ["algo=rm", "steps=2", *DATA, "meta.inner_steps=2"], False), progress=False)
    dpo = root / "dpo"
    train(dpo, prepare_run_dir(dpo, None, ["algo=dpo", "steps=3", *DATA], False), progress=False)
    return rm, dpo


def test_tuning_a_real_run_on_the_validation_split(runs):
    rm, _ = runs
    out = tune_solver([rm], [{"beta": 0.2, "steps": 1}, {"beta": 2.0, "steps": 1}], TEST, progress=False)
    direct = meta_test(rm, "validation", dataclasses.replace(TEST, beta=2.0, steps=1), write=False, progress=False)
    assert out["table"][1]["per_run"] == [direct["gold_adapted"]["mean"]]
    assert direct["domains"] == 6 and direct["split"] == "validation"  # the 6 meta-train domains
    # the reward model's pair accuracies, which no solver setting changes, are computed once per run and reused
    kept = {}
    first = meta_test(rm, "validation", TEST, write=False, progress=False, pair_accuracies=kept)
    assert len(kept) == 6 and [r["rm_pair_accuracy"] for r in first["per_domain"]] == \
        [r["rm_pair_accuracy"] for r in direct["per_domain"]]
    kept.update({k: 0.25 for k in kept})  # a reused value is read from the dict, not recomputed
    again = meta_test(rm, "validation", TEST, write=False, progress=False, pair_accuracies=kept)
    assert [r["rm_pair_accuracy"] for r in again["per_domain"]] == [0.25] * 6


def test_a_policy_test_pairs_with_the_meta_test_of_the_same_seed(runs):
    rm, dpo = runs
    pt = policy_test(dpo, "heldout", TEST, write=True)
    mt = meta_test(rm, "heldout", TEST, write=False, progress=False)
    assert [r["domain"] for r in pt["per_domain"]] == [r["domain"] for r in mt["per_domain"]]
    # the same reference policy answering the same prompts with the same keys: identical reference scores
    assert [r["gold_reference"] for r in pt["per_domain"]] == [r["gold_reference"] for r in mt["per_domain"]]
    assert all(len(r["gold_adapted_samples"]) == TEST.eval_prompts for r in pt["per_domain"])
    assert all(np.isnan(r["rm_pair_accuracy"]) for r in pt["per_domain"]) and pt["rm_pair_accuracy"]["domains"] == 0
    assert pt["checkpoint_step"] == 3 and (dpo / "policy_test_heldout.md").exists()
    # the trained policy moved: its samples differ from the reference's on some domain
    assert any(r["gold_adapted"] != r["gold_reference"] for r in pt["per_domain"])
    assert all(np.isfinite(r["kl"]) and 0 <= r["length_adapted"] <= 16 for r in pt["per_domain"])
    assert "KL(trained ‖ reference)" in (dpo / "policy_test_heldout.md").read_text()
    # domains are decoded in vmapped chunks, each with its own keys: the rows, revisions included, do not depend
    # on the chunking (4 does not divide the 6 domains, so the last chunk is padded)
    by = {d: policy_test(dpo, "heldout", dataclasses.replace(TEST, domains_per_batch=d), write=False, revisions=2)
          for d in (1, 4)}
    rows = {d: [{k: v for k, v in r.items() if k != "kl"} for r in by[d]["per_domain"]] for d in by}
    # the reference policy's answers are the same in every test of it: a repeat reads its 3 chunks back
    hits = reference_samples.STATS["hits"]
    assert json.dumps(policy_test(dpo, "heldout", TEST, write=False)["per_domain"]) == json.dumps(pt["per_domain"])
    assert reference_samples.STATS["hits"] == hits + 3
    assert json.dumps(rows[1]) == json.dumps(rows[4])  # samples and judgements exactly (json: NaN equals NaN)
    # KL is a difference of two sequence log-probabilities, so float32 rounding of the batched call shows in it
    assert [r["kl"] for r in by[1]["per_domain"]] == pytest.approx([r["kl"] for r in by[4]["per_domain"]], abs=1e-5)
    assert [r["gold_revisions"][0] for r in by[1]["per_domain"]] == [r["gold_adapted"] for r in pt["per_domain"]]
    with pytest.raises(ConfigError, match="trains a reward model"):
        policy_test(rm, "heldout", TEST)


def test_a_reward_conditioned_policy_can_be_tested(runs, tmp_path):
    """Its vocabulary has the reward tokens (a random model's reference is therefore another model than the other
    runs'); it is asked for the top bin."""
    rm, _ = runs
    dt = tmp_path / "dt"
    train(dt, prepare_run_dir(dt, None, ["algo=dt", "steps=2", *DATA, "data.sample_prompts=12",
                                         "data.samples_per_prompt=2"], False), progress=False)
    pt = policy_test(dt, "heldout", TEST, write=False)
    mt = meta_test(rm, "heldout", TEST, write=False, progress=False)
    assert [r["domain"] for r in pt["per_domain"]] == [r["domain"] for r in mt["per_domain"]]
    assert all(np.isfinite(r["kl"]) for r in pt["per_domain"])


def test_two_level_interval_by_hand_and_coverage():
    # one seed, identical domains: no spread at all
    out = two_level_interval([[0.2, 0.2, 0.2]], resamples=200)
    assert out["mean"] == pytest.approx(0.2) and out["ci95"] == pytest.approx([0.2, 0.2])
    # seeds that disagree widen the interval beyond the within-seed spread
    tight = two_level_interval([[0.0, 0.1], [0.0, 0.1], [0.0, 0.1]], resamples=2000)
    wide = two_level_interval([[0.0, 0.1], [1.0, 1.1], [2.0, 2.1]], resamples=2000)
    assert wide["ci95"][1] - wide["ci95"][0] > 10 * (tight["ci95"][1] - tight["ci95"][0])
    assert wide["mean"] == pytest.approx(1.05) and wide["seeds"] == 3 and wide["domains"] == 2
    # coverage: seed effects N(0, 0.5), domain noise N(0, 1); the interval covers the true mean 0 in most trials
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(60):
        values = rng.normal(0, 0.5, size=(5, 1)) + rng.normal(0, 1, size=(5, 20))
        lo, hi = two_level_interval(values, resamples=400, seed=trial)["ci95"]
        covered += lo <= 0 <= hi
    assert covered >= 48  # nominal 95%; a percentile bootstrap over 5 seeds undercovers a little
    with pytest.raises(ValueError):
        two_level_interval([[np.nan]])
    # the interval is the percentile interval of the resampled means
    values = rng.normal(size=(3, 8))
    means = two_level_means(values, resamples=300, seed=4)
    assert two_level_interval(values, resamples=300, seed=4)["ci95"] == pytest.approx(
        np.percentile(means, [2.5, 97.5]).tolist())


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 3.0], [1.0, 3.0, 0.0]) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert win_rate([0.2], [0.2]) == 0.5
