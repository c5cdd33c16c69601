"""KL estimators and RLOO: float64 numpy references, hand-computed cases, extremes, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.losses.policy_gradient import (
    adaptive_kl_update, gae, kl_penalty, leave_one_out_advantages, ppo_policy_loss, ppo_value_loss, rloo_loss,
    rloo_objective, token_rewards,
)
from metapl.models import init_params, tiny, token_logprobs
from tests.finite_diff import directional_error, x64


def test_kl_estimators_match_numpy(rng):
    logp, logp_ref = rng.normal(size=(3, 5)) - 2, rng.normal(size=(3, 5)) - 2
    mask = rng.uniform(size=(3, 5)) > 0.3
    x = logp_ref - logp
    k1 = np.where(mask, -x, 0)
    k3 = np.where(mask, np.exp(x) - 1 - x, 0)
    args = (jnp.asarray(logp), jnp.asarray(logp_ref), jnp.asarray(mask))
    np.testing.assert_allclose(kl_penalty(*args, "k1"), k1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kl_penalty(*args, "k3"), k3, rtol=1e-5, atol=1e-6)
    assert float(jnp.min(kl_penalty(*args, "k3"))) >= 0


def test_kl_extremes_stay_finite():
    logp = jnp.asarray([[-1e4, 0.0, -3e4]])
    ref = jnp.asarray([[0.0, -1e4, -1.0]])
    for est in ("k1", "k3"):
        assert np.all(np.isfinite(kl_penalty(logp, ref, jnp.ones((1, 3)), est)))


def test_leave_one_out_by_hand():
    # k = 3, one prompt: returns 1, 2, 6 -> baselines 4, 3.5, 1.5
    np.testing.assert_allclose(leave_one_out_advantages(jnp.asarray([1.0, 2.0, 6.0]), 3), [-3.0, -1.5, 4.5])
    # k = 2, two prompts: A = ±(R_i − R_j)
    np.testing.assert_allclose(leave_one_out_advantages(jnp.asarray([1.0, 3.0, 5.0, 5.0]), 2), [-2, 2, 0, 0])
    with pytest.raises(ValueError, match="k >= 2"):
        leave_one_out_advantages(jnp.asarray([1.0]), 1)


def test_rloo_loss_value_gradient_and_shift_invariance(rng):
    b, t, k, beta = 6, 4, 3, 0.1
    logp, ref = rng.normal(size=(b, t)) - 1, rng.normal(size=(b, t)) - 1
    mask = np.ones((b, t), bool)
    mask[0, 3] = False
    rewards = rng.normal(size=b)
    loss, metrics = rloo_loss(jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(mask), jnp.asarray(rewards), k=k,
                              beta=beta)
    returns = rewards - beta * ((logp - ref) * mask).sum(1)
    r = returns.reshape(-1, k)
    adv = (r - (r.sum(1, keepdims=True) - r) / (k - 1)).reshape(-1)
    np.testing.assert_allclose(loss, -np.mean(adv * (logp * mask).sum(1)), rtol=1e-5)
    # d loss / d logp_it = −A_i / B on the response tokens (advantages carry no gradient)
    grad = jax.grad(lambda lp: rloo_loss(lp, jnp.asarray(ref), jnp.asarray(mask), jnp.asarray(rewards), k=k,
                                         beta=beta)[0])(jnp.asarray(logp))
    np.testing.assert_allclose(grad, -(adv / b)[:, None] * mask, rtol=1e-5, atol=1e-7)
    # a constant added to one prompt's rewards leaves its advantages (and the loss) unchanged
    shifted = rewards + np.repeat([5.0, -2.0], k)
    loss2, _ = rloo_loss(jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(mask), jnp.asarray(shifted), k=k, beta=beta)
    np.testing.assert_allclose(loss2, loss, rtol=1e-5)
    assert float(metrics["kl"]) == pytest.approx(np.mean(((logp - ref) * mask).sum(1)), rel=1e-5)


def test_rloo_objective_gradient_matches_finite_differences(rng):
    # The advantages are constants of the surrogate (stop-gradient), so the reference is the finite difference of
    # −mean(A0 · Σ_t logp_θ) with A0 computed once at the starting params.
    tokens = jnp.asarray(rng.integers(2, 60, size=(4, 7)))
    mask = jnp.ones((4, 7), bool)
    response = jnp.asarray(np.arange(7)[None, :] >= 3).repeat(4, 0)
    with x64():
        config = tiny("llama", num_layers=1, dtype="float64", param_dtype="float64")
        params = jax.tree.map(lambda x: x.astype(jnp.float64), init_params(config, jax.random.key(0)))
        ref = jnp.asarray(rng.normal(size=(4, 7)) - 4)
        rewards = jnp.asarray([1.0, 0.0, 0.5, 2.0])
        batch = {"tokens": tokens, "attention_mask": mask, "response_mask": response, "ref_logps": ref,
                 "rewards": rewards}
        seq_logp = lambda p: (token_logprobs(p, config, tokens, attention_mask=mask) * response).sum(1)  # noqa: E731
        lp0 = np.asarray(token_logprobs(params, config, tokens, attention_mask=mask))
        x = np.asarray(ref) - lp0
        kl = ((np.expm1(x) - x) * np.asarray(response)).sum(1)
        r = (np.asarray(rewards) - 0.1 * kl).reshape(-1, 2)
        a0 = jnp.asarray((r - r[:, ::-1]).reshape(-1))  # k = 2: A_i = R_i − R_j
        fixed = lambda p: -jnp.mean(a0 * seq_logp(p))  # noqa: E731
        grad = jax.grad(lambda p: rloo_objective(p, batch, config=config, k=2, beta=0.1, estimator="k3")[0])(params)
        np.testing.assert_allclose(rloo_objective(params, batch, config=config, k=2, beta=0.1, estimator="k3")[0],
                                   fixed(params), rtol=1e-10)
        want = jax.grad(fixed)(params)
        for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-12)
        assert directional_error(fixed, params, jax.random.key(1)) < 1e-5


def np_gae(r, v, m, gamma, lam):
    """Backward recursion over each row's response tokens (float64), independent of the scan version."""
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        idx = np.flatnonzero(m[b])
        next_v, next_a = 0.0, 0.0
        for t in idx[::-1]:
            delta = r[b, t] + gamma * next_v - v[b, t]
            adv[b, t] = delta + gamma * lam * next_a
            next_v, next_a = v[b, t], adv[b, t]
    return adv, np.where(m, adv + v, 0)


