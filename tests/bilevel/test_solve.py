"""`solve` as a differentiable function (float64): `jax.grad` of an outer loss through it is `hypergradient`'s result
for every strategy, under `jit`, `vmap` over domains and `shard_map`; the strategies against references computed
here with dense linear algebra; derivatives in closed-over arrays; the implicit rule's transpose for a
non-symmetric update field; the solver probe.

Problems: the tabular KL-regularised bandit of test_oracles.py, a linear-quadratic problem whose every inner step
has its own batch (a shift c_k of the linear term), and the same with a custom update direction (`inner_grad`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metapl.bilevel import (
    Adjoint, BilevelProblem, FirstOrder, Implicit, Unrolled, hypergradient, outer_objective, solve, solver_probe,
    strategy_from_method,
)
from metapl.parallel import MeshConfig, make_mesh
from tests.bilevel.test_oracles import PAIRS, lq_setup, tabular_problem, tabular_setup
from tests.finite_diff import x64

K = 25
STRATEGIES = {  # name: (strategy, the same as hypergradient's method and options)
    "unrolled": (Unrolled(), "unrolled", {}),
    "unrolled_checkpoint": (Unrolled(checkpoint=True), "unrolled", {"checkpoint": True}),
    "unrolled_truncate": (Unrolled(truncate=5), "unrolled", {"truncate": 5}),
    "adjoint": (Adjoint(), "unrolled", {"adjoint": True}),
    "adjoint_truncate": (Adjoint(truncate=5), "unrolled", {"adjoint": True, "truncate": 5}),
    "implicit_cg": (Implicit(iterations=60, tolerance=1e-12, damping=0.01), "implicit",
                    {"iterations": 60, "tolerance": 1e-12, "damping": 0.01}),
    "implicit_neumann": (Implicit(solver="neumann", iterations=40, neumann_step_size=0.3), "implicit",
                         {"solver": "neumann", "iterations": 40, "neumann_step_size": 0.3}),
    "first_order": (FirstOrder(scale=0.7), "first_order", {"first_order_scale": 0.7}),
}


@dataclasses.dataclass(frozen=True)
class Case:
    problem: BilevelProblem
    phi: jax.Array
    theta0: jax.Array
    inner_batch: jax.Array | None
    outer_batch: jax.Array | None
    per_step: bool


def lq_problem(h, b, t, lr, custom_field=False):
    """L_in(θ, φ; c) = ½ θᵀHθ − θᵀ(Bφ + c), L_out = ½‖θ − t‖² + 0.1·‖φ‖² (a direct φ term too)."""
    h, b, t = map(jnp.asarray, (h, b, t))
    inner = lambda th, p, c: (0.5 * th @ h @ th - th @ (b @ p + c), {})  # noqa: E731
    outer = lambda th, p, _: (0.5 * jnp.sum((th - t) ** 2) + 0.1 * jnp.sum(p ** 2), {})  # noqa: E731
    field = (lambda th, p, c: (inner(th, p, c)[0], h @ th - b @ p - c)) if custom_field else None
    return BilevelProblem(inner, outer, optax.sgd(lr), K, inner_grad=field)


def make_case(name: str, seed: int = 0) -> Case:
    if name == "tabular":
        theta0, feats, phi = tabular_setup()
        return Case(tabular_problem(theta0, feats, steps=K), jnp.asarray(phi), jnp.asarray(theta0), None,
                    jnp.asarray(PAIRS), False)
    h, b, t, phi = lq_setup(seed=seed)
    shifts = np.random.default_rng(seed + 1).normal(0, 0.1, (K, h.shape[0]))  # the per-step batches
    problem = lq_problem(h, b, t, 0.5 / np.linalg.eigvalsh(h).max(), custom_field=name == "lq_custom_field")
    return Case(problem, jnp.asarray(phi), jnp.zeros(h.shape[0]), jnp.asarray(shifts), None, True)


CASES = ["tabular", "lq_per_step", "lq_custom_field"]


def grad_through_solve(case: Case, strategy):
    """jax.grad in φ of L_out(solve(...)[0], φ), and the inner losses, jit-compiled."""
    def objective(p):
        theta, aux = solve(case.problem, p, case.theta0, case.inner_batch, strategy=strategy,
                           per_step_batches=case.per_step)
        return case.problem.outer_loss(theta, p, case.outer_batch)[0], aux["inner_losses"]

    return jax.jit(jax.grad(objective, has_aux=True))(case.phi)


@pytest.mark.parametrize("case_name", CASES)
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_grad_through_solve_is_the_hypergradient(name, case_name):
    strategy, method, options = STRATEGIES[name]
    with x64():
        case = make_case(case_name)
        dphi, inner_losses = grad_through_solve(case, strategy)
        _, want, aux = jax.jit(lambda p: hypergradient(case.problem, p, case.theta0, case.inner_batch,
                                                       case.outer_batch, method=method,
                                                       per_step_batches=case.per_step, **options))(case.phi)
        np.testing.assert_allclose(dphi, want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(inner_losses, aux["inner_losses"], rtol=1e-14)
        assert inner_losses.shape == (K,)
        assert strategy_from_method(method, **options) == strategy
        keys = {"outer", "theta", "inner_losses"}
        if isinstance(strategy, Implicit):
            keys |= {"solver_iterations", "solver_residual", "solver_breakdown", "inner_grad_norm"}
            assert not bool(aux["solver_breakdown"])
        assert set(aux) == keys


def dense_terms(case: Case):
    """(J_θ, J_φ, ∇_θ L_out, ∂_φ L_out) at θ_K, found by a Python loop of the K optimiser steps: dense Jacobians of
    the update direction on the last step's batch, and the outer loss's gradients."""
    p, opt = case.problem, case.problem.inner_optimizer
    batch = lambda k: None if case.inner_batch is None else case.inner_batch[k]  # noqa: E731
    theta, state = case.theta0, opt.init(case.theta0)
    for k in range(K):
        updates, state = opt.update(p.value_and_grad(theta, case.phi, batch(k))[1], state, theta)
        theta = optax.apply_updates(theta, updates)
    field = lambda t, ph: p.value_and_grad(t, ph, batch(K - 1))[1]  # noqa: E731
    j_theta = jax.jacobian(field, argnums=0)(theta, case.phi).reshape(theta.size, theta.size)
    j_phi = jax.jacobian(field, argnums=1)(theta, case.phi).reshape(theta.size, case.phi.size)
    g_theta, g_phi = jax.grad(lambda t, ph: p.outer_loss(t, ph, case.outer_batch)[0], argnums=(0, 1))(theta, case.phi)
    return np.asarray(j_theta), np.asarray(j_phi), np.asarray(g_theta).ravel(), np.asarray(g_phi)


@pytest.mark.parametrize("case_name", CASES)
def test_strategies_against_dense_references(case_name):
    """Adjoint and checkpointing equal autodiff through the steps; Implicit equals ∂_φ L_out − J_φᵀ (J_θ + δI)⁻ᵀ ∇_θ
    L_out with a dense solve (CG) or the same truncated Neumann sum; FirstOrder equals ∂_φ L_out − scale·J_φᵀ ∇_θ
    L_out."""
    with x64():
        case = make_case(case_name)
        got = {name: np.asarray(grad_through_solve(case, s)[0]) for name, (s, _, _) in STRATEGIES.items()}
        np.testing.assert_allclose(got["unrolled_checkpoint"], got["unrolled"], rtol=1e-12)
        np.testing.assert_allclose(got["adjoint"], got["unrolled"], rtol=1e-10)
        np.testing.assert_allclose(got["adjoint_truncate"], got["unrolled_truncate"], rtol=1e-10)
        assert not np.allclose(got["unrolled_truncate"], got["unrolled"])

        j_theta, j_phi, g_theta, g_phi = dense_terms(case)
        cg, neumann = STRATEGIES["implicit_cg"][0], STRATEGIES["implicit_neumann"][0]
        a = j_theta.T + cg.damping * np.eye(len(g_theta))
        np.testing.assert_allclose(got["implicit_cg"], g_phi - j_phi.T @ np.linalg.solve(a, g_theta), rtol=1e-8)
        s = neumann.neumann_step_size
        m = np.eye(len(g_theta)) - s * j_theta.T
        v = s * sum(np.linalg.matrix_power(m, j) @ g_theta for j in range(neumann.iterations))
        np.testing.assert_allclose(got["implicit_neumann"], g_phi - j_phi.T @ v, rtol=1e-9)
        scale = STRATEGIES["first_order"][0].scale
        np.testing.assert_allclose(got["first_order"], g_phi - scale * j_phi.T @ g_theta, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_vmap_over_domains_equals_a_loop(name):
    """Three domains with their own inner batches and θ₀, φ shared: vmap of jax.grad through solve, jit-compiled."""
    strategy = STRATEGIES[name][0]
    with x64():
        cases = [make_case("lq_per_step", seed=s) for s in range(3)]
        problem, phi = cases[0].problem, cases[0].phi

        def per_domain(p, theta0, batch):
            theta, _ = solve(problem, p, theta0, batch, strategy=strategy, per_step_batches=True)
            return problem.outer_loss(theta, p, None)[0]

        thetas0 = jnp.stack([0.1 * s * jnp.ones_like(cases[0].theta0) for s in range(3)])
        batches = jnp.stack([c.inner_batch for c in cases])
        got = jax.jit(jax.vmap(jax.grad(per_domain), in_axes=(None, 0, 0)))(phi, thetas0, batches)
        for i in range(3):
            want = jax.grad(per_domain)(phi, thetas0[i], batches[i])
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["unrolled", "adjoint", "implicit_cg", "first_order"])
def test_inside_shard_map(name):
    """Four domains split over two devices by shard_map (per-shard vmap of `outer_objective`, which for Implicit
    also reports the linear solves through a probe), against vmap on one device."""
    strategy = STRATEGIES[name][0]
    with x64():
        case = make_case("lq_per_step")
        batches = jnp.stack([make_case("lq_per_step", seed=s).inner_batch for s in range(4)])

        def mean_loss(p, theta0, batches):
            def per_domain(b):
                return outer_objective(case.problem, p, theta0, b, None, strategy=strategy, per_step_batches=True)[0]
            return jnp.mean(jax.vmap(per_domain)(batches))

        mesh = make_mesh(MeshConfig(data=2))
        spec = jax.sharding.PartitionSpec

        def sharded(p, theta0, batches):
            def shard(p, theta0, b):
                p, theta0 = jax.lax.pcast((p, theta0), "data", to="varying")
                return jax.lax.pmean(mean_loss(p, theta0, b), "data")
            return jax.shard_map(shard, mesh=mesh, in_specs=(spec(), spec(), spec("data")), out_specs=spec())(
                p, theta0, batches)

        want = jax.jit(jax.grad(mean_loss))(case.phi, case.theta0, batches)
        got = jax.block_until_ready(jax.jit(jax.grad(sharded))(case.phi, case.theta0, batches))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("strategy", [Adjoint(), Implicit(iterations=60, tolerance=1e-12), FirstOrder()],
                         ids=["adjoint", "implicit", "first_order"])
def test_closed_over_arrays_get_the_rule_of_phi(strategy):
    """H and B reach the inner loss through its closure; as jit arguments they are tracers. Differentiated, they get
    φ's rule: with the inner problem solved (K large) Adjoint and Implicit agree with autodiff through the steps
    (FirstOrder's rule differs by design: it is only run); θ₀'s gradient is exact with Adjoint, zero with Implicit."""
    with x64():
        h, b, t, phi = lq_setup()
        theta0 = jnp.asarray(np.random.default_rng(3).normal(size=h.shape[0]))
        lr = 0.5 / np.linalg.eigvalsh(h).max()

        def objective(h, b, p, theta0, strategy, steps):
            problem = dataclasses.replace(lq_problem(h, b, t, lr), steps=steps)
            theta, _ = solve(problem, p, theta0, jnp.zeros(h.shape[0]), strategy=strategy)
            return problem.outer_loss(theta, p, None)[0]

        grad = jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3)), static_argnums=(4, 5))
        args = (jnp.asarray(h), jnp.asarray(b), jnp.asarray(phi), theta0)
        got = grad(*args, strategy, 2000)
        want = grad(*args, Unrolled(), 2000)
        if isinstance(strategy, FirstOrder):
            assert all(np.all(np.isfinite(x)) for x in got)
            return
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-12)
        if isinstance(strategy, Adjoint):  # a short solve, where θ₀ still matters
            short = grad(*args, strategy, 7), grad(*args, Unrolled(), 7)
            jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14), *short)
            assert float(jnp.linalg.norm(short[0][3])) > 1e-3
        else:
            np.testing.assert_array_equal(got[3], 0.0)


def test_adjoint_refuses_a_differentiated_optimiser_array():
    with x64():
        h, b, t, phi = lq_setup()

        def objective(lr, strategy):
            problem = dataclasses.replace(lq_problem(h, b, t, 0.1), inner_optimizer=optax.sgd(lr))
            theta, _ = solve(problem, jnp.asarray(phi), jnp.zeros(h.shape[0]), jnp.zeros(h.shape[0]),
                             strategy=strategy)
            return problem.outer_loss(theta, jnp.asarray(phi), None)[0]

        with pytest.raises(ValueError, match="use Unrolled"):
            jax.grad(objective)(jnp.asarray(0.1), Adjoint())
        assert float(jax.grad(objective)(jnp.asarray(0.1), Implicit())) == 0.0  # the fixed point ignores the step


def test_implicit_transposes_a_non_symmetric_update_field():
    """A custom field g = Aθ − Bφ with A not symmetric: θ* = A⁻¹Bφ and dF/dφ = Bᵀ A⁻ᵀ (θ* − t), not Bᵀ A⁻¹ (θ* − t)."""
    with x64():
        rng = np.random.default_rng(1)
        d = 4
        a = np.eye(d) + 0.4 * rng.normal(size=(d, d))
        b, t, phi = rng.normal(size=(d, 2)), rng.normal(size=d), rng.normal(size=2)
        assert np.all(np.linalg.eigvals(a).real > 0) and not np.allclose(a, a.T)
        aj, bj, tj = map(jnp.asarray, (a, b, t))
        problem = BilevelProblem(lambda th, p, _: (jnp.zeros(()), {}),
                                 lambda th, p, _: (0.5 * jnp.sum((th - tj) ** 2), {}), optax.sgd(0.2), 2000,
                                 inner_grad=lambda th, p, _: (jnp.zeros(()), aj @ th - bj @ p))
        theta_star = np.linalg.solve(a, b @ phi)
        want = b.T @ np.linalg.solve(a.T, theta_star - t)
        for strategy in (Unrolled(), Adjoint(), Implicit(solver="neumann", iterations=3000, neumann_step_size=0.2)):
            _, d_phi, _ = hypergradient(problem, jnp.asarray(phi), jnp.zeros(d), None, None, method=strategy)
            np.testing.assert_allclose(d_phi, want, rtol=1e-9, err_msg=type(strategy).__name__)


def test_the_probe_returns_the_backward_solves_report():
    with x64():
        case = make_case("lq_per_step")
        strategy = Implicit(iterations=60, tolerance=1e-10)

        def objective(p, probe):
            theta, _ = solve(case.problem, p, case.theta0, case.inner_batch, strategy=strategy, per_step_batches=True,
                             probe=probe)
            return case.problem.outer_loss(theta, p, None)[0]

        _, info = jax.jit(jax.grad(objective, argnums=(0, 1)))(case.phi, solver_probe())
        _, _, aux = hypergradient(case.problem, case.phi, case.theta0, case.inner_batch, None, method=strategy,
                                  per_step_batches=True)
        assert 0 < float(info.iterations) < 60 and float(info.iterations) == int(aux["solver_iterations"])
        assert float(info.residual) < 1e-10 and float(info.breakdown) == 0.0
        np.testing.assert_allclose(info.residual, aux["solver_residual"])
        # a zero cotangent of θ_K is solved in no iteration, and is no breakdown
        _, info = jax.grad(lambda p, probe: 0.0 * objective(p, probe), argnums=(0, 1))(case.phi, solver_probe())
        assert float(info.iterations) == 0.0 and float(info.breakdown) == 0.0


def test_an_indefinite_inner_hessian_reports_a_breakdown():
    """At a saddle of the inner loss, CG meets negative curvature: hypergradient's aux says so."""
    with x64():
        h = np.diag([1.0, -0.5, 2.0])
        b = np.eye(3)[:, :2]
        problem = lq_problem(h, b, np.ones(3), 0.1)
        _, _, aux = hypergradient(problem, jnp.ones(2), jnp.zeros(3), jnp.zeros((K, 3)), None, method="implicit",
                                  per_step_batches=True)
        assert bool(aux["solver_breakdown"]) and int(aux["solver_iterations"]) < 50


def test_strategy_validation():
    with pytest.raises(ValueError, match="truncate"):
        Unrolled(truncate=0)
    with pytest.raises(ValueError, match="solver"):
        Implicit(solver="lu")
    with pytest.raises(ValueError, match="method"):
        strategy_from_method("exact")
    with x64():
        case = make_case("lq_per_step")
        with pytest.raises(ValueError, match=r"truncate must be in \[1, 25\]"):
            solve(case.problem, case.phi, case.theta0, case.inner_batch, strategy=Adjoint(truncate=26),
                  per_step_batches=True)
        with pytest.raises(TypeError, match="options"):
            hypergradient(case.problem, case.phi, case.theta0, case.inner_batch, None, method=Implicit(),
                          per_step_batches=True, iterations=3)
    assert strategy_from_method("unrolled", checkpoint=True, adjoint=True) == Adjoint()
