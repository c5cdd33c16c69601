"""Bilevel optimisation, problem-agnostic: hypergradients of an outer loss through K inner optimiser steps.

See `hypergrad` for the three methods (unrolled, implicit, first-order) and `linear_solve` for the Hessian
solves of the implicit one.
"""

from metapl.bilevel.hypergrad import (
    BilevelProblem, first_order_hypergradient, hypergradient, implicit_hypergradient, inner_solve,
    unrolled_hypergradient,
)
from metapl.bilevel.linear_solve import SolveInfo, conjugate_gradient, neumann_series, tree_vdot

__all__ = ["BilevelProblem", "SolveInfo", "conjugate_gradient", "first_order_hypergradient", "hypergradient",
           "implicit_hypergradient", "inner_solve", "neumann_series", "tree_vdot", "unrolled_hypergradient"]
