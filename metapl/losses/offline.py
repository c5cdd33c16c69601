"""Offline RLHF (Hu, Tao, Yang, Zhou, arXiv 2308.12050): SFT-like losses on pre-generated, reward-labelled samples.

All three methods start from a sample set (`metapl.data.sample_sets`: n responses per prompt, each a
`ScoredSample` with a reward) and train with one weighted negative log-likelihood:

    MLE with filtering   weights ∈ {0, 1}: keep the best of n per prompt, or z-score within the prompt ≥ t
    RWR                  weights = exp(r̃/τ) / Σ_batch exp(r̃/τ),   r̃ = rewards standardised over the batch
    reward-conditioned   weights = 1, and the prompt carries a token of the sample's quantised z-score
    ("Decision Transformer" alignment): NLL of y given x ⊕ reward-token(z); at inference, condition on a
                         high target bin.

Normalisation of `nll_loss` (one choice, used everywhere in this module): the *weighted mean over response
tokens*,

    L = − Σ_i w_i Σ_t m_it log π(y_it | ·) / Σ_i w_i Σ_t m_it,

i.e. every response token of sequence i carries weight w_i. Because the denominator does not depend on the
parameters, ∇L is proportional to ∇ Σ_i w_i log π(y_i | x_i) — the sequence-level weighted likelihood the
methods are defined with — scaled by one over the weighted number of response tokens (so the step size does
not grow with response length). It also makes the loss invariant to rescaling the weights: filter weights
need not be renormalised and RWR weights need not sum to one (they do anyway).

Array helpers (jit-able, on [B] arrays): `filter_weights`, `rwr_weights`. Model objective: `sft_objective`.
The batches come from `metapl.data.sft_arrays`: `sample_arrays` (SFT batch with rewards and prompt ids, for
filtering and RWR) and `reward_conditioned_arrays` (the Decision-Transformer batch; its reward tokens and
templates are `metapl.data.reward_tokens`).

    arrays = sample_arrays(samples, tok.encode, shape, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    arrays["weights"] = filter_weights(arrays["rewards"], arrays["prompt_ids"], mode="best_of_n")
    # or: rwr_weights(arrays["rewards"], tau=1.0)
    loss, metrics = sft_objective(params, arrays, config=config)
"""

from __future__ import annotations

from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.logprobs import sequence_logprobs

__all__ = ["filter_weights", "nll_loss", "rwr_weights", "sft_objective"]

Params = Any
Batch = Mapping[str, jax.Array]


# ------------------------------------------------------------------------------------------------ array losses


