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
    beta: float = 0.05,
    estimator: str = "k1",
    lora: Params | None = None,
) -> tuple[jax.Array, dict]:
    """RLOO on a rollout batch: tokens, attention_mask, response_mask [B, T]; ref_logps [B, T] (per token);
    rewards [B]. Rows are prompt-major with k samples per prompt."""
    logp = token_logprobs(params, config, batch["tokens"], attention_mask=batch["attention_mask"], lora=lora)
    return rloo_loss(logp, batch["ref_logps"], batch["response_mask"], batch["rewards"], k=k, beta=beta,
                     estimator=estimator)
