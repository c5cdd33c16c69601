"""Pieces the algorithm set-ups share: evaluation of a policy by the gold judge, of a model on held-out pairs,
and frozen weights laid out on the run's mesh."""

from __future__ import annotations

from typing import Any, Callable

import jax

from metapl.data.benchmarks import Benchmark
from metapl.data.schemas import PromptExample
from metapl.eval.gold import gold_reward_of_samples
from metapl.keys import stream_key
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
    eval_sets = eval_pair_batches(bench.eval_pairs, bench, cfg.data.batch_size)
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


__all__ = ["pair_evaluator", "placed_on_run_mesh", "policy_gold_reward", "start_policy", "training_prompts"]
