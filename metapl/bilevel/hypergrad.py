"""Hypergradients of a bilevel problem whose inner problem is solved by K optimiser steps.

    θ_K(φ) = K steps of `inner_optimizer` on θ ↦ L_in(θ, φ) from θ₀
    F(φ)   = L_out(θ_K(φ), φ)
    dF/dφ  = ∂_φ L_out + (∂θ_K/∂φ)ᵀ ∇_θ L_out(θ_K)

The problem is generic: θ and φ are any parameter pytrees, and both losses are `(θ, φ, batch) -> (loss, metrics)`.
Three ways to get dF/dφ, one signature (`hypergradient(problem, phi, theta0, inner_batch, outer_batch, method=…)`
returning `(outer_loss, dphi, aux)`):

* ``unrolled``: `jax.grad` through the `lax.scan` of the K steps (exact for the K-step solver). Options:
  `checkpoint=True` rematerialises each step in the backward pass (memory: one step's activations plus the K
  carries); `truncate=M` backpropagates through the last M steps only (the first K−M see φ as a constant).
* ``implicit``: the implicit function theorem at θ_K, assuming ∇_θ L_in(θ_K, φ) = 0:
  solve (H + δI) v = ∇_θ L_out(θ_K) with H = ∇²_θθ L_in by conjugate gradients or a Neumann series on
  Hessian-vector products (`jvp` of `grad`), then dF/dφ = ∂_φ L_out − (∂²_φθ L_in)ᵀ v. Memory does not grow with K.
* ``first_order``: the inner Hessian is dropped (H⁻¹ replaced by `first_order_scale`·I, i.e. the direction one
  inner gradient step would move): dF/dφ ≈ ∂_φ L_out − scale · (∂²_φθ L_in)ᵀ ∇_θ L_out(θ_K). The mixed φ–θ
  term must stay: φ reaches the outer loss only through the inner loss, so dropping it too would leave only
  ∂_φ L_out (zero when the outer loss does not use φ directly).

`inner_batch` is used at every inner step, or, with `per_step_batches=True`, is a stack whose leading axis (K) gives
step k its own batch (e.g. fresh samples or RNG keys). The implicit and first-order methods take their Hessian
and mixed products at θ_K on `hessian_batch` (default: the last step's batch).

Everything is pure and jit-able, and vmap-able over a leading domain axis of phi-independent arguments
(`jax.vmap(lambda b_in, b_out: hypergradient(problem, phi, theta0, b_in, b_out)[1])`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax

from metapl.bilevel.linear_solve import conjugate_gradient, neumann_series, tree_vdot

Params = Any
Loss = Callable[[Params, Params, Any], tuple[jax.Array, dict]]
Method = Literal["unrolled", "implicit", "first_order"]


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


def _step_batches(batch: Any, steps: int, per_step: bool) -> Any:
    if not per_step:
        return None
    lead = {x.shape[0] for x in jax.tree.leaves(batch)}
    if lead != {steps}:
        raise ValueError(f"per_step_batches: every leaf needs leading axis {steps} (the inner steps), got {lead}")
    return batch


def _last_batch(batch: Any, per_step: bool) -> Any:
    return jax.tree.map(lambda x: x[-1], batch) if per_step else batch


def inner_solve(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, *,
                per_step_batches: bool = False, checkpoint: bool = False, steps: int | None = None,
                opt_state: Any = None) -> tuple[Params, Any, jax.Array]:
    """(θ_K, final optimiser state, inner losses [K]) after K = `steps` (default problem.steps) inner updates.

    Differentiable in φ and θ₀ (this is what the unrolled method differentiates). `checkpoint` rematerialises
    each step in the backward pass.
    """
    k = problem.steps if steps is None else steps
    batches = _step_batches(inner_batch, k, per_step_batches)
    grad_fn = lambda t, b: problem.value_and_grad(t, phi, b)  # noqa: E731

    def step(carry, b):
        theta, state = carry
        loss, g = grad_fn(theta, inner_batch if b is None else b)
        updates, state = problem.inner_optimizer.update(g, state, theta)
        return (optax.apply_updates(theta, updates), state), loss

    if checkpoint:
        step = jax.checkpoint(step)
    state0 = problem.inner_optimizer.init(theta0) if opt_state is None else opt_state
    (theta, state), losses = jax.lax.scan(step, (theta0, state0), batches, length=k)
    return theta, state, losses


def _at_solution(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, outer_batch: Any,
                 per_step_batches: bool, hessian_batch: Any):
    """What the implicit and first-order methods start from: θ_K (no gradient to φ), the inner losses, the batch
    of the second-order products, and the outer loss, metrics and gradients (∇_θ, ∂_φ) at θ_K."""
    theta, _, losses = inner_solve(problem, jax.lax.stop_gradient(phi), theta0, inner_batch,
                                   per_step_batches=per_step_batches)
    theta = jax.lax.stop_gradient(theta)
    hb = _last_batch(inner_batch, per_step_batches) if hessian_batch is None else hessian_batch
    (loss, metrics), (g_theta, g_phi) = jax.value_and_grad(problem.outer_loss, argnums=(0, 1), has_aux=True)(
        theta, phi, outer_batch)
    return theta, losses, hb, loss, metrics, g_theta, g_phi


def _mixed_product(problem: BilevelProblem, theta: Params, phi: Params, batch: Any, v: Params) -> Params:
    """(∂²_φθ L_in)ᵀ v = ∇_φ <∇_θ L_in(θ, φ), v> at fixed θ and v."""
    v = jax.lax.stop_gradient(v)

    def inner_dot(p):
        g = problem.value_and_grad(theta, p, batch)[1]
        return tree_vdot(g, v)

    return jax.grad(inner_dot)(phi)


def _float_leaves(tree: Any) -> tuple[Any, Callable[[Any], Any]]:
    """(the float leaves of `tree` with other leaves as None, a function rebuilding `tree` from such a pytree).
    Optimiser states hold integer step counts; the adjoint loop differentiates only the float leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    is_float = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
    floats = [x if f else None for x, f in zip(leaves, is_float)]

    def rebuild(new_floats):
        return jax.tree.unflatten(treedef, [n if f else x for x, n, f in zip(leaves, new_floats, is_float)])

    return floats, rebuild


