"""The meta-gradient with the episode's domains split over the data axis (`meta_gradient_over_shards`, the
`jax.value_and_grad` of `meta_objective_over_shards`) equals the one-device `meta_gradient`, for the projected and
the on-policy inner solver, and for the implicit method (its linear solves inside shard_map, their report maxima
over all domains). The on-policy solver samples inside its inner loop: each domain must draw the samples it draws
on one device. Float64, the tiny LoRA policy and reward head of tests/meta/test_metagrad.py, simulated CPU devices
(tests/conftest.py)."""

import functools

import jax
import numpy as np
import pytest

from metapl.meta import MetaConfig, domain_keys, meta_gradient, meta_gradient_over_shards, reward_function
from metapl.parallel import MeshConfig, make_mesh
from tests.finite_diff import x64
from tests.meta.test_metagrad import ONPOLICY, setup, with_prompts

SOLVERS = {
    "projected": MetaConfig(beta=0.5, beta_out=1.0, inner_steps=2, inner_lr=0.5),
    "projected-implicit": MetaConfig(beta=0.5, beta_out=1.0, inner_steps=2, inner_lr=0.5, method="implicit",
                                     prox=5.0, bt_weight=0.3),
    "onpolicy": MetaConfig(beta=0.5, beta_out=1.0, inner_steps=2, inner_lr=0.5, inner_solver="onpolicy",
                           onpolicy_samples=2),
}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_meta_gradient_over_shards_equals_one_device(solver):
    cfg = SOLVERS[solver]
    with x64():
        pcfg, rcfg, base, theta0, phi, support, query = setup()
        e = support["tokens"].shape[0]
        support = with_prompts(support)
        kwargs = dict(cfg=cfg, policy_config=pcfg, reward_fn=reward_function(rcfg), onpolicy=ONPOLICY)
        key = jax.random.PRNGKey(3)
        args = (phi, theta0, base, support, query)
        loss, dphi, metrics = jax.jit(functools.partial(meta_gradient, **kwargs))(*args, key=key)
        mesh = make_mesh(MeshConfig(data=e))
        sharded = jax.jit(functools.partial(meta_gradient_over_shards, mesh=mesh, **kwargs))
        got_loss, got_dphi, got_metrics = jax.block_until_ready(sharded(*args, key=key))

        assert float(np.linalg.norm(jax.tree.leaves(dphi)[0])) > 0
        np.testing.assert_allclose(got_loss, loss, rtol=1e-10)
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got_dphi)[0], jax.tree.leaves(dphi)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14, err_msg=jax.tree_util.keystr(path))
        for name in ("query_accuracy", "inner_loss_first", "inner_loss_last", "implicit_margin", "hypergrad_norm"):
            np.testing.assert_allclose(got_metrics[name], metrics[name], rtol=1e-10, err_msg=name)
        assert set(got_metrics) == set(metrics)
        if cfg.method == "implicit":  # maxima over all domains
            for name in ("solver_breakdown", "solver_iterations", "solver_residual", "inner_grad_norm"):
                np.testing.assert_allclose(got_metrics[name], metrics[name], rtol=1e-6, err_msg=name)
            assert float(got_metrics["solver_iterations"]) >= 1 and float(got_metrics["solver_breakdown"]) == 0.0

        if solver == "onpolicy":  # the draw matters: another key gives another meta-gradient
            other = jax.block_until_ready(sharded(*args, key=jax.random.PRNGKey(4)))[1]
            assert not np.allclose(jax.tree.leaves(other)[0], jax.tree.leaves(dphi)[0])


def test_domain_keys_split_one_key_and_pass_one_per_domain():
    key = jax.random.PRNGKey(0)
    keys = domain_keys(key, 4)
    assert keys.shape == (4, 2)
    np.testing.assert_array_equal(domain_keys(keys, 4), keys)
    typed = domain_keys(jax.random.key(0), 4)
    assert typed.shape == (4,) and domain_keys(typed, 4) is typed
    with pytest.raises(ValueError, match="expected one PRNG key or 3"):
        domain_keys(keys, 3)
