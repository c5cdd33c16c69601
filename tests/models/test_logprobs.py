"""The shared log-prob definition against a naive float64 numpy computation; chunking changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import apply, hidden_logprobs, init_params, logprob_of, sequence_logprobs, tiny, token_logprobs


def numpy_logprobs(logits, tokens, temperature):
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    out = np.zeros(tokens.shape)
    out[:, 1:] = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_numpy_float64(temperature, rng):
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    tokens = rng.integers(0, config.vocab_size, size=(3, 10))
    logits = np.asarray(apply(params, config, jnp.asarray(tokens)))
    got = np.asarray(token_logprobs(params, config, jnp.asarray(tokens), temperature=temperature))
    np.testing.assert_allclose(got, numpy_logprobs(logits, tokens, temperature), rtol=1e-5, atol=1e-5)


def test_extreme_logits_stay_finite():
    logits = jnp.asarray([[1e4, -1e4, 0.0], [-3e4, -3e4, -3e4]], jnp.float32)
    lp = logprob_of(logits, jnp.asarray([1, 2]), 0.5)
    assert np.all(np.isfinite(np.asarray(lp)))
    np.testing.assert_allclose(np.asarray(lp), [-4e4, -np.log(3)], rtol=1e-6)


def test_chunked_equals_unchunked_values_and_gradients(rng):
    b, n, d, v = 2, 37, 16, 50
    hidden = jnp.asarray(rng.normal(size=(b, n, d)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(v, d)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, n)))

    def total(h, w, chunk):
        return hidden_logprobs(h, w, targets, temperature=0.9, chunk_size=chunk).sum()

    for chunk in (8, 16, 64):
        np.testing.assert_allclose(
            hidden_logprobs(hidden, head, targets, chunk_size=chunk), hidden_logprobs(hidden, head, targets,
                                                                                     chunk_size=None),
            rtol=1e-6, atol=1e-6)
        g_chunk = jax.grad(total, argnums=(0, 1))(hidden, head, chunk)
        g_full = jax.grad(total, argnums=(0, 1))(hidden, head, None)
        for a, c in zip(g_chunk, g_full):
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


def test_chunking_bounds_the_logits_buffer():
    # The compiled backward of the chunked version holds no [B, N, V] float buffer.
    b, n, d, v = 2, 256, 8, 4096
    h = jnp.zeros((b, n, d))
    w = jnp.zeros((v, d))
    y = jnp.zeros((b, n), jnp.int32)

    def peak_floats(chunk):
        f = jax.jit(jax.grad(lambda h, w: hidden_logprobs(h, w, y, chunk_size=chunk).sum(), argnums=(0, 1)))
        text = f.lower(h, w).compile().as_text()
        return f"f32[{b},{n},{v}]" in text

    assert peak_floats(None)
    assert not peak_floats(32)


def test_sequence_logprobs_masks_to_the_response(rng):
    config = tiny("gpt2")
    params = init_params(config, jax.random.key(0))
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 8)))
    response = jnp.asarray([[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]])
    per_token, total = sequence_logprobs(params, config, tokens, response)
    full = token_logprobs(params, config, tokens)
    np.testing.assert_allclose(total, (full * response).sum(1), rtol=1e-6)
    assert np.all(np.asarray(per_token)[np.asarray(response) == 0] == 0)