def _pullback_through_gradient(problem: BilevelProblem, theta: Params, phi: Params, batch: Any,
                               v: Params) -> tuple[Params, Params]:
    """((∂g/∂θ)ᵀ v, (∂g/∂φ)ᵀ v) for the inner update direction g(θ, φ).

    When g = ∇_θ L_in both Jacobians are blocks of the symmetric Hessian of L_in, so their transposes act on v as
    a forward-mode derivative of the gradient: (∇²_θθ L v, ∇²_φθ L v) = d/dε ∇_(θ,φ) L(θ + εv, φ). That is one
    `jvp` of one gradient (forward-over-reverse), which keeps about two copies of one step's activations instead
    of the reverse-over-reverse pass's backward-of-a-backward. A custom `inner_grad` need not have a symmetric
    Jacobian, so it takes the `vjp`.
    """
    if problem.inner_grad is None:
        grads = jax.grad(lambda t, p: problem.inner_loss(t, p, batch)[0], argnums=(0, 1))
        return jax.jvp(lambda t: grads(t, phi), (theta,), (v,))[1]
    _, pullback = jax.vjp(lambda t, p: problem.inner_grad(t, p, batch)[1], theta, phi)
    return pullback(v)


def _adjoint_reverse(problem: BilevelProblem, phi: Params, theta0: Params, opt_state: Any, batches: Any,
                     inner_batch: Any, steps: int, outer_batch: Any):
    """The reverse pass of `unrolled_hypergradient(adjoint=True)` over `steps` inner steps from (θ₀, opt_state):
    (outer loss, dF/dφ, aux, inner losses [steps])."""
    phi_c = jax.lax.stop_gradient(phi)
    opt = problem.inner_optimizer

    def forward(carry, b):
        theta, state = carry
        b = inner_batch if b is None else b
        loss, g = problem.value_and_grad(theta, phi_c, b)
        updates, new_state = opt.update(g, state, theta)
        return (optax.apply_updates(theta, updates), new_state), (theta, state, g, loss)

    (theta_k, state_k), (thetas, states, grads, losses) = jax.lax.scan(
        forward, (theta0, opt_state), batches, length=steps)
    (loss, metrics), (theta_bar, phi_bar) = jax.value_and_grad(problem.outer_loss, argnums=(0, 1), has_aux=True)(
        theta_k, phi, outer_batch)
    state_bar = jax.tree.map(jnp.zeros_like, _float_leaves(state_k)[0])

    def backward(carry, xs):
        theta_bar, state_bar, phi_bar = carry
        theta, state, g, b = xs
        b = inner_batch if b is None else b
        floats, rebuild = _float_leaves(state)

        def update(g, float_state, theta):
            updates, new_state = opt.update(g, rebuild(float_state), theta)
            return optax.apply_updates(theta, updates), _float_leaves(new_state)[0]

        _, pullback = jax.vjp(update, g, floats, theta)
        g_bar, state_bar, theta_bar_direct = pullback((theta_bar, state_bar))
        h_theta, h_phi = _pullback_through_gradient(problem, theta, phi_c, b, g_bar)
        theta_bar = jax.tree.map(jnp.add, theta_bar_direct, h_theta)
        return (theta_bar, state_bar, jax.tree.map(jnp.add, phi_bar, h_phi)), None

    (_, _, phi_bar), _ = jax.lax.scan(backward, (theta_bar, state_bar, phi_bar),
                                      (thetas, states, grads, batches), reverse=True, length=steps)
    return loss, phi_bar, {"outer": metrics, "theta": theta_k}, losses


