"""Solving `H v = g` for a symmetric positive (semi-)definite operator given only as a product `v -> H v`.

Everything works on parameter pytrees (v and g have the parameters' structure) and is jit- and vmap-able. Used by
the implicit hypergradient, where `H` is the inner problem's Hessian, applied through `jvp` of `grad`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Tree = Any
Operator = Callable[[Tree], Tree]


def tree_vdot(a: Tree, b: Tree) -> jax.Array:
    """Σ over all leaves of <a, b> (float32 or wider)."""
    return sum((jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), jnp.zeros(()))


def tree_axpy(alpha: jax.Array, x: Tree, y: Tree) -> Tree:
    """alpha * x + y, leafwise."""
    return jax.tree.map(lambda a, b: (alpha * a + b).astype(b.dtype), x, y)


class SolveInfo(NamedTuple):
    """iterations: iterations run; residual: ||H v - g|| / ||g|| at the returned v (recomputed, not tracked)."""

    iterations: jax.Array
    residual: jax.Array


def _damped(matvec: Operator, damping: float) -> Operator:
    """v -> (H + damping·I) v."""
    return (lambda v: tree_axpy(damping, v, matvec(v))) if damping else matvec


def _relative_residual(matvec: Operator, v: Tree, g: Tree) -> jax.Array:
    r = tree_axpy(-1.0, matvec(v), g)
    return jnp.sqrt(tree_vdot(r, r) / jnp.maximum(tree_vdot(g, g), jnp.finfo(jnp.float32).tiny))


def conjugate_gradient(matvec: Operator, g: Tree, *, max_iterations: int = 50, tolerance: float = 1e-6,
                       damping: float = 0.0) -> tuple[Tree, SolveInfo]:
    """v ≈ (H + damping·I)⁻¹ g by conjugate gradients from v = 0.

    Stops after `max_iterations` or when ||r|| <= tolerance·||g||. H must be symmetric; on a positive
    semi-definite H, g in H's range (as for a loss invariant along H's null directions) is still solved.
    """
    A = _damped(matvec, damping)
    zeros = jax.tree.map(jnp.zeros_like, g)
    rr0 = tree_vdot(g, g)
    stop = (tolerance ** 2) * rr0

    def cond(state):
        k, _, _, _, rr = state
        return (k < max_iterations) & (rr > stop)

    def body(state):
        k, v, r, p, rr = state
        ap = A(p)
        pap = tree_vdot(p, ap)
        alpha = jnp.where(pap > 0, rr / jnp.where(pap > 0, pap, 1.0), 0.0)  # a non-positive curvature ends the solve
        v = tree_axpy(alpha, p, v)
        r = tree_axpy(-alpha, ap, r)
        rr_new = tree_vdot(r, r)
        p = tree_axpy(rr_new / jnp.maximum(rr, jnp.finfo(jnp.float32).tiny), p, r)
        k = jnp.where(pap > 0, k + 1, max_iterations)
        return k, v, r, p, rr_new

    k, v, _, _, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), zeros, g, g, rr0))
    return v, SolveInfo(k, _relative_residual(A, v, g))


def neumann_series(matvec: Operator, g: Tree, *, terms: int = 50, step_size: float = 1.0, damping: float = 0.0
                   ) -> tuple[Tree, SolveInfo]:
    """v ≈ (H + damping·I)⁻¹ g = step_size · Σ_{j<terms} (I − step_size·(H + damping·I))^j g.

    Converges when step_size · λ_max(H + damping·I) < 2; each term costs one Hessian-vector product.
    """
    A = _damped(matvec, damping)

    def body(_, carry):
        p, total = carry
        p = tree_axpy(-step_size, A(p), p)
        return p, jax.tree.map(jnp.add, total, p)

    _, total = jax.lax.fori_loop(1, terms, body, (g, g))
    v = jax.tree.map(lambda x: step_size * x, total)
    return v, SolveInfo(jnp.asarray(terms, jnp.int32), _relative_residual(A, v, g))
