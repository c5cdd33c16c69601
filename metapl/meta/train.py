"""Meta-training the general reward model as a `metapl train meta` run, and the reference samples it needs.

Each outer step draws an episode of training domains (support prompts + query pairs under a feedback budget,
`metapl.data.episodes`), computes the reward model's meta-gradient (`metagrad.meta_gradient`) and applies the
outer optax optimiser through the shared training loop (checkpoints, resume, metrics, non-finite guard). The
projected inner solver needs N samples from π_ref per support prompt: they are drawn once at setup for a pool of
`support_pool` prompts per training domain (π_ref never changes).

The loop differentiates an objective; the meta-gradient is not the autodiff of one function (the implicit and
first-order methods), so the objective is the surrogate L + <φ − sg(φ), sg(dL/dφ)>, whose value is the meta loss
and whose gradient is the meta-gradient.

Parameter trees (the same as `metapl train rm`, so `metapl meta-test` reads either kind of run):
full weights: φ = a head model (`init_head_params`); LoRA (model.lora_rank > 0): φ = {"lora", "head"} over the
frozen backbone. The policy starts at θ₀ = the reference: fresh LoRA adapters (B = 0) over the same base, or
the base weights themselves.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metapl.bilevel import tree_vdot
from metapl.config import ConfigError
from metapl.data.batching import SequenceShape, TruncationStats, prompt_arrays
from metapl.data.episodes import EpisodeConfig, EpisodeSampler
from metapl.data.schemas import PromptExample
from metapl.meta.metagrad import MetaConfig, meta_gradient, meta_gradient_over_shards, meta_loss
from metapl.meta.objectives import pair_rewards, reward_function
from metapl.models import SamplingConfig, generate, init_lora
from metapl.models.config import ModelConfig
from metapl.parallel import run_mesh
from metapl.train.run import RunConfig, Setup

EPISODE_KEYS = {f.name for f in dataclasses.fields(EpisodeConfig)} - {"seed"}
SAMPLE_KEYS = {"samples_per_prompt", "support_pool"}
META_KEYS = {f.name for f in dataclasses.fields(MetaConfig)}


def meta_options(cfg: RunConfig) -> tuple[MetaConfig, EpisodeConfig, dict]:
    """(MetaConfig, EpisodeConfig, sample options) from the run config's `meta` section; unknown keys are errors."""
    opts = dict(cfg.meta)
    unknown = sorted(set(opts) - META_KEYS - EPISODE_KEYS - SAMPLE_KEYS)
    if unknown:
        allowed = sorted(META_KEYS | EPISODE_KEYS | SAMPLE_KEYS)
        raise ConfigError(f"meta: unknown option(s) {unknown}; allowed: {allowed}")
    try:
        meta = MetaConfig(**{k: v for k, v in opts.items() if k in META_KEYS})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"meta: {e}") from None
    episodes = EpisodeConfig(**{k: v for k, v in opts.items() if k in EPISODE_KEYS}, seed=cfg.seed)
    samples = {"samples_per_prompt": int(opts.get("samples_per_prompt", 4)),
               "support_pool": int(opts.get("support_pool", 16))}
    return meta, episodes, samples


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


class EpisodeBatches:
    """Episode i as arrays: support {tokens, attention_mask, response_mask} [E, P, N, T] (reference samples of
    the support prompts) and query pairs [E, Q, L]. Its position is the episode index."""

    def __init__(self, sampler: EpisodeSampler, samples: ReferenceSamples, pair_loader, pair_index: dict,
                 prompt_tokens: int):
        self.sampler, self.samples, self.loader, self.pair_index = sampler, samples, pair_loader, pair_index
        self.prompt_tokens = prompt_tokens

    def batch(self, index: int) -> dict:
        ep = self.sampler.episode(index)
        rows = np.asarray([[self.samples.row[(p.domain, p.prompt)] for p in prompts] for prompts in ep.support])
        support = {k: jnp.asarray(v[rows]) for k, v in self.samples.arrays.items()}
        # The prompts themselves (left-padded; every sample of a prompt starts with it), for on-policy sampling.
        support["prompt_tokens"] = support["tokens"][:, :, 0, : self.prompt_tokens]
        support["prompt_mask"] = support["attention_mask"][:, :, 0, : self.prompt_tokens]
        query = []
        for pairs in ep.query:
            arrays = self.loader.batch_at([self.pair_index[id(p)] for p in pairs]).arrays()
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


