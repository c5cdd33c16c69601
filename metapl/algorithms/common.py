"""Pieces the algorithm set-ups share: evaluation of a policy by the gold judge, of a model on held-out pairs,
frozen weights laid out on the run's mesh, and what rewards a policy's samples (the gold judge or a trained
reward model: `RewardSource`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from metapl.config import ConfigError
from metapl.data.batching import SequenceShape
from metapl.data.benchmarks import Benchmark, DataSpec
from metapl.data.sample_sets import GoldJudgeScorer, RewardModelScorer, Scorer
from metapl.data.schemas import PromptExample
from metapl.eval.gold import gold_reward_of_samples
from metapl.keys import stream_key
from metapl.meta.evaluate import restore_reward_model
from metapl.models.policy import Policy
from metapl.parallel import param_shardings, place, run_mesh
from metapl.train.batches import eval_pair_batches, weighted_mean
from metapl.train.spec import RunConfig, build_model_and_benchmark


def policy_gold_reward(policy: Policy, bench: Benchmark, cfg: RunConfig,
                       render: Callable[[str], str] | None = None) -> Callable[[Any, Any], float]:
    """(trainable, frozen) -> the mean gold reward of one sample per evaluation prompt from the current policy
    (the same key at every evaluation, so evaluations differ only by the policy)."""

    def gold(trainable, frozen) -> float:
        params, lora = policy.weights(trainable, frozen)
        return gold_reward_of_samples(params, policy.config, bench, stream_key(cfg.seed, "eval_samples"), lora=lora,
                                      mesh=run_mesh(cfg.mesh), render=render)

    return gold


def pair_evaluator(objective: Callable, bench: Benchmark, cfg: RunConfig) -> Callable[[Any, Any], dict]:
    """(trainable, frozen) -> the metrics of `objective` (trainable, frozen, batch) over every evaluation pair,
    averaged by pair."""
    eval_sets = eval_pair_batches(bench.eval_pairs, bench, cfg.data.batch_size, cfg.model.shared_prefix)
    eval_fn = jax.jit(objective)

    def evaluate(trainable, frozen) -> dict:
        rows = [jax.device_get(eval_fn(trainable, frozen, b)[1]) for b in eval_sets]
        return weighted_mean(rows, [float(b["weights"].sum()) for b in eval_sets])

    return evaluate


def placed_on_run_mesh(frozen: Any, cfg: RunConfig) -> Any:
    """Frozen weights laid out on the run's mesh now (unchanged for a one-device run), so that a sampler holding
    them and the training step share one copy (the run loop's own placement of them is then a no-op)."""
    mesh = run_mesh(cfg.mesh)
    return frozen if mesh is None else place(frozen, param_shardings(frozen, mesh))


def training_prompts(bench: Benchmark, total: int) -> list[PromptExample]:
    """About `total` prompts of the training domains to sample from (at least one per domain)."""
    return bench.training_prompts(max(1, total // len({p.domain for p in bench.train_pairs})))


def start_policy(cfg: RunConfig, *, reward_tokens: tuple[str, ...] = (), keep_reference: bool = True):
    """(policy, initial params, benchmark, trainable, frozen) of a run that trains a policy from π_ref: the
    model and benchmark of `cfg`, split by `Policy.init` (fresh adapters from the "adapters" key stream)."""
    config, params, bench = build_model_and_benchmark(cfg, reward_tokens)
    policy = Policy(config)
    trainable, frozen = policy.init(params, stream_key(cfg.seed, "adapters"), keep_reference=keep_reference)
    return policy, params, bench, trainable, frozen


@dataclasses.dataclass(frozen=True)
class RewardSource:
    """What scores a policy's samples while it trains (rloo, ppo) or the sample set it learns from (mle-filter,
    rwr, dt): `model`, the directory of a reward-model run (`rm` or `meta`, its latest checkpoint) on the same
    benchmark, or None for the benchmark's gold judge (an oracle: unlimited feedback)."""

    model: str | None = None


# The data settings that define a benchmark's text and domains: a reward model must have read the same ones.
_SAME_BENCHMARK = ("benchmark", "data_dir", "synthetic", "mechanisms")


def reward_model_scorer(run_dir: str | Path, data: DataSpec, batch_size: int = 32) -> RewardModelScorer:
    """The reward model of a `rm` or `meta` run as a sample scorer over prompt ⊕ response text, encoded with the
    run's own tokenizer and limits (as it saw its training pairs). `data`: the caller's benchmark settings, which
    must match the run's (`_SAME_BENCHMARK`)."""
    restored = restore_reward_model(run_dir)
    theirs = restored.cfg.data
    for name in _SAME_BENCHMARK:
        if getattr(theirs, name) != getattr(data, name):
            raise ConfigError(f"reward.model={run_dir}: that run read data.{name}={getattr(theirs, name)!r}, this one "
                              f"data.{name}={getattr(data, name)!r}; a reward model scores the benchmark it learned")
    bench, phi, frozen = restored.bench, restored.phi, restored.frozen["rm"]
    params, lora = (phi, None) if frozen is None else (dict(frozen, head=phi["head"]), phi["lora"])
    spec = bench.spec
    shape = SequenceShape(spec.max_prompt_tokens, spec.max_response_tokens)
    return RewardModelScorer(params, restored.config, bench.encode, shape=shape, eos_id=bench.eos_id,
                             pad_id=bench.pad_id, batch_size=batch_size, length=shape.max_length, lora=lora,
                             name=f"reward-model:{Path(run_dir).parent.name}/{Path(run_dir).name}@{restored.step}")


def sample_scorer(source: RewardSource, bench: Benchmark, data: DataSpec) -> Scorer:
    """The scorer of `source`: the benchmark's gold judge, or the reward model of the run `source.model`."""
    if source.model is None:
        return GoldJudgeScorer(bench.gold, f"{bench.name}:gold")
    return reward_model_scorer(source.model, data)


def token_scores(scorer: Scorer, bench: Benchmark) -> Callable[[Sequence[PromptExample], Any, Any], np.ndarray]:
    """(prompts, response tokens, mask [B, N]) -> [B] scores of the decoded responses, eos dropped (the gold
    judge: `Benchmark.gold_scores`, where an empty response scores 0; a reward model scores whatever it is given)."""
    if isinstance(scorer, GoldJudgeScorer):
        return lambda prompts, tokens, mask: np.asarray(bench.gold_scores(prompts, tokens, mask))

    def score(prompts, tokens, mask):
        return scorer.score([p.domain for p in prompts], [p.prompt for p in prompts],
                            bench.decode_responses(tokens, mask))

    return score


__all__ = ["RewardSource", "pair_evaluator", "placed_on_run_mesh", "policy_gold_reward", "reward_model_scorer",
           "sample_scorer", "start_policy", "token_scores", "training_prompts"]
