"""Sharded training steps compute what the single-device step computes, on simulated CPU devices (tests/conftest.py
asks XLA for 8). Bradley–Terry RM, DPO, RLOO (on-policy sampling, itself sharded) and the meta-learned RM (the
episode's domains split over the data axis by shard_map) run several steps on data-only, fsdp-only, data x fsdp
and data x tensor meshes of 4 devices; DPO also on data x fsdp x tensor over all 8 devices; every other
algorithm (IPO, tree RM, the offline methods, SRPO, PPO, and the meta-learned RM with the on-policy inner solver)
on data x fsdp, in the slow suite. The parameters are laid out as the rules say. Every step's output is awaited
before the next is queued (queued collectives can deadlock XLA:CPU's simulated devices)."""

import dataclasses

import jax
import numpy as np
import pytest

from metapl.parallel import MeshConfig, make_mesh, param_spec, shard_step
from metapl.train import init_state, make_optimizer, make_train_step
from metapl.runs import load_run_config, setup as setup_algorithm

STEPS = 3
COMMON = ["data.synthetic.num_domains=12", "data.synthetic.num_heldout=4", "data.synthetic.pairs_per_domain=16",
          "model.hidden_size=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
          "model.intermediate_size=64", "data.batch_size=8", "optim.learning_rate=1e-2", "data.eval_prompts=8",
          # Adam's update m/(sqrt(v) + eps) turns a gradient entry that is float noise (the reward head's bias
          # has an exactly-zero Bradley–Terry gradient) into a step of ~lr in a random direction, in either run;
          # a larger eps keeps such entries' steps proportional to their gradients.
          "optim.eps=1e-4"]
ALGOS = {
    "rm": [],
    "dpo": [],
    "rloo": ["loss.k=2", "data.batch_size=4", "data.max_response_tokens=6"],
    "meta": ["meta.inner_steps=2", "meta.inner_lr=0.05", "meta.domains_per_episode=4", "meta.support_prompts=2",
             "meta.query_pairs=2", "meta.samples_per_prompt=2", "meta.support_pool=4", "meta.feedback_budget=8"],
}
SAMPLED = ["data.sample_prompts=8", "data.samples_per_prompt=2", "data.max_response_tokens=6"]
OTHERS = {  # each on data x fsdp
    "ipo": [],
    "tree-rm": ["data.tree_prompts=8", "data.max_response_tokens=6", "tree.pairs_per_tree=2"],
    "mle-filter": SAMPLED + ["data.batch_size=4"],
    "rwr": SAMPLED,
    "dt": SAMPLED,
    "srpo": [],
    "ppo": ["data.batch_size=4", "data.max_response_tokens=6"],
    # the meta-learned RM with the on-policy inner solver: sampling inside the inner loop of every domain
    "meta-onpolicy": [*ALGOS["meta"], "meta.inner_solver=onpolicy", "meta.onpolicy_samples=2",
                      "data.max_response_tokens=6"],
}
MESHES = {"data": MeshConfig(data=4), "fsdp": MeshConfig(fsdp=4), "data_fsdp": MeshConfig(data=2, fsdp=2),
          "data_tensor": MeshConfig(data=2, tensor=2)}


MESHES["all8"] = MeshConfig(data=2, fsdp=2, tensor=2)  # every axis at once, on all 8 devices
# The other algorithms add ~3 min of compilation on a cold cache: they run with the slow suite (`make test-slow`).
CASES = [(a, m) for a in sorted(ALGOS) for m in sorted(MESHES) if m != "all8"] + [("dpo", "all8")] + \
    [pytest.param(a, "data_fsdp", marks=pytest.mark.slow) for a in sorted(OTHERS)]


def run_steps(cfg):
    """(state after STEPS steps, losses) of the algorithm, on one device or on the config's mesh."""
    setup = setup_algorithm(cfg)
    optimizer = make_optimizer(cfg.optim)
    state = init_state(setup.trainable, optimizer, jax.random.PRNGKey(cfg.seed))
    step = make_train_step(setup.objective, optimizer, jit=not cfg.mesh.sharded)
    frozen, losses, fn = setup.frozen, [], None
    for _ in range(STEPS):
        if hasattr(setup.batches, "set_params"):
            setup.batches.set_params(state.params)
        batch = next(setup.batches)
        if not cfg.mesh.sharded:
            state, metrics = step(state, frozen, batch)
        else:
            if fn is None:
                fn, state, frozen = shard_step(step, state, frozen, make_mesh(cfg.mesh))
                if getattr(setup.batches, "frozen", None) is not None:  # a sampler shares the step's one copy
                    assert all(a is b for a, b in zip(jax.tree.leaves(setup.batches.frozen), jax.tree.leaves(frozen)))
            state, metrics = fn(state, frozen, batch)
        jax.block_until_ready(state)
        losses.append(float(metrics["loss"]))
    return state, losses


_references = {}


def reference(algo):
    """(config, params, losses) of the one-device run, once per algorithm."""
    if algo not in _references:
        overrides = ALGOS.get(algo, OTHERS.get(algo))
        cfg = load_run_config(None, [f"algo={algo.removesuffix('-onpolicy')}", *COMMON, *overrides])
        state, losses = run_steps(cfg)
        _references[algo] = cfg, jax.device_get(state.params), losses
    return _references[algo]


@pytest.mark.parametrize("algo,mesh_name", CASES)
def test_sharded_steps_equal_the_single_device_steps(algo, mesh_name):
    assert jax.device_count() >= 8, "tests/conftest.py sets --xla_force_host_platform_device_count=8"
    cfg, want, want_losses = reference(algo)
    cfg = dataclasses.replace(cfg, mesh=MESHES[mesh_name])
    mesh = make_mesh(cfg.mesh)
    state, losses = run_steps(cfg)
    np.testing.assert_allclose(losses, want_losses, rtol=2e-5, atol=1e-6)
    got = jax.device_get(state.params)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))  # 1e-3 of a step
    # the layout is the rules' (and at least one leaf is really split when the mesh has fsdp or tensor)
    split = 0
    for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        assert x.sharding.spec == param_spec(path, x.shape, mesh), jax.tree_util.keystr(path)
        split += any(axis is not None for axis in x.sharding.spec)
    assert split > 0 or mesh_name == "data"
