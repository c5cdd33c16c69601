"""The inner solve θ_K(φ) as a differentiable function, its derivative given by a strategy.

    theta_k, aux = solve(problem, phi, theta0, inner_batch, strategy=Implicit(solver="cg"))

runs the K inner steps of `problem` from θ₀ (`inner_solve`); `jax.grad` pulls a cotangent θ̄ of θ_K back to φ by
the strategy's rule, so the hypergradient of F(φ) = L_out(θ_K(φ), φ) is plain autodiff,

    jax.grad(lambda phi: problem.outer_loss(solve(problem, phi, ...)[0], phi, outer_batch)[0])(phi)

in the spirit of optimistix's `adjoint=` and jaxopt's `custom_root`. The strategies (frozen dataclasses):

* `Unrolled(checkpoint=False, truncate=None)`: no custom rule, autodiff through the `lax.scan` of the K steps
  (exact for the K-step solver). `checkpoint` rematerialises each step in the backward pass (memory: one step's
  activations plus the K carries); `truncate=M` differentiates the last M steps only (the first K − M see φ as a
  constant).
* `Adjoint(truncate=None)`: the same derivative by a hand-written reverse scan. The forward scan stores each
  step's θ_k, optimiser state and update direction g_k; the backward scan pulls the adjoint through the optimiser
  update (`vjp` at g_k, elementwise) and through the update direction by forward-over-reverse products
  (`_pullback_through_gradient`). Less memory and time than autodiff of the scan, with or without `checkpoint`
  (experiments/bench_hypergrad.py).
* `Implicit(solver, iterations, tolerance, damping, neumann_step_size)`: the implicit function theorem at θ_K,
  assuming ∇_θ L_in(θ_K, φ) = 0: v = (H + δI)⁻¹ θ̄ with H = ∇²_θθ L_in applied by `jvp` of `grad`, by conjugate
  gradients or a Neumann series (`linear_solve`), then φ̄ = −(∂²_φθ L_in)ᵀ v. Memory does not grow with K.
* `FirstOrder(scale=1.0)`: the inner Hessian dropped, H⁻¹ ≈ scale·I (the direction one inner gradient step
  moves): φ̄ = −scale·(∂²_φθ L_in)ᵀ θ̄. The mixed term stays: φ reaches the outer loss only through the inner
  loss, so without it nothing of φ's influence would be left.

With a custom inner update direction g (`BilevelProblem.inner_grad`), ∂²_θθ L_in and ∂²_φθ L_in stand for the
transposed Jacobians (∂g/∂θ)ᵀ and (∂g/∂φ)ᵀ. Implicit and FirstOrder take their second-order products at θ_K on
`hessian_batch` (default: the last step's batch).

The custom rules are `jax.custom_vjp`s. The problem's inner functions may close over arrays, such as frozen base
weights or θ₀ in a proximal term, which are tracers under `jit`, `vmap` or `shard_map`; `jax.closure_convert`
hoists them into explicit arguments of the custom_vjp. Differentiated, they get φ's rule (they are parameters of
the inner problem as φ is). Everything is pure, jit-able, vmap-able over a leading domain axis and usable inside
`shard_map`, where arguments replicated over a manual axis must first be cast to varying over it
(`jax.lax.pcast(x, axis, to="varying")`, as `metapl.meta.meta_objective_over_shards` does): without the cast even
autodiff through the plain steps gives other numbers than one device does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values

from metapl.bilevel.linear_solve import SolveInfo, conjugate_gradient, neumann_series, tree_vdot
from metapl.bilevel.problem import BilevelProblem, Params, inner_solve, last_batch, step_batches


def _check_truncate(truncate: int | None) -> None:
    if truncate is not None and truncate < 1:
        raise ValueError(f"truncate must be >= 1 (the number of differentiated inner steps), got {truncate}")


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Autodiff through the K inner steps; `checkpoint` rematerialises each step, `truncate=M` differentiates the
    last M steps only."""

    checkpoint: bool = False
    truncate: int | None = None

    def __post_init__(self):
        _check_truncate(self.truncate)


@dataclasses.dataclass(frozen=True)
class Adjoint:
    """Unrolled's derivative by a hand-written reverse scan over the stored steps; `truncate=M` as in Unrolled."""

    truncate: int | None = None

    def __post_init__(self):
        _check_truncate(self.truncate)


