"""SmolLM2-135M with LoRA on sentiment_domains: `metapl train rloo` and `metapl train dpo` raise the gold
(VADER) sentiment of the policy's samples (slow: samples and trains the real model)."""

import json

import numpy as np
import pytest

from metapl.cli import main
from metapl.runs import read_metrics
from tests.slow.conftest import TRAINING_CHAIN

# Beside the meta chain on the other worker RLOO took 736 s (602 s alone), after 164 s setting up the shared build;
# pytest-timeout counts the fixture's set-up against the default 900 s.
pytestmark = [TRAINING_CHAIN, pytest.mark.timeout(1800)]

LORA = ["model.pretrained=smollm2-135m", "model.lora_rank=8", "model.lora_targets=[q,v,o,up,down]",
        "data.benchmark=sentiment_domains", "data.max_prompt_tokens=32", "data.max_response_tokens=16",
        "data.eval_prompts=32", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(sentiment_data):  # the session's build (tests/slow/conftest.py)
    return sentiment_data


def _gold(run_dir):
    rows = read_metrics(run_dir, "eval")
    return rows[0]["gold_reward"], rows[-1]["gold_reward"]


def test_rloo_raises_gold_sentiment(data_dir, tmp_path, capsys):
    run = tmp_path / "rloo"
    assert main(["train", "rloo", "--run-dir", str(run), f"data.data_dir={data_dir}", *LORA, "data.batch_size=4",
                 "data.sample_prompts=24",  # 2 per domain after the 2 evaluation prompts: the front half of 8
                 "loss.k=4", "loss.beta=0.05", "optim.learning_rate=2e-3", "steps=24", "eval_every=24",
                 "log_every=1"]) == 0
    before, after = _gold(run)
    rewards = [r["reward"] for r in read_metrics(run, "train")]  # gold of each step's 16 fresh samples
    print(json.dumps({"rloo_gold": [before, after], "rloo_sample_reward": rewards}))
    # The gold of its samples on its 24 training prompts rises (steps 1-12: 0.095, 13-24: 0.180 when measured,
    # with one row per sample and with the shared prefix alike; one step's 16 samples are noisy, so halves are
    # compared). On the other prompts of the same domains (the evaluation prompts: one sample each of 32, the
    # same key before and after) it moved 0.089 -> 0.123 with one row per sample and 0.089 -> 0.070 with the
    # shared prefix, whose training rewards matched to three decimals: a mean of 32 samples of sd ~0.2 moves by
    # its standard error (~0.035) when float rounding changes which tokens are drawn. So that check is only that
    # it does not collapse.
    assert np.mean(rewards[12:]) > np.mean(rewards[:12]) + 0.05, rewards
    assert after > before - 0.07, (before, after)


def test_dpo_raises_gold_sentiment(data_dir, tmp_path, capsys):
    run = tmp_path / "dpo"
    assert main(["train", "dpo", "--run-dir", str(run), f"data.data_dir={data_dir}", *LORA, "data.batch_size=4",
                 "loss.beta=0.1", "optim.learning_rate=1e-3", "precompute_reference=true", "steps=30",
                 "eval_every=30"]) == 0
    before, after = _gold(run)
    print(json.dumps({"dpo_gold": [before, after]}))
    assert after > before, (before, after)
