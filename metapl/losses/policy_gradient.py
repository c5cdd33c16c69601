"""KL-regularised policy optimisation with a reward model: KL estimators and REINFORCE with a leave-one-out
baseline (RLOO).

Batch layout: k samples per prompt, prompt-major — rows [i*k, (i+1)*k) are the k responses to prompt i.
Per-token log-probs are aligned with tokens (entry t = log p(tokens[t] | tokens[<t])) and masked to the
response. With `logr_t = logp_ref_t − logp_t` for the sampled tokens:

    k1_t = −logr_t                       (unbiased, can be negative)
    k3_t = exp(logr_t) − 1 − logr_t      (unbiased, non-negative; Schulman's estimator)

The KL-shaped sequence reward is `R = r(x, y) − β Σ_t kl_t` (kl under stop-gradient), and RLOO's advantage is
`A_i = R_i − mean_{j≠i} R_j` over the k samples of the same prompt. The loss is the REINFORCE surrogate
`−mean_i A_i · Σ_t logp_θ(y_it)` with A under stop-gradient.
"""

from __future__ import annotations

from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.logprobs import token_logprobs
from metapl.models.shared_prefix import is_shared_prefix, response_token_logprobs, shared_inputs

__all__ = [
    "adaptive_kl_update", "gae", "kl_penalty", "leave_one_out_advantages", "policy_and_values", "ppo_objective",
    "ppo_policy_loss", "ppo_value_loss", "rloo_loss", "rloo_objective", "token_rewards",
]

Params = Any


def kl_penalty(logp: jax.Array, logp_ref: jax.Array, mask: jax.Array, estimator: str = "k1") -> jax.Array:
    """Per-token KL estimates [B, T] (0 off the mask) from the sampled tokens' log-probs [B, T]."""
    chex.assert_equal_shape([logp, logp_ref, mask])
    log_ratio = logp_ref - logp
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k3":
        # exp(x) − 1 − x, written with expm1 so small ratios keep their precision; x is clipped so that an
        # extreme ratio gives a large finite penalty, not inf.
        x = jnp.clip(log_ratio, -50.0, 50.0)
        kl = jnp.expm1(x) - x
    else:
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    return jnp.where(mask.astype(bool), kl, 0.0)


def leave_one_out_advantages(returns: jax.Array, k: int) -> jax.Array:
    """A_i = R_i − mean of the other k − 1 returns of the same prompt; returns [N*k] prompt-major -> [N*k]."""
    chex.assert_rank(returns, 1)
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got {k}")
    r = returns.reshape(-1, k)
    baseline = (r.sum(axis=1, keepdims=True) - r) / (k - 1)
    return (r - baseline).reshape(-1)


def rloo_loss(
    logp: jax.Array,
    logp_ref: jax.Array,
    mask: jax.Array,
    rewards: jax.Array,
    *,
    k: int,
    beta: float,
    estimator: str = "k1",
) -> tuple[jax.Array, dict]:
    """RLOO on per-token policy log-probs logp [B, T] (differentiable), reference logp_ref [B, T], response
    mask [B, T] and sequence rewards [B] (B = prompts × k, prompt-major)."""
    chex.assert_rank([logp, rewards], [2, 1])
    kl = jax.lax.stop_gradient(kl_penalty(logp, logp_ref, mask, estimator))
    kl_seq = kl.sum(axis=1)
    returns = rewards - beta * kl_seq
    advantages = jax.lax.stop_gradient(leave_one_out_advantages(returns, k))
    seq_logp = (logp * mask).sum(axis=1)
    loss = -jnp.mean(advantages * seq_logp)
    metrics = {
        "loss": loss,
        "reward": jnp.mean(rewards),
        "kl": jnp.mean(kl_seq),
        "return": jnp.mean(returns),
        "advantage_std": jnp.std(advantages),
        "response_length": jnp.mean(mask.sum(axis=1).astype(jnp.float32)),
    }
    return loss, metrics


def rloo_objective(
    params: Params,
    batch: Mapping[str, jax.Array],
    *,
    config: ModelConfig,
    k: int,
    beta: float,
    estimator: str = "k1",
    lora: Params | None = None,
) -> tuple[jax.Array, dict]:
    """RLOO on a rollout batch: tokens, attention_mask, response_mask [B, T]; ref_logps [B, T] (per token);
    rewards [B]. Rows are prompt-major with k samples per prompt. Or in the shared-prefix layout: prompt_tokens,
    prompt_mask [N, P], response_tokens, response_mask [N, k, R], ref_logps [N·k, R], rewards [N·k]."""
    if is_shared_prefix(batch):
        logp = response_token_logprobs(params, config, *shared_inputs(batch), lora=lora)
        n, kk, r = logp.shape
        return rloo_loss(logp.reshape(n * kk, r), batch["ref_logps"], batch["response_mask"].reshape(n * kk, r),
                         batch["rewards"], k=k, beta=beta, estimator=estimator)
    logp = token_logprobs(params, config, batch["tokens"], attention_mask=batch["attention_mask"], lora=lora)
    return rloo_loss(logp, batch["ref_logps"], batch["response_mask"], batch["rewards"], k=k, beta=beta,
                     estimator=estimator)


# ------------------------------------------------------------------------------------------------------- PPO
#
# PPO on the same rollouts: per-token rewards are the KL penalty −β·kl_t on every response token plus the
# sequence reward r(x, y) on the last response token; advantages come from GAE over the response tokens; the
# value head shares the policy's backbone (params = {"lm": ..., "value_head": {"kernel": [D, 1], "bias": [1]}}).