def setup_meta(cfg: RunConfig) -> Setup:
    from metapl.train.algorithms import (
        _eval_batches, _model_and_benchmark, _pair_batches, domain_split, reward_model_parameters,
    )

    meta, episode_cfg, sample_opts = meta_options(cfg)
    config, params, bench = _model_and_benchmark(cfg)
    phi, rm_frozen = reward_model_parameters(config, params, cfg.seed)
    # θ₀ is the reference policy: the base weights themselves, or fresh adapters (B = 0) over them.
    if config.lora is None:
        theta0, base = params, None
    else:
        theta0, base = init_lora(config, jax.random.PRNGKey(cfg.seed + 3)), params

    pool = [p for prompts, _ in domain_split(cfg, "train", sample_opts["support_pool"]).values() for p in prompts]
    samples = sample_reference(params, config.replace(lora=None), pool, sample_opts["samples_per_prompt"],
                               encode=bench.encode, pad_id=bench.pad_id, eos_id=bench.eos_id,
                               max_prompt_tokens=cfg.data.max_prompt_tokens,
                               max_response_tokens=cfg.data.max_response_tokens, key=jax.random.PRNGKey(cfg.seed + 4),
                               mesh=run_mesh(cfg.mesh))
    sampler = EpisodeSampler(pool, bench.train_pairs, episode_cfg)
    loader = _pair_batches(bench.train_pairs, bench, cfg, episode_cfg.query_pairs, cfg.seed)
    pair_index = {id(p): i for i, p in enumerate(bench.train_pairs)}
    batches = EpisodeBatches(sampler, samples, loader, pair_index, cfg.data.max_prompt_tokens)
    onpolicy = {"max_new_tokens": cfg.data.max_response_tokens, "eos_id": bench.eos_id, "pad_id": bench.pad_id}

    frozen = {"theta0": theta0, "base": base, "rm": rm_frozen}

    if cfg.mesh.data > 1:  # the episode's domains split over the data axis, meta-gradients averaged by pmean
        shards = functools.partial(meta_gradient_over_shards, mesh=run_mesh(cfg.mesh))
        compute = lambda phi, *args, **kwargs: shards(jax.lax.stop_gradient(phi), *args, **kwargs)  # noqa: E731
    else:
        compute = meta_gradient

    def objective(phi, frozen, batch):
        reward_fn = reward_function(config, frozen["rm"])
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 5), batch["episode"])
        loss, dphi, metrics = compute(phi, frozen["theta0"], frozen["base"],
                                      batch["support"], batch["query"], cfg=meta, policy_config=config,
                                      reward_fn=reward_fn, key=key, onpolicy=onpolicy)
        surrogate = jax.lax.stop_gradient(loss) + tree_vdot(jax.tree.map(lambda p: p - jax.lax.stop_gradient(p), phi),
                                     jax.lax.stop_gradient(dphi))
        acc = metrics.pop("query_accuracy")
        return surrogate, dict(metrics, query_accuracy=jnp.mean(acc), query_accuracy_min=jnp.min(acc))

    eval_sets = _eval_batches(bench.eval_pairs, bench, cfg)

    def pair_accuracy(phi, frozen, b):
        chosen, rejected = pair_rewards(reward_function(config, frozen["rm"]), phi, b)
        return jnp.sum((chosen > rejected) * b["weights"]), jnp.sum(b["weights"])

    @jax.jit
    def eval_loss(phi, frozen, batch):  # the inner steps and the outer loss, no hypergradient
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 5), batch["episode"])
        return meta_loss(phi, frozen["theta0"], frozen["base"], batch["support"], batch["query"], cfg=meta,
                         policy_config=config, reward_fn=reward_function(config, frozen["rm"]), key=key,
                         onpolicy=onpolicy)[1]

    pair_fn = jax.jit(pair_accuracy)
    eval_episodes = [batches.batch(10_000_000 + i) for i in range(2)]  # fixed episodes, never used for training

    def evaluate(phi, frozen):
        hits = [jax.device_get(pair_fn(phi, frozen, b)) for b in eval_sets]
        outs = [jax.device_get(eval_loss(phi, frozen, b)) for b in eval_episodes]
        return {"pair_accuracy": float(sum(h for h, _ in hits) / sum(n for _, n in hits)),
                "eval_outer_loss": float(np.mean([o["outer_loss"] for o in outs])),
                "eval_query_accuracy": float(np.mean([o["query_accuracy"] for o in outs]))}

    e = episode_cfg
    describe = (f"meta ({meta.inner_solver} solver, {meta.method} hypergradient, K={meta.inner_steps}, "
                f"β={meta.beta}): {len(sampler.domains)} training domains, "
                f"episodes of {e.domains_per_episode} domains × ({e.support_prompts} support prompts × "
                f"{sample_opts['samples_per_prompt']} reference samples, {e.query_pairs} query pairs), "
                f"feedback budget {e.feedback_budget} pairs/domain; "
                f"{'LoRA policy and reward' if config.lora else 'full-weight policy and reward'}")
    info = {"training_domains": sampler.domains, "support_pool_prompts": len(pool),
            "reference_samples": int(samples.arrays["tokens"].shape[0] * samples.arrays["tokens"].shape[1]),
            "train_pairs": len(bench.train_pairs), "eval_pairs": len(bench.eval_pairs)}
    return Setup(phi, frozen, objective, batches, evaluate, describe, info)
