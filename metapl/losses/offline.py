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
Builders (numpy, deterministic, through `metapl.data.batching`): `sample_arrays` (SFT batch with rewards and
prompt ids, for filtering and RWR) and `reward_conditioned_arrays` (the Decision-Transformer batch).

    arrays = sample_arrays(samples, tok.encode, shape, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    arrays["weights"] = filter_weights(arrays["rewards"], arrays["prompt_ids"], mode="best_of_n")
    # or: rwr_weights(arrays["rewards"], tau=1.0)
    loss, metrics = sft_objective(params, arrays, config=config)
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
import re
import statistics
from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metapl.data.batching import Encode, SequenceShape, TruncationStats, collate, encode_sequence
from metapl.data.sample_sets import zscore_by_prompt
from metapl.data.schemas import ScoredSample
from metapl.models.config import ModelConfig
from metapl.models.logprobs import sequence_logprobs

__all__ = [
    "DEFAULT_REWARD_TEMPLATE", "DEFAULT_REWARD_TOKEN", "filter_weights", "nll_loss", "normal_bin_edges",
    "parse_reward_prompt", "render_reward_prompt", "reward_bin", "reward_conditioned_arrays", "reward_token",
    "rwr_weights", "sample_arrays", "sft_objective",
]

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


# ------------------------------------------------------------------------- reward-conditioned ("DT") prompts

DEFAULT_REWARD_TOKEN = "<|reward_{bin}|>"
# The token goes *after* the prompt, right before the response: `encode_sequence` truncates long prompts from
# the left, which would cut a leading token; at the end it always survives and sits next to what it conditions.
DEFAULT_REWARD_TEMPLATE = "{prompt} " + DEFAULT_REWARD_TOKEN
DEFAULT_BINS = 4


def normal_bin_edges(num_bins: int) -> tuple[float, ...]:
    """The num_bins − 1 interior edges that cut a standard normal into equal-mass bins (the quantiles
    Φ⁻¹(k / num_bins)): z-scores of a prompt's samples then fill the bins about equally. 4 bins: ±0.674, 0."""
    if num_bins < 2:
        raise ValueError(f"need at least 2 bins, got {num_bins}")
    nd = statistics.NormalDist()
    return tuple(nd.inv_cdf(k / num_bins) for k in range(1, num_bins))


def _edges(bins: int | Sequence[float]) -> tuple[float, ...]:
    if isinstance(bins, numbers.Integral):
        return normal_bin_edges(int(bins))
    edges = tuple(float(e) for e in bins)
    if not edges or any(not math.isfinite(e) for e in edges) or any(a >= b for a, b in itertools.pairwise(edges)):
        raise ValueError(f"bin edges must be a non-empty, strictly increasing list of finite numbers, got {bins}")
    return edges


def reward_bin(z: float, bins: int | Sequence[float] = DEFAULT_BINS) -> int:
    """The bin of a z-score: the number of edges ≤ z, in 0 .. K−1 (K = number of bins).

    bins: K (equal-mass bins of a standard normal, `normal_bin_edges(K)`) or the increasing interior edges.
    A z exactly on an edge goes to the upper bin.
    """
    if not math.isfinite(z):
        raise ValueError(f"z must be finite, got {z}")
    return bisect.bisect_right(_edges(bins), float(z))


def _num_bins(bins: int | Sequence[float]) -> int:
    return len(_edges(bins)) + 1


def reward_token(z: float, bins: int | Sequence[float] = DEFAULT_BINS, token: str = DEFAULT_REWARD_TOKEN) -> str:
    """The reward token of a z-score, e.g. "<|reward_3|>". `token` may use {bin} and {top} (= K − 1), e.g.
    "Score: {bin}/{top}"."""
    return token.format(bin=reward_bin(z, bins), top=_num_bins(bins) - 1)


def render_reward_prompt(
    prompt: str,
    z_or_bin: float | int,
    template: str = DEFAULT_REWARD_TEMPLATE,
    *,
    bins: int | Sequence[float] = DEFAULT_BINS,
) -> str:
    """The conditioned prompt: `template` with {prompt}, {bin} and {top} (= K − 1) filled in.

    z_or_bin: an integer (Python or numpy) is a bin index in 0 .. K−1 — what inference uses to condition on
    a chosen target, usually the top bin K − 1; a float is a z-score, quantised with `bins` (`reward_bin`).
    """
    k = _num_bins(bins)
    if isinstance(z_or_bin, numbers.Integral) and not isinstance(z_or_bin, bool):
        b = int(z_or_bin)
        if not 0 <= b < k:
            raise ValueError(f"bin {b} is outside 0 .. {k - 1}")
    elif isinstance(z_or_bin, numbers.Real) and not isinstance(z_or_bin, bool):
        b = reward_bin(float(z_or_bin), bins)
    else:
        raise TypeError(f"z_or_bin must be an int bin or a float z-score, got {type(z_or_bin).__name__}")
    if "{prompt}" not in template or "{bin}" not in template:
        raise ValueError(f"the template must contain {{prompt}} and {{bin}}, got {template!r}")
    return template.format(prompt=prompt, bin=b, top=k - 1)


def parse_reward_prompt(
    text: str, template: str = DEFAULT_REWARD_TEMPLATE, *, bins: int | Sequence[float] = DEFAULT_BINS
) -> tuple[str, int]:
    """The inverse of `render_reward_prompt`: (prompt, bin) from a conditioned prompt. Raises ValueError if
    `text` does not follow the template."""
    k = _num_bins(bins)
    pattern, seen = [], set()
    for i, part in enumerate(re.split(r"\{(prompt|bin|top)\}", template)):
        if i % 2 == 0:
            pattern.append(re.escape(part))
        elif part == "top":
            pattern.append(re.escape(str(k - 1)))
        elif part in seen:
            pattern.append(f"(?P={part})")
        else:
            seen.add(part)
            pattern.append("(?P<prompt>.*)" if part == "prompt" else r"(?P<bin>\d+)")
    m = re.fullmatch("".join(pattern), text, flags=re.DOTALL)
    if m is None or int(m["bin"]) >= k:
        raise ValueError(f"{text!r} does not follow the reward template {template!r} with {k} bins")
    return m["prompt"], int(m["bin"])


# ---------------------------------------------------------------------------------------------------- builders


def _sft_arrays(prompts: Sequence[str], responses: Sequence[str], encode: Encode, shape: SequenceShape, *,
                eos_id: int | None, pad_id: int, stats: TruncationStats | None, length: int | None) -> dict:
    if not prompts:
        raise ValueError("no samples")
    stats = stats if stats is not None else TruncationStats()
    encoded = [encode_sequence(encode(p), encode(r), shape, eos_id, stats) for p, r in zip(prompts, responses)]
    seqs = collate(encoded, length or shape.bucket(max(len(e.ids) for e in encoded)), pad_id)
    return {"tokens": seqs.tokens, "attention_mask": seqs.attention_mask, "response_mask": seqs.response_mask}


def _prompt_ids(samples: Sequence[ScoredSample]) -> np.ndarray:
    """Group index of each sample's (domain, prompt), groups numbered in order of first appearance."""
    index: dict[tuple[str, str], int] = {}
    return np.asarray([index.setdefault((s.domain, s.prompt), len(index)) for s in samples], np.int32)


def sample_arrays(
    samples: Sequence[ScoredSample],
    encode: Encode,
    shape: SequenceShape,
    *,
    eos_id: int | None,
    pad_id: int = 0,
    stats: TruncationStats | None = None,
    length: int | None = None,
) -> dict[str, np.ndarray]:
    """An SFT batch of `prompt ⊕ response (⊕ eos)` per sample, in order (the shared batching code).

    Returns tokens, attention_mask, response_mask [N, L] (L = `length` or the bucket of the longest);
    rewards [N] float32; prompt_ids [N] int32 (same (domain, prompt) = same id, numbered by first appearance);
    weights [N] float32, all 1 — replace them with `filter_weights(...)` or `rwr_weights(...)`.
    """
    out = _sft_arrays([s.prompt for s in samples], [s.response for s in samples], encode, shape, eos_id=eos_id,
                      pad_id=pad_id, stats=stats, length=length)
    out["rewards"] = np.asarray([s.reward for s in samples], np.float32)
    out["prompt_ids"] = _prompt_ids(samples)
    out["weights"] = np.ones(len(samples), np.float32)
    return out


def reward_conditioned_arrays(
    samples: Sequence[ScoredSample],
    encode: Encode,
    shape: SequenceShape,
    *,
    eos_id: int | None,
    pad_id: int = 0,
    bins: int | Sequence[float] = DEFAULT_BINS,
    template: str = DEFAULT_REWARD_TEMPLATE,
    stats: TruncationStats | None = None,
    length: int | None = None,
) -> dict[str, np.ndarray]:
    """The reward-conditioned ("Decision Transformer") SFT batch: `render_reward_prompt(x, bin(z)) ⊕ y (⊕ eos)`.

    z is each sample's z-score within its prompt (`sample_sets.zscore_by_prompt`: population std; a prompt
    with equal rewards gets z = 0), quantised with `bins`. Deterministic: samples stay in order.
    Returns tokens, attention_mask, response_mask [N, L]; weights [N] (ones); reward_bin [N] int32;
    prompt_ids [N] int32. At inference, sample from `render_reward_prompt(x, K − 1, template, bins=bins)`
    (or any target bin) with the same template and bins.
    """
    if not samples:
        raise ValueError("no samples")
    z = [s.reward for s in zscore_by_prompt(samples)]
    bin_ids = [reward_bin(v, bins) for v in z]
    prompts = [render_reward_prompt(s.prompt, b, template, bins=bins) for s, b in zip(samples, bin_ids)]
    out = _sft_arrays(prompts, [s.response for s in samples], encode, shape, eos_id=eos_id, pad_id=pad_id,
                      stats=stats, length=length)
    out["weights"] = np.ones(len(samples), np.float32)
    out["reward_bin"] = np.asarray(bin_ids, np.int32)
    out["prompt_ids"] = _prompt_ids(samples)
    return out