@dataclasses.dataclass(frozen=True)
class Implicit:
    """The implicit function theorem at θ_K: v = (H + damping·I)⁻¹ θ̄ by `solver` ("cg": at most `iterations`
    conjugate-gradient steps down to a relative residual `tolerance`; "neumann": `iterations` terms of step
    `neumann_step_size`), then φ̄ = −(∂²_φθ L_in)ᵀ v. With a custom `inner_grad`, H is the transposed Jacobian of
    that field; CG assumes it symmetric (a policy-gradient field's is not exactly: Neumann does not need it)."""

    solver: Literal["cg", "neumann"] = "cg"
    iterations: int = 50
    tolerance: float = 1e-6
    damping: float = 0.0
    neumann_step_size: float = 1.0

    def __post_init__(self):
        if self.solver not in ("cg", "neumann"):
            raise ValueError(f"solver must be 'cg' or 'neumann', got {self.solver!r}")


@dataclasses.dataclass(frozen=True)
class FirstOrder:
    """The inner Hessian replaced by I/scale: φ̄ = −scale·(∂²_φθ L_in)ᵀ θ̄."""

    scale: float = 1.0


Strategy = Unrolled | Adjoint | Implicit | FirstOrder


def solver_probe(*like: Any) -> SolveInfo:
    """Zeros in SolveInfo's three fields (scalars), to pass as `solve(..., probe=...)` with the Implicit strategy.

    The linear solve runs in the backward pass, so its report cannot be a forward output: `jax.grad` returns it as
    the probe's cotangent instead, in floats (iterations, relative residual, breakdown 1.0 or 0.0); zeros when the
    backward pass did not run. One probe per solve: `like` (the solve's arguments) lend it their batching under
    `vmap` and their variation over `shard_map` axes, as that solve's report needs.
    """
    dtype = jnp.zeros(()).dtype
    leaves = [x for x in jax.tree.leaves(like) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended)]
    zeros = sum((jnp.zeros_like(x, dtype, shape=()) for x in leaves), jnp.zeros((), dtype))
    return SolveInfo(zeros, zeros, zeros)


def solve(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, *, strategy: Strategy = Unrolled(),
          per_step_batches: bool = False, hessian_batch: Any = None, probe: SolveInfo | None = None
          ) -> tuple[Params, dict]:
    """(θ_K, aux): K = problem.steps inner updates from θ₀, differentiable in φ by `strategy` (module docstring).

    inner_batch: used at every step, or, with `per_step_batches`, a stack whose leading axis (K) gives step k its
    own batch (e.g. fresh samples or RNG keys). hessian_batch: where Implicit and FirstOrder take their
    second-order products (default: the last step's batch). aux (not differentiated): inner_losses [K], the inner
    loss before each step; with Implicit also inner_grad_norm, ‖∇_θ L_in(θ_K, φ)‖ on hessian_batch (the theorem
    assumes it is ~0). probe: see `solver_probe`.

    Derivatives in the other arguments: θ₀ exact with Unrolled and Adjoint (zero for the steps a truncation
    freezes), zero with Implicit and FirstOrder (at the fixed point they assume, θ_K does not depend on θ₀); the
    arrays the inner loss closes over, as φ. Arrays the inner optimiser closes over (a traced learning rate) need
    Unrolled: Implicit and FirstOrder give them zero (the fixed point does not depend on the optimiser), Adjoint
    refuses them.
    """
    k = problem.steps
    truncate = getattr(strategy, "truncate", None)
    if truncate is not None and truncate > k:
        raise ValueError(f"truncate must be in [1, {k}], got {truncate}")
    step_batches(inner_batch, k, per_step_batches)  # checks the leading axis
    if isinstance(strategy, Unrolled):
        theta, losses = _unrolled(problem, phi, theta0, inner_batch, strategy, per_step_batches)
        return theta, {"inner_losses": jax.lax.stop_gradient(losses)}
    if not isinstance(strategy, (Adjoint, Implicit, FirstOrder)):
        raise TypeError(f"strategy must be Unrolled, Adjoint, Implicit or FirstOrder, got {strategy!r}")
    state0 = problem.inner_optimizer.init(theta0)
    one_batch = last_batch(inner_batch, per_step_batches)
    hessian_batch = one_batch if hessian_batch is None else hessian_batch
    hoisted = _hoist(problem, theta0, phi, one_batch, state0)
    run = _custom_solve(problem, strategy, per_step_batches, hoisted)
    theta, aux = run(phi, theta0, state0, inner_batch, hessian_batch, hoisted.consts, hoisted.update_consts, probe)
    return theta, jax.lax.stop_gradient(aux)  # for the custom rules, aux's cotangents are symbolic zeros


