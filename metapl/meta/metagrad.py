"""One meta-gradient of the reward model over an episode of domains, with the projected inner solver.

For each domain τ of the episode (vmapped; the domains share shapes): rewards r_φ of the support samples; K inner
steps from θ₀ on the projected loss; the adapted policy's agreement loss on τ's query pairs; its hypergradient
with respect to the rewards (unrolled, implicit or first-order, `metapl.bilevel`). Then

    dL/dφ = (1/E) Σ_τ (∂r_τ/∂φ)ᵀ dL_τ/dr_τ  +  λ ∇_φ BT(r_φ; query pairs of all domains).

On a mesh, `meta_gradient_over_shards` splits the E domains over the `data` axis with `shard_map` (each shard
runs its domains' inner loops and hypergradients, parameters still sharded over `fsdp`/`tensor`) and averages
the shards' meta-gradients with a `pmean`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from metapl.bilevel import BilevelProblem, hypergradient, inner_solve, tree_vdot
from metapl.meta.objectives import (
    RewardFn, agreement_outer_loss, onpolicy_inner_grad, policy_logprobs, projected_inner_loss, reward_pair_loss,
    sample_rewards,
)
from metapl.models.config import ModelConfig

Params = Any


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """The bilevel problem and how its hypergradient is computed.

    beta: inner KL weight (the projected weights are softmax(r/β)); beta_out: outer DPO temperature β_o;
    inner_steps K and the inner optimiser (`inner_optimizer` "sgd" or "adam", `inner_lr`); method and its
    options (`checkpoint`, `truncate`, `adjoint` for unrolled; `solver`, `solver_iterations`, `damping` for implicit;
    `first_order_scale`); bt_weight λ of the Bradley–Terry term on the query pairs; prox ρ of the proximal term
    (ρ/2)‖θ − θ₀‖² in the inner loss (give one > 0 with the implicit method); inner_solver "projected"
    (reference samples, reward-weighted likelihood) or "onpolicy" (`onpolicy_samples` samples per prompt from
    the current policy at every inner step, RLOO with the KL-shaped reward).
    """

    beta: float = 0.1
    beta_out: float = 0.1
    inner_steps: int = 4
    inner_optimizer: Literal["sgd", "adam"] = "sgd"
    inner_lr: float = 1e-2
    method: Literal["unrolled", "implicit", "first_order"] = "unrolled"
    checkpoint: bool = False
    truncate: int | None = None
    adjoint: bool = False
    solver: Literal["cg", "neumann"] = "cg"
    solver_iterations: int = 20
    damping: float = 0.0
    first_order_scale: float = 1.0
    bt_weight: float = 0.0
    prox: float = 0.0
    inner_solver: Literal["projected", "onpolicy"] = "projected"
    onpolicy_samples: int = 4

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
        if self.method == "unrolled":
            return {"checkpoint": self.checkpoint, "truncate": self.truncate, "adjoint": self.adjoint}
        if self.method == "implicit":
            return {"solver": self.solver, "iterations": self.solver_iterations, "damping": self.damping,
                    "neumann_step_size": self.inner_lr}
        return {"first_order_scale": self.first_order_scale}


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
    if not onpolicy or set(onpolicy) != {"max_new_tokens", "eos_id", "pad_id"}:
        raise ValueError("the on-policy solver needs onpolicy={'max_new_tokens', 'eos_id', 'pad_id'}")
    inner_grad = functools.partial(onpolicy_inner_grad, config=policy_config, base=base, theta0=theta0,
                                   reward_fn=reward_fn, beta=cfg.beta, samples=cfg.onpolicy_samples, prox=cfg.prox,
                                   **onpolicy)
    outer = functools.partial(agreement_outer_loss, config=policy_config, base=base, beta_out=cfg.beta_out)
    inner_loss = lambda t, p, b: (inner_grad(t, p, b)[0], {})  # noqa: E731
    return BilevelProblem(inner_loss, outer, cfg.optimizer(), cfg.inner_steps, inner_grad=inner_grad)


def with_reference_logprobs(theta0: Params, base: Params | None, config: ModelConfig, query: dict) -> dict:
    """The query pairs [..., Q, T] with ref_chosen_logps / ref_rejected_logps [..., Q] under θ₀ (no gradient)."""
    def lp(side):
        tokens = query[f"{side}_tokens"]
        t = tokens.shape[-1]
        flat = lambda k: query[f"{side}_{k}"].reshape(-1, t)  # noqa: E731
        out = policy_logprobs(theta0, base, config, flat("tokens"), flat("attention_mask"), flat("response_mask"))
        return jax.lax.stop_gradient(out.reshape(tokens.shape[:-1]))

    return dict(query, ref_chosen_logps=lp("chosen"), ref_rejected_logps=lp("rejected"))


def domain_keys(key: jax.Array, e: int) -> jax.Array:
    """The E domains' sampling keys: `key` split in E, or `key` itself when it already holds E keys (a leading
    axis of size E), as `meta_gradient_over_shards` hands each shard its slice of the episode's keys."""
    single_ndim = 0 if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else 1  # typed or raw uint32 keys
    if key.ndim == single_ndim:
        return jax.random.split(key, e)
    if key.ndim != single_ndim + 1 or key.shape[0] != e:
        raise ValueError(f"expected one PRNG key or {e} (one per domain), got an array of shape {key.shape}")
    return key


