"""meta-test's stages, each alone: restore, solver settings, adapt and sample, judge, summarise, render."""

import dataclasses

import jax
import numpy as np
import pytest

from metapl.meta.evaluate import (
    MetaTestConfig, adapt_and_sample, judge, render, restore_reward_model, solver_config, summarise,
)
from metapl.meta import reference_samples
from metapl.meta.metagrad import MetaConfig
from metapl.runs import prepare_run_dir, train

TINY = ["algo=rm", "steps=2", "data.synthetic.num_domains=12", "data.synthetic.num_heldout=6", "model.hidden_size=16",
        "model.num_layers=1", "data.synthetic.pairs_per_domain=16", "meta.inner_steps=2", "meta.inner_lr=0.05"]
TEST = MetaTestConfig(prompts=2, eval_prompts=3, samples_per_prompt=2, bootstrap=200, domains_per_batch=2)


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    run = tmp_path_factory.mktemp("stages") / "rm"
    train(run, prepare_run_dir(run, None, TINY, False), progress=False)
    return restore_reward_model(run)


def test_restore_reads_the_run_as_it_ran(restored):
    assert restored.cfg.algo == "rm" and restored.step == 2
    assert restored.cfg.meta.inner_steps == 2 and restored.frozen["base"] is None  # full weights: θ₀ is the base
    assert set(restored.frozen) == {"theta0", "base", "rm"}


def test_solver_config_overrides_only_what_is_given():
    meta = MetaConfig(inner_steps=4, inner_lr=0.02, beta=0.5, prox=0.0)
    assert solver_config(meta, MetaTestConfig()) == meta
    assert solver_config(meta, MetaTestConfig(steps=16, beta=2.0)) == dataclasses.replace(meta, inner_steps=16,
                                                                                           beta=2.0)


def test_adapt_and_judge_per_domain(restored):
    solver = solver_config(restored.cfg.meta.bilevel(), TEST)
    domains = dict(list(restored.bench.domain_split("heldout", TEST.prompts + TEST.eval_prompts).items())[:3])
    outputs = adapt_and_sample(restored, solver, domains, TEST)
    assert list(outputs) == list(domains)
    for out in outputs.values():
        assert out["adapted"]["tokens"].shape == (TEST.eval_prompts, restored.cfg.data.max_response_tokens)
        assert out["inner_losses"].shape == (2,)
    # a domain's samples do not depend on how domains are chunked
    one_by_one = adapt_and_sample(restored, solver, domains, dataclasses.replace(TEST, domains_per_batch=1))
    for name in domains:
        np.testing.assert_array_equal(outputs[name]["adapted"]["tokens"], one_by_one[name]["adapted"]["tokens"])
    rows = judge(restored, domains, outputs, TEST)
    assert [r["domain"] for r in rows] == list(domains)
    assert all(0 <= r["win_rate"] <= 1 and 0 <= r["rm_pair_accuracy"] <= 1 for r in rows)
    # judged against itself, a policy ties: win rate ½ and equal gold rewards
    same = {name: dict(out, adapted=out["reference"]) for name, out in outputs.items()}
    for r in judge(restored, domains, same, TEST):
        assert r["win_rate"] == 0.5 and r["gold_adapted"] == r["gold_reference"]


def test_summarise_and_render_by_hand():
    rows = [{"domain": f"d{i}", "gold_adapted": a, "gold_reference": 0.1, "win_rate": w, "rm_pair_accuracy": acc}
            for i, (a, w, acc) in enumerate([(0.3, 0.75, 0.5), (0.1, 0.5, float("nan")), (0.2, 0.25, 1.0)])]
    result = summarise(rows, MetaTestConfig(bootstrap=300), solver=MetaConfig(inner_steps=3), split="heldout",
                       about={"run_dir": "runs/x", "algo": "rm", "checkpoint_step": 7})
    assert result["gold_gain"]["mean"] == pytest.approx(0.1) and result["win_rate"]["mean"] == pytest.approx(0.5)
    assert result["rm_pair_accuracy"] == {"mean": 0.75, "ci95": [0.5, 1.0], "domains": 2}  # NaN domains skipped
    lo, hi = result["gold_adapted"]["ci95"]
    assert 0.1 <= lo <= 0.2 <= hi <= 0.3
    text = render(result)
    assert "| d0 | 0.100 | 0.300 | 0.75 | 0.50 |" in text and "step 7" in text and "3 sgd steps" in text


