"""A policy judged by a benchmark's gold judge: sample once per prompt, score each response."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from metapl.data.batching import SequenceShape, TruncationStats, prompt_arrays
from metapl.data.benchmarks import Benchmark
from metapl.data.schemas import PromptExample
from metapl.models import ModelConfig, SamplingConfig, generate


def gold_reward_of_samples(params: Any, config: ModelConfig, bench: Benchmark, key: jax.Array, *,
                           prompts: Sequence[PromptExample] | None = None, lora: Any = None, mesh=None,
                           render: Callable[[str], str] | None = None) -> float:
    """Mean gold reward of one temperature-1 response per prompt (default: the benchmark's evaluation prompts),
    within the run's prompt and response limits (`bench.spec`).

    render: what the policy is shown for a prompt (e.g. the prompt with a target-reward token); the judge always
    scores the response against the original prompt. mesh: sample sharded (see `generate`).
    """
    prompts = list(bench.eval_prompts if prompts is None else prompts)
    spec = bench.spec
    shape = SequenceShape(spec.max_prompt_tokens, spec.max_response_tokens)
    shown = [dataclasses.replace(p, prompt=render(p.prompt)) for p in prompts] if render else prompts
    tokens, mask = prompt_arrays(shown, bench.encode, shape, bench.pad_id, TruncationStats(),
                                 length=spec.max_prompt_tokens)
    out = generate(params, config, tokens, mask, key,
                   SamplingConfig(max_new_tokens=spec.max_response_tokens, temperature=1.0,
                                  stop_token_ids=(bench.eos_id,)), pad_id=bench.pad_id, lora=lora, mesh=mesh)
    return float(np.mean(bench.gold_scores(prompts, out.tokens, out.mask)))


__all__ = ["gold_reward_of_samples"]
