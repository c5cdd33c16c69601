"""Sampling on a mesh: the weights laid out by the rules and the prompts split over data x fsdp draw the same
tokens as one device (JAX's partitionable threefry gives every shape the same random stream on any layout), and a
batch the split does not divide is padded and trimmed. Simulated CPU devices (tests/conftest.py)."""

import jax
import numpy as np
import pytest

from metapl.models import SamplingConfig, generate, init_params, tiny
from metapl.parallel import MeshConfig, make_mesh, param_spec

MESHES = {"data": MeshConfig(data=4), "fsdp": MeshConfig(fsdp=4), "data_tensor": MeshConfig(data=2, tensor=2)}


@pytest.fixture(scope="module")
def model():
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)  # peakier distributions
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, config.vocab_size, size=(8, 6)).astype(np.int32)
    mask = np.ones((8, 6), bool)
    mask[::3, :2] = False  # some left padding
    return config, params, tokens, mask


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_draw_equals_the_one_device_draw(model, mesh_name):
    config, params, tokens, mask = model
    mesh = make_mesh(MESHES[mesh_name])
    sampling = SamplingConfig(max_new_tokens=7, temperature=1.0)
    want = generate(params, config, tokens, mask, jax.random.key(5), sampling)
    got = generate(params, config, tokens, mask, jax.random.key(5), sampling, mesh=mesh)
    jax.block_until_ready(got)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(want.mask))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), rtol=1e-5, atol=1e-5)
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    assert got.tokens.sharding.shard_shape(got.tokens.shape)[0] == 8 // ways  # rows really were split
    # a different key draws different tokens on the mesh too (the test above can fail)
    other = generate(params, config, tokens, mask, jax.random.key(6), sampling, mesh=mesh)
    assert not np.array_equal(np.asarray(other.tokens), np.asarray(want.tokens))


def test_weights_are_placed_by_the_rules_and_odd_batches_are_padded(model):
    config, params, tokens, mask = model
    mesh = make_mesh(MeshConfig(fsdp=2, tensor=2))
    greedy = SamplingConfig(max_new_tokens=5, temperature=0.0)
    want = generate(params, config, tokens[:5], mask[:5], jax.random.key(0), greedy)
    placed = jax.device_put(params, jax.tree_util.tree_map_with_path(
        lambda p, x: jax.sharding.NamedSharding(mesh, param_spec(p, x.shape, mesh)), params))
    got = generate(placed, config, tokens[:5], mask[:5], jax.random.key(0), greedy, mesh=mesh)
    assert got.tokens.shape == want.tokens.shape == (5, 5)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    # unplaced host weights are laid out on the way in
    again = generate(params, config, tokens[:5], mask[:5], jax.random.key(0), greedy, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(want.tokens))
