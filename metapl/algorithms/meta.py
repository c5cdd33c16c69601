"""`meta`: meta-learning the general reward model as a training run (DESIGN.md, "Bilevel formulation"; Jia,
arXiv 2402.14760 — the paper's public code does not implement its bilevel algorithm, so this follows its text).

Each outer step draws an episode of training domains (support prompts + query pairs under a feedback budget) and
takes one optax step on the meta objective (`metapl.meta.meta_objective`): for each domain, K inner steps of
KL-regularised policy optimisation from θ₀ under r_φ, then the adapted policy's agreement with the domain's
query pairs. Its `jax.grad` in φ is the hypergradient of the configured method (`metapl.bilevel.solve`), so the
shared training step differentiates it like any other objective.

Parameter trees (the same as `rm`, so `metapl meta-test` reads either kind of run; `metapl.meta.parameters`):
full weights: φ = a head model; LoRA (model.lora_rank > 0): φ = {"lora", "head"} over the frozen backbone. The
policy starts at θ₀ = the reference: fresh LoRA adapters (B = 0) over the same base, or the base weights.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from metapl.data.episodes import EpisodeSampler
from metapl.keys import stream_key
from metapl.meta.episodes import EpisodeBatches, sample_reference
from metapl.meta.metagrad import meta_loss, meta_objective, meta_objective_over_shards
from metapl.meta.objectives import pair_rewards, reward_function
from metapl.meta.options import MetaOptions
from metapl.meta.parameters import meta_parameters
from metapl.models.policy import Policy
from metapl.parallel import run_mesh
from metapl.train.batches import eval_pair_batches, pair_loader
from metapl.train.spec import Algorithm, RunConfig, Setup, build_model_and_benchmark, register

# Episodes with these indices and above are never drawn for training: the fixed evaluation episodes.
EVAL_EPISODES = 10_000_000


@dataclasses.dataclass(frozen=True)
class MetaRun(RunConfig):
    """`meta`: the bilevel problem, the episode shape and the reference sampling in the `meta` section."""

    algo: str = "meta"
    meta: MetaOptions = MetaOptions()


def setup_meta(cfg: MetaRun) -> Setup:
    meta = cfg.meta
    bilevel, episode_cfg = meta.bilevel(), meta.episodes(cfg.seed)
    config, params, bench = build_model_and_benchmark(cfg)
    policy = Policy(config)
    phi, frozen = meta_parameters(cfg.seed, config, params)

    pool = [p for prompts, _ in bench.domain_split("train", meta.support_pool).values() for p in prompts]
    samples = sample_reference(params, policy.base_config, pool, meta.samples_per_prompt, encode=bench.encode,
                               pad_id=bench.pad_id, eos_id=bench.eos_id, max_prompt_tokens=cfg.data.max_prompt_tokens,
                               max_response_tokens=cfg.data.max_response_tokens,
                               key=stream_key(cfg.seed, "reference_samples"), mesh=run_mesh(cfg.mesh))
    sampler = EpisodeSampler(pool, bench.train_pairs, episode_cfg)
    loader = pair_loader(bench.train_pairs, bench, episode_cfg.query_pairs, cfg.seed, cfg.model.shared_prefix)
    pair_index = {id(p): i for i, p in enumerate(bench.train_pairs)}
    batches = EpisodeBatches(sampler, samples, loader, pair_index, cfg.data.max_prompt_tokens)
    onpolicy = {"max_new_tokens": cfg.data.max_response_tokens, "eos_id": bench.eos_id, "pad_id": bench.pad_id,
                "shared_prefix": cfg.model.shared_prefix}
    episode_key = stream_key(cfg.seed, "episodes")
    if cfg.mesh.data > 1:  # the episode's domains split over the data axis, meta-gradients averaged by pmean
        meta_fn = functools.partial(meta_objective_over_shards, mesh=run_mesh(cfg.mesh))
    else:
        meta_fn = meta_objective

    def reward_fn(frozen):  # r_φ(tokens, mask) over the frozen part of the reward model
        return reward_function(config, frozen["rm"])

    def problem_args(frozen, batch):
        return dict(cfg=bilevel, policy_config=config, reward_fn=reward_fn(frozen), onpolicy=onpolicy,
                    key=jax.random.fold_in(episode_key, batch["episode"]))

    def objective(phi, frozen, batch):
        loss, metrics = meta_fn(phi, frozen["theta0"], frozen["base"], batch["support"], batch["query"],
                                **problem_args(frozen, batch))
        acc = metrics.pop("query_accuracy")
        return loss, dict(metrics, query_accuracy=jnp.mean(acc), query_accuracy_min=jnp.min(acc))

    @jax.jit
    def eval_loss(phi, frozen, batch):  # the inner steps and the outer loss, no hypergradient
        return meta_loss(phi, frozen["theta0"], frozen["base"], batch["support"], batch["query"],
                         **problem_args(frozen, batch))[1]

    @jax.jit
    def pair_hits(phi, frozen, b):
        chosen, rejected = pair_rewards(reward_fn(frozen), phi, b)
        return jnp.sum((chosen > rejected) * b["weights"]), jnp.sum(b["weights"])

    eval_sets = eval_pair_batches(bench.eval_pairs, bench, cfg.data.batch_size)
    eval_episodes = [batches.batch(EVAL_EPISODES + i) for i in range(2)]

    def evaluate(phi, frozen):
        hits = [jax.device_get(pair_hits(phi, frozen, b)) for b in eval_sets]
        outs = [jax.device_get(eval_loss(phi, frozen, b)) for b in eval_episodes]
        return {"pair_accuracy": float(sum(h for h, _ in hits) / sum(n for _, n in hits)),
                "eval_outer_loss": float(np.mean([o["outer_loss"] for o in outs])),
                "eval_query_accuracy": float(np.mean([o["query_accuracy"] for o in outs]))}

    e = episode_cfg
    describe = (f"meta ({meta.inner_solver} solver, {meta.method} hypergradient, K={meta.inner_steps}, "
                f"β={meta.beta}): {len(sampler.domains)} training domains, "
                f"episodes of {e.domains_per_episode} domains × ({e.support_prompts} support prompts × "
                f"{meta.samples_per_prompt} reference samples, {e.query_pairs} query pairs), "
                f"feedback budget {e.feedback_budget} pairs/domain; "
                f"{'LoRA policy and reward' if config.lora else 'full-weight policy and reward'}")
    info = {"training_domains": sampler.domains, "support_pool_prompts": len(pool),
            "reference_samples": int(samples.arrays["tokens"].shape[0] * samples.arrays["tokens"].shape[1]),
            "train_pairs": len(bench.train_pairs), "eval_pairs": len(bench.eval_pairs)}
    return Setup(phi, frozen, objective, batches, evaluate, describe, info)


register(Algorithm("meta", MetaRun, setup_meta, "the meta-learned general reward model (bilevel)"))

__all__ = ["EVAL_EPISODES", "MetaRun", "setup_meta"]
