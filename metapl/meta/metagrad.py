"""The reward model's meta objective over an episode of domains, and its gradient (the meta-gradient).

For each domain τ of the episode (vmapped; the domains share shapes): K inner steps of KL-regularised policy
optimisation from θ₀ under r_φ (`metapl.bilevel.solve`), then the adapted policy's agreement (DPO) loss on τ's
query pairs. With the projected inner solver the inner problem's meta-parameter is the rewards r_τ = r_φ(support
samples of τ), computed once; with the on-policy solver it is φ itself (the samples change at every step).

    L(φ) = (1/E) Σ_τ L_out,τ(θ_K,τ(φ))  +  λ · BT(r_φ; query pairs of all domains)

`meta_objective` is L as a function of φ: its `jax.grad` is the meta-gradient, the hypergradient through each
domain's solve by the configured method (`MetaConfig.strategy`) and through r_φ by plain autodiff.
`meta_gradient` is its `jax.value_and_grad`; `meta_loss` its forward pass without the λ·BT term (evaluation).

On a mesh, `meta_objective_over_shards` splits the E domains over the `data` axis with `shard_map` (each shard
runs its domains' inner loops, parameters still sharded over `fsdp`/`tensor`) and averages the shards' losses
with a `pmean`; `meta_gradient_over_shards` is its `jax.value_and_grad`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax

from metapl.bilevel import (
    BilevelProblem, Implicit, Strategy, Unrolled, outer_objective, strategy_from_method, tree_vdot,
)
from metapl.config import number
from metapl.losses.preference import is_shared_prefix, reference_logprobs
from metapl.meta.objectives import (
    RewardFn, agreement_outer_loss, onpolicy_inner_grad, projected_inner_loss, reward_pair_loss, sample_rewards,
)
from metapl.models.config import ModelConfig
from metapl.models.policy import Policy

Params = Any

# Metrics that are maxima over the domains (the worst domain), not means.
_MAXIMA = ("inner_grad_norm", "solver_residual", "solver_iterations", "solver_breakdown")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """The bilevel problem and how its hypergradient is computed.

    beta: inner KL weight (the projected weights are softmax(r/β)); beta_out: outer DPO temperature β_o;
    inner_steps K and the inner optimiser (`inner_optimizer` "sgd" or "adam", `inner_lr`); method and its
    options (`checkpoint`, `truncate`, `adjoint` for unrolled; `solver`, `solver_iterations`, `damping` for implicit,
    whose Neumann series steps by `inner_lr`; `first_order_scale`), mapped to a `metapl.bilevel` strategy by
    `strategy()`; bt_weight λ of the Bradley–Terry term on the query pairs; prox ρ of the proximal term
    (ρ/2)‖θ − θ₀‖² in the inner loss (give one > 0 with the implicit method); inner_solver "projected"
    (reference samples, reward-weighted likelihood) or "onpolicy" (`onpolicy_samples` samples per prompt from
    the current policy at every inner step, RLOO with the KL-shaped reward).
    """

    beta: float = number(0.1, gt=0)
    beta_out: float = number(0.1, gt=0)
    inner_steps: int = number(4, ge=1)
    inner_optimizer: Literal["sgd", "adam"] = "sgd"
    inner_lr: float = number(1e-2, ge=0)
    method: Literal["unrolled", "implicit", "first_order"] = "unrolled"
    checkpoint: bool = False
    truncate: int | None = number(None, ge=1)
    adjoint: bool = False
    solver: Literal["cg", "neumann"] = "cg"
    solver_iterations: int = number(20, ge=1)
    damping: float = number(0.0, ge=0)
    first_order_scale: float = 1.0
    bt_weight: float = number(0.0, ge=0)
    prox: float = number(0.0, ge=0)
    inner_solver: Literal["projected", "onpolicy"] = "projected"
    onpolicy_samples: int = number(4, ge=2)

    def __post_init__(self):
        if self.inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer must be 'sgd' or 'adam', got {self.inner_optimizer!r}")
        if self.method not in ("unrolled", "implicit", "first_order"):
            raise ValueError(f"method must be unrolled, implicit or first_order, got {self.method!r}")
        if self.inner_solver not in ("projected", "onpolicy"):
            raise ValueError(f"inner_solver must be 'projected' or 'onpolicy', got {self.inner_solver!r}")
        if self.beta <= 0 or self.beta_out <= 0:
            raise ValueError("beta and beta_out must be > 0")

    def optimizer(self) -> optax.GradientTransformation:
        if self.inner_optimizer == "sgd":
            return optax.sgd(self.inner_lr)
        # eps_root keeps the derivative of sqrt(ν) finite where a gradient is exactly zero (unrolled Adam).
        return optax.adam(self.inner_lr, eps_root=1e-16)

    def method_options(self) -> dict:
        """The options of `method` as `metapl.bilevel.hypergradient` takes them."""
        if self.method == "unrolled":
            return {"checkpoint": self.checkpoint, "truncate": self.truncate, "adjoint": self.adjoint}
        if self.method == "implicit":
            return {"solver": self.solver, "iterations": self.solver_iterations, "damping": self.damping,
                    "neumann_step_size": self.inner_lr}
        return {"first_order_scale": self.first_order_scale}

    def strategy(self) -> Strategy:
        """How `solve` differentiates each domain's inner solve: `method` and its options as a strategy."""
        return strategy_from_method(self.method, **self.method_options())


