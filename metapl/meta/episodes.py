"""What meta-training feeds on: samples from π_ref for the projected inner solver, and episodes as arrays.

The projected inner solver needs N samples from π_ref per support prompt: they are drawn once at set-up for a
pool of support prompts per training domain (π_ref never changes), and each episode (support prompts + query
pairs under a feedback budget, `metapl.data.episodes`) picks its rows from them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metapl.data.batching import SequenceShape, TruncationStats, prompt_arrays
from metapl.data.episodes import EpisodeSampler
from metapl.data.schemas import PromptExample
from metapl.models import SamplingConfig, generate
from metapl.models.config import ModelConfig


@dataclasses.dataclass
class ReferenceSamples:
    """N samples from π_ref for each of a list of prompts: tokens, attention_mask, response_mask [n, N, T]."""

    prompts: list[PromptExample]
    arrays: dict[str, np.ndarray]
    row: dict[tuple[str, str], int]  # (domain, prompt) -> index


def sample_reference(params: Any, config: ModelConfig, prompts: list[PromptExample], n: int, *, encode, pad_id: int,
                     eos_id: int, max_prompt_tokens: int, max_response_tokens: int, key: jax.Array,
                     batch_size: int = 64, mesh=None) -> ReferenceSamples:
    """n temperature-1 samples per prompt; every sequence is prompt (left-padded) ⊕ response (right-padded).
    mesh: sample sharded (see `generate`)."""
    shape = SequenceShape(max_prompt_tokens, max_response_tokens)
    stats = TruncationStats()
    sampling = SamplingConfig(max_new_tokens=max_response_tokens, temperature=1.0, stop_token_ids=(eos_id,))
    repeated = [p for p in prompts for _ in range(n)]
    batch_size = min(batch_size, len(repeated))
    parts = []
    for start in range(0, len(repeated), batch_size):
        chunk = repeated[start:start + batch_size]
        chunk = chunk + chunk[: batch_size - len(chunk)]  # one compiled shape; the padding rows are dropped below
        tokens, mask = prompt_arrays(chunk, encode, shape, pad_id, stats, length=max_prompt_tokens)
        out = generate(params, config, tokens, mask, jax.random.fold_in(key, start), sampling, pad_id=pad_id,
                       mesh=mesh)
        keep = min(batch_size, len(repeated) - start)
        parts.append({k: np.asarray(v)[:keep] for k, v in out.sequences().items()})
    arrays = {k: np.concatenate([p[k] for p in parts]).reshape(len(prompts), n, -1) for k in parts[0]}
    row = {(p.domain, p.prompt): i for i, p in enumerate(prompts)}
    return ReferenceSamples(prompts, arrays, row)


def shared_support(support: dict, prompt_tokens: int) -> dict:
    """Reference samples [..., N, T] whose first `prompt_tokens` columns are the (left-padded) prompt, in the
    shared-prefix layout (`metapl.models.shared_prefix`): prompt_tokens, prompt_mask [..., prompt_tokens] and
    response_tokens, response_mask [..., N, T − prompt_tokens]. Works on numpy and jax arrays, under jit."""
    return {"prompt_tokens": support["tokens"][..., 0, :prompt_tokens],
            "prompt_mask": support["attention_mask"][..., 0, :prompt_tokens],
            "response_tokens": support["tokens"][..., prompt_tokens:],
            "response_mask": support["response_mask"][..., prompt_tokens:]}


class EpisodeBatches:
    """Episode i as arrays: support {tokens, attention_mask, response_mask} [E, P, N, T] (reference samples of
    the support prompts) with their prompts [E, P, Tp], and query pairs [E, Q, L]; or, with the loader's
    `shared_prefix`, both in the shared-prefix layout (`shared_support`; query pairs as
    `PairLoader.arrays_at`). Its position is the episode index."""

    def __init__(self, sampler: EpisodeSampler, samples: ReferenceSamples, pair_loader, pair_index: dict,
                 prompt_tokens: int):
        self.sampler, self.samples, self.loader, self.pair_index = sampler, samples, pair_loader, pair_index
        self.prompt_tokens = prompt_tokens
        self.shared_prefix = getattr(pair_loader, "shared_prefix", False)

    def batch(self, index: int) -> dict:
        ep = self.sampler.episode(index)
        rows = np.asarray([[self.samples.row[(p.domain, p.prompt)] for p in prompts] for prompts in ep.support])
        support = {k: jnp.asarray(v[rows]) for k, v in self.samples.arrays.items()}
        shared = shared_support(support, self.prompt_tokens)
        if self.shared_prefix:
            support = shared
        else:  # the prompts themselves (every sample of a prompt starts with it), for on-policy sampling
            support.update(prompt_tokens=shared["prompt_tokens"], prompt_mask=shared["prompt_mask"])
        query = []
        for pairs in ep.query:
            arrays = self.loader.arrays_at([self.pair_index[id(p)] for p in pairs])
            query.append({k: v for k, v in arrays.items() if k not in ("domain", "gold_margin")})
        query = {k: jnp.asarray(np.stack([q[k] for q in query])) for k in query[0]}
        return {"support": support, "query": query, "episode": jnp.asarray(index, jnp.int32)}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        out = self.batch(self.sampler.index)
        self.sampler.index += 1
        return out

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


__all__ = ["EpisodeBatches", "ReferenceSamples", "sample_reference", "shared_support"]
