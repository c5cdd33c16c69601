"""Bilevel optimisation, problem-agnostic: an outer loss of the result of K inner optimiser steps, and its
hypergradient.

* `problem`: `BilevelProblem` (inner and outer losses, inner optimiser, K) and `inner_solve`, the K steps.
* `solve`: `solve(problem, φ, θ₀, inner_batch, strategy=…)` -> (θ_K, aux), differentiable in φ by a strategy:
  `Unrolled`, `Adjoint`, `Implicit` or `FirstOrder` (`jax.custom_vjp` rules for the last three), so that
  `jax.grad` of any outer loss of θ_K is a hypergradient.
* `hypergrad`: `outer_objective` (F(φ) = L_out(θ_K(φ), φ) as a differentiable function) and `hypergradient`
  (its value and gradient, the method given by name and options or as a strategy), the maths in its docstring.
* `linear_solve`: the Hessian solves of the implicit strategy (conjugate gradients, Neumann series) and how
  they went (`SolveInfo`: iterations, residual, breakdown).
"""

from metapl.bilevel.hypergrad import (
    first_order_hypergradient, hypergradient, implicit_hypergradient, outer_objective, strategy_from_method,
    unrolled_hypergradient,
)
from metapl.bilevel.linear_solve import SolveInfo, conjugate_gradient, neumann_series, tree_vdot
from metapl.bilevel.problem import BilevelProblem, inner_solve
from metapl.bilevel.solve import Adjoint, FirstOrder, Implicit, Strategy, Unrolled, solve, solver_probe

__all__ = ["Adjoint", "BilevelProblem", "FirstOrder", "Implicit", "SolveInfo", "Strategy", "Unrolled",
           "conjugate_gradient", "first_order_hypergradient", "hypergradient", "implicit_hypergradient",
           "inner_solve", "neumann_series", "outer_objective", "solve", "solver_probe", "strategy_from_method",
           "tree_vdot", "unrolled_hypergradient"]
