"""The compiled sampler: filters, stop tokens, padding, reproducibility, and its log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import SamplingConfig, apply, generate, init_params, tiny, token_logprobs
from metapl.models.sampling import bucket, encode_prompts, filter_logits, generate_text, left_align
from tests.batches import pad_rows


@pytest.fixture(scope="module")
def model():
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)  # peakier distributions
    return config, params


def test_bucket_sizes():
    assert [bucket(n) for n in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, 128]


def test_top_k_and_top_p_match_a_numpy_reference(rng):
    logits = rng.normal(size=(4, 30)).astype(np.float32) * 3
    for k in (1, 5):
        out = np.asarray(filter_logits(jnp.asarray(logits), k, 1.0, False))
        for row, orig in zip(out, logits):
            kept = np.flatnonzero(row > -1e30)
            np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(-orig)[:k]))
    for p in (0.3, 0.9):
        out = np.asarray(filter_logits(jnp.asarray(logits), 0, p, True))
        for row, orig in zip(out, logits):
            order = np.argsort(-orig)
            probs = np.exp(orig[order] - orig.max())
            probs /= probs.sum()
            n_keep = int(np.searchsorted(np.cumsum(probs), p) + 1)  # smallest prefix with mass >= p
            np.testing.assert_array_equal(np.sort(np.flatnonzero(row > -1e30)), np.sort(order[:n_keep]))


def test_sampled_logprobs_equal_learner_logprobs(model, rng):
    config, params = model
    prompt = rng.integers(1, config.vocab_size, size=(3, 5))
    mask = np.ones_like(prompt, bool)
    mask[2, :3] = False
    for temperature in (1.0, 0.6):
        out = generate(params, config, prompt, mask, jax.random.key(1), SamplingConfig(max_new_tokens=7,
                                                                                        temperature=temperature))
        seq = np.concatenate([np.asarray(out.prompt_tokens), np.asarray(out.tokens)], axis=1)
        seq_mask = np.concatenate([np.asarray(out.prompt_mask), np.asarray(out.mask)], axis=1)
        lp = np.asarray(token_logprobs(params, config, jnp.asarray(seq), attention_mask=jnp.asarray(seq_mask),
                                       temperature=temperature))[:, prompt.shape[1]:]
        np.testing.assert_allclose(np.asarray(out.logprobs), lp, rtol=1e-4, atol=1e-4)


def test_temperature_one_samples_follow_the_model_distribution(model):
    config, params = model
    prompt = np.asarray([[5, 17, 3]])
    probs = np.asarray(jax.nn.softmax(apply(params, config, jnp.asarray(prompt))[0, -1]))
    n = 2000
    out = generate(params, config, np.repeat(prompt, n, 0), np.ones((n, 3), bool), jax.random.key(7),
                   SamplingConfig(max_new_tokens=1, temperature=1.0))
    counts = np.bincount(np.asarray(out.tokens)[:, 0], minlength=config.vocab_size) / n
    # Total variation between empirical and model distributions: ~sqrt(V / n) / 2 at most by chance.
    assert 0.5 * np.abs(counts - probs).sum() < 0.5 * np.sqrt(config.vocab_size / n)


def test_stop_tokens_end_rows_and_pad_the_rest(model, rng):
    config, params = model
    prompt = rng.integers(1, config.vocab_size, size=(4, 4))
    greedy = generate(params, config, prompt, np.ones_like(prompt, bool), jax.random.key(0),
                      SamplingConfig(max_new_tokens=6, temperature=0))
    stop = int(np.asarray(greedy.tokens)[0, 2])  # the token row 0 emits at step 2
    out = generate(params, config, prompt, np.ones_like(prompt, bool), jax.random.key(0),
                   SamplingConfig(max_new_tokens=6, temperature=0, stop_token_ids=(stop,)), pad_id=0)
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    for row in range(4):
        hits = np.flatnonzero(np.asarray(greedy.tokens)[row] == stop)
        end = hits[0] + 1 if len(hits) else 6
        assert m[row].tolist() == [True] * end + [False] * (6 - end)
        assert np.all(toks[row, end:] == 0)
        np.testing.assert_array_equal(toks[row, :end], np.asarray(greedy.tokens)[row, :end])
        assert np.all(np.asarray(out.logprobs)[row, end:] == 0)


def test_reproducible_with_a_key_and_padding_side_does_not_matter(model, rng):
    config, params = model
    seqs = [rng.integers(1, config.vocab_size, size=n) for n in (5, 3)]
    left, left_mask = pad_rows(seqs, 6, "left")
    right, right_mask = pad_rows(seqs, 6, "right")
    cfg = SamplingConfig(max_new_tokens=5, temperature=1.0, top_k=10, top_p=0.9)
    a = generate(params, config, left, left_mask, jax.random.key(3), cfg)
    b = generate(params, config, right, right_mask, jax.random.key(3), cfg)
    c = generate(params, config, left, left_mask, jax.random.key(4), cfg)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_left_align_keeps_order():
    tokens = jnp.asarray([[7, 8, 0, 0], [0, 5, 6, 0]])
    mask = tokens != 0
    t, m = left_align(tokens, mask)
    np.testing.assert_array_equal(t, [[0, 0, 7, 8], [0, 0, 5, 6]])
    np.testing.assert_array_equal(m, [[False, False, True, True]] * 2)


def test_bad_requests_are_rejected(model):
    config, params = model
    with pytest.raises(ValueError, match="at least one real token"):
        generate(params, config, np.zeros((1, 4), np.int32), np.zeros((1, 4), bool), jax.random.key(0),
                 SamplingConfig(max_new_tokens=2))
    gpt = tiny("gpt2", max_position_embeddings=32)
    with pytest.raises(ValueError, match="learned positions"):
        generate(init_params(gpt, jax.random.key(0)), gpt, np.ones((1, 4), np.int32), np.ones((1, 4), bool),
                 jax.random.key(0), SamplingConfig(max_new_tokens=30))
    for bad in (dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_text_round_trip_with_a_tokenizer(tmp_path):
    from tests.gguf_fixture import tiny_tokenizer

    tok = tiny_tokenizer()
    ids, mask = encode_prompts(tok, ["the cat", "and the hat is here"])
    assert ids.shape == (2, 16) and mask[0].sum() < mask[1].sum() and mask[:, -1].all()  # left-padded
    config = tiny("llama", vocab_size=len(tok))
    params = init_params(config, jax.random.key(0))
    texts = generate_text(params, config, tok, ["the cat"], jax.random.key(0), SamplingConfig(max_new_tokens=4))
    assert len(texts) == 1 and isinstance(texts[0], str)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_equals_repeated_prompts(model, rng, temperature):
    """num_samples = k prefills each prompt once and copies its cache: the same draw as the prompts repeated."""
    config, params = model
    prompt = rng.integers(1, config.vocab_size, size=(2, 6))
    mask = np.ones_like(prompt, bool)
    mask[1, :2] = False
    sampling = SamplingConfig(max_new_tokens=9, temperature=temperature, stop_token_ids=(7,))
    shared = generate(params, config, prompt, mask, jax.random.key(3), sampling, num_samples=3)
    repeated = generate(params, config, np.repeat(prompt, 3, axis=0), np.repeat(mask, 3, axis=0), jax.random.key(3),
                        sampling)
    for name in ("tokens", "mask", "prompt_tokens", "prompt_mask"):
        np.testing.assert_array_equal(getattr(shared, name), getattr(repeated, name), err_msg=name)
    np.testing.assert_allclose(shared.logprobs, repeated.logprobs, rtol=1e-5, atol=1e-5)
    if temperature:  # the three samples of a prompt differ (the check above is not of identical rows)
        assert len({tuple(r) for r in np.asarray(shared.tokens)[:3]}) > 1
    with pytest.raises(ValueError, match="num_samples"):
        generate(params, config, prompt, mask, jax.random.key(3), sampling, num_samples=0)