class _TwoJudges:
    """A benchmark stand-in: the gold judge scores the response length, the second judge its count of "a"."""

    cross_judge = "count-a"
    eos_id = -1

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def gold_scores(self, prompts, tokens, mask, *, cross=False):
        texts = [self.decode([int(t) for t, k in zip(row, keep) if k]) for row, keep in zip(tokens, mask)]
        return [float(t.count("a")) if cross else float(len(t)) for t in texts]


def test_the_second_judge_columns_and_summary_by_hand():
    from metapl.meta.evaluate import cross_judge_columns

    def side(texts):
        n = max(map(len, texts))
        return {"tokens": np.array([[ord(c) for c in t.ljust(n)] for t in texts]),
                "response_mask": np.array([[1] * len(t) + [0] * (n - len(t)) for t in texts])}

    samples = {"adapted": side(["aab", "b"]), "reference": side(["a", "ab"])}
    cols = cross_judge_columns(_TwoJudges(), [None, None], samples)
    assert cols == {"cross_judge": "count-a", "cross_adapted": 1.0, "cross_reference": 1.0,
                    "cross_win_rate": 0.5, "cross_adapted_samples": [2.0, 0.0]}  # 2 > 1 wins, 0 < 1 loses
    no_judge = type("NoJudge", (), {"cross_judge": None})()
    assert cross_judge_columns(no_judge, [None], samples) == {}
    rows = [{"domain": f"d{i}", "gold_adapted": 0.2, "gold_reference": 0.1, "win_rate": 0.5,
             "rm_pair_accuracy": 0.5, "cross_judge": "count-a", "cross_adapted": a, "cross_reference": 1.0,
             "cross_win_rate": w} for i, (a, w) in enumerate([(1.5, 0.75), (0.5, 0.25)])]
    result = summarise(rows, MetaTestConfig(bootstrap=300), solver=MetaConfig(), split="heldout",
                       about={"run_dir": "runs/x", "algo": "rm", "checkpoint_step": 1})
    assert result["cross"]["judge"] == "count-a" and result["cross"]["gain"]["mean"] == pytest.approx(0.0)
    assert result["cross"]["win_rate"]["mean"] == pytest.approx(0.5)
    assert "| second judge (count-a): gain | 0.000 [-0.500, 0.500] |" in render(result)


def test_response_columns_by_hand():
    from metapl.meta.evaluate import response_columns

    eos = 0
    samples = {"adapted": {"tokens": np.array([[5, 6, eos], [7, eos, 3]]),
                           "response_mask": np.array([[True, True, True], [True, True, False]])},
               "reference": {"tokens": np.array([[5, 5, 5], [eos, 1, 1]]),
                             "response_mask": np.array([[True, True, True], [True, False, False]])}}
    cols = response_columns(type("B", (), {"eos_id": eos})(), samples, np.array([0.5, -0.1]))
    assert cols == {"kl": pytest.approx(0.2), "length_adapted": 1.5, "length_reference": 1.5}