def domain_problem(cfg: MetaConfig, policy_config: ModelConfig, base: Params | None, theta0: Params
                   ) -> BilevelProblem:
    """The per-domain bilevel problem, meta-parameter = the support samples' rewards [P, N]."""
    inner = functools.partial(projected_inner_loss, config=policy_config, base=base, beta=cfg.beta, prox=cfg.prox,
                              theta0=theta0)
    outer = functools.partial(agreement_outer_loss, config=policy_config, base=base, beta_out=cfg.beta_out)
    return BilevelProblem(inner, outer, cfg.optimizer(), cfg.inner_steps)


def onpolicy_problem(cfg: MetaConfig, policy_config: ModelConfig, base: Params | None, theta0: Params,
                     reward_fn: RewardFn, onpolicy: dict | None) -> BilevelProblem:
    """The per-domain bilevel problem of the on-policy solver, meta-parameter = φ."""
    if not onpolicy or not {"max_new_tokens", "eos_id", "pad_id"} <= set(onpolicy) <= {
            "max_new_tokens", "eos_id", "pad_id", "shared_prefix"}:
        raise ValueError("the on-policy solver needs onpolicy={'max_new_tokens', 'eos_id', 'pad_id'} (and optionally "
                         "'shared_prefix')")
    inner_grad = functools.partial(onpolicy_inner_grad, config=policy_config, base=base, theta0=theta0,
                                   reward_fn=reward_fn, beta=cfg.beta, samples=cfg.onpolicy_samples, prox=cfg.prox,
                                   **onpolicy)
    outer = functools.partial(agreement_outer_loss, config=policy_config, base=base, beta_out=cfg.beta_out)
    inner_loss = lambda t, p, b: (inner_grad(t, p, b)[0], {})  # noqa: E731
    return BilevelProblem(inner_loss, outer, cfg.optimizer(), cfg.inner_steps, inner_grad=inner_grad)


def with_reference_logprobs(theta0: Params, base: Params | None, config: ModelConfig, query: dict) -> dict:
    """The query pairs [..., Q, T] (or in the shared-prefix layout: prompts [..., Q, Tp], responses
    [..., Q, 2, R]) with ref_chosen_logps / ref_rejected_logps [..., Q] under θ₀ (no gradient):
    `losses.preference.reference_logprobs` over the leading axes flattened."""
    inputs = (("prompt_tokens", "prompt_mask", "response_tokens", "response_mask") if is_shared_prefix(query) else
              tuple(f"{side}_{k}" for side in ("chosen", "rejected")
                    for k in ("tokens", "attention_mask", "response_mask")))
    lead = query[inputs[0]].shape[:-1]
    flat = {k: query[k].reshape(-1, *query[k].shape[len(lead):]) for k in inputs}
    params, lora = Policy(config).weights(theta0, base)
    ref = reference_logprobs(params, config, flat, lora=lora)
    return dict(query, **{k: jax.lax.stop_gradient(v.reshape(lead)) for k, v in ref.items()})


def domain_keys(key: jax.Array, e: int) -> jax.Array:
    """The E domains' sampling keys: `key` split in E, or `key` itself when it already holds E keys (a leading
    axis of size E), as `meta_objective_over_shards` hands each shard its slice of the episode's keys."""
    single_ndim = 0 if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else 1  # typed or raw uint32 keys
    if key.ndim == single_ndim:
        return jax.random.split(key, e)
    if key.ndim != single_ndim + 1 or key.shape[0] != e:
        raise ValueError(f"expected one PRNG key or {e} (one per domain), got an array of shape {key.shape}")
    return key


