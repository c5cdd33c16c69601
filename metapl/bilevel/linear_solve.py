"""Solving `H v = g` for a symmetric positive (semi-)definite operator given only as a product `v -> H v`.

Everything works on parameter pytrees (v and g have the parameters' structure) and is jit- and vmap-able. Used by
the implicit hypergradient, where `H` is the inner problem's Hessian, applied through `jvp` of `grad`.

Both solvers report how the solve went (`SolveInfo`), including whether it broke down: a Hessian met away from a
minimum can be indefinite or singular, and a solve that silently returns garbage there would make a hypergradient
look computed when it is not.
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
    """How a solve went (scalars).

    iterations: the steps taken before the solve stopped (converged, reached its cap, or broke down);
    residual: ‖(H + δI) v − g‖ / ‖g‖ at the returned v (recomputed, not tracked);
    breakdown: the returned v is not a solution to trust (see `conjugate_gradient` and `neumann_series`).
    """

    iterations: jax.Array
    residual: jax.Array
    breakdown: jax.Array


def _damped(matvec: Operator, damping: float) -> Operator:
    """v -> (H + damping·I) v."""
    return (lambda v: tree_axpy(damping, v, matvec(v))) if damping else matvec


def _relative_residual(matvec: Operator, v: Tree, g: Tree) -> jax.Array:
    r = tree_axpy(-1.0, matvec(v), g)
    return jnp.sqrt(tree_vdot(r, r) / jnp.maximum(tree_vdot(g, g), jnp.finfo(jnp.float32).tiny))


def _diverged(residual: jax.Array) -> jax.Array:
    """The returned v is worse than v = 0 (its residual grew past ‖g‖), or the residual is not finite."""
    return ~(residual <= 1.0)


def conjugate_gradient(matvec: Operator, g: Tree, *, max_iterations: int = 50, tolerance: float = 1e-6,
                       damping: float = 0.0) -> tuple[Tree, SolveInfo]:
    """v ≈ (H + damping·I)⁻¹ g by conjugate gradients from v = 0.

    Stops after `max_iterations` or when ||r|| <= tolerance·||g||. H must be symmetric; on a positive
    semi-definite H, g in H's range (as for a loss invariant along H's null directions) is still solved.

    Breakdown (`SolveInfo.breakdown`), where CG's answer means nothing:
    * non-positive curvature: a search direction p with pᵀ(H + δI)p ≤ 0 — H indefinite, or a null direction of a
      singular H — taken numerically, pᵀAp ≤ ε·‖p‖²·(the largest curvature met so far), ε the dtype's epsilon
      (rounding turns an exact zero into a tiny number of either sign). The solve stops before that step:
      v is the last iterate and `iterations` the steps taken.
    * a growing residual: on an inconsistent singular system (g outside H's range, no solution) the iterates
      diverge and the residual grows; the solve is flagged when it ends with a residual above ‖g‖ (v worse than
      v = 0) or a non-finite one. Growth from one step to the next is not the test: CG's residual is not
      monotone on positive definite systems either.
    """
    A = _damped(matvec, damping)
    zeros = jax.tree.map(jnp.zeros_like, g)
    rr0 = tree_vdot(g, g)
    stop = (tolerance ** 2) * rr0
    eps = jnp.finfo(rr0.dtype).eps

    def cond(state):
        k, _, _, _, rr, _, broke = state
        return (k < max_iterations) & (rr > stop) & ~broke

    def body(state):
        k, v, r, p, rr, top_curvature, _ = state
        ap = A(p)
        pap, pp = tree_vdot(p, ap), tree_vdot(p, p)
        top_curvature = jnp.maximum(top_curvature, pap / pp)
        broke = ~(pap > eps * pp * top_curvature)  # also true for NaN
        alpha = jnp.where(broke, 0.0, rr / jnp.where(broke, 1.0, pap))
        v = tree_axpy(alpha, p, v)
        r = tree_axpy(-alpha, ap, r)
        rr_new = tree_vdot(r, r)
        p = tree_axpy(rr_new / jnp.maximum(rr, jnp.finfo(jnp.float32).tiny), p, r)
        return jnp.where(broke, k, k + 1), v, r, p, rr_new, top_curvature, broke

    # The scalars are made from rr0 so that inside shard_map they vary over the mesh axes as the data does.
    init = (jnp.zeros_like(rr0, jnp.int32), zeros, g, g, rr0, jnp.zeros_like(rr0), jnp.zeros_like(rr0, bool))
    k, v, _, _, _, _, broke = jax.lax.while_loop(cond, body, init)
    residual = _relative_residual(A, v, g)
    return v, SolveInfo(k, residual, broke | _diverged(residual))


def neumann_series(matvec: Operator, g: Tree, *, terms: int = 50, step_size: float = 1.0, damping: float = 0.0
                   ) -> tuple[Tree, SolveInfo]:
    """v ≈ (H + damping·I)⁻¹ g = step_size · Σ_{j<terms} (I − step_size·(H + damping·I))^j g.

    Converges when step_size · λ_max(H + damping·I) < 2 and H + damping·I is positive definite; each term costs
    one Hessian-vector product. The residual g − (H + δI) v of the partial sum is the next power
    (I − step_size·(H + δI))^terms g, whose norm shrinks while the series converges and grows once it diverges:
    `breakdown` is set when the residual ends above ‖g‖ or is not finite. `iterations` is `terms`.
    """
    A = _damped(matvec, damping)

    def body(_, carry):
        p, total = carry
        p = tree_axpy(-step_size, A(p), p)
        return p, jax.tree.map(jnp.add, total, p)

    _, total = jax.lax.fori_loop(1, terms, body, (g, g))
    v = jax.tree.map(lambda x: step_size * x, total)
    residual = _relative_residual(A, v, g)
    return v, SolveInfo(jnp.full_like(residual, terms, jnp.int32), residual, _diverged(residual))