def token_rewards(rewards: jax.Array, kl: jax.Array, mask: jax.Array, beta: float | jax.Array) -> jax.Array:
    """[B, T]: −β·kl_t on response tokens, plus rewards[b] on each row's last response token."""
    mask = mask.astype(bool)
    t = mask.shape[1]
    last = jnp.max(jnp.where(mask, jnp.arange(t)[None, :], -1), axis=1)
    at_last = (jnp.arange(t)[None, :] == last[:, None]) & mask
    return jnp.where(mask, -beta * kl, 0.0) + jnp.where(at_last, rewards[:, None], 0.0)


def gae(rewards_t: jax.Array, values_t: jax.Array, mask: jax.Array, *, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over the masked (response) tokens of each row; [B, T] each.

    δ_t = r_t + γ·V_{t'}·[t' exists] − V_t with t' the next response token; A_t = δ_t + γλ·A_{t'}.
    Returns (advantages, returns = advantages + values), both 0 off the mask.
    """
    chex.assert_equal_shape([rewards_t, values_t, mask])
    m = mask.astype(values_t.dtype)

    def back(carry, x):
        next_value, next_adv = carry
        r, v, mt = x
        delta = r + gamma * next_value - v
        adv = delta + gamma * lam * next_adv
        adv = jnp.where(mt > 0, adv, 0.0)
        # off the mask, carry the next response token's value and advantage through unchanged
        return (jnp.where(mt > 0, v, next_value), jnp.where(mt > 0, adv, next_adv)), adv

    zeros = jnp.zeros(rewards_t.shape[0], values_t.dtype)
    xs = (rewards_t.T[::-1], values_t.T[::-1], m.T[::-1])
    _, adv = jax.lax.scan(back, (zeros, zeros), xs)
    adv = adv[::-1].T
    return adv, jnp.where(m > 0, adv + values_t, 0.0)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(x.dtype)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def ppo_policy_loss(logp: jax.Array, logp_old: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                    clip: float = 0.2) -> tuple[jax.Array, dict]:
    """Clipped surrogate −E[min(ρA, clip(ρ, 1−ε, 1+ε)A)], ρ = exp(logp − logp_old), over masked tokens."""
    chex.assert_equal_shape([logp, logp_old, advantages, mask])
    log_ratio = jnp.where(mask.astype(bool), logp - logp_old, 0.0)
    ratio = jnp.exp(log_ratio)
    adv = jax.lax.stop_gradient(advantages)
    loss = -_masked_mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv), mask)
    metrics = {"policy_loss": loss,
               "clip_fraction": _masked_mean((jnp.abs(ratio - 1) > clip).astype(jnp.float32), mask),
               "approx_kl": _masked_mean(0.5 * jnp.square(log_ratio), mask)}
    return loss, metrics


def ppo_value_loss(values: jax.Array, values_old: jax.Array, returns: jax.Array, mask: jax.Array, *,
                   clip: float = 0.2) -> tuple[jax.Array, dict]:
    """½·E[max((V − R)², (clip(V, V_old ± ε) − R)²)] over masked tokens."""
    chex.assert_equal_shape([values, values_old, returns, mask])
    returns = jax.lax.stop_gradient(returns)
    clipped = values_old + jnp.clip(values - values_old, -clip, clip)
    loss = 0.5 * _masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns)), mask)
    var = _masked_mean(jnp.square(returns - _masked_mean(returns, mask)), mask)
    explained = 1 - _masked_mean(jnp.square(returns - values), mask) / jnp.maximum(var, 1e-8)
    return loss, {"value_loss": loss, "explained_variance": explained}


def adaptive_kl_update(beta: jax.Array, observed_kl: jax.Array, n_steps: int, *, target: float,
                       horizon: float) -> jax.Array:
    """Ziegler et al. (2019): β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon)."""
    error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return beta * (1.0 + error * n_steps / horizon)


def policy_and_values(params: Params, config: ModelConfig, tokens: jax.Array, attention_mask: jax.Array, *,
                      lora: Params | None = None) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probs [B, T] (entry 0 = 0) and values [B, T] from one forward pass of the shared backbone.

    Value t estimates the return before emitting token t, read from the hidden state that predicts token t."""
    from metapl.models.layers import at_least_f32
    from metapl.models.logprobs import hidden_logprobs
    from metapl.models.transformer import hidden_states, unembedding

    lm, head = params["lm"], params["value_head"]
    hidden = hidden_states(lm, config, tokens, attention_mask=attention_mask, lora=lora)
    w = unembedding(lm, config).astype(config.compute_dtype)
    lp = hidden_logprobs(hidden[:, :-1], w, tokens[:, 1:])
    lp = jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)
    acc = at_least_f32(hidden.dtype)
    v = (jnp.dot(hidden.astype(acc), head["kernel"].astype(acc)) + head["bias"].astype(acc))[..., 0]
    v = jnp.concatenate([jnp.zeros_like(v[:, :1]), v[:, :-1]], axis=1)  # value of state before token t
    return lp, v


def ppo_objective(
    params: Params,
    batch: Mapping[str, jax.Array],
    *,
    config: ModelConfig,
    clip: float,
    value_clip: float,
    value_coef: float,
    lora: Params | None = None,
) -> tuple[jax.Array, dict]:
    """PPO on a rollout batch: tokens, attention_mask, response_mask [B, T]; old_logps, old_values,
    advantages, returns [B, T] (fixed at rollout time). Loss = policy loss + value_coef · value loss."""
    logp, values = policy_and_values(params, config, batch["tokens"], batch["attention_mask"], lora=lora)
    mask = batch["response_mask"]
    pl, pm = ppo_policy_loss(logp, batch["old_logps"], batch["advantages"], mask, clip=clip)
    vl, vm = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, clip=value_clip)
    loss = pl + value_coef * vl
    return loss, {"loss": loss, **pm, **vm}
