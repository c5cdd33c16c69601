"""SFT batches from scored samples, for the offline RLHF methods of Hu et al. (arXiv 2308.12050).

A sample set (`metapl.data.sample_sets`: n responses per prompt, each a `ScoredSample` with a reward) becomes
one batch of `prompt ⊕ response (⊕ eos)` sequences through the shared batching code (`metapl.data.batching`);
the losses (`metapl.losses.offline`) then weight each sequence.

    sample_arrays              tokens, masks, rewards [N], prompt_ids [N], weights [N] (ones): MLE with filtering
                               and reward-weighted regression set the weights
    reward_conditioned_arrays  the prompt carries the reward token of the sample's quantised z-score
                               (`metapl.data.reward_tokens`): reward-conditioned ("Decision Transformer") SFT

    arrays = sample_arrays(samples, tok.encode, shape, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    arrays["weights"] = filter_weights(arrays["rewards"], arrays["prompt_ids"], mode="best_of_n")

Both are numpy and deterministic: samples stay in order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metapl.data.batching import Encode, SequenceShape, TruncationStats, collate, encode_sequence
from metapl.data.reward_tokens import DEFAULT_BINS, DEFAULT_REWARD_TEMPLATE, render_reward_prompt, reward_bin
from metapl.data.sample_sets import zscore_by_prompt
from metapl.data.schemas import ScoredSample

__all__ = ["reward_conditioned_arrays", "sample_arrays"]


def _sft_arrays(prompts: Sequence[str], responses: Sequence[str], encode: Encode, shape: SequenceShape, *,
                eos_id: int | None, pad_id: int, stats: TruncationStats | None, length: int | None) -> dict:
    """tokens, attention_mask, response_mask [N, L] of `prompt ⊕ response (⊕ eos)` per row."""
    if not prompts:
        raise ValueError("no samples")
    stats = stats if stats is not None else TruncationStats()
    encoded = [encode_sequence(encode(p), encode(r), shape, eos_id, stats) for p, r in zip(prompts, responses)]
    seqs = collate(encoded, length or shape.bucket(max(len(e.ids) for e in encoded)), pad_id)
    return {"tokens": seqs.tokens, "attention_mask": seqs.attention_mask, "response_mask": seqs.response_mask}


def _prompt_ids(samples: Sequence[ScoredSample]) -> np.ndarray:
    """Group index [N] int32 of each sample's (domain, prompt), groups numbered in order of first appearance."""
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
    weights [N] float32, all 1 — replace them with `metapl.losses.offline.filter_weights(...)` or
    `rwr_weights(...)`.
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