def _domains(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, cfg: MetaConfig,
             policy_config: ModelConfig, reward_fn: RewardFn, key: jax.Array | None, onpolicy: dict | None,
             strategy: Strategy) -> tuple[jax.Array, dict, jax.Array]:
    """(outer losses [E], the per-domain aux of `metapl.bilevel.outer_objective` [E, ...], rewards r_φ of the
    support samples [E, P, N]): each domain's inner solve and outer loss, vmapped, differentiable in φ by
    `strategy`. Arguments as in `meta_objective`."""
    query = with_reference_logprobs(theta0, base, policy_config, query)
    rewards = sample_rewards(reward_fn, phi, support)  # [E, P, N]
    if cfg.inner_solver == "projected":  # meta-parameter of each domain: its support samples' rewards
        problem = domain_problem(cfg, policy_config, base, theta0)
        losses, aux = jax.vmap(lambda r, s, q: outer_objective(problem, r, theta0, s, q, strategy=strategy))(
            rewards, support, query)
        return losses, aux, rewards
    if key is None:
        raise ValueError("the on-policy solver needs a PRNG key")
    e = support["prompt_tokens"].shape[0]
    problem = onpolicy_problem(cfg, policy_config, base, theta0, reward_fn, onpolicy)
    keys = jax.vmap(lambda k: jax.random.split(k, cfg.inner_steps))(domain_keys(key, e))  # [E, K] keys
    every_step = lambda x: jnp.broadcast_to(x[:, None], (e, cfg.inner_steps, *x.shape[1:]))  # noqa: E731
    steps = {"prompt_tokens": every_step(support["prompt_tokens"]), "prompt_mask": every_step(support["prompt_mask"]),
             "key": keys}
    losses, aux = jax.vmap(lambda s, q: outer_objective(problem, phi, theta0, s, q, strategy=strategy,
                                                        per_step_batches=True))(steps, query)
    return losses, aux, jax.lax.stop_gradient(rewards)  # on-policy: the rewards are reported only


def _episode_metrics(losses: jax.Array, aux: dict, rewards: jax.Array) -> dict:
    """The episode's metrics from the per-domain outer losses [E], aux and support rewards [E, P, N]."""
    return {
        "outer_loss": jnp.mean(losses),
        "query_accuracy": aux["outer"]["query_accuracy"],  # [E]
        "implicit_margin": jnp.mean(aux["outer"]["implicit_margin"]),
        "inner_loss_first": jnp.mean(aux["inner_losses"][:, 0]),
        "inner_loss_last": jnp.mean(aux["inner_losses"][:, -1]),
        "reward_std": jnp.mean(jnp.std(rewards, axis=-1)),
    }


def meta_objective(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *,
                   cfg: MetaConfig, policy_config: ModelConfig, reward_fn: RewardFn, key: jax.Array | None = None,
                   onpolicy: dict | None = None) -> tuple[jax.Array, dict]:
    """(meta loss L(φ), metrics) over an episode of E domains; `jax.grad` of L in φ is the meta-gradient.

    support: tokens, attention_mask, response_mask [E, P, N, T] (N reference samples per support prompt);
    query: chosen_/rejected_ tokens, attention_mask, response_mask [E, Q, T]; reward_fn: r_φ (see
    `objectives.reward_function`). θ₀: the policy's starting trainable parameters (LoRA adapters over `base`, or
    full params with base None), shared by all domains. The on-policy solver also needs
    support["prompt_tokens"/"prompt_mask"] [E, P, Tp], a PRNG `key` (or E keys, see `domain_keys`), and
    `onpolicy` = {"max_new_tokens", "eos_id", "pad_id"}.

    metrics: outer_loss (mean over domains), query_accuracy [E], implicit_margin, inner_loss_first,
    inner_loss_last, reward_std, meta_loss (= L); bt_loss, bt_accuracy with a λ·BT term; with the implicit method
    inner_grad_norm, solver_residual, solver_iterations (maxima over domains) and solver_breakdown (1.0 when a
    domain's linear solve broke down, else 0.0). The implicit method's solve runs when L is differentiated, so its
    objective computes the meta-gradient in the forward pass to report it (`metapl.bilevel.outer_objective`:
    first derivatives in φ only).
    """
    strategy = cfg.strategy()
    losses, aux, rewards = _domains(phi, theta0, base, support, query, cfg, policy_config, reward_fn, key, onpolicy,
                                    strategy)
    metrics = _episode_metrics(losses, aux, rewards)
    loss = metrics["outer_loss"]
    if isinstance(strategy, Implicit):
        metrics.update({k: jnp.max(aux[k]).astype(loss.dtype) for k in _MAXIMA})
    if cfg.bt_weight:
        pooled = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), query)
        bt, bt_metrics = reward_pair_loss(reward_fn, phi, pooled)
        loss = loss + cfg.bt_weight * bt
        metrics.update(bt_loss=bt, bt_accuracy=bt_metrics["accuracy"])
    metrics["meta_loss"] = loss
    return loss, metrics