# ------------------------------------------------------------------------------------------------ unrolled

def _head(problem: BilevelProblem, phi: Params, theta0: Params, state0: Any, inner_batch: Any, per_step: bool,
          truncate: int | None) -> tuple[Params, Any, jax.Array | None, Any]:
    """The first K − M inner steps of a solve truncated to its last M = `truncate` steps: (θ and optimiser state
    after them, their losses [K − M], the batch of the other M steps). Nothing to run without truncation."""
    k = problem.steps
    if truncate is None or truncate == k:
        return theta0, state0, None, inner_batch
    part = lambda lo, hi: jax.tree.map(lambda x: x[lo:hi], inner_batch) if per_step else inner_batch  # noqa: E731
    theta, state, losses = inner_solve(problem, phi, theta0, part(0, k - truncate), per_step_batches=per_step,
                                       steps=k - truncate, opt_state=state0)
    return theta, state, losses, part(k - truncate, k)


def _losses(head: jax.Array | None, tail: jax.Array) -> jax.Array:
    """The inner losses [K] of a solve run as a head (or none) and a tail."""
    return tail if head is None else jnp.concatenate([head, tail])


def _unrolled(problem: BilevelProblem, phi: Params, theta0: Params, inner_batch: Any, strategy: Unrolled,
              per_step: bool) -> tuple[Params, jax.Array]:
    """Unrolled's (θ_K, inner losses [K]): the frozen head of a truncation without gradient, then the rest, which
    autodiff differentiates."""
    theta, state, head_losses, tail = _head(problem, jax.lax.stop_gradient(phi), theta0,
                                            problem.inner_optimizer.init(theta0), inner_batch, per_step,
                                            strategy.truncate)
    if head_losses is not None:
        theta, state = jax.lax.stop_gradient((theta, state))
    theta, _, losses = inner_solve(problem, phi, theta, tail, per_step_batches=per_step,
                                   checkpoint=strategy.checkpoint, steps=strategy.truncate or problem.steps,
                                   opt_state=state)
    return theta, _losses(head_losses, losses)


# ------------------------------------------------------------------------- closure conversion of the problem

class _Hoisted(NamedTuple):
    """The problem's inner functions with the arrays they close over as explicit trailing arguments."""

    field: Callable  # (θ, φ, batch, *consts) -> inner loss, or (loss, ∇_θ) when the problem has an inner_grad
    consts: tuple
    update: Callable  # (g, state, θ, *update_consts) -> (updates, state), the optimiser's update
    update_consts: tuple


def _hoist(problem: BilevelProblem, theta: Params, phi: Params, batch: Any, state: Any) -> _Hoisted:
    """`problem`'s inner loss (or inner_grad) and optimiser update closure-converted (`jax.closure_convert`) at these
    example arguments: the arrays they close over that may be tracers become arguments a custom_vjp can take."""
    if problem.inner_grad is None:
        field, consts = jax.closure_convert(lambda t, p, b: problem.inner_loss(t, p, b)[0], theta, phi, batch)
    else:
        field, consts = jax.closure_convert(problem.inner_grad, theta, phi, batch)
    update, update_consts = jax.closure_convert(problem.inner_optimizer.update, theta, state, theta)
    return _Hoisted(field, tuple(consts), update, tuple(update_consts))


def _rebuilt(problem: BilevelProblem, hoisted: _Hoisted, consts: tuple, update_consts: tuple) -> BilevelProblem:
    """`problem` from its closure-converted functions, over the meta-parameter ψ = (φ, hoisted arrays or None): the
    inner functions take the hoisted arrays from ψ when they are there (to be differentiated like φ), else
    `consts`."""
    def args(psi):
        phi, own = psi
        return phi, consts if own is None else own

    if problem.inner_grad is None:
        def inner_loss(theta, psi, batch):
            phi, c = args(psi)
            return hoisted.field(theta, phi, batch, *c), {}
        inner_grad = None
    else:
        def inner_grad(theta, psi, batch):
            phi, c = args(psi)
            return hoisted.field(theta, phi, batch, *c)

        def inner_loss(theta, psi, batch):
            return inner_grad(theta, psi, batch)[0], {}
    optimizer = optax.GradientTransformation(
        problem.inner_optimizer.init, lambda g, state, theta: hoisted.update(g, state, theta, *update_consts))
    return BilevelProblem(inner_loss, problem.outer_loss, optimizer, problem.steps, inner_grad)


# --------------------------------------------------------------------------------------- the custom rules

