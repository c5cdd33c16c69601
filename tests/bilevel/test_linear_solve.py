"""Conjugate gradients and the Neumann series say when their answer means nothing (`SolveInfo.breakdown`) and
where they stopped (`iterations`), on small matrices whose behaviour is worked out by hand (float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.bilevel import conjugate_gradient, neumann_series
from tests.finite_diff import x64


def cg(a, g, **kwargs):
    a, g = jnp.asarray(a, jnp.float64), jnp.asarray(g, jnp.float64)
    return jax.jit(lambda g: conjugate_gradient(lambda v: a @ v, g, **kwargs))(g)


def test_cg_on_an_inconsistent_singular_system_breaks_down_where_it_stops():
    """A = diag(1, 0), g = (1, 1): g is not in A's range. Step 1: p = g, α = 2, v = (2, 2), r = (−1, 1); step 2's
    direction p = r + p = (0, 2) is A's null direction (pᵀAp = 0): the solve stops after one step."""
    with x64():
        v, info = cg(np.diag([1.0, 0.0]), [1.0, 1.0], max_iterations=50)
        assert bool(info.breakdown) and int(info.iterations) == 1
        np.testing.assert_allclose(v, [2.0, 2.0])
        np.testing.assert_allclose(info.residual, 1.0)


def test_cg_on_an_indefinite_matrix_reports_non_positive_curvature():
    """A = diag(2, −1), g = (1, 1): step 1 has pᵀAp = 1 > 0 (α = 2, r = (−3, 3)); step 2's p = (6, 12) has
    pᵀAp = −72. With A = diag(1, −1) already the first direction has pᵀAp = 0: no step at all."""
    with x64():
        v, info = cg(np.diag([2.0, -1.0]), [1.0, 1.0])
        assert bool(info.breakdown) and int(info.iterations) == 1
        np.testing.assert_allclose(v, [2.0, 2.0])
        v, info = cg(np.diag([1.0, -1.0]), [1.0, 1.0])
        assert bool(info.breakdown) and int(info.iterations) == 0
        np.testing.assert_array_equal(v, [0.0, 0.0])


def test_cg_flags_the_diverging_iterates_of_a_rank_deficient_system():
    """A random PSD matrix of rank 25 in 30 dimensions and a random g (not in its range): rounding keeps the
    curvature positive, the iterates diverge and the residual ends far above ‖g‖."""
    with x64():
        rng = np.random.default_rng(0)
        q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
        a = q @ np.diag(np.r_[np.logspace(0, -2, 25), np.zeros(5)]) @ q.T
        _, info = cg(a, rng.normal(size=30), max_iterations=20)
        assert bool(info.breakdown) and float(info.residual) > 1.0
        # the same matrix with g in its range is solved (a consistent singular system)
        _, info = cg(a, a @ rng.normal(size=30), max_iterations=100, tolerance=1e-10)
        assert not bool(info.breakdown) and float(info.residual) < 1e-9


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_cg_on_a_positive_definite_system_stops_early_without_breakdown(damping):
    with x64():
        rng = np.random.default_rng(1)
        m = rng.normal(size=(12, 12))
        a = m @ m.T / 12 + 0.1 * np.eye(12)
        g = rng.normal(size=12)
        v, info = cg(a, g, max_iterations=50, tolerance=1e-10, damping=damping)
        assert not bool(info.breakdown) and 0 < int(info.iterations) < 50
        np.testing.assert_allclose(v, np.linalg.solve(a + damping * np.eye(12), g), rtol=1e-8)
        assert float(info.residual) < 1e-10


def test_cg_on_a_zero_right_hand_side_takes_no_step():
    with x64():
        v, info = cg(np.eye(3), np.zeros(3))
        assert int(info.iterations) == 0 and not bool(info.breakdown) and float(info.residual) == 0.0
        np.testing.assert_array_equal(v, 0.0)


def test_neumann_series_flags_divergence_and_non_finite_results():
    """Step s: the series converges iff every eigenvalue λ of A has |1 − sλ| < 1. Its residual after J terms is
    (I − sA)^J g."""
    with x64():
        g = jnp.ones(2)
        for diag, terms, broken in [((1.0, 0.5), 60, False), ((1.0, 2.5), 60, True), ((1.0, 2.5), 3000, True)]:
            v, info = neumann_series(functools.partial(jnp.matmul, jnp.diag(jnp.asarray(diag))), g, terms=terms,
                                     step_size=1.0)
            assert bool(info.breakdown) == broken and int(info.iterations) == terms, (diag, terms)
            if not broken:
                np.testing.assert_allclose(v, 1.0 / np.asarray(diag), rtol=1e-12)
                assert float(info.residual) < 1e-15
        _, info = neumann_series(lambda x: x * jnp.nan, g, terms=5)
        assert bool(info.breakdown)
