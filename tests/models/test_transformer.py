"""Properties of the pure forward pass: transforms, padding, packing, dtype policy, layer layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import (
    ModelConfig,
    apply,
    default_positions,
    hidden_states,
    init_params,
    tiny,
    unstack_layers,
)
from tests.batches import pad_rows


def test_apply_works_under_grad_vmap_and_scan(rng):
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(4, 2, 6)))

    def loss(p, t):
        return jnp.mean(apply(p, config, t) ** 2)

    grads = jax.grad(loss)(params, tokens[0])
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    batched = jax.vmap(lambda t: apply(params, config, t))(tokens)
    scanned = jax.lax.scan(lambda c, t: (c, apply(params, config, t)), 0, tokens)[1]
    looped = jnp.stack([apply(params, config, t) for t in tokens])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-5)


def test_gradient_matches_finite_differences():
    jax.config.update("jax_enable_x64", True)
    try:
        config = tiny("qwen2", num_layers=1, dtype="float64", param_dtype="float64")
        params = jax.tree.map(lambda x: x.astype(jnp.float64), init_params(config, jax.random.key(0)))
        tokens = jnp.asarray([[3, 9, 27, 81 % 128, 5]])

        def loss(w):
            p = dict(params, layers=dict(params["layers"], mlp=dict(params["layers"]["mlp"],
                                                                     up={"kernel": w})))
            return jnp.sum(jnp.sin(apply(p, config, tokens)))

        w0 = params["layers"]["mlp"]["up"]["kernel"]
        direction = jax.random.normal(jax.random.key(1), w0.shape, jnp.float64)
        eps = 1e-6
        fd = (loss(w0 + eps * direction) - loss(w0 - eps * direction)) / (2 * eps)
        analytic = jnp.vdot(jax.grad(loss)(w0), direction)
        np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_and_right_padding_give_the_same_logits(family, rng):
    config = tiny(family)
    params = init_params(config, jax.random.key(0))
    seq = rng.integers(0, config.vocab_size, size=5)
    right, right_mask = pad_rows([seq], 8, "right")
    left, left_mask = pad_rows([seq], 8, "left")
    lr = apply(params, config, jnp.asarray(right), attention_mask=jnp.asarray(right_mask))
    ll = apply(params, config, jnp.asarray(left), attention_mask=jnp.asarray(left_mask))
    np.testing.assert_allclose(lr[0, :5], ll[0, 3:], rtol=1e-5, atol=1e-5)


def test_packed_sequences_equal_separate_sequences(rng):
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    a = rng.integers(0, config.vocab_size, size=4)
    b = rng.integers(0, config.vocab_size, size=3)
    packed = jnp.asarray(np.concatenate([a, b, [0]])[None])
    segments = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 0]])
    mask = segments > 0
    out = apply(params, config, packed, attention_mask=mask, segment_ids=segments)
    np.testing.assert_allclose(out[0, :4], apply(params, config, jnp.asarray(a[None]))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 4:7], apply(params, config, jnp.asarray(b[None]))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(default_positions(mask, segments), [[0, 1, 2, 3, 0, 1, 2, 0]])


def test_unstacked_layers_equal_stacked(rng):
    config = tiny("qwen2")
    params = init_params(config, jax.random.key(0))
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 5)))
    np.testing.assert_allclose(apply(unstack_layers(params), config, tokens), apply(params, config, tokens),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stacked", [True, False])
def test_remat_policies_give_the_same_gradient(rng, stacked):
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    if not stacked:
        params = unstack_layers(params)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 6)))

    def value_and_grad(remat):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(apply(p, config.replace(remat=remat), tokens)))))(
            params)

    ref_loss, ref_grad = value_and_grad("none")
    for remat in ("dots", "full"):
        loss, grad = value_and_grad(remat)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grad, ref_grad)
    with pytest.raises(ValueError, match="remat must be"):
        config.replace(remat="some")


def test_bfloat16_compute_stays_close_to_float32(rng):
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 6)))
    f32 = apply(params, config, tokens)
    bf16 = apply(params, config.replace(dtype="bfloat16"), tokens)
    assert bf16.dtype == jnp.float32  # logits are always float32
    assert float(jnp.abs(bf16 - f32).max()) <= 0.05 * float(jnp.abs(f32).max())
    h = hidden_states(params, config.replace(dtype="bfloat16"), tokens)
    assert h.dtype == jnp.bfloat16


def test_config_validation_messages():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        tiny("llama", num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="even head_dim"):
        tiny("llama", head_dim=7)


def test_num_params_counts_the_tree():
    for family in ("llama", "qwen2", "gpt2"):
        config: ModelConfig = tiny(family)
        params = init_params(config, jax.random.key(0))
        assert config.num_params() == sum(x.size for x in jax.tree.leaves(params)), family


def test_shape_errors_are_reported_at_the_boundary():
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    with pytest.raises(AssertionError, match="rank"):
        apply(params, config, jnp.zeros((5,), jnp.int32))
    with pytest.raises(AssertionError, match="shape"):
        apply(params, config, jnp.zeros((2, 5), jnp.int32), attention_mask=jnp.ones((2, 4)))