def _custom_solve(problem: BilevelProblem, strategy: Strategy, per_step: bool, hoisted: _Hoisted) -> Callable:
    """The custom_vjp (φ, θ₀, state₀, inner_batch, hessian_batch, consts, update_consts, probe) -> (θ_K, aux) of
    Adjoint, Implicit or FirstOrder."""

    def forward(phi, theta0, state0, inner_batch, hessian_batch, consts, update_consts, own, store):
        """((θ_K, aux), the backward pass's residuals); `own` is `consts` when they are differentiated; `store`:
        run Adjoint's storing forward pass (else the plain steps: the same θ_K and losses)."""
        inner = _rebuilt(problem, hoisted, consts, update_consts)
        psi = (phi, own)
        if store and isinstance(strategy, Adjoint):
            theta, losses, stored = _adjoint_forward(inner, psi, theta0, state0, inner_batch, per_step,
                                                     strategy.truncate)
        else:
            theta, _, losses = inner_solve(inner, psi, theta0, inner_batch, per_step_batches=per_step,
                                           opt_state=state0)
            stored = theta
        aux = {"inner_losses": losses}
        if isinstance(strategy, Implicit):
            g = inner.value_and_grad(theta, psi, hessian_batch)[1]
            aux["inner_grad_norm"] = jnp.sqrt(tree_vdot(g, g))
        return (theta, aux), (psi, hessian_batch, consts, update_consts, stored)

    @jax.custom_vjp
    def run(phi, theta0, state0, inner_batch, hessian_batch, consts, update_consts, probe):
        return forward(phi, theta0, state0, inner_batch, hessian_batch, consts, update_consts, None, False)[0]

    def fwd(*args):  # with symbolic_zeros, each leaf of args is a CustomVJPPrimal(value, perturbed)
        differentiated = lambda tree: any(leaf.perturbed for leaf in jax.tree.leaves(tree))  # noqa: E731
        wrt_consts, wrt_update_consts = differentiated(args[5]), differentiated(args[6])
        if isinstance(strategy, Adjoint) and wrt_update_consts:
            raise ValueError("solve: the Adjoint strategy does not differentiate arrays the inner optimiser closes "
                             "over (e.g. a traced learning rate); use Unrolled")
        phi, theta0, state0, inner_batch, hessian_batch, consts, update_consts, probe = (
            custom_vjp_primal_tree_values(args))
        own = consts if wrt_consts else None
        out, residuals = forward(phi, theta0, state0, inner_batch, hessian_batch, consts, update_consts, own, True)
        return out, (residuals, probe)

    def bwd(residuals, cotangents):
        (psi, hessian_batch, consts, update_consts, stored), probe = residuals
        inner = _rebuilt(problem, hoisted, consts, update_consts)
        theta_bar = jax.tree.map(lambda c: jnp.zeros(c.shape, c.dtype) if isinstance(c, SymbolicZero) else c,
                                 cotangents[0])
        theta0_bar = state0_bar = probe_bar = None
        if isinstance(strategy, Adjoint):
            psi_bar, theta0_bar, state0_bar = _adjoint_backward(inner, psi, stored, theta_bar, per_step,
                                                                   strategy.truncate)
        elif isinstance(strategy, Implicit):
            psi_bar, info = _implicit_backward(inner, strategy, stored, psi, hessian_batch, theta_bar)
            if probe is not None:  # in the probe's type (+ zeros: its variation over shard_map axes, too)
                probe_bar = SolveInfo(*(x.astype(p.dtype) + jnp.zeros_like(p) for x, p in zip(info, probe)))
        else:
            mixed = _mixed_product(inner, stored, psi, hessian_batch, theta_bar)
            psi_bar = jax.tree.map(lambda m: -strategy.scale * m, mixed)
        return psi_bar[0], theta0_bar, state0_bar, None, None, psi_bar[1], None, probe_bar

    run.defvjp(fwd, bwd, symbolic_zeros=True)
    return run


def _mixed_product(problem: BilevelProblem, theta: Params, phi: Params, batch: Any, v: Params) -> Params:
    """(∂²_φθ L_in)ᵀ v = ∇_φ <∇_θ L_in(θ, φ), v> at fixed θ and v (a φ-tree)."""
    v = jax.lax.stop_gradient(v)

    def inner_dot(p):
        g = problem.value_and_grad(theta, p, batch)[1]
        return tree_vdot(g, v)

    return jax.grad(inner_dot)(phi)


