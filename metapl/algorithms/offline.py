"""Offline RLHF (Hu et al., arXiv 2308.12050): `mle-filter`, `rwr` and `dt`. Each samples responses from the
reference policy, scores them with the gold judge (or, with `reward.model`, a trained reward model), then trains
with an SFT-like loss: keep the best (filtered MLE), weight by reward (reward-weighted regression), or condition on
a reward token (reward-conditioned SFT, "decision transformer", which is asked for the top reward bin at
evaluation)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

from metapl.config import ConfigError, number
from metapl.algorithms.common import RewardSource, policy_gold_reward, sample_scorer, start_policy, training_prompts
from metapl.data.batching import SequenceShape, TruncationStats
from metapl.data.reward_tokens import DEFAULT_REWARD_TEMPLATE, DEFAULT_REWARD_TOKEN, render_reward_prompt
from metapl.data.sample_sets import (
    SampleSetConfig,
    best_of_n,
    build_sample_set,
    filter_by_zscore,
    zscore_by_prompt,
)
from metapl.data.sft_arrays import reward_conditioned_arrays, sample_arrays
from metapl.losses import offline
from metapl.parallel import run_mesh
from metapl.train.batches import ArrayBatches
from metapl.train.spec import Algorithm, RunConfig, Setup, register

# dt: room in the prompt for the reward token (the prompt limit grows by this many tokens).
REWARD_TOKEN_ROOM = 4


@dataclasses.dataclass(frozen=True)
class OfflineOptions:
    """filter ("best_of_n": the best sample of each prompt; "zscore": samples whose reward z-scored within their
    prompt is >= threshold) and threshold: mle-filter; tau: rwr's temperature (weights exp(r̃/τ), r̃ the rewards
    z-scored within their prompt); bins: dt's reward bins (equal-mass bins of a standard normal)."""

    filter: Literal["best_of_n", "zscore"] = "best_of_n"
    threshold: float = 0.5
    tau: float = number(1.0, gt=0)
    bins: int = number(4, ge=2)

    def __post_init__(self):
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.bins < 2:
            raise ValueError(f"bins must be >= 2, got {self.bins}")


@dataclasses.dataclass(frozen=True)
class OfflineRun(RunConfig):
    """`mle-filter`, `rwr` or `dt`; the sample set's size is `data.sample_prompts` × `data.samples_per_prompt`,
    scored by `reward` (default: the gold judge)."""

    algo: str = "mle-filter"
    offline: OfflineOptions = OfflineOptions()
    reward: RewardSource = RewardSource()


def conditioning(cfg: RunConfig, reward_bin: int | None = None
                 ) -> tuple[tuple[str, ...], Callable[[str], str] | None]:
    """(the reward tokens a run's vocabulary gains, how its policy is prompted at evaluation): dt's bin tokens and
    the prompt conditioned on `reward_bin` (default: the top bin); nothing for every other run."""
    if cfg.algo != "dt":
        if reward_bin is not None:
            raise ConfigError(f"a reward bin conditions a dt policy; this is a {cfg.algo} run")
        return (), None
    bins = cfg.offline.bins
    target = bins - 1 if reward_bin is None else reward_bin
    if not 0 <= target < bins:
        raise ConfigError(f"reward bin {reward_bin} is not one of the run's bins 0 .. {bins - 1}")
    tokens = tuple(DEFAULT_REWARD_TOKEN.format(bin=b) for b in range(bins))
    return tokens, lambda x: render_reward_prompt(x, target, DEFAULT_REWARD_TEMPLATE, bins=bins)


def setup_offline(cfg: OfflineRun) -> Setup:
    method, opts = cfg.algo, cfg.offline
    reward_tokens, top_bin_prompt = conditioning(cfg)
    policy, params, bench, trainable, frozen = start_policy(cfg, reward_tokens=reward_tokens, keep_reference=False)
    config = policy.config
    prompts = training_prompts(bench, cfg.data.sample_prompts)
    sample_cfg = SampleSetConfig(samples_per_prompt=cfg.data.samples_per_prompt,
                                 max_new_tokens=cfg.data.max_response_tokens, batch_size=32,
                                 max_prompt_tokens=cfg.data.max_prompt_tokens, seed=cfg.seed, policy="reference")
    scorer = sample_scorer(cfg.reward, bench, cfg.data)
    samples, report = build_sample_set(params, policy.base_config, prompts, bench.encode, bench.decode, scorer,
                                       sample_cfg, stop_token_ids=(bench.eos_id,), pad_id=bench.pad_id,
                                       progress=False, mesh=run_mesh(cfg.mesh))
    shape = SequenceShape(cfg.data.max_prompt_tokens + (REWARD_TOKEN_ROOM if method == "dt" else 0),
                          cfg.data.max_response_tokens)
    stats = TruncationStats()
    encoding = dict(eos_id=bench.eos_id, pad_id=bench.pad_id, stats=stats, length=shape.max_length)
    info = {"samples": len(samples), "sample_report": report.summary()}
    render = None
    if method == "mle-filter":
        if opts.filter == "best_of_n":
            kept = best_of_n(samples)
        else:
            kept, filter_report = filter_by_zscore(samples, opts.threshold)
            info["filter_report"] = filter_report.summary()
        arrays = sample_arrays(kept, bench.encode, shape, **encoding)
        info["kept"] = len(kept)
    elif method == "rwr":
        arrays = sample_arrays(zscore_by_prompt(samples), bench.encode, shape, **encoding)
    else:  # dt: conditioned at evaluation on the top reward bin
        arrays = reward_conditioned_arrays(samples, bench.encode, shape, bins=opts.bins, **encoding)
        render = top_bin_prompt
    arrays = {k: v for k, v in arrays.items()
              if k in ("tokens", "attention_mask", "response_mask", "weights", "rewards")}

    def objective(t, f, batch):
        p, lora = policy.weights(t, f)
        if method == "rwr":
            batch = dict(batch, weights=offline.rwr_weights(batch["rewards"], opts.tau, normalize="none"))
        return offline.sft_objective(p, batch, config=config, lora=lora)

    gold = policy_gold_reward(policy, bench, cfg, render=render)
    info["truncation"] = stats.summary()
    return Setup(trainable, frozen, objective,
                 ArrayBatches(arrays, cfg.data.batch_size * cfg.accumulation_steps, cfg.seed),
                 lambda t, f: {"gold_reward": gold(t, f)},
                 f"{method}: {len(samples)} samples from {len(prompts)} prompts scored by {scorer.name}; "
                 f"{len(arrays['tokens'])} training sequences", info=info)


@dataclasses.dataclass(frozen=True)
class RWRRun(OfflineRun):
    algo: str = "rwr"


@dataclasses.dataclass(frozen=True)
class DTRun(OfflineRun):
    algo: str = "dt"


register(Algorithm("mle-filter", OfflineRun, setup_offline, "maximum likelihood on filtered reference samples"))
register(Algorithm("rwr", RWRRun, setup_offline, "reward-weighted regression on reference samples"))
register(Algorithm("dt", DTRun, setup_offline, "reward-conditioned SFT (decision transformer)"))

__all__ = ["DTRun", "OfflineOptions", "OfflineRun", "REWARD_TOKEN_ROOM", "RWRRun", "conditioning", "setup_offline"]
