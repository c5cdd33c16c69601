"""SRPO: the six-log-prob least-squares loss against a float64 numpy reference and hand-computed optima, and
the model objective (independent log-probs, finite differences). The six-sequence builder and `revise` are
tested in tests/data/test_srpo_data.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.data.batching import SequenceShape
from metapl.data.schemas import PreferencePair
from metapl.data.srpo import SRPO_SEQUENCES, revision_prompt, srpo_sequences
from metapl.losses.srpo import srpo_logprobs, srpo_loss, srpo_objective, srpo_reference_logprobs
from metapl.models import init_params, tiny, token_logprobs
from tests.finite_diff import directional_error, x64


def np_srpo(pol, ref, beta, alpha, w=None):
    """From the formulas: h(y|c) = log π − log π_ref; L = α L_self + (1 − α) L_gen, (weighted) mean."""
    p = {k: np.asarray(v, np.float64) for k, v in pol.items()}
    r = {k: np.asarray(v, np.float64) for k, v in ref.items()}
    h_w_x, h_l_x = p["chosen"] - r["chosen"], p["rejected"] - r["rejected"]
    h_w_xl = p["chosen_given_rejected"] - r["chosen_given_rejected"]
    h_l_xl = p["rejected_given_rejected"] - r["rejected_given_rejected"]
    h_w_xw = p["chosen_given_chosen"] - r["chosen_given_chosen"]
    h_l_xw = p["rejected_given_chosen"] - r["rejected_given_chosen"]
    l_self = (beta * (h_w_xl - h_l_xl) - 0.5) ** 2 + (beta * (h_w_xw - h_l_xw) - 0.5) ** 2
    l_gen = (beta * (h_w_xl + h_w_x - h_l_xw - h_l_x) - 1.0) ** 2
    per = alpha * l_self + (1 - alpha) * l_gen
    w = np.ones_like(per) if w is None else np.asarray(w, np.float64)
    avg = lambda x: np.sum(x * w) / np.sum(w)  # noqa: E731
    return avg(per), avg(l_self), avg(l_gen)


def _random_logps(rng, b, scale=20.0, offset=-60.0):
    return {k: rng.normal(size=b) * scale + offset for k in SRPO_SEQUENCES}


@pytest.mark.parametrize("beta,alpha", [(0.1, 0.5), (1.0, 0.0), (0.05, 1.0), (0.3, 0.8)])
def test_srpo_loss_matches_numpy(rng, beta, alpha):
    pol, ref = _random_logps(rng, 16), _random_logps(rng, 16)
    w = rng.uniform(0.1, 2.0, size=16)
    to_j = lambda d: {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}  # noqa: E731
    loss, metrics = srpo_loss(to_j(pol), to_j(ref), beta=beta, alpha=alpha, weights=jnp.asarray(w, jnp.float32))
    want, want_self, want_gen = np_srpo(pol, ref, beta, alpha, w)
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    np.testing.assert_allclose(metrics["self_loss"], want_self, rtol=1e-4)
    np.testing.assert_allclose(metrics["gen_loss"], want_gen, rtol=1e-4)
    # the 6-array form (order SRPO_SEQUENCES) gives the same loss
    tup = lambda d: tuple(jnp.asarray(d[k], jnp.float32) for k in SRPO_SEQUENCES)  # noqa: E731
    loss2, _ = srpo_loss(tup(pol), tup(ref), beta=beta, alpha=alpha, weights=jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_srpo_hand_computed_optimum_and_values():
    beta = 0.25
    zero = jnp.zeros(1)
    # h(y_w|x,y_l) = h(y_w|x,y_w) = ½/β = 2 and the rest 0 in both revision contexts: both revision margins are ½
    # (L_self = 0); with β(h_w − h_l) = ½ the combined margin is ½ + ½ = 1 (L_gen = 0).
    pol = {"chosen": jnp.asarray([2.0]), "rejected": zero, "chosen_given_rejected": jnp.asarray([2.0]),
           "rejected_given_rejected": zero, "chosen_given_chosen": jnp.asarray([2.0]), "rejected_given_chosen": zero}
    ref = {k: zero for k in SRPO_SEQUENCES}
    for alpha in (0.0, 0.3, 1.0):
        loss, m = srpo_loss(pol, ref, beta=beta, alpha=alpha)
        assert float(loss) == pytest.approx(0.0, abs=1e-12)
        assert float(m["self_margin_given_rejected"]) == pytest.approx(0.5)
        assert float(m["self_margin_given_chosen"]) == pytest.approx(0.5)
        assert float(m["gen_margin"]) == pytest.approx(1.0)
        assert float(m["margin"]) == pytest.approx(0.5)
        g = jax.grad(lambda p, a=alpha: srpo_loss(p, ref, beta=beta, alpha=a)[0])(pol)
        assert all(float(jnp.abs(v).max()) < 1e-12 for v in g.values())  # a stationary point
    # The optimum is relative to the reference: shifting policy and reference together changes nothing.
    shifted = {k: v - 7.0 for k, v in pol.items()}
    assert float(srpo_loss(shifted, {k: v - 7.0 for k, v in ref.items()}, beta=beta, alpha=0.5)[0]) == 0.0
    # Chosen numbers, β = 1: margins given y_l: 1 − 0 = 1, given y_w: 0 − 2 = −2; combined: 1 + 3 − 2 − 1 = 1.
    # L_self = (1 − ½)² + (−2 − ½)² = 0.25 + 6.25 = 6.5; L_gen = (1 − 1)² = 0; α = 0.4 -> L = 2.6.
    pol = {"chosen": jnp.asarray([3.0]), "rejected": jnp.asarray([1.0]), "chosen_given_rejected": jnp.asarray([1.0]),
           "rejected_given_rejected": zero, "chosen_given_chosen": zero, "rejected_given_chosen": jnp.asarray([2.0])}
    loss, m = srpo_loss(pol, ref, beta=1.0, alpha=0.4)
    assert float(loss) == pytest.approx(2.6)
    assert float(m["self_loss"]) == pytest.approx(6.5) and float(m["gen_loss"]) == pytest.approx(0.0)
    assert float(m["revision_accuracy"]) == 0.0 and float(m["accuracy"]) == 1.0
    with pytest.raises(ValueError, match="alpha"):
        srpo_loss(pol, ref, beta=1.0, alpha=1.5)
    with pytest.raises(ValueError, match="missing"):
        srpo_loss({"chosen": zero}, ref, beta=1.0, alpha=0.5)


def test_srpo_extremes_stay_finite(rng):
    pol = {k: jnp.asarray(rng.choice([-1e4, -3e4, -1.0], size=8), jnp.float32) for k in SRPO_SEQUENCES}
    ref = {k: jnp.asarray(rng.choice([-1e4, 0.0], size=8), jnp.float32) for k in SRPO_SEQUENCES}
    for beta in (0.01, 1.0):
        loss, metrics = srpo_loss(pol, ref, beta=beta, alpha=0.5)
        assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
        g = jax.grad(lambda p, b=beta: srpo_loss(p, ref, beta=b, alpha=0.5)[0])(pol)
        assert all(np.all(np.isfinite(v)) for v in g.values())
        np.testing.assert_allclose(loss, np_srpo(pol, ref, beta, 0.5)[0], rtol=1e-4)


# ------------------------------------------------------------------------------------------ model objective


def _byte_encode(text):
    return list(text.encode("utf-8"))


EOS = 256
SHORT = "{prompt}|{response}|"  # a compact revision template for the model tests


def _pairs():
    return [PreferencePair("ab", "cd", "e", "d"), PreferencePair("fgh", "i", "jk", "d"),
            PreferencePair("l", "mno", "pq", "d")]


def _batch(pairs, shared_prefix=False):
    shape = SequenceShape(max_prompt_tokens=16, max_response_tokens=4, buckets=(24,))
    sequences = srpo_sequences(pairs, _byte_encode, shape, eos_id=EOS, template=SHORT)
    return sequences.shared_prefix_arrays(16, 5, 0) if shared_prefix else sequences.arrays()


def _model(dtype="float32"):
    config = tiny("llama", vocab_size=EOS + 1, num_layers=1, dtype=dtype, param_dtype=dtype)
    params = jax.tree.map(lambda x: x.astype(dtype), init_params(config, jax.random.key(0)))
    ref = jax.tree.map(lambda x: x * 0.9, params)
    return config, params, ref


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_srpo_objective_equals_loss_on_independent_logprobs(shared_prefix):
    """Both layouts: six rows per pair, or three contexts each computed once for its two responses."""
    pairs = _pairs()
    config, params, ref_params = _model()
    batch = {k: jnp.asarray(v) for k, v in _batch(pairs, shared_prefix).items()}
    assert ("response_tokens" in batch) == shared_prefix
    loss, metrics = jax.jit(lambda p, r, b: srpo_objective(p, b, config=config, beta=0.5, alpha=0.3,
                                                           ref_params=r))(params, ref_params, batch)

    one_row = jax.jit(lambda p, t: token_logprobs(p, config, t))

    def seq_logp(p, ctx, y):  # each sequence alone (right-padded to one length: causal, so padding is unseen)
        x, yy = _byte_encode(ctx), _byte_encode(y) + [EOS]
        row = np.zeros((1, 32), np.int32)
        row[0, : len(x) + len(yy)] = x + yy
        lp = np.asarray(one_row(p, jnp.asarray(row)), np.float64)[0]
        return float(lp[len(x): len(x) + len(yy)].sum())

    def six(p):
        out = {k: [] for k in SRPO_SEQUENCES}
        for q in pairs:
            cl, cw = revision_prompt(q.prompt, q.rejected, SHORT), revision_prompt(q.prompt, q.chosen, SHORT)
            for k, (c, y) in zip(SRPO_SEQUENCES, ((q.prompt, q.chosen), (q.prompt, q.rejected), (cl, q.chosen),
                                                 (cl, q.rejected), (cw, q.chosen), (cw, q.rejected))):
                out[k].append(seq_logp(p, c, y))
        return out

    pol, ref = six(params), six(ref_params)
    want, want_self, _ = np_srpo(pol, ref, 0.5, 0.3)
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    np.testing.assert_allclose(metrics["self_loss"], want_self, rtol=1e-4)
    # the three ways to give the reference agree
    pre = dict(batch, **srpo_reference_logprobs(ref_params, config, batch))
    np.testing.assert_allclose(srpo_objective(params, pre, config=config, beta=0.5, alpha=0.3)[0], loss, rtol=1e-6)
    kw = srpo_logprobs(ref_params, config, batch)
    np.testing.assert_allclose(srpo_objective(params, batch, config=config, beta=0.5, alpha=0.3, ref_logps=kw)[0],
                               loss, rtol=1e-6)
    with pytest.raises(ValueError, match="no reference"):
        srpo_objective(params, batch, config=config, beta=0.5, alpha=0.3)


def test_srpo_objective_gradient_matches_finite_differences():
    arrays = _batch(_pairs())
    with x64():
        config, params, ref_params = _model("float64")
        batch = {k: jnp.asarray(v) for k, v in arrays.items()}
        batch["weights"] = jnp.asarray([1.0, 0.5, 2.0], jnp.float64)
        ref = jax.lax.stop_gradient(srpo_logprobs(ref_params, config, batch))
        loss = jax.jit(lambda p, a: srpo_objective(p, batch, config=config, beta=0.7, alpha=a, ref_logps=ref)[0])
        for i, alpha in enumerate((0.0, 0.6)):  # alpha traced: one compilation for both
            assert directional_error(lambda p, a=alpha: loss(p, a), params, jax.random.key(i)) < 1e-5
