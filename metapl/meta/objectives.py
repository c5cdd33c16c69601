"""The losses of the meta-learned reward model's bilevel problem (DESIGN.md, "Bilevel formulation").

Notation: θ the policy's trainable parameters (LoRA adapters over frozen `base` params, or full weights when
`base` is None); φ the reward model; β the inner KL weight; β_o the outer temperature;
h_θ(x, y) = log π_θ(y|x) − log π_ref(y|x), summed over response tokens.

* `projected_inner_loss(θ, rewards, batch)`: with N reference samples y_i ~ π_ref(·|x) per support prompt,
  −(1/P) Σ_x Σ_i softmax_i(r(x, y_i)/β) · log π_θ(y_i|x). Its minimiser is the projection of
  π* ∝ π_ref exp(r/β) on the samples. It takes the rewards r_φ(x, y_i) [P, N] as its meta-parameter rather than φ
  itself: they do not change during the inner steps, so they are computed once, and dF/dφ = (∂r/∂φ)ᵀ dF/dr
  (autodiff through r_φ of the samples, `meta_objective`).
* `agreement_outer_loss(θ, _, batch)`: the adapted policy's DPO loss on the domain's query pairs,
  mean −log σ(β_o (h_θ(y_w) − h_θ(y_l))) (`metapl.losses.preference.dpo_loss`), with the reference log-probs
  precomputed in the batch.
* `onpolicy_inner_grad(θ, φ, batch)`: k samples per prompt from the current policy (drawn under
  `stop_gradient`), the KL-shaped reward r_φ(x, y) − β·h_θ(x, y) and a leave-one-out baseline A; the update
  direction is the REINFORCE estimate −mean(A ∇_θ log π_θ(y|x)), given to the bilevel problem as its inner
  gradient field (a loss whose autodiff gradient it is would need `stop_gradient` on A, which would also cut
  A's θ-dependence out of the second-order terms). φ enters through A. Here φ itself is the meta-parameter:
  the samples change at every inner step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from metapl.losses.policy_gradient import leave_one_out_advantages
from metapl.losses.preference import bradley_terry_loss, dpo_loss, implicit_margin, pair_logprobs
from metapl.models import SamplingConfig, generate_traced
from metapl.models.config import ModelConfig
from metapl.models.logprobs import sequence_logprobs
from metapl.models.policy import Policy, RewardModel
from metapl.models.shared_prefix import is_shared_prefix, shared_inputs

Params = Any


def policy_logprobs(theta: Params, base: Params | None, config: ModelConfig, tokens: jax.Array,
                    attention_mask: jax.Array, response_mask: jax.Array) -> jax.Array:
    """Summed response log-probs [B] of tokens [B, T]: θ are LoRA adapters over `base`, or full params if base is
    None (`metapl.models.Policy` of `config`)."""
    params, lora = Policy(config).weights(theta, base)
    return sequence_logprobs(params, config, tokens, response_mask, attention_mask=attention_mask, lora=lora)[1]


def _proximal(theta: Params, theta0: Params) -> jax.Array:
    """½‖θ − θ₀‖² over the whole tree."""
    return 0.5 * sum(jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta0)))


def projected_inner_loss(theta: Params, rewards: jax.Array, batch: dict, *, config: ModelConfig,
                         base: Params | None, beta: float, prox: float = 0.0, theta0: Params | None = None
                         ) -> tuple[jax.Array, dict]:
    """Reward-weighted likelihood of reference samples (see module docstring), plus (prox/2)·‖θ − θ₀‖².

    batch: tokens, attention_mask, response_mask [P, N, T] (N samples per prompt), or the shared-prefix layout
    (`metapl.models.shared_prefix`: prompt_tokens, prompt_mask [P, Tp]; response_tokens, response_mask
    [P, N, R]); rewards [P, N]. The proximal
    term gives the inner problem a stationary point near θ₀ that the implicit hypergradient assumes (the
    likelihood of a finite sample set alone has none a flexible policy reaches).
    """
    if is_shared_prefix(batch):  # each prompt computed once for its N samples
        p, n = batch["response_tokens"].shape[:2]
        logp = Policy(config).continuation_logprobs(theta, base, *shared_inputs(batch))
    else:
        p, n, t = batch["tokens"].shape
        flat = lambda k: batch[k].reshape(p * n, t)  # noqa: E731
        logp = policy_logprobs(theta, base, config, flat("tokens"), flat("attention_mask"), flat("response_mask"))
    chex.assert_shape(rewards, (p, n))
    weights = jax.nn.softmax(rewards / beta, axis=-1)
    loss = -jnp.sum(weights * logp.reshape(p, n)) / p
    ess = 1.0 / jnp.sum(weights ** 2, axis=-1)  # effective sample size per prompt, in [1, N]
    metrics = {"weighted_nll": loss, "effective_samples": jnp.mean(ess)}
    if prox:
        if theta0 is None:
            raise ValueError("prox > 0 needs theta0")
        loss = loss + prox * _proximal(theta, theta0)
    return loss, dict(metrics, inner_loss=loss)


def onpolicy_inner_grad(theta: Params, phi: Params, batch: dict, *, config: ModelConfig, base: Params | None,
                        theta0: Params, reward_fn: "RewardFn", beta: float, samples: int, max_new_tokens: int,
                        eos_id: int, pad_id: int, prox: float = 0.0, shared_prefix: bool = False
                        ) -> tuple[jax.Array, Params]:
    """(surrogate loss, policy-gradient estimate) of the on-policy solver (see module docstring).

    The estimate is −(1/n) Σ_i A_i ∇_θ log π_θ(y_i|x), A the leave-one-out advantages of the KL-shaped reward
    r_φ(y) − β(log π_θ(y) − log π_ref(y)), plus prox·(θ − θ₀). It is returned as a function of θ and φ in full
    (A keeps its θ-dependence), so differentiating an inner step through it is exact; only the samples, drawn
    from the current policy, are held fixed. batch: prompt_tokens, prompt_mask [P, Tp] (left-padded); key.
    shared_prefix: each prompt prefilled once for its samples and computed once when scoring them (needs a
    `RewardFunction`, whose `continuations` scores that layout); the same estimate up to float reassociation.
    """
    sg = jax.lax.stop_gradient
    policy = Policy(config)
    params, lora = policy.weights(theta, base)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, stop_token_ids=(eos_id,))
    if shared_prefix:
        out = generate_traced(sg(params), config, batch["prompt_tokens"], batch["prompt_mask"], batch["key"],
                              sampling, pad_id=pad_id, lora=None if lora is None else sg(lora), num_samples=samples)
        p = batch["prompt_tokens"].shape[0]
        shared = (out.prompt_tokens[::samples], out.prompt_mask[::samples], out.tokens.reshape(p, samples, -1),
                  out.mask.reshape(p, samples, -1))
        logp_of = lambda t: policy.continuation_logprobs(t, base, *shared).reshape(-1)  # noqa: E731
        rewards = reward_fn.continuations(phi, *shared).reshape(-1)
    else:
        tokens = jnp.repeat(batch["prompt_tokens"], samples, axis=0)
        mask = jnp.repeat(batch["prompt_mask"], samples, axis=0)
        out = generate_traced(sg(params), config, tokens, mask, batch["key"], sampling, pad_id=pad_id,
                              lora=None if lora is None else sg(lora))
        s = out.sequences()
        seq, attn, resp = s["tokens"], s["attention_mask"], s["response_mask"]
        logp_of = lambda t: policy_logprobs(t, base, config, seq, attn, resp)  # noqa: E731
        rewards = reward_fn(phi, seq, attn)
    logp, logp_vjp = jax.vjp(logp_of, theta)
    logp_ref = sg(logp_of(theta0))
    advantages = leave_one_out_advantages(rewards - beta * (logp - logp_ref), samples)
    (grad,) = logp_vjp(-advantages / advantages.shape[0])
    loss = -jnp.mean(sg(advantages) * logp)  # its value, for logging; its gradient in θ is `grad`
    if prox:
        grad = jax.tree.map(lambda g, a, b: g + prox * (a - b), grad, theta, theta0)
        loss = loss + prox * _proximal(theta, theta0)
    return loss, grad


def agreement_outer_loss(theta: Params, _unused: Any, batch: dict, *, config: ModelConfig, base: Params | None,
                         beta_out: float) -> tuple[jax.Array, dict]:
    """The adapted policy's DPO loss at temperature β_o on preference pairs (`losses.preference.dpo_loss`).

    batch: chosen_/rejected_ tokens, attention_mask, response_mask [Q, T]; ref_chosen_logps, ref_rejected_logps [Q].
    metrics: outer_loss, query_accuracy (the share of pairs with h_θ(y_w) > h_θ(y_l)), implicit_margin (the mean
    h_θ(y_w) − h_θ(y_l), unscaled).
    """
    params, lora = Policy(config).weights(theta, base)
    chosen, rejected = pair_logprobs(params, config, batch, lora=lora)
    ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta_out)
    margin = implicit_margin(chosen, rejected, ref_chosen, ref_rejected)
    return loss, {"outer_loss": loss, "query_accuracy": metrics["accuracy"], "implicit_margin": jnp.mean(margin)}


RewardFn = Callable[[Params, jax.Array, jax.Array], jax.Array]  # (φ, tokens [B, T], attention_mask [B, T]) -> [B]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity, like a function (`frozen` holds arrays)
class RewardFunction:
    """r_φ of a reward model (`metapl.models.RewardModel`) as a function of φ, over the frozen part `frozen`.
    Called as a `RewardFn` on rows; `continuations` scores the shared-prefix layout."""

    config: ModelConfig
    frozen: Params | None = None

    def __call__(self, phi: Params, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        return RewardModel(self.config).score(phi, self.frozen, tokens, mask)

    def continuations(self, phi: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                      response_tokens: jax.Array, response_mask: jax.Array) -> jax.Array:
        """r_φ [B, K] of K continuations of each prompt [B, Tp]."""
        return RewardModel(self.config).score_continuations(phi, self.frozen, prompt_tokens, prompt_mask,
                                                            response_tokens, response_mask)


def reward_function(config: ModelConfig, frozen: Params | None = None) -> RewardFunction:
    """r_φ as a function of φ (`metapl.models.RewardModel`): with `frozen` None, φ is a whole reward model
    (`init_head_params`); else φ is {"lora": adapters, "head": scalar head} over the frozen head model `frozen`."""
    return RewardFunction(config, frozen)


def sample_rewards(reward_fn: RewardFn, phi: Params, batch: dict) -> jax.Array:
    """r_φ [..., N] of sample tokens [..., N, T] (any leading axes, e.g. domains and prompts), or of the
    shared-prefix layout, prompts [..., Tp] and their N samples [..., N, R] (`reward_fn` a `RewardFunction`)."""
    if is_shared_prefix(batch):
        prompts, responses = batch["prompt_tokens"], batch["response_tokens"]
        lead, tp, (n, r) = prompts.shape[:-1], prompts.shape[-1], responses.shape[-2:]
        flat = lambda k, shape: batch[k].reshape(-1, *shape)  # noqa: E731
        return reward_fn.continuations(phi, flat("prompt_tokens", (tp,)), flat("prompt_mask", (tp,)),
                                       flat("response_tokens", (n, r)), flat("response_mask", (n, r))
                                       ).reshape(*lead, n)
    tokens, mask = batch["tokens"], batch["attention_mask"]
    lead, t = tokens.shape[:-1], tokens.shape[-1]
    return reward_fn(phi, tokens.reshape(-1, t), mask.reshape(-1, t)).reshape(lead)


def pair_rewards(reward_fn: RewardFn, phi: Params, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(r_φ(chosen), r_φ(rejected)) [Q] of pairs [Q, T], or of pairs in the shared-prefix layout (prompts [Q, Tp],
    responses [Q, 2, R]; `reward_fn` a `RewardFunction`)."""
    if is_shared_prefix(batch):
        r = reward_fn.continuations(phi, *shared_inputs(batch))
        return r[:, 0], r[:, 1]
    return (reward_fn(phi, batch["chosen_tokens"], batch["chosen_attention_mask"]),
            reward_fn(phi, batch["rejected_tokens"], batch["rejected_attention_mask"]))


def reward_pair_loss(reward_fn: RewardFn, phi: Params, batch: dict) -> tuple[jax.Array, dict]:
    """Bradley–Terry loss of r_φ on pairs [Q, T] (the optional λ·BT term of the outer loss)."""
    return bradley_terry_loss(*pair_rewards(reward_fn, phi, batch))
