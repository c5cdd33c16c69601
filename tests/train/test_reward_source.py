"""`reward.model`: rloo, ppo and the offline methods rewarded by a trained reward model instead of the gold judge."""

import copy

import numpy as np
import pytest

from metapl.algorithms.policy_gradient import Rollouts
from metapl.config import ConfigError
from metapl.data.schemas import PreferencePair
from metapl.meta.evaluate import restore_reward_model
from metapl.meta.objectives import pair_rewards, reward_function
from metapl.runs import load_run_config, prepare_run_dir, setup, train
from metapl.train.batches import eval_pair_batches

TINY = ["data.synthetic.num_domains=8", "data.synthetic.num_heldout=4", "model.hidden_size=16", "model.num_layers=1",
        "data.synthetic.pairs_per_domain=8", "data.sample_prompts=8", "data.batch_size=4"]


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("source") / "bt"
    train(run, prepare_run_dir(run, None, ["algo=rm", "steps=3", *TINY], False), progress=False)
    return run


def _pair_path_rewards(run, prompts, responses):
    """The reward model's scores of (prompt, response) through its training path: pairs batched by its loader."""
    restored = restore_reward_model(run)
    fn = reward_function(restored.config, restored.frozen["rm"])
    pairs = [PreferencePair(p.prompt, r, "w0", p.domain) for p, r in zip(prompts, responses)]
    out = []
    for b in eval_pair_batches(pairs, restored.bench, 4):
        chosen, _ = pair_rewards(fn, restored.phi, b)
        out += list(np.asarray(chosen)[np.asarray(b["weights"]) > 0])
    return np.asarray(out)


@pytest.mark.parametrize("algo", ["rloo", "ppo"])
def test_rollouts_are_rewarded_by_the_reward_model(rm_run, algo):
    run = setup(load_run_config(None, [f"algo={algo}", f"reward.model={rm_run}", *TINY]))
    assert "rewarded by reward-model:source0/bt@3" in run.describe
    rollouts = run.batches
    rollouts.set_params(run.trainable)
    prompts = [rollouts.prompts[i] for i in next(copy.deepcopy(rollouts.order)) for _ in range(rollouts.k)]
    batch = Rollouts.__next__(rollouts)  # the scored samples (PPO's own step turns them into advantages)
    bench, tp = rollouts.bench, rollouts.cfg.data.max_prompt_tokens
    if "response_tokens" in batch:  # RLOO's shared-prefix layout: [prompts, k, R], prompt-major like the rows
        r = batch["response_tokens"].shape[-1]
        tokens, mask = (np.asarray(batch[k]).reshape(-1, r) for k in ("response_tokens", "response_mask"))
    else:
        tokens, mask = np.asarray(batch["tokens"])[:, tp:], np.asarray(batch["response_mask"])[:, tp:]
    responses = [bench.decode([int(t) for t, k in zip(row, keep) if k and int(t) != bench.eos_id])
                 for row, keep in zip(tokens, mask)]
    assert not np.allclose(batch["rewards"], bench.gold_scores(prompts, tokens, mask))  # not the gold judge's
    np.testing.assert_allclose(batch["rewards"], _pair_path_rewards(rm_run, prompts, responses), rtol=1e-5, atol=1e-5)


def test_the_offline_sample_set_is_scored_by_the_reward_model(rm_run):
    run = setup(load_run_config(None, ["algo=rwr", f"reward.model={rm_run}", *TINY, "data.samples_per_prompt=2"]))
    assert "scored by reward-model:source0/bt@3" in run.describe


def test_a_reward_model_of_another_benchmark_is_refused(rm_run):
    cfg = load_run_config(None, ["algo=rloo", f"reward.model={rm_run}", *TINY, "data.synthetic.seed=5"])
    with pytest.raises(ConfigError, match=r"reward.model=.*bt: that run read data.synthetic=.*this one"):
        setup(cfg)
    with pytest.raises(ConfigError, match="no checkpoint|config"):
        setup(load_run_config(None, ["algo=mle-filter", f"reward.model={rm_run.parent / 'missing'}", *TINY]))
