"""The training step: accumulation invariance, LoRA-only and masked training, the non-finite guard, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.data.batching import PairLoader, SequenceShape
from metapl.data.schemas import PreferencePair
from metapl.data.synthetic import WordTokenizer
from metapl.losses.preference import dpo_objective, reference_logprobs, rm_objective
from metapl.models import LoraConfig, init_head_params, init_lora, init_params, tiny
from metapl.train import OptimConfig, init_state, learning_rate_schedule, make_optimizer, make_train_step

TOK = WordTokenizer(30)


def _batch(n=8):
    rng = np.random.default_rng(0)
    words = lambda k: " ".join(f"w{i}" for i in rng.integers(0, 30, size=k))  # noqa: E731
    pairs = [PreferencePair(words(3), words(4), words(2) + " w29", "d") for _ in range(n)]
    loader = PairLoader(pairs, TOK.encode, batch_size=n, eos_id=TOK.eos_token_id,
                        shape=SequenceShape(max_prompt_tokens=8, max_response_tokens=8, buckets=(16,)))
    return {k: jnp.asarray(v) for k, v in next(loader).arrays().items() if k != "gold_margin"}


CONFIG = tiny("llama", vocab_size=TOK.vocab_size)


def _rm(trainable, frozen, batch):
    return rm_objective(trainable, batch, config=CONFIG)


def test_batch_8_equals_batch_1_accumulated_8_times():
    params = init_head_params(CONFIG, jax.random.key(0))
    batch = _batch()
    # Adam's first update is about lr * sign(g); eps keeps gradients at float32 noise level (where summation order
    # decides the sign) from being blown up to a full step.
    opt = make_optimizer(OptimConfig(learning_rate=1e-3, max_grad_norm=0.5, eps=1e-4))
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (steps donate their state)
    one, m1 = make_train_step(_rm, opt)(init_state(copy(params), opt, jax.random.key(1)), None, batch)
    acc, m8 = make_train_step(_rm, opt, accumulation_steps=8)(init_state(copy(params), opt, jax.random.key(1)),
                                                              None, batch)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(one.params),
                                                                 jax.tree.leaves(params)))
    assert moved > 1e-4  # the step did something


def test_lora_only_training_leaves_the_base_bit_identical():
    config = tiny("llama", vocab_size=TOK.vocab_size, lora=LoraConfig(rank=2, targets=("q", "v", "down")))
    base = init_params(config, jax.random.key(0))
    base_copy = jax.tree.map(np.array, base)
    batch = _batch(4)
    batch = dict(batch, **reference_logprobs(base, config, batch))  # reference = the base model, cached once

    def objective(lora, frozen, b):
        return dpo_objective(frozen, b, config=config, beta=0.5, lora=lora)

    opt = make_optimizer(OptimConfig(learning_rate=1e-2))
    step = make_train_step(objective, opt)
    state = init_state(init_lora(config, jax.random.key(1)), opt, jax.random.key(2))
    losses = []
    for _ in range(4):
        state, metrics = step(state, base, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(base_copy)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_trainable_mask_freezes_the_rest_exactly():
    params = init_head_params(CONFIG, jax.random.key(0))
    mask = {"backbone": jax.tree.map(lambda _: False, params["backbone"]), "head": {"kernel": True, "bias": True}}
    opt = make_optimizer(OptimConfig(learning_rate=1e-2), trainable_mask=mask)
    before = jax.tree.map(np.array, params)
    state, _ = make_train_step(_rm, opt)(init_state(params, opt, jax.random.key(0)), None, _batch())
    for a, b in zip(jax.tree.leaves(state.params["backbone"]), jax.tree.leaves(before["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert not np.array_equal(np.asarray(state.params["head"]["kernel"]), before["head"]["kernel"])


def test_non_finite_steps_are_skipped_and_counted():
    def objective(p, frozen, batch):
        loss = jnp.sum(p["w"] ** 2) * batch["scale"]
        return loss, {}

    opt = make_optimizer(OptimConfig(learning_rate=0.1))
    step = make_train_step(objective, opt)
    state = init_state({"w": jnp.ones(3)}, opt, jax.random.key(0))
    state, m = step(state, None, {"scale": jnp.float32(1.0)})
    good = np.asarray(state.params["w"])
    for i in range(2):
        state, m = step(state, None, {"scale": jnp.float32(np.nan)})
        assert int(m["skipped"]) == 1 and int(state.nonfinite_run) == i + 1
        np.testing.assert_array_equal(np.asarray(state.params["w"]), good)
    state, m = step(state, None, {"scale": jnp.float32(1.0)})
    assert int(m["skipped"]) == 0 and int(state.nonfinite_run) == 0 and int(state.skipped) == 2
    assert int(state.step) == 4 and not np.array_equal(np.asarray(state.params["w"]), good)


def test_learning_rate_schedules():
    lin = learning_rate_schedule(OptimConfig(learning_rate=1.0, schedule="linear", warmup_steps=10, total_steps=110))
    assert [float(lin(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx([0, 0.5, 1.0, 0.5, 0.0])
    cos = learning_rate_schedule(OptimConfig(learning_rate=2.0, schedule="cosine", total_steps=100))
    assert [float(cos(s)) for s in (0, 50, 100)] == pytest.approx([2.0, 1.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="needs total_steps"):
        OptimConfig(schedule="cosine")