def unrolled_hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any,
                           outer_batch: Any, *, per_step_batches: bool = False, checkpoint: bool = False,
                           truncate: int | None = None, adjoint: bool = False) -> tuple[jax.Array, Params, dict]:
    """(F(φ), dF/dφ, aux) by reverse-mode through the K inner steps (the last `truncate` of them, if given).

    `adjoint=True` runs the same reverse pass as a hand-written loop: the forward scan stores each step's θ_k,
    optimiser state and update direction g_k, and the backward scan pulls the adjoint through the optimiser
    update (`vjp` at g_k, elementwise) and then through the gradient by forward-over-reverse products
    (`_pullback_through_gradient`). Same hypergradient, with less memory and time than `jax.grad` of the scan
    with or without `checkpoint` (experiments/bench_hypergrad.py).
    """
    k = problem.steps
    if truncate is not None and not 1 <= truncate <= k:
        raise ValueError(f"truncate must be in [1, {k}], got {truncate}")
    frozen_steps = 0 if truncate is None else k - truncate
    batches = _step_batches(inner_batch, k, per_step_batches)
    # Truncation: the first `frozen_steps` inner steps run without gradient; the rest is differentiated.
    theta, state, head_losses = theta0, problem.inner_optimizer.init(theta0), []
    if frozen_steps:
        head = None if batches is None else jax.tree.map(lambda x: x[:frozen_steps], batches)
        theta, state, l0 = inner_solve(problem, jax.lax.stop_gradient(phi), theta0,
                                       inner_batch if head is None else head,
                                       per_step_batches=head is not None, steps=frozen_steps)
        theta, state = jax.lax.stop_gradient((theta, state))
        head_losses.append(l0)
    tail = None if batches is None else jax.tree.map(lambda x: x[frozen_steps:], batches)
    if adjoint:
        loss, dphi, aux, l1 = _adjoint_reverse(problem, phi, theta, state, tail, inner_batch, k - frozen_steps,
                                               outer_batch)
        aux["inner_losses"] = jnp.concatenate(head_losses + [l1])
        return loss, dphi, aux

    def objective(p):
        theta_k, _, l1 = inner_solve(problem, p, theta, inner_batch if tail is None else tail,
                                     per_step_batches=tail is not None, checkpoint=checkpoint,
                                     steps=k - frozen_steps, opt_state=state)
        loss, metrics = problem.outer_loss(theta_k, p, outer_batch)
        return loss, {"outer": metrics, "theta": theta_k, "inner_losses": jnp.concatenate(head_losses + [l1])}

    (loss, aux), dphi = jax.value_and_grad(objective, has_aux=True)(phi)
    return loss, dphi, aux


