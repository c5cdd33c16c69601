"""Cached decoding (`decoding.cached_forward`) must equal the full forward pass, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import (
    LoraConfig, apply, cached_forward, decoding_weights, init_cache, init_lora, init_params, next_token_logits, tiny,
)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_cached_decoding_equals_full_recomputation(family, rng):
    config = tiny(family)
    params = init_params(config, jax.random.key(1))
    weights = decoding_weights(params, config)
    b, p, steps = 3, 6, 5
    prompt = rng.integers(0, config.vocab_size, size=(b, p))
    mask = np.ones((b, p), bool)
    mask[1, :2] = False  # left padding
    mask[2, :5] = False
    new_tokens = rng.integers(0, config.vocab_size, size=(b, steps))

    cache = init_cache(config, b, p + steps)
    hidden, cache = cached_forward(weights, config, jnp.asarray(prompt), cache, jnp.asarray(mask))
    step_logits = [next_token_logits(weights, config, hidden[:, :, -1]).T]
    for s in range(steps - 1):
        hidden, cache = cached_forward(weights, config, jnp.asarray(new_tokens[:, s:s + 1]), cache)
        step_logits.append(next_token_logits(weights, config, hidden[:, :, 0]).T)

    full_tokens = np.concatenate([prompt, new_tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones((b, steps), bool)], axis=1)
    full = np.asarray(apply(params, config, jnp.asarray(full_tokens), attention_mask=jnp.asarray(full_mask)))
    for s, got in enumerate(step_logits):
        np.testing.assert_allclose(np.asarray(got), full[:, p - 1 + s], rtol=1e-5, atol=1e-5)


def test_lora_is_folded_into_the_decoding_weights(rng):
    config = tiny("llama", lora=LoraConfig(rank=4, targets=("q", "v", "o", "gate", "up", "down")))
    params = init_params(config, jax.random.key(4))
    lora = init_lora(config, jax.random.key(5))
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(6), x.shape), lora)  # b != 0
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 7)))
    weights = decoding_weights(params, config, lora)
    hidden, _ = cached_forward(weights, config, tokens, init_cache(config, 2, 7))
    got = next_token_logits(weights, config, hidden[:, :, -1]).T
    want = apply(params, config, tokens, lora=lora)[:, -1]
    assert float(jnp.max(jnp.abs(want - apply(params, config, tokens)[:, -1]))) > 1e-2  # the adapters matter
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_prefill_in_chunks_equals_one_prefill(rng):
    config = tiny("llama")
    weights = decoding_weights(init_params(config, jax.random.key(2)), config)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 8)))
    h_one, _ = cached_forward(weights, config, tokens, init_cache(config, 2, 8))
    h_a, cache = cached_forward(weights, config, tokens[:, :5], init_cache(config, 2, 8))
    h_b, cache = cached_forward(weights, config, tokens[:, 5:], cache)
    np.testing.assert_allclose(np.concatenate([h_a, h_b], 2), h_one, rtol=1e-5, atol=1e-5)
    assert int(cache.index) == 8 and np.asarray(cache.next_position).tolist() == [8, 8]


def test_padding_step_inside_cache_is_invisible(rng):
    # A row that is done feeds a pad with mask 0; later real tokens must not attend to it.
    config = tiny("llama")
    weights = decoding_weights(init_params(config, jax.random.key(3)), config)
    prompt = jnp.asarray(rng.integers(0, config.vocab_size, size=(1, 4)))
    nxt = jnp.asarray(rng.integers(0, config.vocab_size, size=(1, 1)))
    _, c1 = cached_forward(weights, config, prompt, init_cache(config, 1, 8))
    _, c2 = cached_forward(weights, config, jnp.zeros((1, 1), jnp.int32), c1, jnp.zeros((1, 1)))
    h_with_pad, _ = cached_forward(weights, config, nxt, c2)
    h_direct, _ = cached_forward(weights, config, nxt, c1)
    np.testing.assert_allclose(h_with_pad, h_direct, rtol=1e-5, atol=1e-5)
