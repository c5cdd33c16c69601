"""SRPO, self-improving robust preference optimisation (Choi, Ahmadian, Geist, Pietquin, Azar, ICLR 2025,
arXiv 2406.01660).

One model is both the generator π(y | x) and an in-context reviser π(y | x, y′): it reads a prompt and a
previous response and writes a better one. Training is offline and non-adversarial: a least-squares loss on
six sequence log-probabilities per preference pair (x, y_w, y_l), with

    h(y | c) = log π(y | c) − log π_ref(y | c)        (summed over the response tokens; c = x, or (x, y′))

    L_self = (β[h(y_w | x, y_l) − h(y_l | x, y_l)] − ½)² + (β[h(y_w | x, y_w) − h(y_l | x, y_w)] − ½)²
    L_gen  = (β[h(y_w | x, y_l) + h(y_w | x) − h(y_l | x, y_w) − h(y_l | x)] − 1)²
    L      = α · L_self + (1 − α) · L_gen,   averaged over the pairs (optionally weighted).

L_self teaches the reviser to prefer y_w whatever it is shown; L_gen ties the generator to the reviser. Each
part is zero at a known point: L_self when both revision margins β·Δh equal ½, L_gen when the combined margin
is 1.

The six log-probs are keyed by `SRPO_SEQUENCES`, the six sequences `metapl.data.srpo` builds (with the
revision context (x, y′) and the revise-n-times inference routine): chosen = y_w | x, rejected = y_l | x,
chosen_given_rejected = y_w | (x, y_l), rejected_given_rejected = y_l | (x, y_l), chosen_given_chosen =
y_w | (x, y_w), rejected_given_chosen = y_l | (x, y_w).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp

from metapl.data.srpo import SRPO_SEQUENCES
from metapl.models.config import ModelConfig
from metapl.models.logprobs import sequence_logprobs
from metapl.models.shared_prefix import is_shared_prefix, response_logprobs

__all__ = ["srpo_logprobs", "srpo_loss", "srpo_objective", "srpo_reference_logprobs"]

Params = Any
Batch = Mapping[str, jax.Array]


# ------------------------------------------------------------------------------------------------- array loss


def _six(logps: Mapping[str, jax.Array] | Sequence[jax.Array], what: str) -> dict[str, jax.Array]:
    if isinstance(logps, Mapping):
        missing = [k for k in SRPO_SEQUENCES if k not in logps]
        if missing:
            raise ValueError(f"{what}: missing {missing}; expected the keys {SRPO_SEQUENCES}")
        return {k: logps[k] for k in SRPO_SEQUENCES}
    logps = tuple(logps)
    if len(logps) != 6:
        raise ValueError(f"{what}: expected 6 arrays in the order {SRPO_SEQUENCES}, got {len(logps)}")
    return dict(zip(SRPO_SEQUENCES, logps))


def _mean(x: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        return jnp.mean(x)
    return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def srpo_loss(
    policy_logps: Mapping[str, jax.Array] | Sequence[jax.Array],
    ref_logps: Mapping[str, jax.Array] | Sequence[jax.Array],
    *,
    beta: float,
    alpha: float,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """SRPO loss α·L_self + (1 − α)·L_gen on sequence log-probs [B] (see the module docstring).

    Args:
      policy_logps, ref_logps: the six sequence log-probs [B] under the policy and the reference, as a mapping
        with the keys `SRPO_SEQUENCES` or a sequence of 6 arrays in that order.
      beta: β > 0. alpha: α in [0, 1] (1 = only the self-improvement part).
      weights: optional [B] per-pair weights.

    Returns (loss, metrics): loss; self_loss, gen_loss (the two parts, unweighted by α);
    self_margin_given_rejected = β[h(y_w|x,y_l) − h(y_l|x,y_l)] and self_margin_given_chosen =
    β[h(y_w|x,y_w) − h(y_l|x,y_w)] (targets ½); gen_margin = β[h(y_w|x,y_l) + h(y_w|x) − h(y_l|x,y_w) − h(y_l|x)]
    (target 1); margin = β[h(y_w|x) − h(y_l|x)], the generator's implied (DPO) margin, and accuracy = share
    with margin > 0; revision_accuracy = share with both self margins > 0.
    """
    pol, ref = _six(policy_logps, "policy_logps"), _six(ref_logps, "ref_logps")
    arrays = list(pol.values()) + list(ref.values())
    chex.assert_rank(arrays, 1)
    chex.assert_equal_shape(arrays)
    if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h = {k: pol[k] - ref[k] for k in SRPO_SEQUENCES}
    m_rej = beta * (h["chosen_given_rejected"] - h["rejected_given_rejected"])
    m_cho = beta * (h["chosen_given_chosen"] - h["rejected_given_chosen"])
    self_per_pair = jnp.square(m_rej - 0.5) + jnp.square(m_cho - 0.5)
    gen_margin = beta * (h["chosen_given_rejected"] + h["chosen"] - h["rejected_given_chosen"] - h["rejected"])
    gen_per_pair = jnp.square(gen_margin - 1.0)
    loss = _mean(alpha * self_per_pair + (1.0 - alpha) * gen_per_pair, weights)
    margin = beta * (h["chosen"] - h["rejected"])
    dtype = margin.dtype
    metrics = {
        "loss": loss,
        "self_loss": _mean(self_per_pair, weights),
        "gen_loss": _mean(gen_per_pair, weights),
        "self_margin_given_rejected": _mean(m_rej, weights),
        "self_margin_given_chosen": _mean(m_cho, weights),
        "gen_margin": _mean(gen_margin, weights),
        "margin": _mean(margin, weights),
        "accuracy": _mean((margin > 0).astype(dtype), weights),
        "revision_accuracy": _mean(((m_rej > 0) & (m_cho > 0)).astype(dtype), weights),
    }
    return loss, metrics


# ------------------------------------------------------------------------------------------- model objective


def _stacked(batch: Batch, field: str) -> jax.Array:
    return jnp.concatenate([jnp.asarray(batch[f"{name}_{field}"]) for name in SRPO_SEQUENCES], axis=0)


def srpo_logprobs(params: Params, config: ModelConfig, batch: Batch, *, lora: Params | None = None
                  ) -> dict[str, jax.Array]:
    """The six sequence log-probs [B] (keys SRPO_SEQUENCES), in one forward pass over the [6B, L] stack, or in the
    shared-prefix layout (`SrpoBatch.shared_prefix_arrays`: [B, 3, P] prompts, [B, 3, 2, R] responses) over 3B
    rows, each context computed once for its two responses."""
    if is_shared_prefix(batch):
        b, g, p = batch["prompt_tokens"].shape
        r = batch["response_tokens"].shape[-1]
        seq = response_logprobs(params, config, batch["prompt_tokens"].reshape(b * g, p),
                                batch["prompt_mask"].reshape(b * g, p), batch["response_tokens"].reshape(b * g, 2, r),
                                batch["response_mask"].reshape(b * g, 2, r), lora=lora).reshape(b, g * 2)
        return {name: seq[:, i] for i, name in enumerate(SRPO_SEQUENCES)}  # (x, x+y_l, x+y_w) × (y_w, y_l)
    _, seq = sequence_logprobs(params, config, _stacked(batch, "tokens"), _stacked(batch, "response_mask"),
                               attention_mask=_stacked(batch, "attention_mask"), lora=lora)
    b = batch["chosen_tokens"].shape[0]
    return {name: seq[i * b:(i + 1) * b] for i, name in enumerate(SRPO_SEQUENCES)}


def srpo_reference_logprobs(ref_params: Params, config: ModelConfig, batch: Batch, *, lora: Params | None = None
                            ) -> dict[str, jax.Array]:
    """Reference log-probs to precompute once and merge into the batch: {"ref_{name}_logps": [B]}."""
    return {f"ref_{k}_logps": v for k, v in srpo_logprobs(ref_params, config, batch, lora=lora).items()}


def srpo_objective(
    params: Params,
    batch: Batch,
    *,
    config: ModelConfig,
    beta: float,
    alpha: float,
    lora: Params | None = None,
    ref_params: Params | None = None,
    ref_logps: Mapping[str, jax.Array] | Sequence[jax.Array] | None = None,
) -> tuple[jax.Array, dict]:
    """`srpo_loss` on a batch of `metapl.data.srpo.SrpoBatch.arrays()` (optionally with "weights" [B]).

    The reference log-probs come from, in order: `ref_logps` (keys SRPO_SEQUENCES, or 6 arrays); the batch's
    "ref_{name}_logps" (`srpo_reference_logprobs`); `ref_params`; or else (LoRA training) `params` without the
    adapters. They carry no gradient.
    """
    policy = srpo_logprobs(params, config, batch, lora=lora)
    if ref_logps is not None:
        ref = _six(ref_logps, "ref_logps")
    elif all(f"ref_{k}_logps" in batch for k in SRPO_SEQUENCES):
        ref = {k: batch[f"ref_{k}_logps"] for k in SRPO_SEQUENCES}
    else:
        if ref_params is None and lora is None:
            raise ValueError("no reference: give ref_logps, precomputed ref_*_logps in the batch, ref_params, "
                             "or LoRA")
        ref = srpo_logprobs(params if ref_params is None else ref_params, config, batch)
    ref = jax.lax.stop_gradient(ref)
    return srpo_loss(policy, ref, beta=beta, alpha=alpha, weights=batch.get("weights"))
