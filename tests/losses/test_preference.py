"""Bradley–Terry, DPO, conservative DPO, IPO and the tree RM: float64 numpy references, extremes, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.data.batching import PairLoader, SequenceShape, TruncationStats, tree_arrays
from metapl.data import DataError
from metapl.data.schemas import PreferencePair, PreferenceTree
from metapl.data.synthetic import WordTokenizer
from metapl.losses.preference import (
    bradley_terry_loss, dpo_loss, dpo_objective, ipo_loss, pair_logprobs, reference_logprobs, rm_objective,
    tree_rm_objective,
)
from metapl.models import LoraConfig, init_head_params, init_lora, init_params, reward, tiny
from tests.finite_diff import directional_error, x64


def np_log_sigmoid(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, -np.log1p(np.exp(-np.abs(x))), x - np.log1p(np.exp(-np.abs(x))))


def test_bradley_terry_matches_numpy(rng):
    rw, rl, m = rng.normal(size=8) * 3, rng.normal(size=8) * 3, rng.normal(size=8)
    w = rng.uniform(0, 1, size=8)
    loss, metrics = bradley_terry_loss(jnp.asarray(rw), jnp.asarray(rl), margin=jnp.asarray(m), centering=0.01,
                                       weights=jnp.asarray(w))
    want = np.sum(-np_log_sigmoid(rw - rl - m) * w) / w.sum() + 0.01 * np.sum((rw + rl) ** 2 * w) / w.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.sum((rw > rl) * w) / w.sum(), rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_dpo_and_conservative_dpo_match_numpy(rng, smoothing):
    pc, pr, rc, rr = (rng.normal(size=16) * 20 - 50 for _ in range(4))
    beta = 0.3
    loss, metrics = dpo_loss(*map(jnp.asarray, (pc, pr, rc, rr)), beta=beta, label_smoothing=smoothing)
    z = beta * ((pc - rc) - (pr - rr))
    want = np.mean(-(1 - smoothing) * np_log_sigmoid(z) - smoothing * np_log_sigmoid(-z))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["margin"], z.mean(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(z > 0))


def test_ipo_matches_numpy_and_its_optimum(rng):
    pc, pr, rc, rr = (rng.normal(size=16) * 5 for _ in range(4))
    beta = 0.2
    loss, _ = ipo_loss(*map(jnp.asarray, (pc, pr, rc, rr)), beta=beta)
    np.testing.assert_allclose(loss, np.mean(((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2), rtol=1e-5)
    # At h_w − h_l = 1/(2β) the loss and its gradient vanish.
    h = 1 / (2 * beta)
    zero, _ = ipo_loss(jnp.asarray([h]), jnp.asarray([0.0]), jnp.asarray([0.0]), jnp.asarray([0.0]), beta=beta)
    assert float(zero) == pytest.approx(0.0, abs=1e-10)


def test_extreme_values_stay_finite():
    big = jnp.asarray([1e4, -1e4, 3e4, -3e4])
    small = -big
    for fn in (lambda a, b: bradley_terry_loss(a, b),
               lambda a, b: dpo_loss(a, b, jnp.zeros(4), jnp.zeros(4), beta=1.0, label_smoothing=0.1),
               lambda a, b: ipo_loss(a, b, jnp.zeros(4), jnp.zeros(4), beta=0.1)):
        loss, metrics = fn(big, small)
        grads = jax.grad(lambda a: fn(a, small)[0])(big)
        assert np.isfinite(float(loss)) and np.all(np.isfinite(grads))
        assert all(np.isfinite(float(v)) for v in metrics.values())
    loss, _ = dpo_loss(big, small, jnp.zeros(4), jnp.zeros(4), beta=1.0)
    np.testing.assert_allclose(loss, np.mean(-np_log_sigmoid(2 * np.asarray(big))), rtol=1e-6)


TOK = WordTokenizer(30)


def _pair_batch(n=4, seed=0, shared_prefix=False):
    rng = np.random.default_rng(seed)
    words = lambda k: " ".join(f"w{i}" for i in rng.integers(0, 30, size=k))  # noqa: E731
    pairs = [PreferencePair(words(3 + i % 3), words(4 - i % 2), words(2) + " w29", "d") for i in range(n)]
    loader = PairLoader(pairs, TOK.encode, batch_size=n, eos_id=TOK.eos_token_id, seed=seed,
                        shape=SequenceShape(max_prompt_tokens=8, max_response_tokens=8, buckets=(16,)),
                        shared_prefix=shared_prefix)
    arrays = loader.arrays_at(next(loader.order))
    return {k: jnp.asarray(v) for k, v in arrays.items() if k not in ("domain", "gold_margin")}


def _model(dtype="float32", **kw):
    config = tiny("llama", vocab_size=TOK.vocab_size, dtype=dtype, param_dtype=dtype, **kw)
    params = init_params(config, jax.random.key(0))
    return config, jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def test_dpo_objective_with_precomputed_reference_equals_on_the_fly():
    config, params = _model(lora=LoraConfig(rank=2))
    lora = jax.tree.map(lambda x: x + 0.1, init_lora(config, jax.random.key(1)))
    batch = _pair_batch()
    on_the_fly, m1 = dpo_objective(params, batch, config=config, beta=0.5, lora=lora)
    pre = dict(batch, **reference_logprobs(params, config, batch))
    cached, m2 = dpo_objective(params, pre, config=config, beta=0.5, lora=lora)
    np.testing.assert_allclose(cached, on_the_fly, rtol=1e-6)
    # and the DPO value equals the array loss on log-probs computed independently per sequence
    pc, pr = pair_logprobs(params, config, batch, lora=lora)
    rc, rr = pair_logprobs(params, config, batch)
    np.testing.assert_allclose(on_the_fly, dpo_loss(pc, pr, rc, rr, beta=0.5)[0], rtol=1e-6)
    assert float(m1["accuracy"]) == float(m2["accuracy"])


@pytest.mark.parametrize("use_lora", [False, True])
def test_shared_prefix_layout_gives_the_same_objectives(use_lora):
    """DPO, IPO and the BT loss, values and gradients, on the same pairs in both layouts (prompts of unequal
    length; LoRA: the reference is the base model)."""
    config, params = _model(lora=LoraConfig(rank=2) if use_lora else None)
    lora = jax.tree.map(lambda x: x + 0.1, init_lora(config, jax.random.key(1))) if use_lora else None
    ref = None if use_lora else jax.tree.map(lambda x: x * 0.9, params)
    rm = init_head_params(config, jax.random.key(5))
    rows, shared = _pair_batch(), _pair_batch(shared_prefix=True)
    assert "response_tokens" in shared and "chosen_tokens" not in shared
    cases = {
        "dpo": (lambda p, b: dpo_objective(params if use_lora else p, b, config=config, beta=0.5, ref_params=ref,
                                           lora=p if use_lora else None), lora if use_lora else params),
        "ipo": (lambda p, b: dpo_objective(params if use_lora else p, b, config=config, beta=0.5, kind="ipo",
                                           ref_params=ref, lora=p if use_lora else None), lora if use_lora else params),
        "rm": (lambda p, b: rm_objective(p, b, config=config, centering=0.01), rm),
    }
    for name, (fn, arg) in cases.items():
        (v_rows, m_rows), g_rows = jax.value_and_grad(fn, has_aux=True)(arg, rows)
        (v_shared, m_shared), g_shared = jax.value_and_grad(fn, has_aux=True)(arg, shared)
        np.testing.assert_allclose(v_shared, v_rows, rtol=1e-5, err_msg=name)
        for k in m_rows:
            np.testing.assert_allclose(m_shared[k], m_rows[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
        for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_rows)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_objective_gradients_match_finite_differences():
    batch = _pair_batch()
    with x64():
        config, params = _model("float64", num_layers=1)
        batch64 = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, batch)
        ref = jax.tree.map(lambda x: x * 0.9, params)
        f = lambda p: dpo_objective(p, batch64, config=config, beta=0.7, ref_params=ref)[0]  # noqa: E731
        assert directional_error(f, params, jax.random.key(3)) < 1e-5
        f = lambda p: dpo_objective(p, batch64, config=config, beta=0.7, kind="ipo", ref_params=ref)[0]  # noqa: E731
        assert directional_error(f, params, jax.random.key(4)) < 1e-5
        rm = jax.tree.map(lambda x: x.astype(jnp.float64), init_head_params(config, jax.random.key(5)))
        f = lambda p: rm_objective(p, batch64, config=config, centering=0.01)[0]  # noqa: E731
        assert directional_error(f, rm, jax.random.key(6)) < 1e-5


def _tree(prompt, leaves):
    # a root "w0" with children: leaf texts given; comparisons chain them in order
    nodes = [{"parent": -1, "text": "w0"}] + [{"parent": 0, "text": f" {t}"} for t in leaves]
    comps = [{"chosen": i, "rejected": i + 1, "shared_prefix": 1} for i in range(1, len(leaves))]
    return PreferenceTree.from_dict({"prompt": prompt, "domain": "d", "nodes": nodes, "comparisons": comps})


def test_tree_rm_scores_each_distinct_sequence_once_and_equals_pairwise_bt():
    config, _ = _model()
    params = init_head_params(config, jax.random.key(2))
    trees = [_tree("w1 w2", ["w3", "w4", "w5"]), _tree("w7", ["w8 w9", "w3"])]
    stats = TruncationStats()
    shape = SequenceShape(max_prompt_tokens=8, max_response_tokens=8, buckets=(16,))
    arrays = tree_arrays(trees, TOK.encode, shape, eos_id=TOK.eos_token_id, pad_id=0, stats=stats,
                         num_sequences=8, num_pairs=4)
    assert stats.sequences == 5  # 3 + 2 distinct leaves, although 3 pairs mention 6 leaf slots
    assert arrays["tokens"].shape == (8, 16) and arrays["pair_mask"].tolist() == [1, 1, 1, 0]
    loss, metrics = tree_rm_objective(params, {k: jnp.asarray(v) for k, v in arrays.items()}, config=config)
    # reference: score every chosen/rejected response of the 3 comparisons separately, then Bradley–Terry in numpy
    texts = [("w1 w2", "w0 w3", "w0 w4"), ("w1 w2", "w0 w4", "w0 w5"), ("w7", "w0 w8 w9", "w0 w3")]

    def score(prompt, resp):
        ids = TOK.encode(prompt) + TOK.encode(resp) + [TOK.eos_token_id]
        return float(reward(params, config, jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))[0])

    diffs = np.asarray([score(p, a) - score(p, b) for p, a, b in texts])
    np.testing.assert_allclose(loss, np.mean(-np_log_sigmoid(diffs)), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(diffs > 0))
    # the shared-prefix layout: each tree's prompt once before its leaf slots (3 trees' room, 3 leaves each)
    shared = tree_arrays(trees, TOK.encode, shape, eos_id=TOK.eos_token_id, pad_id=0, stats=TruncationStats(),
                         num_sequences=9, num_pairs=4, leaves_per_tree=3)
    assert shared["response_tokens"].shape == (3, 3, 9) and shared["prompt_tokens"].shape == (3, 8)
    assert shared["chosen_index"].tolist()[:3] == [0, 1, 3] and shared["rejected_index"].tolist()[:3] == [1, 2, 4]
    loss_shared, _ = tree_rm_objective(params, {k: jnp.asarray(v) for k, v in shared.items()}, config=config)
    np.testing.assert_allclose(loss_shared, np.mean(-np_log_sigmoid(diffs)), rtol=1e-5)
    with pytest.raises(DataError, match="tree 0 has more than 2 distinct leaves"):
        tree_arrays(trees, TOK.encode, shape, eos_id=TOK.eos_token_id, pad_id=0, stats=TruncationStats(),
                    leaves_per_tree=2)