def _domain_inputs(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, cfg: MetaConfig,
                   policy_config: ModelConfig, reward_fn: RewardFn, key: jax.Array | None, onpolicy: dict | None):
    """(problem, per-domain meta-parameters or None, per-domain inner batches, query with reference log-probs,
    rewards [E, P, N], solver options, reward VJP or None) shared by `meta_gradient` and `meta_loss`."""
    query = with_reference_logprobs(theta0, base, policy_config, query)
    if cfg.inner_solver == "projected":  # meta-parameter of each domain: its support samples' rewards
        rewards, reward_vjp = jax.vjp(lambda p: sample_rewards(reward_fn, p, support), phi)  # [E, P, N]
        return domain_problem(cfg, policy_config, base, theta0), rewards, support, query, rewards, {}, reward_vjp
    if key is None:
        raise ValueError("the on-policy solver needs a PRNG key")
    e = support["tokens"].shape[0]
    rewards = jax.lax.stop_gradient(sample_rewards(reward_fn, phi, support))  # reported only
    problem = onpolicy_problem(cfg, policy_config, base, theta0, reward_fn, onpolicy)
    keys = jax.vmap(lambda k: jax.random.split(k, cfg.inner_steps))(domain_keys(key, e))  # [E, K] keys
    every_step = lambda x: jnp.broadcast_to(x[:, None], (e, cfg.inner_steps, *x.shape[1:]))  # noqa: E731
    steps = {"prompt_tokens": every_step(support["prompt_tokens"]), "prompt_mask": every_step(support["prompt_mask"]),
             "key": keys}
    return problem, None, steps, query, rewards, {"per_step_batches": True}, None


def _episode_metrics(losses: jax.Array, aux: dict, rewards: jax.Array) -> dict:
    return {
        "outer_loss": jnp.mean(losses),
        "query_accuracy": aux["outer"]["query_accuracy"],  # [E]
        "implicit_margin": jnp.mean(aux["outer"]["implicit_margin"]),
        "inner_loss_first": jnp.mean(aux["inner_losses"][:, 0]),
        "inner_loss_last": jnp.mean(aux["inner_losses"][:, -1]),
        "reward_std": jnp.mean(jnp.std(rewards, axis=-1)),
    }


def meta_loss(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *, cfg: MetaConfig,
              policy_config: ModelConfig, reward_fn: RewardFn, key: jax.Array | None = None,
              onpolicy: dict | None = None) -> tuple[jax.Array, dict]:
    """(mean outer loss over the episode's domains, metrics): the K inner steps and the outer loss, without the
    hypergradient (evaluation). Arguments as in `meta_gradient`."""
    problem, params, batches, query, rewards, opts, _ = _domain_inputs(
        phi, theta0, base, support, query, cfg, policy_config, reward_fn, key, onpolicy)

    def per_domain(p, s, q):
        theta, _, inner_losses = inner_solve(problem, p, theta0, s, **opts)
        loss, metrics = problem.outer_loss(theta, p, q)
        return loss, {"outer": metrics, "inner_losses": inner_losses}

    if params is not None:  # projected: each domain's rewards
        losses, aux = jax.vmap(per_domain)(params, batches, query)
    else:  # on-policy: φ for every domain
        losses, aux = jax.vmap(per_domain, in_axes=(None, 0, 0))(phi, batches, query)
    metrics = _episode_metrics(losses, aux, rewards)
    return metrics["outer_loss"], metrics


