"""Losses on preference pairs: the Bradley–Terry reward model, DPO, IPO, conservative DPO, and the tree reward model.

With `h(y) = log π(y|x) − log π_ref(y|x)` summed over response tokens:

    Bradley–Terry   −log σ(r(x,y_w) − r(x,y_l) − m) + c·(r_w + r_l)²
    DPO             −log σ(β(h(y_w) − h(y_l)))
    conservative    −(1−ε)·log σ(β(h_w − h_l)) − ε·log σ(−β(h_w − h_l))      (label smoothing ε)
    IPO             (h(y_w) − h(y_l) − 1/(2β))²

Each is averaged over the batch (with optional per-pair weights that sum the same way).
"""

from __future__ import annotations

from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.heads import reward
from metapl.models.logprobs import sequence_logprobs
from metapl.models.shared_prefix import continuation_rewards, is_shared_prefix, response_logprobs, shared_inputs

__all__ = [
    "bradley_terry_loss", "dpo_loss", "dpo_objective", "implicit_margin", "ipo_loss", "is_shared_prefix",
    "pair_logprobs", "pair_rewards", "reference_logprobs", "rm_objective", "tree_rm_objective",
]

Params = Any
Batch = Mapping[str, jax.Array]


def _mean(x: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        return jnp.mean(x)
    return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def bradley_terry_loss(
    r_chosen: jax.Array,
    r_rejected: jax.Array,
    *,
    margin: jax.Array | float = 0.0,
    centering: float = 0.0,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Reward-model loss on rewards [B] of the chosen and rejected responses; margin [B] or a scalar."""
    chex.assert_rank([r_chosen, r_rejected], 1)
    chex.assert_equal_shape([r_chosen, r_rejected])
    diff = r_chosen - r_rejected
    loss = _mean(-jax.nn.log_sigmoid(diff - margin), weights)
    if centering:
        loss = loss + centering * _mean(jnp.square(r_chosen + r_rejected), weights)
    metrics = {
        "loss": loss,
        "accuracy": _mean((diff > 0).astype(jnp.float32), weights),
        "reward_margin": _mean(diff, weights),
        "reward_mean": _mean(0.5 * (r_chosen + r_rejected), weights),
    }
    return loss, metrics


def implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> jax.Array:
    """h(y_w) − h(y_l) [B] from sequence log-probs [B] of policy and reference."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """DPO (sigmoid) loss, conservative with label_smoothing > 0, on sequence log-probs [B]."""
    chex.assert_rank([policy_chosen, policy_rejected, ref_chosen, ref_rejected], 1)
    chex.assert_equal_shape([policy_chosen, policy_rejected, ref_chosen, ref_rejected])
    z = beta * implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
    loss = _mean(per_pair, weights)
    return loss, _implicit_metrics(loss, z, beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected, weights)


def ipo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    *,
    beta: float,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """IPO loss `(h_w − h_l − 1/(2β))²` on sequence log-probs [B]."""
    chex.assert_rank([policy_chosen, policy_rejected, ref_chosen, ref_rejected], 1)
    chex.assert_equal_shape([policy_chosen, policy_rejected, ref_chosen, ref_rejected])
    h = implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    loss = _mean(jnp.square(h - 1.0 / (2.0 * beta)), weights)
    return loss, _implicit_metrics(loss, beta * h, beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                   weights)


def _implicit_metrics(loss, z, beta, pc, pr, rc, rr, weights) -> dict:
    return {
        "loss": loss,
        "accuracy": _mean((z > 0).astype(jnp.float32), weights),  # implicit reward ranks chosen first
        "margin": _mean(z, weights),  # β(h_w − h_l)
        "chosen_reward": _mean(beta * (pc - rc), weights),
        "rejected_reward": _mean(beta * (pr - rr), weights),
        "chosen_logp": _mean(pc, weights),
        "rejected_logp": _mean(pr, weights),
    }


# ------------------------------------------------------------------------------------------- model objectives

def _both(batch: Batch, key: str) -> jax.Array:
    """chosen and rejected rows of one field stacked into one [2B, ...] array (one forward pass for both)."""
    return jnp.concatenate([batch[f"chosen_{key}"], batch[f"rejected_{key}"]], axis=0)


def pair_logprobs(params: Params, config: ModelConfig, batch: Batch, *, lora: Params | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """Sequence log-probs [B] of the chosen and rejected responses (one forward pass over both).

    batch, one of two layouts: separate rows, chosen_tokens, chosen_attention_mask, chosen_response_mask and the
    same for rejected, all [B, T]; or shared prefix, prompt_tokens, prompt_mask [B, P] and response_tokens,
    response_mask [B, 2, R] (chosen first; `metapl.models.shared_prefix`), which computes each prompt once.
    """
    if is_shared_prefix(batch):
        seq = response_logprobs(params, config, *shared_inputs(batch), lora=lora)
        return seq[:, 0], seq[:, 1]
    _, seq = sequence_logprobs(params, config, _both(batch, "tokens"), _both(batch, "response_mask"),
                               attention_mask=_both(batch, "attention_mask"), lora=lora)
    b = batch["chosen_tokens"].shape[0]
    return seq[:b], seq[b:]


def pair_rewards(params: Params, config: ModelConfig, batch: Batch, *, lora: Params | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """Rewards [B] of the chosen and rejected sequences of a scalar-head model, in either pair layout."""
    if is_shared_prefix(batch):
        r = continuation_rewards(params, config, *shared_inputs(batch), lora=lora)
        return r[:, 0], r[:, 1]
    r = reward(params, config, _both(batch, "tokens"), _both(batch, "attention_mask"), lora=lora)
    b = batch["chosen_tokens"].shape[0]
    return r[:b], r[b:]


def reference_logprobs(ref_params: Params, config: ModelConfig, batch: Batch, *, lora: Params | None = None
                       ) -> dict[str, jax.Array]:
    """The reference log-probs a DPO batch needs, to precompute once: {"ref_chosen_logps", "ref_rejected_logps"}.

    With LoRA training the reference is the same base params with `lora=None`.
    """
    chosen, rejected = pair_logprobs(ref_params, config, batch, lora=lora)
    return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}


def dpo_objective(
    params: Params,
    batch: Batch,
    *,
    config: ModelConfig,
    beta: float,
    kind: str = "dpo",
    label_smoothing: float = 0.0,
    lora: Params | None = None,
    ref_params: Params | None = None,
) -> tuple[jax.Array, dict]:
    """DPO / conservative DPO / IPO on a batch of pairs.

    Reference log-probs come from the batch ("ref_chosen_logps", "ref_rejected_logps") when precomputed; else
    from `ref_params`, or else (LoRA training) from `params` without the adapters. They carry no gradient.
    """
    if kind not in ("dpo", "ipo"):
        raise ValueError(f"kind must be 'dpo' or 'ipo', got {kind!r}")
    policy_chosen, policy_rejected = pair_logprobs(params, config, batch, lora=lora)
    if "ref_chosen_logps" in batch:
        ref = {k: batch[k] for k in ("ref_chosen_logps", "ref_rejected_logps")}
    else:
        if ref_params is None and lora is None:
            raise ValueError("no reference: give precomputed ref_*_logps in the batch, ref_params, or LoRA")
        ref = reference_logprobs(params if ref_params is None else ref_params, config, batch)
    ref = jax.lax.stop_gradient(ref)
    weights = batch.get("weights")
    if kind == "ipo":
        return ipo_loss(policy_chosen, policy_rejected, ref["ref_chosen_logps"], ref["ref_rejected_logps"],
                        beta=beta, weights=weights)
    return dpo_loss(policy_chosen, policy_rejected, ref["ref_chosen_logps"], ref["ref_rejected_logps"],
                    beta=beta, label_smoothing=label_smoothing, weights=weights)


def rm_objective(
    params: Params,
    batch: Batch,
    *,
    config: ModelConfig,
    centering: float = 0.0,
    use_margin: bool = False,
    lora: Params | None = None,
) -> tuple[jax.Array, dict]:
    """Bradley–Terry loss of a scalar reward model (`metapl.models.heads`) on a batch of pairs.

    use_margin: subtract the batch's "margin" [B] (e.g. a label-strength margin); off by default.
    """
    chosen, rejected = pair_rewards(params, config, batch, lora=lora)
    margin = batch["margin"] if use_margin else 0.0
    return bradley_terry_loss(chosen, rejected, margin=margin, centering=centering, weights=batch.get("weights"))


def tree_rm_objective(
    params: Params,
    batch: Batch,
    *,
    config: ModelConfig,
    centering: float = 0.0,
    lora: Params | None = None,
) -> tuple[jax.Array, dict]:
    """Bradley–Terry on leaf pairs of preference trees, each distinct leaf sequence scored once.

    batch: tokens, attention_mask [S, T] (the distinct sequences), or in the shared-prefix layout each tree's
    prompt once (prompt_tokens, prompt_mask [N, Tp]) with its S/N leaf slots (response_tokens, response_mask
    [N, S/N, R]); chosen_index, rejected_index [P] (into S); pair_mask [P] (1 for real pairs, 0 for padding).
    """
    if is_shared_prefix(batch):
        r = continuation_rewards(params, config, *shared_inputs(batch), lora=lora).reshape(-1)
    else:
        r = reward(params, config, batch["tokens"], batch["attention_mask"], lora=lora)
    return bradley_terry_loss(r[batch["chosen_index"]], r[batch["rejected_index"]], centering=centering,
                              weights=batch["pair_mask"].astype(r.dtype))
