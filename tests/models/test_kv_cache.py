"""KV-cache decoding must equal full recomputation, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import apply, hidden_states, init_cache, init_params, logits_from_hidden, tiny


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_cached_decoding_equals_full_recomputation(family, rng):
    config = tiny(family)
    params = init_params(config, jax.random.key(1))
    b, p, steps = 3, 6, 5
    prompt = rng.integers(0, config.vocab_size, size=(b, p))
    mask = np.ones((b, p), bool)
    mask[1, :2] = False  # left padding
    mask[2, :5] = False
    new_tokens = rng.integers(0, config.vocab_size, size=(b, steps))

    cache = init_cache(config, b, p + steps)
    hidden, cache = hidden_states(params, config, jnp.asarray(prompt), attention_mask=jnp.asarray(mask), cache=cache)
    step_logits = [logits_from_hidden(params, config, hidden[:, -1])]
    for s in range(steps - 1):
        hidden, cache = hidden_states(params, config, jnp.asarray(new_tokens[:, s:s + 1]), cache=cache)
        step_logits.append(logits_from_hidden(params, config, hidden[:, 0]))

    full_tokens = np.concatenate([prompt, new_tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones((b, steps), bool)], axis=1)
    full = np.asarray(apply(params, config, jnp.asarray(full_tokens), attention_mask=jnp.asarray(full_mask)))
    for s, got in enumerate(step_logits):
        np.testing.assert_allclose(np.asarray(got), full[:, p - 1 + s], rtol=1e-5, atol=1e-5)


def test_prefill_in_chunks_equals_one_prefill(rng):
    config = tiny("llama")
    params = init_params(config, jax.random.key(2))
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 8)))
    h_one, _ = hidden_states(params, config, tokens, cache=init_cache(config, 2, 8))
    cache = init_cache(config, 2, 8)
    h_a, cache = hidden_states(params, config, tokens[:, :5], cache=cache)
    h_b, cache = hidden_states(params, config, tokens[:, 5:], cache=cache)
    np.testing.assert_allclose(np.concatenate([h_a, h_b], 1), h_one, rtol=1e-5, atol=1e-5)
    assert int(cache.index) == 8 and np.asarray(cache.next_position).tolist() == [8, 8]


def test_padding_step_inside_cache_is_invisible(rng):
    # A row that is done feeds a pad with mask 0; later real tokens must not attend to it.
    config = tiny("llama")
    params = init_params(config, jax.random.key(3))
    prompt = jnp.asarray(rng.integers(0, config.vocab_size, size=(1, 4)))
    nxt = jnp.asarray(rng.integers(0, config.vocab_size, size=(1, 1)))
    cache = init_cache(config, 1, 8)
    _, c1 = hidden_states(params, config, prompt, cache=cache)
    _, c2 = hidden_states(params, config, jnp.zeros((1, 1), jnp.int32), attention_mask=jnp.zeros((1, 1)), cache=c1)
    h_with_pad, _ = hidden_states(params, config, nxt, cache=c2)
    h_direct, _ = hidden_states(params, config, nxt, cache=c1)
    np.testing.assert_allclose(h_with_pad, h_direct, rtol=1e-5, atol=1e-5)