def meta_gradient(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *,
                  cfg: MetaConfig, policy_config: ModelConfig, reward_fn: RewardFn, key: jax.Array | None = None,
                  onpolicy: dict | None = None) -> tuple[jax.Array, Params, dict]:
    """(meta loss, dL/dφ, metrics) over an episode of E domains.

    support: tokens, attention_mask, response_mask [E, P, N, T] (N reference samples per support prompt);
    query: chosen_/rejected_ tokens, attention_mask, response_mask [E, Q, T]; reward_fn: r_φ (see
    `objectives.reward_function`). θ₀: the policy's starting trainable parameters (LoRA adapters over `base`, or
    full params with base None), shared by all domains. The on-policy solver also needs
    support["prompt_tokens"/"prompt_mask"] [E, P, Tp], a PRNG `key` (or E keys, see `domain_keys`), and
    `onpolicy` = {"max_new_tokens", "eos_id", "pad_id"}.
    """
    e = support["tokens"].shape[0]
    problem, params, batches, query, rewards, opts, reward_vjp = _domain_inputs(
        phi, theta0, base, support, query, cfg, policy_config, reward_fn, key, onpolicy)
    if params is not None:  # projected: hypergradients with respect to each domain's rewards, then through r_φ
        def per_domain(r, s, q):
            return hypergradient(problem, r, theta0, s, q, method=cfg.method, **cfg.method_options())

        losses, d_rewards, aux = jax.vmap(per_domain)(params, batches, query)
        (dphi,) = reward_vjp(d_rewards / e)
    else:  # on-policy: φ itself is each domain's meta-parameter
        def per_domain(s, q):
            return hypergradient(problem, phi, theta0, s, q, method=cfg.method, **opts, **cfg.method_options())

        losses, dphis, aux = jax.vmap(per_domain)(batches, query)
        dphi = jax.tree.map(lambda x: jnp.mean(x, axis=0), dphis)
    metrics = _episode_metrics(losses, aux, rewards)
    loss = metrics["outer_loss"]
    if cfg.method == "implicit":
        metrics.update(solver_residual=jnp.max(aux["solver_residual"]),
                       inner_grad_norm=jnp.max(aux["inner_grad_norm"]))
    if cfg.bt_weight:
        pooled = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), query)
        bt_fn = lambda p: reward_pair_loss(reward_fn, p, pooled)  # noqa: E731
        (bt, bt_metrics), bt_grad = jax.value_and_grad(bt_fn, has_aux=True)(phi)
        dphi = jax.tree.map(lambda a, b: a + cfg.bt_weight * b, dphi, bt_grad)
        loss = loss + cfg.bt_weight * bt
        metrics.update(bt_loss=bt, bt_accuracy=bt_metrics["accuracy"])
    metrics["meta_loss"] = loss
    metrics["hypergrad_norm"] = jnp.sqrt(tree_vdot(dphi, dphi))
    return loss, dphi, metrics


def meta_gradient_over_shards(phi: Params, theta0: Params, base: Params | None, support: dict, query: dict, *,
                              mesh: jax.sharding.Mesh, axis: str = "data", key: jax.Array | None = None,
                              **kwargs) -> tuple[jax.Array, Params, dict]:
    """`meta_gradient` with the episode's E domains split over the mesh axis `axis` by `shard_map`.

    Each of the n shards computes the meta loss and meta-gradient of its E/n domains (a mean over them) with
    the parameters as they are laid out over the other mesh axes (`fsdp`, `tensor` stay automatic); `pmean`
    over `axis` then averages the shards' losses, meta-gradients and mean metrics. With equal shard sizes the
    mean of the shards' means is the mean over all E domains, so this equals `meta_gradient` up to float
    reassociation. Per-domain `query_accuracy` [E] is gathered; `solver_residual`/`inner_grad_norm` are maxima.
    The on-policy solver's key is split into the E domains' keys before the split over shards, so every domain
    draws the samples it draws on one device. Call it under `jax.jit`; keyword arguments are `meta_gradient`'s.
    """
    n, e = mesh.shape[axis], support["tokens"].shape[0]
    if e % n:
        raise ValueError(f"an episode of {e} domains does not split over mesh axis {axis!r} of size {n}")

    def shard(phi, theta0, base, support, query, key):
        # Each shard differentiates its own copy of the shared parameters: without the cast to "varying", the
        # gradient of a replicated value inside shard_map is summed over the shards (the transpose of the
        # implicit broadcast), which would couple the domains' inner loops. The only collective is the pmean.
        phi, theta0, base = jax.tree.map(lambda x: jax.lax.pcast(x, axis, to="varying"), (phi, theta0, base))
        loss, dphi, metrics = meta_gradient(phi, theta0, base, support, query, key=key, **kwargs)
        per_domain = metrics.pop("query_accuracy")
        maxima = {k: jax.lax.pmax(metrics.pop(k), axis) for k in ("solver_residual", "inner_grad_norm")
                  if k in metrics}
        del metrics["hypergrad_norm"]  # a norm of the averaged gradient, not an average of norms
        loss, dphi, metrics = jax.lax.pmean((loss, dphi, metrics), axis)
        metrics.update(maxima, hypergrad_norm=jnp.sqrt(tree_vdot(dphi, dphi)))
        return loss, dphi, metrics, per_domain

    if key is not None:
        key = domain_keys(key, e)
    spread, whole = jax.sharding.PartitionSpec(axis), jax.sharding.PartitionSpec()
    loss, dphi, metrics, per_domain = jax.shard_map(
        shard, mesh=mesh, in_specs=(whole, whole, whole, spread, spread, spread),
        out_specs=(whole, whole, whole, spread), axis_names={axis})(phi, theta0, base, support, query, key)
    return loss, dphi, dict(metrics, query_accuracy=per_domain)
