"""Offline RLHF losses (filtered MLE, RWR, reward-conditioned SFT): float64 numpy references, extremes,
finite-difference gradients of the model objective. The batch builders are tested in tests/data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.data.batching import SequenceShape
from metapl.data.sample_sets import best_of_n, filter_by_zscore
from metapl.data.schemas import ScoredSample
from metapl.data.sft_arrays import sample_arrays
from metapl.data.synthetic import WordTokenizer
from metapl.losses.offline import filter_weights, nll_loss, rwr_weights, sft_objective
from metapl.models import init_params, tiny, token_logprobs
from tests.finite_diff import directional_error, x64

# ------------------------------------------------------------------------------------ numpy references (float64)


def np_nll(lp, mask, w):
    lp, mask, w = (np.asarray(a, np.float64) for a in (lp, mask, w))
    num = sum(w[i] * sum(lp[i, t] for t in range(lp.shape[1]) if mask[i, t]) for i in range(len(w)))
    den = sum(w[i] * mask[i].sum() for i in range(len(w)))
    return -num / den


def np_rwr(r, tau, normalize="batch"):
    r = np.asarray(r, np.float64)
    if normalize == "batch":
        std = r.std()
        r = np.zeros_like(r) if std == 0 else (r - r.mean()) / std
    a = r / tau
    a = a - a.max()
    return np.exp(a) / np.exp(a).sum()


def np_best_of_n(r, g):
    keep = np.zeros(len(r))
    for gid in dict.fromkeys(g):  # groups in order
        idx = [i for i in range(len(r)) if g[i] == gid]
        best = idx[0]
        for i in idx[1:]:
            if r[i] > r[best]:  # strict: the first of tied maxima stays
                best = i
        keep[best] = 1
    return keep


def np_zscore_keep(r, g, threshold):
    r = np.asarray(r, np.float64)
    keep = np.zeros(len(r))
    for gid in set(g):
        idx = [i for i in range(len(r)) if g[i] == gid]
        x = r[idx]
        z = np.zeros(len(idx)) if x.max() == x.min() else (x - x.mean()) / x.std()
        keep[idx] = z >= threshold
    return keep


# ------------------------------------------------------------------------------------------------ nll_loss


def test_nll_matches_numpy_and_hand_case(rng):
    lp = rng.normal(size=(5, 7)) * 3 - 2
    mask = rng.uniform(size=(5, 7)) < 0.6
    mask[:, 0] = False
    mask[0, 3] = True
    w = rng.uniform(0, 2, size=5)
    w[2] = 0.0
    loss, metrics = nll_loss(jnp.asarray(lp, jnp.float32), jnp.asarray(mask), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(loss, np_nll(lp, mask, w), rtol=1e-5)
    np.testing.assert_allclose(nll_loss(jnp.asarray(lp), jnp.asarray(mask))[0], np_nll(lp, mask, np.ones(5)),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics["kept_fraction"], 0.8)
    np.testing.assert_allclose(metrics["effective_sample_size"], w.sum() ** 2 / (w ** 2).sum(), rtol=1e-5)
    # by hand: two sequences, weights 1 and 3; tokens (-1, -2) and (-4); garbage off the mask is ignored
    lp = jnp.asarray([[0.0, -1.0, -2.0, 7.0], [0.0, -4.0, np.nan, 0.0]])
    mask = jnp.asarray([[0, 1, 1, 0], [0, 1, 0, 0]], bool)
    loss, metrics = nll_loss(lp, mask, jnp.asarray([1.0, 3.0]))
    assert float(loss) == pytest.approx((1 * 3 + 3 * 4) / (1 * 2 + 3 * 1))
    assert float(metrics["mean_sequence_logp"]) == pytest.approx((1 * -3 + 3 * -4) / 4)
    # the loss is invariant to the scale of the weights, and 0 when nothing has weight
    np.testing.assert_allclose(nll_loss(lp, mask, jnp.asarray([10.0, 30.0]))[0], loss, rtol=1e-6)
    assert float(nll_loss(lp, mask, jnp.zeros(2))[0]) == 0.0


def test_nll_extremes_finite():
    lp = jnp.full((3, 6), -1e4).at[1].set(-3e4)
    mask = jnp.ones((3, 6), bool).at[:, 0].set(False)
    w = jnp.asarray([1.0, 0.0, 1e4])
    loss, metrics = nll_loss(lp, mask, w)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
    g_lp, g_w = jax.grad(lambda a, b: nll_loss(a, mask, b)[0], argnums=(0, 1))(lp, w)
    assert np.all(np.isfinite(g_lp)) and np.all(np.isfinite(g_w))
    np.testing.assert_allclose(loss, 1e4, rtol=1e-6)


# ------------------------------------------------------------------------------------------- filter weights


def test_best_of_n_weights_match_numpy_with_ties_to_the_first(rng):
    g = rng.integers(0, 6, size=40)
    r = np.round(rng.normal(size=40), 1)  # rounding makes ties
    r[[3, 9]] = 5.0
    g[[3, 9]] = 7  # an exact tie for the best of prompt 7: index 3 wins
    w = np.asarray(filter_weights(jnp.asarray(r, jnp.float32), jnp.asarray(g), mode="best_of_n"))
    np.testing.assert_array_equal(w, np_best_of_n(r.astype(np.float32), g))
    assert w[3] == 1 and w[9] == 0
    assert w.sum() == len(set(g))  # exactly one per prompt
    # jit, and padding rows are never kept nor compete
    valid = np.ones(40, bool)
    valid[3] = False
    wj = np.asarray(jax.jit(filter_weights, static_argnames="mode")(jnp.asarray(r, jnp.float32), jnp.asarray(g),
                                                                    mode="best_of_n", valid=jnp.asarray(valid)))
    assert wj[3] == 0 and wj[9] == 1


def test_best_of_n_weights_agree_with_sample_sets(rng):
    samples = [ScoredSample(f"p{i % 4}", f"resp {i}", float(rng.normal() * 1e4), "d", "pi") for i in range(24)]
    arrays = sample_arrays(samples, lambda s: [len(s)], SequenceShape(4, 4, buckets=(8,)), eos_id=None)
    w = np.asarray(filter_weights(arrays["rewards"], arrays["prompt_ids"], mode="best_of_n"))
    assert sorted(samples[i].response for i in np.flatnonzero(w)) == sorted(s.response for s in best_of_n(samples))


@pytest.mark.parametrize("threshold", [-0.3, 0.0, 0.5, 1.2])
def test_zscore_weights_match_numpy_and_sample_sets(rng, threshold):
    g = rng.integers(0, 5, size=30)
    r = rng.normal(size=30) * 1e4  # extreme rewards
    r[g == 4] = 2.5  # a zero-variance prompt: z = 0
    w = np.asarray(filter_weights(jnp.asarray(r, jnp.float32), jnp.asarray(g), mode="zscore", threshold=threshold))
    np.testing.assert_array_equal(w, np_zscore_keep(r.astype(np.float32), g, threshold))
    assert np.all(w[g == 4] == (threshold <= 0))
    samples = [ScoredSample(f"p{gi}", f"y{i}", float(x), "d", "pi") for i, (gi, x) in enumerate(zip(g, r))]
    kept, _ = filter_by_zscore(samples, threshold)
    assert [samples[i] for i in np.flatnonzero(w)] == kept
    with pytest.raises(ValueError, match="mode"):
        filter_weights(jnp.zeros(3), jnp.zeros(3, jnp.int32), mode="top")


# ---------------------------------------------------------------------------------------------- RWR weights


@pytest.mark.parametrize("normalize", ["batch", "none"])
def test_rwr_weights_match_numpy(rng, normalize):
    r = rng.normal(size=16) * 2 + 1
    for tau in (0.3, 1.0, 5.0):
        w = rwr_weights(jnp.asarray(r, jnp.float32), tau, normalize)
        np.testing.assert_allclose(w, np_rwr(r, tau, normalize), rtol=1e-5, atol=1e-7)
        assert float(jnp.sum(w)) == pytest.approx(1.0, abs=1e-6)
        shifted = rwr_weights(jnp.asarray(r + 37.0, jnp.float32), tau, normalize)
        np.testing.assert_allclose(shifted, w, rtol=1e-4, atol=1e-7)


def test_rwr_weights_edge_cases_and_extremes(rng):
    # equal rewards: uniform; a padded batch: zero on padding, statistics over the valid rows only
    np.testing.assert_allclose(rwr_weights(jnp.full(4, 3.0), 0.5), 0.25)
    r = rng.normal(size=6)
    valid = np.asarray([1, 1, 0, 1, 1, 0], bool)
    w = rwr_weights(jnp.asarray(np.where(valid, r, 1e9), jnp.float32), 0.7, valid=jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(w)[valid], np_rwr(r[valid], 0.7), rtol=1e-5)
    assert np.all(np.asarray(w)[~valid] == 0)
    # ±1e4 rewards, tiny tau: finite, sums to one, gradient finite
    big = jnp.asarray([1e4, -1e4, 3e4, -3e4, 0.0])
    for normalize, tau in (("batch", 1e-3), ("none", 1e-2), ("none", 1e4)):
        w = rwr_weights(big, tau, normalize)
        assert np.all(np.isfinite(w)) and float(jnp.sum(w)) == pytest.approx(1.0, abs=1e-6)
        g = jax.grad(lambda x, t=tau, n=normalize: rwr_weights(x, t, n)[0] + rwr_weights(x, t, n)[2])(big)
        assert np.all(np.isfinite(g))
    assert float(rwr_weights(big, 1e-2, "none")[2]) == pytest.approx(1.0)  # the best takes everything
    g = jax.grad(lambda x: rwr_weights(x, 0.5)[0])(jnp.full(3, 2.0))  # equal rewards: no NaN gradient
    assert np.all(np.isfinite(g))


# ---------------------------------------------------------------------------------------- model objective

TOK = WordTokenizer(30)


def _samples(n=6, seed=0):
    rng = np.random.default_rng(seed)
    words = lambda k: " ".join(f"w{i}" for i in rng.integers(0, 30, size=k))  # noqa: E731
    prompts = [words(3) for _ in range(n // 2)]
    return [ScoredSample(prompts[i % len(prompts)], words(int(rng.integers(1, 5))), float(rng.normal()), "d", "pi")
            for i in range(n)]


def _arrays(samples):
    shape = SequenceShape(max_prompt_tokens=8, max_response_tokens=8, buckets=(16,))
    return sample_arrays(samples, TOK.encode, shape, eos_id=TOK.eos_token_id, pad_id=TOK.pad_token_id)


def test_sft_objective_equals_nll_on_independent_logprobs():
    samples = _samples()
    arrays = _arrays(samples)
    config = tiny("llama", vocab_size=TOK.vocab_size, num_layers=1)
    params = init_params(config, jax.random.key(0))
    objective = jax.jit(lambda p, b: sft_objective(p, b, config=config))
    # reference: each sequence scored alone (right-padded to one length: causal, so the padding is unseen),
    # the weighted NLL summed in float64 numpy
    one_row = jax.jit(lambda t: token_logprobs(params, config, t))
    seq_logp, lengths = [], []
    for s in samples:
        x, y = TOK.encode(s.prompt), TOK.encode(s.response) + [TOK.eos_token_id]
        row = np.zeros((1, 16), np.int32)
        row[0, : len(x) + len(y)] = x + y
        lp = np.asarray(one_row(jnp.asarray(row)), np.float64)[0]
        seq_logp.append(lp[len(x): len(x) + len(y)].sum())
        lengths.append(len(y))
    seq_logp, lengths = np.asarray(seq_logp), np.asarray(lengths)
    rwr = np.asarray(rwr_weights(arrays["rewards"], 0.5))
    best = np.asarray(filter_weights(arrays["rewards"], arrays["prompt_ids"], mode="best_of_n"))
    assert best.sum() == 3  # MLE with filtering = plain SFT on the kept samples
    for w in (rwr, best, np.ones(len(samples), np.float32)):
        loss, metrics = objective(params, {**{k: jnp.asarray(v) for k, v in arrays.items()}, "weights": w})
        np.testing.assert_allclose(loss, -np.sum(w * seq_logp) / np.sum(w * lengths), rtol=1e-5)
        np.testing.assert_allclose(metrics["mean_sequence_logp"], np.sum(w * seq_logp) / np.sum(w), rtol=1e-5)


def test_sft_objective_gradient_matches_finite_differences():
    arrays = _arrays(_samples())
    arrays["weights"] = np.asarray(rwr_weights(arrays["rewards"], 0.5))
    with x64():
        config = tiny("llama", vocab_size=TOK.vocab_size, num_layers=1, dtype="float64", param_dtype="float64")
        params = jax.tree.map(lambda x: x.astype(jnp.float64), init_params(config, jax.random.key(0)))
        batch = {k: jnp.asarray(v, jnp.float64) if v.dtype == np.float32 else jnp.asarray(v)
                 for k, v in arrays.items()}
        f = jax.jit(lambda p: sft_objective(p, batch, config=config)[0])
        assert directional_error(f, params, jax.random.key(1)) < 1e-5
