"""KL-regularised policy optimisation with on-policy samples: `rloo` (REINFORCE with a leave-one-out baseline and
a KL penalty) and `ppo` (KL-shaped token rewards, GAE, clipped policy and value losses, a value head on the
policy's backbone, optionally the adaptive KL controller). Both are rewarded by the benchmark's gold judge or, with
`reward.model`, by a trained reward model (`RewardSource`), and regularised towards the reference: the initial
weights, or the LoRA base."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

from metapl.config import number
from metapl.algorithms.common import (
    RewardSource, placed_on_run_mesh, policy_gold_reward, sample_scorer, start_policy, token_scores, training_prompts,
)
from metapl.data.batching import SequenceShape, ShuffledBatches, TruncationStats, prompt_arrays
from metapl.data.benchmarks import Benchmark
from metapl.keys import stream_key
from metapl.losses.policy_gradient import (
    adaptive_kl_update,
    gae,
    kl_penalty,
    policy_and_values,
    ppo_objective,
    rloo_objective,
    token_rewards,
)
from metapl.models import SamplingConfig, generate, init_head_params
from metapl.models.logprobs import token_logprobs
from metapl.models.policy import Policy
from metapl.models.shared_prefix import response_token_logprobs, shared_inputs
from metapl.parallel import batch_ways, run_mesh
from metapl.train.spec import Algorithm, RunConfig, Setup, register

Weights = Callable[[Any, Any], tuple[Any, Any]]  # (trainable, frozen) -> (params, lora) of the current policy


class Rollouts:
    """On-policy batches: each step samples k responses for each of `batch_size` prompts from the current policy
    (the loop hands it the latest trainable params), scores them (`score`: prompts, tokens, mask -> [B]; default
    the gold judge) and adds the reference log-probs. Its position (prompt order) is checkpointed; step t samples
    with key fold_in(rollout key, t).

    Rows are prompt-major (sample j of prompt i is row i·k + j). With `shared_prefix` (k ≥ 2, and on a mesh a
    batch of prompts that splits over data x fsdp), each prompt is prefilled once for its k samples and the
    batch is in the shared-prefix layout: prompt_tokens, prompt_mask [N, P], response_tokens, response_mask
    [N, k, R], rewards [N·k], ref_logps [N·k, R] (response tokens only); else tokens, attention_mask,
    response_mask, ref_logps [N·k, P + R], rewards [N·k]."""

    def __init__(self, prompts, bench: Benchmark, cfg: RunConfig, policy: Policy, frozen, weights: Weights, k: int,
                 score: Callable | None = None, shared_prefix: bool = False):
        self.prompts, self.bench, self.cfg, self.policy, self.frozen, self.weights, self.k = \
            prompts, bench, cfg, policy, frozen, weights, k
        self.score = score or bench.gold_scores
        self.order = ShuffledBatches(len(prompts), cfg.data.batch_size, cfg.seed)
        self.params = None
        self.mesh = run_mesh(cfg.mesh)  # sample sharded when the run is
        # the shared layout's batch is the prompts, not prompts x k: it must split over the mesh's batch axes
        self.shared_prefix = shared_prefix and k > 1 and (
            self.mesh is None or cfg.data.batch_size % batch_ways(self.mesh) == 0)
        base = policy.base_config
        self._ref = jax.jit(lambda p, b: token_logprobs(p, base, b["tokens"], attention_mask=b["attention_mask"]))
        self._shared_ref = jax.jit(lambda p, b: response_token_logprobs(p, base, *shared_inputs(b)))

    def set_params(self, trainable) -> None:
        self.params = trainable

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        step = self.order.step
        drawn = [self.prompts[i] for i in next(self.order)]
        chosen = [p for p in drawn for _ in range(self.k)]
        copies = self.k if self.shared_prefix else 1  # samples per prompt row fed to the sampler
        data = self.cfg.data
        shape = SequenceShape(data.max_prompt_tokens, data.max_response_tokens)
        tokens, mask = prompt_arrays(drawn if self.shared_prefix else chosen, self.bench.encode, shape,
                                     self.bench.pad_id, TruncationStats(), length=data.max_prompt_tokens)
        p, lora = self.weights(self.params, self.frozen)
        out = generate(p, self.policy.config, tokens, mask,
                       jax.random.fold_in(stream_key(self.cfg.seed, "rollouts"), step),
                       SamplingConfig(max_new_tokens=data.max_response_tokens, temperature=1.0,
                                      stop_token_ids=(self.bench.eos_id,)), pad_id=self.bench.pad_id, lora=lora,
                       mesh=self.mesh, num_samples=copies)
        rewards = jnp.asarray(self.score(chosen, out.tokens, out.mask), jnp.float32)
        if not self.shared_prefix:
            batch = dict(out.sequences(), rewards=rewards)
            batch["ref_logps"] = self._ref(self.frozen, batch)
            return batch
        n, k = len(drawn), self.k
        batch = {"prompt_tokens": out.prompt_tokens[::k], "prompt_mask": out.prompt_mask[::k],
                 "response_tokens": out.tokens.reshape(n, k, -1), "response_mask": out.mask.reshape(n, k, -1),
                 "rewards": rewards}
        batch["ref_logps"] = self._shared_ref(self.frozen, batch).reshape(n * k, -1)
        return batch

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


# ------------------------------------------------------------------------------------------------------ RLOO

@dataclasses.dataclass(frozen=True)
class RLOOLoss:
    """k: samples per prompt; beta: KL weight β; estimator: the KL estimator, "k1" (log-ratio) or "k3"."""

    k: int = number(4, ge=2)
    beta: float = number(0.05, ge=0)
    estimator: Literal["k1", "k3"] = "k1"

    def __post_init__(self):
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (a leave-one-out baseline needs another sample), got {self.k}")


@dataclasses.dataclass(frozen=True)
class RLOORun(RunConfig):
    """`rloo` on `data.sample_prompts` prompts of the training domains, `data.batch_size` prompts per step, rewarded
    by `reward` (default: the gold judge)."""

    algo: str = "rloo"
    loss: RLOOLoss = RLOOLoss()
    reward: RewardSource = RewardSource()


def setup_rloo(cfg: RLOORun) -> Setup:
    policy, _, bench, trainable, frozen = start_policy(cfg)
    config = policy.config

    def objective(t, f, batch):
        p, lora = policy.weights(t, f)
        return rloo_objective(p, batch, config=config, lora=lora, **dataclasses.asdict(cfg.loss))

    prompts = training_prompts(bench, cfg.data.sample_prompts)
    gold = policy_gold_reward(policy, bench, cfg)
    frozen = placed_on_run_mesh(frozen, cfg)
    scorer = sample_scorer(cfg.reward, bench, cfg.data)
    rollouts = Rollouts(prompts, bench, cfg, policy, frozen, policy.weights, cfg.loss.k, token_scores(scorer, bench),
                        shared_prefix=cfg.model.shared_prefix)
    return Setup(trainable, frozen, objective, rollouts, lambda t, f: {"gold_reward": gold(t, f)},
                 f"rloo: {len(prompts)} prompts, {cfg.loss.k} samples each per step, "
                 f"{cfg.data.batch_size} prompts per step, rewarded by {scorer.name}")


# ------------------------------------------------------------------------------------------------------- PPO

@dataclasses.dataclass(frozen=True)
class PPOLoss:
    """clip: the policy ratio's clip range; value_clip: the value update's; value_coef: the value loss weight."""

    clip: float = number(0.2, gt=0)
    value_clip: float = number(0.2, gt=0)
    value_coef: float = number(0.1, ge=0)


@dataclasses.dataclass(frozen=True)
class PPOOptions:
    """Rollout options: beta (the KL weight of the token rewards, adapted when kl_target is set), gamma and lam
    (GAE), epochs (training steps per rollout), kl_target and kl_horizon (the adaptive KL controller)."""

    beta: float = number(0.05, ge=0)
    gamma: float = number(1.0, ge=0, le=1)
    lam: float = number(0.95, ge=0, le=1)
    epochs: int = number(2, ge=1)
    kl_target: float | None = number(None, gt=0)
    kl_horizon: float = number(10000.0, gt=0)


@dataclasses.dataclass(frozen=True)
class PPORun(RunConfig):
    """`ppo`: one sample per prompt, `data.batch_size` prompts per rollout, rewarded by `reward` (default: the gold
    judge)."""

    algo: str = "ppo"
    loss: PPOLoss = PPOLoss()
    ppo: PPOOptions = PPOOptions()
    reward: RewardSource = RewardSource()


class PPORollouts(Rollouts):
    """Rollouts for PPO: one sample per prompt; old log-probs, values, the KL-shaped token rewards and GAE
    advantages are fixed at rollout time, and each rollout is trained on for `epochs` steps. With kl_target,
    β follows the adaptive KL controller (its value is part of the checkpointed position)."""

    def __init__(self, *args, opts: PPOOptions, model_weights: Weights, **kwargs):
        super().__init__(*args, **kwargs)
        self.opts, self.model_weights = opts, model_weights
        self.beta, self.current, self.left = float(opts.beta), None, 0
        config = self.policy.config
        self._policy_and_values = jax.jit(
            lambda p, lora, b: policy_and_values(p, config, b["tokens"], b["attention_mask"], lora=lora))

    def __next__(self) -> dict:
        if self.left == 0:
            self.current, self.left = self._rollout(), self.opts.epochs
        self.left -= 1
        return self.current

    def _rollout(self) -> dict:
        batch = super().__next__()  # samples from the current policy, gold rewards, ref log-probs
        params, lora = self.model_weights(self.params, self.frozen)
        logp, values = self._policy_and_values(params, lora, batch)
        kl = kl_penalty(logp, batch["ref_logps"], batch["response_mask"], "k1")
        rewards_t = token_rewards(batch["rewards"], kl, batch["response_mask"], self.beta)
        adv, ret = gae(rewards_t, values, batch["response_mask"], gamma=self.opts.gamma, lam=self.opts.lam)
        if self.opts.kl_target:
            observed = float(jnp.mean(kl.sum(axis=1)))
            self.beta = float(adaptive_kl_update(jnp.float32(self.beta), observed, self.cfg.data.batch_size,
                                                 target=float(self.opts.kl_target), horizon=self.opts.kl_horizon))
        return {"tokens": batch["tokens"], "attention_mask": batch["attention_mask"],
                "response_mask": batch["response_mask"], "old_logps": logp, "old_values": values,
                "advantages": adv, "returns": ret}

    def state_dict(self) -> dict:
        return {**self.order.state_dict(), "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.beta = float(state.pop("beta", self.beta))
        self.order.load_state_dict(state)
        self.left = 0  # a resumed run starts a fresh rollout


def ppo_parameters(policy: Policy, lm: Any, seed: int) -> tuple[str, dict]:
    """(part, trainable) of a PPO run: {part: the policy's trainable tree, "value_head": a fresh value head}, part
    "lora" (LoRA) or "lm" (all weights)."""
    part = "lora" if policy.uses_lora else "lm"
    head = init_head_params(policy.config, stream_key(seed, "value_head"), backbone={})["head"]
    return part, {part: lm, "value_head": head}


def setup_ppo(cfg: PPORun) -> Setup:
    """PPO; the trainable tree is {"lora" (LoRA) or "lm" (all weights): the policy, "value_head": its head}."""
    policy, _, bench, lm, frozen = start_policy(cfg)
    config = policy.config
    part, trainable = ppo_parameters(policy, lm, cfg.seed)

    def weights(t, f):  # the policy alone: what samples and is evaluated
        return policy.weights(t[part], f)

    def model_weights(t, f):  # policy + value head, as ppo_objective and policy_and_values take them
        p, lora = weights(t, f)
        return {"lm": p, "value_head": t["value_head"]}, lora

    def objective(t, f, batch):
        p, lora = model_weights(t, f)
        return ppo_objective(p, batch, config=config, lora=lora, **dataclasses.asdict(cfg.loss))

    prompts = training_prompts(bench, cfg.data.sample_prompts)
    gold = policy_gold_reward(policy, bench, cfg)
    frozen = placed_on_run_mesh(frozen, cfg)
    scorer = sample_scorer(cfg.reward, bench, cfg.data)
    rollouts = PPORollouts(prompts, bench, cfg, policy, frozen, weights, 1, token_scores(scorer, bench), opts=cfg.ppo,
                           model_weights=model_weights)
    return Setup(trainable, frozen, objective, rollouts, lambda t, f: {"gold_reward": gold(t[part], f)},
                 f"ppo: {len(prompts)} prompts, {cfg.data.batch_size} per rollout, {cfg.ppo.epochs} steps per "
                 f"rollout, rewarded by {scorer.name}")


register(Algorithm("rloo", RLOORun, setup_rloo, "REINFORCE leave-one-out with a KL penalty, on-policy"))
register(Algorithm("ppo", PPORun, setup_ppo, "PPO with a value head, KL-shaped rewards and GAE, on-policy"))

__all__ = ["PPOLoss", "PPOOptions", "PPORollouts", "PPORun", "RLOOLoss", "RLOORun", "Rollouts", "ppo_parameters",
           "setup_ppo", "setup_rloo"]
