"""Hypergradients of a bilevel problem whose inner problem is solved by K optimiser steps.

    θ_K(φ) = K steps of `inner_optimizer` on θ ↦ L_in(θ, φ) from θ₀
    F(φ)   = L_out(θ_K(φ), φ)
    dF/dφ  = ∂_φ L_out + (∂θ_K/∂φ)ᵀ ∇_θ L_out(θ_K)

`solve` makes θ_K(φ) differentiable, the term (∂θ_K/∂φ)ᵀ θ̄ computed by a strategy: `Unrolled` (autodiff through
the steps, optionally checkpointed or truncated), `Adjoint` (the same by a hand-written reverse scan), `Implicit`
(the implicit function theorem at θ_K: a conjugate-gradient or Neumann solve with the inner Hessian) or
`FirstOrder` (the Hessian dropped). On top of it:

* `outer_objective(problem, φ, θ₀, inner_batch, outer_batch, strategy=…)` -> (F(φ), aux), whose `jax.grad` in φ
  is the strategy's hypergradient;
* `hypergradient(problem, φ, θ₀, inner_batch, outer_batch, method=…, **options)` -> (F(φ), dF/dφ, aux), its
  `jax.value_and_grad`, with the method given by name and options (`strategy_from_method`) or as a strategy;
* `unrolled_hypergradient`, `implicit_hypergradient`, `first_order_hypergradient`: the same, one per method.

aux: "outer" (the outer loss's metrics), "theta" (θ_K), "inner_losses" [K]; with the implicit method also
"inner_grad_norm" (‖∇_θ L_in(θ_K)‖, which the theorem assumes ~0) and the linear solve's report
"solver_iterations", "solver_residual" (relative), "solver_breakdown" (`linear_solve.SolveInfo`).

Everything is pure and jit-able, and vmap-able over a leading domain axis of phi-independent arguments
(`jax.vmap(lambda b_in, b_out: hypergradient(problem, phi, theta0, b_in, b_out)[1])`).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from metapl.bilevel.linear_solve import tree_vdot
from metapl.bilevel.problem import BilevelProblem, Params
from metapl.bilevel.solve import Adjoint, FirstOrder, Implicit, Strategy, Unrolled, solve, solver_probe

Method = Literal["unrolled", "implicit", "first_order"]
_STRATEGIES = (Unrolled, Adjoint, Implicit, FirstOrder)


def strategy_from_method(method: Method, **options) -> Strategy:
    """The strategy of a hypergradient method named as `hypergradient` names it, with that method's options:
    unrolled: checkpoint, truncate, adjoint (Adjoint(truncate) when true; `checkpoint` does not apply to it);
    implicit: solver, iterations, tolerance, damping, neumann_step_size; first_order: first_order_scale."""
    if method == "unrolled":
        if options.pop("adjoint", False):
            options.pop("checkpoint", None)
            return Adjoint(**options)
        return Unrolled(**options)
    if method == "implicit":
        return Implicit(**options)
    if method == "first_order":
        return FirstOrder(scale=options.pop("first_order_scale", 1.0), **options)
    raise ValueError(f"method must be one of ['first_order', 'implicit', 'unrolled'], got {method!r}")


@jax.custom_jvp
def _linearised(value: jax.Array, phi: Params, grad: Params) -> jax.Array:
    """`value`, as a function of φ whose derivative is `grad` (to first order only)."""
    return value


@_linearised.defjvp
def _linearised_jvp(primals, tangents):
    value, _, grad = primals
    return value, tree_vdot(tangents[1], grad).astype(value.dtype)


def outer_objective(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, outer_batch: Any, *,
                    strategy: Strategy = Unrolled(), per_step_batches: bool = False, hessian_batch: Any = None
                    ) -> tuple[jax.Array, dict]:
    """(F(φ) = L_out(θ_K(φ), φ), aux), with θ_K = `solve(problem, φ, θ₀, inner_batch, strategy=…)`: its `jax.grad`
    in φ is the strategy's hypergradient. aux as in the module docstring.

    The implicit strategy's linear solve runs in the backward pass, where aux cannot see it. So that aux can
    report it, the implicit objective takes its gradient in the forward pass (through `solve`, the report coming
    back as the cotangent of a `solver_probe`) and returns F as a function of φ with that derivative: the same
    value and `jax.grad` in φ, but no derivatives beyond the first and none in the other arguments. The other
    strategies differentiate through `solve` as it is.
    """
    def objective(p, probe):
        theta, aux = solve(problem, p, theta0, inner_batch, strategy=strategy, per_step_batches=per_step_batches,
                           hessian_batch=hessian_batch, probe=probe)
        loss, metrics = problem.outer_loss(theta, p, outer_batch)
        return loss, dict(aux, outer=metrics, theta=theta)

    if not isinstance(strategy, Implicit):
        return objective(phi, None)
    probe = solver_probe(phi, theta0, inner_batch, outer_batch, hessian_batch)
    (loss, aux), (dphi, info) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        jax.lax.stop_gradient(phi), probe)
    aux.update(solver_iterations=info.iterations.astype(jnp.int32), solver_residual=info.residual,
               solver_breakdown=info.breakdown > 0)
    return _linearised(loss, phi, dphi), aux


def hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, outer_batch: Any, *,
                  method: Method | Strategy = "unrolled", per_step_batches: bool = False, hessian_batch: Any = None,
                  **options) -> tuple[jax.Array, Params, dict]:
    """(outer loss F(φ), dF/dφ, aux): `jax.value_and_grad` of `outer_objective`. `method` is a strategy, or a
    method's name with its options (`strategy_from_method`). `inner_batch`, `per_step_batches` and `hessian_batch`
    as in `solve`."""
    if isinstance(method, _STRATEGIES):
        if options:
            raise TypeError(f"options {sorted(options)} go with a method name, not with a strategy")
        strategy = method
    else:
        strategy = strategy_from_method(method, **options)
    (loss, aux), dphi = jax.value_and_grad(
        lambda p: outer_objective(problem, p, theta0, inner_batch, outer_batch, strategy=strategy,
                                  per_step_batches=per_step_batches, hessian_batch=hessian_batch), has_aux=True)(phi)
    return loss, dphi, aux


def unrolled_hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any,
                           outer_batch: Any, *, per_step_batches: bool = False, checkpoint: bool = False,
                           truncate: int | None = None, adjoint: bool = False) -> tuple[jax.Array, Params, dict]:
    """(F(φ), dF/dφ, aux) by reverse mode through the K inner steps (the last `truncate` of them, if given):
    `Unrolled(checkpoint, truncate)`, or `Adjoint(truncate)` with `adjoint=True`."""
    return hypergradient(problem, phi, theta0, inner_batch, outer_batch, method="unrolled",
                         per_step_batches=per_step_batches, checkpoint=checkpoint, truncate=truncate, adjoint=adjoint)


def implicit_hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any,
                           outer_batch: Any, *, per_step_batches: bool = False, hessian_batch: Any = None,
                           solver: Literal["cg", "neumann"] = "cg", iterations: int = 50, tolerance: float = 1e-6,
                           damping: float = 0.0, neumann_step_size: float = 1.0) -> tuple[jax.Array, Params, dict]:
    """(F(φ), dF/dφ, aux) by the implicit function theorem at θ_K (`Implicit`); aux has the linear solve's
    iterations, relative residual and breakdown flag, and the inner gradient norm at θ_K."""
    return hypergradient(problem, phi, theta0, inner_batch, outer_batch, per_step_batches=per_step_batches,
                         hessian_batch=hessian_batch,
                         method=Implicit(solver, iterations, tolerance, damping, neumann_step_size))


def first_order_hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any,
                              outer_batch: Any, *, per_step_batches: bool = False, hessian_batch: Any = None,
                              first_order_scale: float = 1.0) -> tuple[jax.Array, Params, dict]:
    """(F(φ), dF/dφ ≈ ∂_φ L_out − scale·(∂²_φθ L_in)ᵀ ∇_θ L_out, aux): the inner Hessian replaced by I/scale
    (`FirstOrder`)."""
    return hypergradient(problem, phi, theta0, inner_batch, outer_batch, per_step_batches=per_step_batches,
                         hessian_batch=hessian_batch, method=FirstOrder(first_order_scale))