def _implicit_backward(problem: BilevelProblem, strategy: Implicit, theta: Params, phi: Params, batch: Any,
                       theta_bar: Params) -> tuple[Params, SolveInfo]:
    """(φ̄ = −(∂g/∂φ)ᵀ (∂g/∂θ + δI)⁻ᵀ θ̄ at θ_K = `theta`, the linear solve's report), g the inner update direction.

    For g = ∇_θ L_in, ∂g/∂θ is the symmetric Hessian H, applied by forward-over-reverse (`jvp` of `grad`). A
    custom `inner_grad` need not have a symmetric Jacobian, and the theorem needs its transpose: `vjp`.
    """
    grad_in = lambda t: problem.value_and_grad(t, phi, batch)[1]  # noqa: E731
    if problem.inner_grad is None:
        def matvec(v):
            return jax.jvp(grad_in, (theta,), (v,))[1]
    else:
        pullback = jax.vjp(grad_in, theta)[1]

        def matvec(v):
            return pullback(v)[0]

    if strategy.solver == "cg":
        v, info = conjugate_gradient(matvec, theta_bar, max_iterations=strategy.iterations,
                                     tolerance=strategy.tolerance, damping=strategy.damping)
    else:
        v, info = neumann_series(matvec, theta_bar, terms=strategy.iterations,
                                 step_size=strategy.neumann_step_size, damping=strategy.damping)
    return jax.tree.map(jnp.negative, _mixed_product(problem, theta, phi, batch, v)), info


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


def _adjoint_forward(problem: BilevelProblem, phi: Params, theta0: Params, state0: Any, inner_batch: Any,
                     per_step: bool, truncate: int | None) -> tuple[Params, jax.Array, tuple]:
    """Adjoint's forward pass: (θ_K, inner losses [K], what the reverse scan needs), the differentiated M =
    `truncate` (or K) last steps storing their θ_k, optimiser state, update direction and batch."""
    m = truncate or problem.steps
    theta, state, head_losses, tail = _head(problem, phi, theta0, state0, inner_batch, per_step, truncate)
    batches = step_batches(tail, m, per_step)

    def step(carry, b):
        theta, state = carry
        loss, g = problem.value_and_grad(theta, phi, tail if b is None else b)
        updates, new_state = problem.inner_optimizer.update(g, state, theta)
        return (optax.apply_updates(theta, updates), new_state), (theta, state, g, loss)

    (theta_k, _), (thetas, states, grads, losses) = jax.lax.scan(step, (theta, state), batches, length=m)
    return theta_k, _losses(head_losses, losses), (thetas, states, grads, tail)


def _adjoint_backward(problem: BilevelProblem, phi: Params, stored: tuple, theta_bar: Params, per_step: bool,
                      truncate: int | None) -> tuple[Params, Params | None, Any]:
    """Adjoint's reverse scan from θ̄ over the stored steps: (φ̄, θ̄₀, the cotangent of the initial optimiser state;
    the last two None when a truncation froze the first steps)."""
    thetas, states, grads, tail = stored
    m = truncate or problem.steps
    batches = step_batches(tail, m, per_step)
    opt = problem.inner_optimizer
    first_state = jax.tree.map(lambda x: x[0], states)
    state_bar = jax.tree.map(jnp.zeros_like, _float_leaves(first_state)[0])

    def backward(carry, xs):
        theta_bar, state_bar, phi_bar = carry
        theta, state, g, b = xs
        b = tail if b is None else b
        floats, rebuild = _float_leaves(state)

        def update(g, float_state, theta):
            updates, new_state = opt.update(g, rebuild(float_state), theta)
            return optax.apply_updates(theta, updates), _float_leaves(new_state)[0]

        _, pullback = jax.vjp(update, g, floats, theta)
        g_bar, state_bar, theta_bar_direct = pullback((theta_bar, state_bar))
        h_theta, h_phi = _pullback_through_gradient(problem, theta, phi, b, g_bar)
        theta_bar = jax.tree.map(jnp.add, theta_bar_direct, h_theta)
        return (theta_bar, state_bar, jax.tree.map(jnp.add, phi_bar, h_phi)), None

    phi_bar0 = jax.tree.map(jnp.zeros_like, phi)
    (theta_bar, state_bar, phi_bar), _ = jax.lax.scan(backward, (theta_bar, state_bar, phi_bar0),
                                                      (thetas, states, grads, batches), reverse=True, length=m)
    if truncate is not None and truncate < problem.steps:
        return phi_bar, None, None
    return phi_bar, theta_bar, _float_leaves(first_state)[1](state_bar)