def implicit_hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any,
                           outer_batch: Any, *, per_step_batches: bool = False, hessian_batch: Any = None,
                           solver: Literal["cg", "neumann"] = "cg", iterations: int = 50, tolerance: float = 1e-6,
                           damping: float = 0.0, neumann_step_size: float = 1.0) -> tuple[jax.Array, Params, dict]:
    """(F(φ), dF/dφ, aux) by the implicit function theorem at θ_K; aux has the solver's iterations and the
    relative residual of the linear solve, and the inner gradient norm at θ_K (the theorem assumes it is ~0)."""
    theta, losses, hb, loss, metrics, g_theta, g_phi = _at_solution(
        problem, phi, theta0, inner_batch, outer_batch, per_step_batches, hessian_batch)
    grad_in = lambda t: problem.value_and_grad(t, phi, hb)[1]  # noqa: E731

    def hvp(v):
        return jax.jvp(grad_in, (theta,), (v,))[1]

    if solver == "cg":
        v, info = conjugate_gradient(hvp, g_theta, max_iterations=iterations, tolerance=tolerance, damping=damping)
    elif solver == "neumann":
        v, info = neumann_series(hvp, g_theta, terms=iterations, step_size=neumann_step_size, damping=damping)
    else:
        raise ValueError(f"solver must be 'cg' or 'neumann', got {solver!r}")
    mixed = _mixed_product(problem, theta, phi, hb, v)
    dphi = jax.tree.map(lambda a, b: a - b, g_phi, mixed)
    g_in = grad_in(theta)
    aux = {"outer": metrics, "theta": theta, "inner_losses": losses, "solver_iterations": info.iterations,
           "solver_residual": info.residual, "inner_grad_norm": jnp.sqrt(tree_vdot(g_in, g_in))}
    return loss, dphi, aux


def first_order_hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any,
                              outer_batch: Any, *, per_step_batches: bool = False, hessian_batch: Any = None,
                              first_order_scale: float = 1.0) -> tuple[jax.Array, Params, dict]:
    """(F(φ), dF/dφ ≈ ∂_φ L_out − scale·(∂²_φθ L_in)ᵀ ∇_θ L_out, aux): the inner Hessian replaced by I/scale."""
    theta, losses, hb, loss, metrics, g_theta, g_phi = _at_solution(
        problem, phi, theta0, inner_batch, outer_batch, per_step_batches, hessian_batch)
    mixed = _mixed_product(problem, theta, phi, hb, g_theta)
    dphi = jax.tree.map(lambda a, b: a - first_order_scale * b, g_phi, mixed)
    return loss, dphi, {"outer": metrics, "theta": theta, "inner_losses": losses}


def hypergradient(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, outer_batch: Any, *,
                  method: Method = "unrolled", **options) -> tuple[jax.Array, Params, dict]:
    """(outer loss F(φ), dF/dφ, aux) by `method`; options go to the method's function (see the module docstring)."""
    fns = {"unrolled": unrolled_hypergradient, "implicit": implicit_hypergradient,
           "first_order": first_order_hypergradient}
    if method not in fns:
        raise ValueError(f"method must be one of {sorted(fns)}, got {method!r}")
    return fns[method](problem, phi, theta0, inner_batch, outer_batch, **options)
