"""Hypergradients against closed forms (float64 numpy, derived by hand, not from the code under test).

1. Tabular/bandit policy: softmax logits θ[x, y] over a small response set per prompt, reference logits θ₀,
   linear reward r_φ(x, y) = f(x, y)·φ. The projected inner loss −Σ_x Σ_y q_φ(y|x) log π_θ(y|x) with
   q_φ ∝ π_ref exp(r_φ/β) is minimised by π_θ = q_φ = π*_φ, the exact KL-regularised optimum. There
   h(y) = log π*(y) − log π_ref(y) = r_φ(y)/β − log Z, so the DPO-style outer loss is
   mean softplus(−β_o (r_w − r_l)/β) and its φ-gradient is −mean σ(−s)·(β_o/β)(f_w − f_l).
2. Linear-quadratic: L_in = ½ θᵀHθ − θᵀBφ, L_out = ½‖θ − t‖², so θ* = H⁻¹Bφ and dF/dφ = BᵀH⁻¹(θ* − t).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metapl.bilevel import BilevelProblem, hypergradient
from tests.finite_diff import x64

X, Y, F = 3, 5, 4
BETA, BETA_OUT = 0.5, 1.0
PAIRS = np.array([(0, 0, 1), (0, 2, 4), (1, 1, 3), (1, 4, 0), (2, 2, 1), (2, 3, 0)])  # (x, chosen, rejected)


def tabular_setup():
    rng = np.random.default_rng(0)
    theta0 = rng.normal(0, 0.5, (X, Y))
    feats = rng.normal(0, 1.0, (X, Y, F))
    phi = rng.normal(0, 0.3, F)
    return theta0, feats, phi


def tabular_oracle(feats, phi):
    r = feats @ phi
    x, w, lo = PAIRS.T
    s = BETA_OUT / BETA * (r[x, w] - r[x, lo])
    loss = np.mean(np.logaddexp(0.0, -s))
    sig_neg = 1.0 / (1.0 + np.exp(s))
    grad = -np.mean(sig_neg[:, None] * (BETA_OUT / BETA) * (feats[x, w] - feats[x, lo]), axis=0)
    return loss, grad


def tabular_problem(theta0, feats, steps, lr=1.5):
    theta0, feats = jnp.asarray(theta0), jnp.asarray(feats)
    ref = jax.nn.log_softmax(theta0, axis=-1)

    def inner_loss(theta, phi, batch):
        q = jax.nn.softmax(ref + feats @ phi / BETA, axis=-1)
        return -jnp.sum(q * jax.nn.log_softmax(theta, axis=-1)), {}

    def outer_loss(theta, phi, pairs):
        h = jax.nn.log_softmax(theta, axis=-1) - ref
        x, w, lo = pairs[:, 0], pairs[:, 1], pairs[:, 2]
        return jnp.mean(jax.nn.softplus(-BETA_OUT * (h[x, w] - h[x, lo]))), {}

    return BilevelProblem(inner_loss, outer_loss, optax.sgd(lr), steps)


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("method,options", [
    ("unrolled", {}),
    ("unrolled", {"checkpoint": True}),
    ("unrolled", {"adjoint": True}),
    ("implicit", {"solver": "cg", "iterations": 60, "tolerance": 1e-12}),
    ("implicit", {"solver": "neumann", "iterations": 4000, "neumann_step_size": 1.0}),
])
def test_tabular_hypergradient_matches_the_exact_optimum(method, options):
    with x64():
        theta0, feats, phi = tabular_setup()
        want_loss, want = tabular_oracle(feats, phi)
        problem = tabular_problem(theta0, feats, steps=3000)
        fn = jax.jit(lambda p: hypergradient(problem, p, jnp.asarray(theta0), None, jnp.asarray(PAIRS),
                                             method=method, **options))
        loss, dphi, aux = fn(jnp.asarray(phi))
        assert abs(float(loss) - want_loss) < 1e-6
        assert rel_err(dphi, want) < 1e-3, (method, np.asarray(dphi), want)
        if method == "implicit":
            assert float(aux["inner_grad_norm"]) < 1e-6


def test_tabular_hypergradients_converge_with_k_and_first_order_is_reported():
    """Unrolled approaches the oracle as K grows; the first-order direction is printed beside it (no claim)."""
    with x64():
        theta0, feats, phi = tabular_setup()
        _, want = tabular_oracle(feats, phi)
        errs, report = [], {}
        for k in (10, 100, 1000):
            problem = tabular_problem(theta0, feats, steps=k)
            row = {}
            for method in ("unrolled", "implicit", "first_order"):
                _, d, _ = jax.jit(lambda p: hypergradient(problem, p, jnp.asarray(theta0), None, jnp.asarray(PAIRS),
                                                          method=method))(jnp.asarray(phi))
                d = np.asarray(d)
                row[method] = (rel_err(d, want), float(d @ want / np.linalg.norm(d) / np.linalg.norm(want)))
            errs.append(row["unrolled"][0])
            report[k] = row
        print("\nK: method (relative error, cosine) vs the exact hypergradient")
        for k, row in report.items():
            print(k, {m: f"({e:.2e}, {c:+.3f})" for m, (e, c) in row.items()})
        assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


def lq_setup(dim=6, dphi=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    h = a @ a.T / dim + 0.5 * np.eye(dim)
    b = rng.normal(size=(dim, dphi))
    t = rng.normal(size=dim)
    phi = rng.normal(size=dphi)
    return h, b, t, phi


def lq_problem(h, b, t, steps, lr):
    h, b, t = map(jnp.asarray, (h, b, t))
    inner = lambda th, p, _: (0.5 * th @ h @ th - th @ (b @ p), {})  # noqa: E731
    outer = lambda th, p, _: (0.5 * jnp.sum((th - t) ** 2), {})  # noqa: E731
    return BilevelProblem(inner, outer, optax.sgd(lr), steps)


def test_linear_quadratic_closed_form():
    with x64():
        h, b, t, phi = lq_setup()
        theta_star = np.linalg.solve(h, b @ phi)
        want = b.T @ np.linalg.solve(h, theta_star - t)
        lr = 1.0 / np.linalg.eigvalsh(h).max()
        problem = lq_problem(h, b, t, steps=4000, lr=lr)
        theta0 = jnp.zeros(h.shape[0])
        for method, opts in [("unrolled", {}), ("implicit", {"tolerance": 1e-12}),
                             ("implicit", {"solver": "neumann", "iterations": 4000, "neumann_step_size": lr})]:
            _, d, _ = hypergradient(problem, jnp.asarray(phi), theta0, None, None, method=method, **opts)
            assert rel_err(d, want) < 1e-6, (method, opts)


def test_first_order_is_exact_when_the_inner_hessian_is_the_identity():
    with x64():
        h, b, t, phi = lq_setup()
        h = np.eye(h.shape[0])
        want = b.T @ (b @ phi - t)
        problem = lq_problem(h, b, t, steps=200, lr=0.5)
        _, d, _ = hypergradient(problem, jnp.asarray(phi), jnp.zeros(h.shape[0]), None, None, method="first_order")
        assert rel_err(d, want) < 1e-9
        # ... and off by the Hessian when it is not.
        h2, *_ = lq_setup()
        problem = lq_problem(h2, b, t, steps=4000, lr=1.0 / np.linalg.eigvalsh(h2).max())
        _, d, _ = hypergradient(problem, jnp.asarray(phi), jnp.zeros(h.shape[0]), None, None, method="first_order")
        theta_star = np.linalg.solve(h2, b @ phi)
        np.testing.assert_allclose(d, b.T @ (theta_star - t), rtol=1e-6)


@pytest.mark.parametrize("adjoint", [False, True])
def test_truncation_keeps_only_the_last_steps(adjoint):
    """With truncate=M on the linear-quadratic problem (SGD, step η), θ_K = Σ_k (I−ηH)^k ηBφ, and only the last M
    terms carry φ's derivative: dF/dφ = (Σ_{k<M} (I−ηH)^k ηB)ᵀ (θ_K − t)."""
    with x64():
        h, b, t, phi = lq_setup()
        eta, k_steps, m = 0.1, 30, 5
        problem = lq_problem(h, b, t, steps=k_steps, lr=eta)
        a = np.eye(h.shape[0]) - eta * h
        theta_k = sum(np.linalg.matrix_power(a, k) @ (eta * b @ phi) for k in range(k_steps))
        jac = sum(np.linalg.matrix_power(a, k) @ (eta * b) for k in range(m))
        _, d, aux = hypergradient(problem, jnp.asarray(phi), jnp.zeros(h.shape[0]), None, None, truncate=m,
                                  adjoint=adjoint)
        np.testing.assert_allclose(aux["theta"], theta_k, rtol=1e-10)
        np.testing.assert_allclose(d, jac.T @ (theta_k - t), rtol=1e-9)
        assert aux["inner_losses"].shape == (k_steps,)