def nll_loss(
    token_logps: jax.Array,
    response_mask: jax.Array,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Weighted negative log-likelihood of responses, averaged over the batch's (weighted) response tokens.

    Args:
      token_logps: [B, T] per-token log-probs (as from `token_logprobs`); values off the mask are ignored.
      response_mask: [B, T] 1 on the response tokens that count.
      weights: [B] non-negative per-sequence weights (None = all 1). Only their ratios matter.

    Returns:
      (loss, metrics). loss = −Σ_i w_i Σ_t m_it ℓ_it / Σ_i w_i Σ_t m_it (0 if no token has weight).
      metrics: loss; mean_sequence_logp (weighted mean of Σ_t m_it ℓ_it); response_tokens (weighted mean
      of the response lengths); kept_fraction (share of sequences with w > 0); effective_sample_size
      ((Σw)² / Σw², the number of sequences that effectively count).
    """
    chex.assert_rank([token_logps, response_mask], 2)
    chex.assert_equal_shape([token_logps, response_mask])
    dtype = token_logps.dtype if jnp.issubdtype(token_logps.dtype, jnp.floating) else jnp.float32
    mask = response_mask.astype(bool)
    b = token_logps.shape[0]
    w = jnp.ones((b,), dtype) if weights is None else jnp.asarray(weights).astype(dtype)
    chex.assert_shape(w, (b,))
    seq_logp = jnp.sum(jnp.where(mask, token_logps, 0.0), axis=1)  # where: padding may hold anything
    lengths = jnp.sum(mask, axis=1).astype(dtype)
    tiny = jnp.finfo(dtype).tiny
    denom = jnp.sum(w * lengths)
    loss = -jnp.sum(w * seq_logp) / jnp.maximum(denom, tiny)
    w_sum = jnp.sum(w)
    metrics = {
        "loss": loss,
        "mean_sequence_logp": jnp.sum(w * seq_logp) / jnp.maximum(w_sum, tiny),
        "response_tokens": denom / jnp.maximum(w_sum, tiny),
        "kept_fraction": jnp.mean((w > 0).astype(dtype)),
        "effective_sample_size": jnp.square(w_sum) / jnp.maximum(jnp.sum(jnp.square(w)), tiny),
    }
    return loss, metrics


def _valid(b: int, valid: jax.Array | None) -> jax.Array:
    if valid is None:
        return jnp.ones((b,), bool)
    valid = jnp.asarray(valid).astype(bool)
    chex.assert_shape(valid, (b,))
    return valid


def filter_weights(
    rewards: jax.Array,
    prompt_ids: jax.Array,
    mode: str = "best_of_n",
    threshold: float = 0.0,
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Keep-mask weights [B] (1.0 kept, 0.0 dropped) for MLE with filtering.

    Args:
      rewards: [B] rewards of the samples.
      prompt_ids: [B] integer group ids: samples with the same id answer the same prompt. A prompt's samples
        must all be in this call (compute the weights over the whole sample set, or over batches that hold
        whole prompts).
      mode: "best_of_n" keeps the highest-reward sample of each prompt. Ties: the first (lowest index) of the
        tied maxima is kept, so exactly one sample per prompt is kept. (`sample_sets.best_of_n` breaks ties by
        the response text instead; both are deterministic, they can differ only on exact ties.)
        "zscore" keeps the samples whose within-prompt z-score (r − mean) / std (population std, ddof=0) is
        ≥ threshold — the same rule as `sample_sets.filter_by_zscore`: a prompt whose rewards are all equal
        (or that has one sample) has z = 0, kept iff threshold ≤ 0.
      threshold: the z-score threshold ("zscore" only).
      valid: [B] bool, False on padding rows (dropped and ignored by every group). None = all valid.

    Builds [B, B] comparison matrices: meant for sample-set sized arrays, not for huge flat sets.
    """
    chex.assert_rank([rewards, prompt_ids], 1)
    chex.assert_equal_shape([rewards, prompt_ids])
    if mode not in ("best_of_n", "zscore"):
        raise ValueError(f"mode must be 'best_of_n' or 'zscore', got {mode!r}")
    r = jnp.asarray(rewards)
    r = r if jnp.issubdtype(r.dtype, jnp.floating) else r.astype(jnp.float32)
    b = r.shape[0]
    valid = _valid(b, valid)
    same = (prompt_ids[:, None] == prompt_ids[None, :]) & valid[:, None] & valid[None, :]  # [i, j]
    if mode == "best_of_n":
        idx = jnp.arange(b)
        beats = (r[None, :] > r[:, None]) | ((r[None, :] == r[:, None]) & (idx[None, :] < idx[:, None]))
        keep = valid & ~jnp.any(same & beats, axis=1)
    else:
        n = jnp.maximum(jnp.sum(same, axis=1), 1).astype(r.dtype)
        mean = jnp.sum(jnp.where(same, r[None, :], 0.0), axis=1) / n
        dev = jnp.where(same, r[None, :] - mean[:, None], 0.0)
        var = jnp.sum(jnp.square(dev), axis=1) / n
        hi = jnp.max(jnp.where(same, r[None, :], -jnp.inf), axis=1)
        lo = jnp.min(jnp.where(same, r[None, :], jnp.inf), axis=1)
        constant = hi == lo
        z = jnp.where(constant, 0.0, (r - mean) / jnp.sqrt(jnp.where(constant, 1.0, var)))
        keep = valid & (z >= threshold)
    return keep.astype(r.dtype)


def rwr_weights(
    rewards: jax.Array,
    tau: float | jax.Array,
    normalize: str = "batch",
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Reward-weighted-regression weights [B]: softmax over the batch of r̃ / τ (they sum to one).

    Args:
      rewards: [B] rewards.
      tau: temperature τ > 0: small τ approaches best-of-batch, large τ uniform (plain SFT).
      normalize: how r̃ is made from the rewards.
        "batch": standardised over the (valid rows of the) batch, r̃ = (r − mean) / std (population std);
          a batch of equal rewards gives r̃ = 0 (uniform weights). τ is then in units of reward std.
        "none": r̃ = r, e.g. for rewards already z-scored per prompt (`sample_sets.zscore_by_prompt`).
      valid: [B] bool, False on padding rows (weight 0, excluded from the statistics). None = all valid.

    Either way the weights do not change when a constant is added to every reward. Stable for large |r|/τ:
    the softmax subtracts its maximum, and the standardisation divides by the largest deviation first, so
    nothing overflows. Differentiable in the rewards.
    """
    chex.assert_rank(rewards, 1)
    if normalize not in ("batch", "none"):
        raise ValueError(f"normalize must be 'batch' or 'none', got {normalize!r}")
    r = jnp.asarray(rewards)
    r = r if jnp.issubdtype(r.dtype, jnp.floating) else r.astype(jnp.float32)
    valid = _valid(r.shape[0], valid)
    n = jnp.maximum(jnp.sum(valid), 1).astype(r.dtype)
    if normalize == "batch":
        mean = jnp.sum(jnp.where(valid, r, 0.0)) / n
        d = jnp.where(valid, r - mean, 0.0)
        scale = jnp.max(jnp.abs(d))
        constant = scale == 0
        u = d / jnp.where(constant, 1.0, scale)  # |u| <= 1: no overflow when squaring
        std_u = jnp.sqrt(jnp.where(constant, 1.0, jnp.sum(jnp.square(u)) / n))  # guarded: no NaN gradient
        r = jnp.where(constant, 0.0, u / std_u)
    logits = jnp.where(valid, r / tau, jnp.finfo(r.dtype).min)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits))
    e = jnp.where(valid, jnp.exp(logits), 0.0)
    return e / jnp.maximum(jnp.sum(e), jnp.finfo(r.dtype).tiny)


# ------------------------------------------------------------------------------------------- model objective


def sft_objective(
    params: Params,
    batch: Batch,
    *,
    config: ModelConfig,
    lora: Params | None = None,
) -> tuple[jax.Array, dict]:
    """Weighted SFT (`nll_loss`) on a batch: tokens, attention_mask, response_mask [B, T]; optional weights [B].

    The one model objective of all three offline methods: the batch's weights say which (filtering), how much
    (RWR), and for reward-conditioned SFT the reward token is already in the tokens. Weights carry no
    gradient here (they are data).
    """
    token_lp, _ = sequence_logprobs(params, config, batch["tokens"], batch["response_mask"],
                                    attention_mask=batch["attention_mask"], lora=lora)
    weights = batch.get("weights")
    if weights is not None:
        weights = jax.lax.stop_gradient(weights)
    return nll_loss(token_lp, batch["response_mask"], weights)
