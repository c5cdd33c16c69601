"""The judges' common interface: verdicts from scores, the gold judge, a sample scorer (a reward model) as judge."""

import numpy as np
import pytest

from metapl.data.schemas import PromptExample
from metapl.algorithms.common import reward_model_scorer
from metapl.eval.judges import GoldJudge, ScorerJudge, verdicts_from_scores, win_rate_of
from metapl.meta.evaluate import restore_reward_model
from metapl.meta.objectives import pair_rewards, reward_function
from metapl.runs import prepare_run_dir, train
from metapl.train.batches import eval_pair_batches


class _Bench:
    """A benchmark stand-in: characters are tokens; the gold judge scores the response length, the second judge
    its count of "a"; prompts up to 6 tokens, responses up to 4."""

    name = "stand-in"
    eos_id, pad_id = 0, 1

    class spec:
        max_prompt_tokens, max_response_tokens = 6, 4

    def encode(self, text):
        return [ord(c) for c in text]

    def gold(self, domain, prompt, response):
        return float(len(response))

    def cross_gold(self, domain, prompt, response):
        return float(response.count("a"))


def _prompts(n):
    return [PromptExample(prompt=f"p{i}", domain="d") for i in range(n)]


def test_verdicts_from_scores_by_hand():
    np.testing.assert_array_equal(verdicts_from_scores([1, 2, 3, -1], [0, 2, 4, -2]), [1, 0.5, 0, 1])
    assert win_rate_of([1, 0.5, 0, 1]) == 0.625
    with pytest.raises(ValueError, match="scores against"):
        verdicts_from_scores([1, 2], [1])
    with pytest.raises(ValueError, match="no verdicts"):
        win_rate_of([])


def test_gold_judge_and_its_second_judge():
    bench = _Bench()
    gold, cross = GoldJudge(bench), GoldJudge(bench, cross=True)
    assert gold.name == "stand-in:gold" and cross.name == "stand-in:cross"
    np.testing.assert_array_equal(gold.score(_prompts(3), ["abc", "  ", "a"]), [3.0, 0.0, 1.0])  # blank scores 0
    np.testing.assert_array_equal(gold.compare(_prompts(3), ["abc", "b", "xy"], ["a", "bbb", "yx"]), [1, 0, 0.5])
    np.testing.assert_array_equal(cross.compare(_prompts(2), ["aab", "b"], ["a", "bbb"]), [1, 0.5])
    with pytest.raises(ValueError, match="one pair per prompt"):
        gold.compare(_prompts(2), ["a"], ["b", "c"])


def test_a_scorer_as_judge_by_hand():
    class Lengths:  # a sample scorer: the response's length plus the domain's offset
        name = "lengths"

        def score(self, domains, prompts, responses):
            return np.asarray([len(r) + (10 if d == "hot" else 0) for d, r in zip(domains, responses)], float)

    judge = ScorerJudge(Lengths())
    prompts = [PromptExample("p", "hot"), PromptExample("p", "cold")]
    assert judge.name == "lengths"
    np.testing.assert_array_equal(judge.score(prompts, ["ab", "abc"]), [12.0, 3.0])
    np.testing.assert_array_equal(judge.compare(prompts, ["ab", "a"], ["abc", "a"]), [0.0, 0.5])


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("judge") / "rm"
    tiny = ["algo=rm", "steps=2", "data.synthetic.num_domains=8", "data.synthetic.num_heldout=4",
            "model.hidden_size=16", "model.num_layers=1", "data.synthetic.pairs_per_domain=8"]
    train(run, prepare_run_dir(run, None, tiny, False), progress=False)
    return run


def test_a_reward_model_run_as_judge_matches_the_runs_pair_scores(rm_run):
    """The judge scores text through the run's scorer; the training path batches pairs with its loader."""
    restored = restore_reward_model(rm_run)
    fn = reward_function(restored.config, restored.frozen["rm"])
    judge = ScorerJudge(reward_model_scorer(rm_run, restored.cfg.data, batch_size=4))
    assert judge.name == "reward-model:judge0/rm@2"
    pairs = restored.bench.eval_pairs[:6]
    prompts = [PromptExample(p.prompt, p.domain) for p in pairs]
    chosen, rejected = [], []
    for b in eval_pair_batches(pairs, restored.bench, 4):
        c, r = pair_rewards(fn, restored.phi, b)
        keep = np.asarray(b["weights"]) > 0
        chosen += list(np.asarray(c)[keep])
        rejected += list(np.asarray(r)[keep])
    np.testing.assert_allclose(judge.score(prompts, [p.chosen for p in pairs]), chosen, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(judge.compare(prompts, [p.chosen for p in pairs], [p.rejected for p in pairs]),
                                  verdicts_from_scores(chosen, rejected))
