"""A bilevel problem whose inner problem is solved by K optimiser steps, and the K steps themselves.

    θ_K(φ) = K steps of `inner_optimizer` on θ ↦ L_in(θ, φ) from θ₀
    F(φ)   = L_out(θ_K(φ), φ)

θ and φ are any parameter pytrees; both losses are `(θ, φ, batch) -> (loss, metrics)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

Params = Any
Loss = Callable[[Params, Params, Any], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class BilevelProblem:
    """inner_loss(θ, φ, batch) is minimised over θ by `steps` updates of `inner_optimizer`; outer_loss(θ, φ, batch)
    is evaluated at the result. Both return (loss, metrics).

    inner_grad (optional): (θ, φ, batch) -> (loss, ∇_θ) to use instead of `jax.value_and_grad(inner_loss)`. The
    inner update is then θ ← θ − η·inner_grad, and every method differentiates *that* field (its Jacobian in θ is
    the Hessian, its φ-derivative the mixed term). Needed when the update is not the exact gradient of a loss one
    can write without `stop_gradient`, e.g. a policy-gradient estimate whose advantages depend on θ.
    """

    inner_loss: Loss
    outer_loss: Loss
    inner_optimizer: optax.GradientTransformation
    steps: int
    inner_grad: Callable[[Params, Params, Any], tuple[jax.Array, Params]] | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"BilevelProblem.steps must be >= 1, got {self.steps}")

    def value_and_grad(self, theta: Params, phi: Params, batch: Any) -> tuple[jax.Array, Params]:
        """(inner loss, the inner update direction ∇_θ) at θ."""
        if self.inner_grad is not None:
            return self.inner_grad(theta, phi, batch)
        return jax.value_and_grad(lambda t: self.inner_loss(t, phi, batch)[0])(theta)


def step_batches(batch: Any, steps: int, per_step: bool) -> Any:
    """The scan's per-step inputs: `batch` itself when `per_step` (after checking its leading axis is `steps`), else
    None (every step then uses the one batch)."""
    if not per_step:
        return None
    lead = {x.shape[0] for x in jax.tree.leaves(batch)}
    if lead != {steps}:
        raise ValueError(f"per_step_batches: every leaf needs leading axis {steps} (the inner steps), got {lead}")
    return batch


def last_batch(batch: Any, per_step: bool) -> Any:
    """The last inner step's batch."""
    return jax.tree.map(lambda x: x[-1], batch) if per_step else batch


def inner_solve(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, *,
                per_step_batches: bool = False, checkpoint: bool = False, steps: int | None = None,
                opt_state: Any = None) -> tuple[Params, Any, jax.Array]:
    """(θ_K, final optimiser state, inner losses [K]) after K = `steps` (default problem.steps) inner updates.

    `inner_batch` is used at every step, or, with `per_step_batches`, is a stack whose leading axis (K) gives step
    k its own batch. Plain autodiff differentiates it in φ and θ₀ (the `Unrolled` strategy of `solve`);
    `checkpoint` rematerialises each step in the backward pass. `opt_state` defaults to the optimiser's init at θ₀.
    """
    k = problem.steps if steps is None else steps
    batches = step_batches(inner_batch, k, per_step_batches)

    def step(carry, b):
        theta, state = carry
        loss, g = problem.value_and_grad(theta, phi, inner_batch if b is None else b)
        updates, state = problem.inner_optimizer.update(g, state, theta)
        return (optax.apply_updates(theta, updates), state), loss

    if checkpoint:
        step = jax.checkpoint(step)
    state0 = problem.inner_optimizer.init(theta0) if opt_state is None else opt_state
    (theta, state), losses = jax.lax.scan(step, (theta0, state0), batches, length=k)
    return theta, state, losses
