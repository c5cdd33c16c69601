"""Shared-prefix scoring equals scoring each prompt ⊕ continuation as its own row: log-probs, rewards, values and
their gradients, for every model family, both prompt paddings, LoRA, remat and under jit / vmap / scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import (
    LoraConfig,
    continuation_rewards,
    continuation_values,
    init_head_params,
    init_lora,
    init_params,
    packed_row,
    response_logprobs,
    response_token_logprobs,
    reward,
    tiny,
    token_logprobs,
    values,
)
from tests.batches import pad_rows

PROMPT_LENGTHS = (3, 6)  # unequal prompts in one batch
RESPONSE_LENGTHS = ((4, 1, 5), (5, 2, 3))  # K = 3 continuations per prompt, unequal lengths


def _lora_config(family):
    return tiny(family, lora=LoraConfig(rank=2, alpha=4.0, targets=("q", "k", "v", "o", "up", "down")))


def _random_lora(config, key):
    """Adapters with B ≠ 0, so they change the model."""
    lora = init_lora(config, key)
    leaves, tree = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _case(config, rng, side, response_lengths=RESPONSE_LENGTHS):
    """Prompts [B, 8] padded on `side`, continuations [B, K, 6] right-padded, and the real token lists."""
    prompts = [rng.integers(1, config.vocab_size, size=n) for n in PROMPT_LENGTHS]
    responses = [[rng.integers(1, config.vocab_size, size=n) for n in row] for row in response_lengths]
    p_tokens, p_mask = pad_rows(prompts, 8, side)
    r = [pad_rows(row, 6, "right") for row in responses]
    r_tokens, r_mask = np.stack([t for t, _ in r]), np.stack([m for _, m in r])
    arrays = tuple(jnp.asarray(a) for a in (p_tokens, p_mask, r_tokens, r_mask))
    return arrays, prompts, responses


def _separate_rows(prompts, responses, length=16):
    """Every prompt ⊕ continuation as its own right-padded row: tokens, mask [B*K, length], prompt lengths."""
    seqs = [np.concatenate([p, y]) for p, row in zip(prompts, responses) for y in row]
    tokens, mask = pad_rows(seqs, length, "right")
    starts = [len(p) for p, row in zip(prompts, responses) for _ in row]
    return jnp.asarray(tokens), jnp.asarray(mask), starts


def _unshared_token_logprobs(params, config, prompts, responses, lora=None):
    """[B, K, 6] log-probs of each continuation token, each prompt ⊕ continuation scored as its own row."""
    tokens, mask, starts = _separate_rows(prompts, responses)
    lp = token_logprobs(params, config, tokens, attention_mask=mask, lora=lora)
    out = np.zeros((len(prompts), len(responses[0]), 6), np.float32)
    i = 0
    for b, row in enumerate(responses):
        for k, y in enumerate(row):
            out[b, k, : len(y)] = lp[i, starts[i]: starts[i] + len(y)]
            i += 1
    return out


# Each family with both prompt paddings, and LoRA on and off, in six cases (not all twelve: each compiles).
@pytest.mark.parametrize("family, side, use_lora", [
    ("llama", "left", False), ("llama", "right", True), ("qwen2", "right", False), ("qwen2", "left", True),
    ("gpt2", "left", True), ("gpt2", "right", False),
])
def test_logprobs_equal_separate_rows(family, side, use_lora, rng):
    config = _lora_config(family) if use_lora else tiny(family)
    params = init_params(config, jax.random.key(0))
    lora = _random_lora(config, jax.random.key(2)) if use_lora else None
    arrays, prompts, responses = _case(config, rng, side)
    shared = response_token_logprobs(params, config, *arrays, lora=lora)
    expected = _unshared_token_logprobs(params, config, prompts, responses, lora)
    np.testing.assert_allclose(shared, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(response_logprobs(params, config, *arrays, lora=lora), expected.sum(-1),
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(shared)[~np.asarray(arrays[3])] == 0)


def test_packed_row_layout():
    p_tokens = jnp.asarray([[0, 0, 7, 8], [5, 6, 7, 8]])
    p_mask = p_tokens > 0
    r_tokens = jnp.asarray([[[1, 2, 0], [3, 0, 0]], [[1, 0, 0], [2, 3, 4]]])
    row = packed_row(p_tokens, p_mask, r_tokens, r_tokens > 0)
    np.testing.assert_array_equal(row["tokens"][0], [0, 0, 7, 8, 1, 2, 0, 3, 0, 0])
    np.testing.assert_array_equal(row["positions"], [[0, 0, 0, 1, 2, 3, 3, 2, 2, 2],
                                                     [0, 1, 2, 3, 4, 4, 4, 4, 5, 6]])
    np.testing.assert_array_equal(row["segment_ids"][1], [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(row["attention_mask"][0], [0, 0, 1, 1, 1, 1, 0, 1, 0, 0])


@pytest.mark.parametrize("family, use_lora", [("llama", False), ("gpt2", True)])
def test_rewards_and_values_equal_separate_rows(family, use_lora, rng):
    config = _lora_config(family) if use_lora else tiny(family)
    head_model = init_head_params(config, jax.random.key(0))
    lora = _random_lora(config, jax.random.key(2)) if use_lora else None
    # one empty continuation: its reward is read at the prompt's last token, as for a row with no response
    arrays, prompts, responses = _case(config, rng, "left", ((4, 0, 5), (5, 2, 3)))
    tokens, mask, starts = _separate_rows(prompts, responses)
    np.testing.assert_allclose(continuation_rewards(head_model, config, *arrays, lora=lora).reshape(-1),
                               reward(head_model, config, tokens, mask, lora=lora), rtol=1e-5, atol=1e-5)
    after_prompt, per_token = continuation_values(head_model, config, *arrays, lora=lora)
    expected = values(head_model, config, tokens, mask, lora=lora)
    i = 0
    for b, row in enumerate(responses):
        for k, y in enumerate(row):
            np.testing.assert_allclose(after_prompt[b], expected[i, starts[i] - 1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(per_token[b, k, : len(y)], expected[i, starts[i]: starts[i] + len(y)],
                                       rtol=1e-5, atol=1e-5)
            i += 1


@pytest.mark.parametrize("family, use_lora", [("llama", True), ("qwen2", False), ("gpt2", True)])
def test_gradients_equal_separate_rows(family, use_lora, rng):
    config = _lora_config(family) if use_lora else tiny(family)
    params = init_params(config, jax.random.key(0))
    lora = _random_lora(config, jax.random.key(2)) if use_lora else None
    arrays, prompts, responses = _case(config, rng, "left")
    weights = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    tokens, mask, starts = _separate_rows(prompts, responses)
    resp_mask = np.zeros(tokens.shape, np.float32)
    for i, (s, n) in enumerate(zip(starts, [len(y) for row in responses for y in row])):
        resp_mask[i, s: s + n] = 1

    def shared(w, adapters):
        return jnp.sum(weights * response_logprobs(w, config, *arrays, lora=adapters))

    def separate(w, adapters):
        lp = token_logprobs(w, config, tokens, attention_mask=mask, lora=adapters)
        return jnp.sum(weights.reshape(-1) * jnp.sum(lp * resp_mask, axis=1))

    argnum = 1 if use_lora else 0
    g_shared = jax.jit(jax.grad(shared, argnums=argnum))(params, lora)
    g_separate = jax.jit(jax.grad(separate, argnums=argnum))(params, lora)
    for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_separate)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


def test_float64_gradient_equals_separate_rows(rng):
    jax.config.update("jax_enable_x64", True)
    try:
        config = tiny("qwen2", dtype="float64", param_dtype="float64")
        params = jax.tree.map(lambda x: x.astype(jnp.float64), init_params(config, jax.random.key(0)))
        head_model = dict(init_head_params(config, jax.random.key(1), backbone=params))
        head_model = jax.tree.map(lambda x: x.astype(jnp.float64), head_model)
        arrays, prompts, responses = _case(config, rng, "right")
        tokens, mask, _ = _separate_rows(prompts, responses)
        g_shared = jax.grad(lambda p: jnp.sum(jnp.sin(continuation_rewards(p, config, *arrays))))(head_model)
        g_separate = jax.grad(lambda p: jnp.sum(jnp.sin(reward(p, config, tokens, mask))))(head_model)
        for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_separate)):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("remat", ["none", "full"])  # against the default, "dots"
def test_remat_gives_the_same_logprobs_and_gradient(remat, rng):
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    arrays, _, _ = _case(config, rng, "left")

    def loss(p, c):
        return jnp.sum(response_logprobs(p, c, *arrays))

    plain = jax.value_and_grad(loss)(params, config)
    rematted = jax.value_and_grad(loss)(params, config.replace(remat=remat))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_vmap_and_scan_equal_the_direct_call(rng):
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    (a, _, _), (b, _, _) = _case(config, rng, "left"), _case(config, rng, "left")
    stacked = tuple(jnp.stack([x, y]) for x, y in zip(a, b))
    direct = jnp.stack([response_logprobs(params, config, *a), response_logprobs(params, config, *b)])
    vmapped = jax.vmap(lambda *xs: response_logprobs(params, config, *xs))(*stacked)
    _, scanned = jax.lax.scan(lambda c, xs: (c, response_logprobs(params, config, *xs)), 0, stacked)
    np.testing.assert_allclose(vmapped, direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scanned, direct, rtol=1e-5, atol=1e-5)
