"""LoRA adapters as a separate tree, and the reward/value heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import (
    LoraConfig,
    apply,
    init_head_params,
    init_lora,
    init_params,
    last_token_index,
    merge_lora,
    reward,
    tiny,
    values,
)
from tests.batches import pad_rows


@pytest.fixture
def lora_model():
    config = tiny("llama", lora=LoraConfig(rank=2, alpha=4.0, targets=("q", "k", "v", "o", "gate", "up", "down")))
    return config, init_params(config, jax.random.key(0)), init_lora(config, jax.random.key(1))


def test_fresh_adapters_leave_the_model_unchanged(lora_model, rng):
    config, params, lora = lora_model
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 5)))
    np.testing.assert_array_equal(apply(params, config, tokens, lora=lora), apply(params, config, tokens))


def test_adapters_equal_merged_weights(lora_model, rng):
    config, params, lora = lora_model
    lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(5), x.shape), lora)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 5)))
    adapted = apply(params, config, tokens, lora=lora)
    merged = apply(merge_lora(params, lora, config), config, tokens)
    np.testing.assert_allclose(adapted, merged, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(adapted - apply(params, config, tokens)).max()) > 1e-3  # the adapters do something


def test_adapter_gradient_leaves_base_untouched(lora_model, rng):
    config, params, lora = lora_model
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 5)))
    g = jax.grad(lambda l: jnp.mean(apply(params, config, tokens, lora=l) ** 2))(lora)
    assert jax.tree.structure(g) == jax.tree.structure(lora)
    # With b = 0 only b receives gradient; a's gradient is exactly zero.
    assert float(jnp.abs(g["layers"]["mlp"]["up"]["b"]).sum()) > 0
    assert float(jnp.abs(g["layers"]["mlp"]["up"]["a"]).sum()) == 0


def test_lora_config_errors():
    with pytest.raises(ValueError, match="unknown"):
        LoraConfig(targets=("q", "nope"))
    with pytest.raises(ValueError, match="gated MLP"):
        tiny("gpt2", lora=LoraConfig(targets=("gate",)))
    with pytest.raises(ValueError, match="lora"):
        init_lora(tiny("llama"), jax.random.key(0))


def test_last_token_index_left_and_right_padding():
    mask = jnp.asarray([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4])


def test_reward_reads_the_last_real_token_whatever_the_padding(rng):
    config = tiny("llama")
    params = init_head_params(config, jax.random.key(0))
    seq = rng.integers(1, config.vocab_size, size=5)
    right, right_mask = pad_rows([seq], 8, "right")
    left, left_mask = pad_rows([seq], 8, "left")
    r_right = reward(params, config, jnp.asarray(right), jnp.asarray(right_mask))
    r_left = reward(params, config, jnp.asarray(left), jnp.asarray(left_mask))
    r_alone = reward(params, config, jnp.asarray(seq[None]), jnp.ones((1, 5)))
    np.testing.assert_allclose(r_right, r_alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r_left, r_alone, rtol=1e-5, atol=1e-6)
    v = values(params, config, jnp.asarray(seq[None]), jnp.ones((1, 5)))
    assert v.shape == (1, 5)
    np.testing.assert_allclose(v[0, -1], r_alone[0], rtol=1e-5)  # same head, same last hidden state


def test_reward_model_from_a_pretrained_backbone_drops_the_lm_head():
    config = tiny("llama")
    lm = init_params(config, jax.random.key(0))
    rm = init_head_params(config, jax.random.key(1), backbone=lm)
    assert "lm_head" not in rm["backbone"]
    np.testing.assert_array_equal(rm["backbone"]["embed"]["embedding"], lm["embed"]["embedding"])


def test_adapters_for_an_unlisted_projection_are_an_error(rng):
    config = tiny("llama", lora=LoraConfig(rank=2, targets=("q", "v")))
    params = init_params(config, jax.random.key(0))
    lora = init_lora(config.replace(lora=LoraConfig(rank=2, targets=("q", "up"))), jax.random.key(1))
    with pytest.raises(ValueError, match="'up'"):
        apply(params, config, jnp.zeros((1, 3), jnp.int32), lora=lora)