def test_gae_and_token_rewards_match_numpy(rng):
    m = np.zeros((3, 8), bool)
    m[0, 2:6], m[1, 3:8], m[2, 1:3] = True, True, True
    r, v = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    adv, ret = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), gamma=0.9, lam=0.8)
    want_adv, want_ret = np_gae(r, v, m, 0.9, 0.8)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)
    kl = rng.normal(size=(3, 8))
    tr = np.asarray(token_rewards(jnp.asarray([1.0, 2.0, 3.0]), jnp.asarray(kl), jnp.asarray(m), 0.1))
    want = np.where(m, -0.1 * kl, 0)
    want[0, 5] += 1.0
    want[1, 7] += 2.0
    want[2, 2] += 3.0
    np.testing.assert_allclose(tr, want, rtol=1e-5, atol=1e-6)


def test_ppo_clipped_losses_match_numpy_and_clip_the_gradient(rng):
    logp, old = rng.normal(size=(2, 5)) * 0.3 - 1, rng.normal(size=(2, 5)) * 0.3 - 1
    adv, m = rng.normal(size=(2, 5)), rng.uniform(size=(2, 5)) > 0.2
    loss, metrics = ppo_policy_loss(*map(jnp.asarray, (logp, old, adv, m)), clip=0.2)
    ratio = np.exp(logp - old)
    per = np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)
    np.testing.assert_allclose(loss, -(per * m).sum() / m.sum(), rtol=1e-5)
    grad = np.asarray(jax.grad(lambda lp: ppo_policy_loss(lp, *map(jnp.asarray, (old, adv, m)), clip=0.2)[0])(
        jnp.asarray(logp)))
    clipped = ((ratio > 1.2) & (adv > 0)) | ((ratio < 0.8) & (adv < 0)) | ~m
    assert np.all(grad[clipped] == 0) and np.all(grad[~clipped] != 0)
    np.testing.assert_allclose(metrics["clip_fraction"], ((np.abs(ratio - 1) > 0.2) * m).sum() / m.sum(), rtol=1e-6)
    values, vold, ret = rng.normal(size=(2, 5)), rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    vl, _ = ppo_value_loss(*map(jnp.asarray, (values, vold, ret, m)), clip=0.2)
    clipped_v = vold + np.clip(values - vold, -0.2, 0.2)
    want = 0.5 * (np.maximum((values - ret) ** 2, (clipped_v - ret) ** 2) * m).sum() / m.sum()
    np.testing.assert_allclose(vl, want, rtol=1e-5)


def test_adaptive_kl_controller():
    assert float(adaptive_kl_update(jnp.float32(0.1), 12.0, 100, target=6.0, horizon=10000)) == pytest.approx(
        0.1 * (1 + 0.2 * 0.01))
    assert float(adaptive_kl_update(jnp.float32(0.1), 5.4, 100, target=6.0, horizon=1000)) == pytest.approx(
        0.1 * (1 - 0.1 * 0.1))
