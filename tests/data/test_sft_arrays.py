"""SFT batches of scored samples: the plain batch (rewards, prompt ids, unit weights) and the reward-conditioned
batch (quantised z-scores rendered into the prompt)."""

import numpy as np
import pytest

from metapl.data.batching import SequenceShape
from metapl.data.reward_tokens import normal_bin_edges
from metapl.data.schemas import ScoredSample
from metapl.data.sft_arrays import reward_conditioned_arrays, sample_arrays


def _byte_encode(text):
    return list(text.encode("utf-8"))


def test_sample_arrays_hold_rewards_prompt_groups_and_unit_weights():
    samples = [ScoredSample("Hi.", "a", 0.5, "d1", "pi"), ScoredSample("Yo.", "bb", -2.0, "d1", "pi"),
               ScoredSample("Hi.", "ccc", 1.5, "d1", "pi"), ScoredSample("Hi.", "d", 3.0, "d2", "pi")]
    shape = SequenceShape(max_prompt_tokens=8, max_response_tokens=8, buckets=(16,))
    eos = 256
    out = sample_arrays(samples, _byte_encode, shape, eos_id=eos)
    np.testing.assert_array_equal(out["rewards"], np.asarray([0.5, -2.0, 1.5, 3.0], np.float32))
    assert out["prompt_ids"].tolist() == [0, 1, 0, 2]  # the same prompt in another domain is another group
    np.testing.assert_array_equal(out["weights"], np.ones(4, np.float32))
    assert out["tokens"].shape == out["attention_mask"].shape == out["response_mask"].shape == (4, 16)
    for i, s in enumerate(samples):
        x, y = _byte_encode(s.prompt), _byte_encode(s.response) + [eos]
        np.testing.assert_array_equal(out["tokens"][i, : len(x) + len(y)], x + y)
        np.testing.assert_array_equal(np.flatnonzero(out["response_mask"][i]), np.arange(len(x), len(x) + len(y)))
    assert sample_arrays(samples, _byte_encode, shape, eos_id=eos, length=32)["tokens"].shape == (4, 32)
    with pytest.raises(ValueError, match="no samples"):
        sample_arrays([], _byte_encode, shape, eos_id=eos)


def test_reward_conditioned_arrays_render_quantised_zscores(rng):
    rewards = [1.0, 2.0, 3.0, 10.0, 5.0, 5.0, 0.0]
    prompts = ["Say hi.", "Say hi.", "Say hi.", "Say hi.", "Wave.", "Wave.", "Alone."]
    samples = [ScoredSample(p, f"r{i}", r, "d", "pi") for i, (p, r) in enumerate(zip(prompts, rewards))]
    shape = SequenceShape(max_prompt_tokens=32, max_response_tokens=8, buckets=(64,))
    eos = 256
    out = reward_conditioned_arrays(samples, _byte_encode, shape, eos_id=eos, pad_id=0)
    # z within "Say hi.": rewards 1, 2, 3, 10 -> mean 4, std sqrt(12.5)
    z = (np.asarray([1, 2, 3, 10]) - 4) / np.sqrt(12.5)
    edges = normal_bin_edges(4)
    want_bins = [int(np.searchsorted(edges, v, side="right")) for v in z] + [2, 2, 2]  # equal / single -> z=0
    assert out["reward_bin"].tolist() == want_bins
    assert out["prompt_ids"].tolist() == [0, 0, 0, 0, 1, 1, 2]
    for i, s in enumerate(samples):
        ctx = f"{s.prompt} <|reward_{want_bins[i]}|>"
        ids = _byte_encode(ctx) + _byte_encode(s.response) + [eos]
        np.testing.assert_array_equal(out["tokens"][i, : len(ids)], ids)
        assert out["attention_mask"][i].sum() == len(ids)
        assert out["response_mask"][i].tolist() == [False] * len(_byte_encode(ctx)) + [True] * (
            len(ids) - len(_byte_encode(ctx))) + [False] * (64 - len(ids))
        # the token survives truncation of a long prompt (it sits at the end of the prompt)
    long = [ScoredSample("x" * 100, "y", 1.0, "d", "pi"), ScoredSample("x" * 100, "z", 0.0, "d", "pi")]
    cut = reward_conditioned_arrays(long, _byte_encode, shape, eos_id=eos)
    assert bytes(cut["tokens"][0, :32].astype(np.uint8)).decode().endswith("<|reward_3|>")
    again = reward_conditioned_arrays(samples, _byte_encode, shape, eos_id=eos, pad_id=0)
    assert all(np.array_equal(out[k], again[k]) for k in out)  # deterministic