def test_a_solver_that_does_not_move_has_no_kl_and_the_reference_samples(restored):
    """lr 0: θ stays θ₀, so the adapted policy is the reference: log-ratios 0, the same samples on the same keys."""
    test = dataclasses.replace(TEST, lr=0.0)
    domains = dict(list(restored.bench.domain_split("heldout", TEST.prompts + TEST.eval_prompts).items())[:2])
    outputs = adapt_and_sample(restored, solver_config(restored.cfg.meta.bilevel(), test), domains, test)
    rows = judge(restored, domains, outputs, test)
    for out, row in zip(outputs.values(), rows):
        np.testing.assert_array_equal(out["log_ratios"], 0.0)
        np.testing.assert_array_equal(out["adapted"]["tokens"], out["reference"]["tokens"])
        assert row["kl"] == 0.0 and row["length_adapted"] == row["length_reference"] > 0
    moved = judge(restored, domains, adapt_and_sample(restored, solver_config(
        restored.cfg.meta.bilevel(), dataclasses.replace(TEST, lr=1.0, steps=4)), domains, TEST), TEST)
    assert all(r["kl"] != 0.0 for r in moved)
    text = render(summarise(rows, TEST, solver=MetaConfig(), split="heldout",
                            about={"run_dir": "r", "algo": "rm", "checkpoint_step": 2}))
    assert "| KL(adapted ‖ reference), nats per response | 0.000 [0.000, 0.000] |" in text


def test_a_tree_reward_model_is_meta_tested_like_the_others(tmp_path):
    from metapl.meta.evaluate import meta_test

    run = tmp_path / "tree"
    tiny = ["algo=tree-rm", "steps=2", *TINY[2:], "model.lora_rank=4", "data.tree_prompts=8"]
    train(run, prepare_run_dir(run, None, tiny, False), progress=False)
    restored = restore_reward_model(run)
    assert restored.frozen["rm"] is None and "lora" not in restored.phi  # full weights even with LoRA settings
    result = meta_test(run, "heldout", TEST, write=False, progress=False)
    assert result["algo"] == "tree-rm" and result["domains"] == 6
    assert all(0 <= r["rm_pair_accuracy"] <= 1 for r in result["per_domain"])


def test_the_reference_samples_are_decoded_once_per_process(restored):
    """θ₀'s samples are remembered by content: a repeated adapt-and-sample (another solver setting, another reward
    model on the same θ₀) reads them back, identical to a fresh draw; other weights or keys are other entries."""
    solver = solver_config(restored.cfg.meta.bilevel(), TEST)
    domains = dict(list(restored.bench.domain_split("heldout", TEST.prompts + TEST.eval_prompts).items())[:4])
    reference_samples.clear()
    fresh = adapt_and_sample(restored, solver, domains, TEST)
    assert reference_samples.STATS == {"hits": 0, "misses": 4}  # 2 chunks x (support, evaluation)
    again = adapt_and_sample(restored, dataclasses.replace(solver, beta=solver.beta * 4), domains, TEST)
    assert reference_samples.STATS == {"hits": 4, "misses": 4}
    for name in domains:
        for k in ("tokens", "response_mask"):
            np.testing.assert_array_equal(again[name]["reference"][k], fresh[name]["reference"][k])
    other_keys = dataclasses.replace(TEST, seed=1)  # the test's seed sets the domain keys
    adapt_and_sample(restored, solver, domains, other_keys)
    assert reference_samples.STATS["misses"] == 8
    moved = dataclasses.replace(restored, frozen=dict(restored.frozen, theta0=jax.tree.map(
        lambda x: x * 3.0, restored.frozen["theta0"])))  # another θ₀
    out = adapt_and_sample(moved, solver, domains, TEST)
    assert reference_samples.STATS["misses"] == 12
    assert any((out[n]["reference"]["tokens"] != fresh[n]["reference"]["tokens"]).any() for n in domains)


def test_a_fingerprint_reads_every_leaf_and_the_static_settings():
    a = {"w": np.zeros((2, 3), np.float32), "b": None}
    assert reference_samples.fingerprint(a) == reference_samples.fingerprint({"w": np.zeros((2, 3), np.float32)})
    assert reference_samples.fingerprint(a) != reference_samples.fingerprint({"w": np.zeros((3, 2), np.float32)})
    assert reference_samples.fingerprint(a) != reference_samples.fingerprint({"w": np.zeros((2, 3), np.float64)})
    b = {"w": np.zeros((2, 3), np.float32)}
    b["w"][1, 2] = 1e-30
    assert reference_samples.fingerprint(a) != reference_samples.fingerprint(b)
    assert reference_samples.fingerprint(a, static=1) != reference_samples.fingerprint(a, static=2)