def meta_loss(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *, cfg: MetaConfig,
              policy_config: ModelConfig, reward_fn: RewardFn, key: jax.Array | None = None,
              onpolicy: dict | None = None) -> tuple[jax.Array, dict]:
    """(mean outer loss over the episode's domains, metrics): the K inner steps and the outer loss, without the
    λ·BT term and the hypergradient's extra work (evaluation). Arguments and metrics as in `meta_objective`."""
    losses, aux, rewards = _domains(phi, theta0, base, support, query, cfg, policy_config, reward_fn, key, onpolicy,
                                    Unrolled())
    metrics = _episode_metrics(losses, aux, rewards)
    return metrics["outer_loss"], metrics


def _value_and_meta_gradient(objective: Callable, phi: Params, *args, **kwargs) -> tuple[jax.Array, Params, dict]:
    """(loss, dL/dφ, metrics with hypergrad_norm = ‖dL/dφ‖) of a meta objective."""
    (loss, metrics), dphi = jax.value_and_grad(objective, has_aux=True)(phi, *args, **kwargs)
    return loss, dphi, dict(metrics, hypergrad_norm=jnp.sqrt(tree_vdot(dphi, dphi)))


def meta_gradient(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *,
                  cfg: MetaConfig, policy_config: ModelConfig, reward_fn: RewardFn, key: jax.Array | None = None,
                  onpolicy: dict | None = None) -> tuple[jax.Array, Params, dict]:
    """(meta loss, dL/dφ, metrics): `jax.value_and_grad` of `meta_objective` (same arguments), the metrics with
    hypergrad_norm = ‖dL/dφ‖."""
    return _value_and_meta_gradient(meta_objective, phi, theta0, base, support, query, cfg=cfg,
                                    policy_config=policy_config, reward_fn=reward_fn, key=key, onpolicy=onpolicy)


def meta_objective_over_shards(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *,
                               mesh: jax.sharding.Mesh, axis: str = "data", key: jax.Array | None = None,
                               **kwargs) -> tuple[jax.Array, dict]:
    """`meta_objective` with the episode's E domains split over the mesh axis `axis` by `shard_map`.

    Each of the n shards computes the meta objective of its E/n domains (a mean over them) with the parameters as
    they are laid out over the other mesh axes (`fsdp`, `tensor` stay automatic); `pmean` over `axis` then
    averages the shards' losses and mean metrics. With equal shard sizes the mean of the shards' means is the mean
    over all E domains, so this and its `jax.grad` equal `meta_objective`'s up to float reassociation. Per-domain
    `query_accuracy` [E] is gathered; inner_grad_norm and the solver metrics are maxima. The on-policy solver's
    key is split into the E domains' keys before the split over shards, so every domain draws the samples it draws
    on one device. Call it under `jax.jit`; keyword arguments are `meta_objective`'s.
    """
    n, e = mesh.shape[axis], jax.tree.leaves(support)[0].shape[0]  # E, whatever the layout
    if e % n:
        raise ValueError(f"an episode of {e} domains does not split over mesh axis {axis!r} of size {n}")

    def shard(phi, theta0, base, support, query, key):
        # Each shard works on its own copy of the shared parameters: without the cast to "varying", autodiff inside
        # shard_map would sum the gradient of a replicated value over the shards (the transpose of the implicit
        # broadcast) within each domain's solve. The cast's own transpose sums the shards' (pmean-weighted)
        # gradients once, at the end; the pmean is the only collective of the forward pass.
        phi, theta0, base = jax.tree.map(lambda x: jax.lax.pcast(x, axis, to="varying"), (phi, theta0, base))
        loss, metrics = meta_objective(phi, theta0, base, support, query, key=key, **kwargs)
        per_domain = metrics.pop("query_accuracy")
        maxima = {k: jax.lax.pmax(metrics.pop(k), axis) for k in _MAXIMA if k in metrics}
        loss, metrics = jax.lax.pmean((loss, metrics), axis)
        return loss, dict(metrics, **maxima), per_domain

    if key is not None:
        key = domain_keys(key, e)
    spread, whole = jax.sharding.PartitionSpec(axis), jax.sharding.PartitionSpec()
    loss, metrics, per_domain = jax.shard_map(
        shard, mesh=mesh, in_specs=(whole, whole, whole, spread, spread, spread),
        out_specs=(whole, whole, spread), axis_names={axis})(phi, theta0, base, support, query, key)
    return loss, dict(metrics, query_accuracy=per_domain)


def meta_gradient_over_shards(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *,
                              mesh: jax.sharding.Mesh, axis: str = "data", key: jax.Array | None = None,
                              **kwargs) -> tuple[jax.Array, Params, dict]:
    """(meta loss, dL/dφ, metrics): `jax.value_and_grad` of `meta_objective_over_shards` (same arguments), the
    metrics with hypergrad_norm = ‖dL/dφ‖. Call it under `jax.jit`."""
    return _value_and_meta_gradient(meta_objective_over_shards, phi, theta0, base, support, query, mesh=mesh,
                                    axis=axis, key=key, **kwargs)
