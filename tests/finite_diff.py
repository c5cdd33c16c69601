"""Gradient checks against central finite differences, in float64."""

import contextlib

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def x64():
    """Enable float64 for the block (and restore the previous setting)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def directional_error(f, params, key, eps: float = 1e-5) -> float:
    """|<grad f, d> - (f(p + eps d) - f(p - eps d)) / 2 eps| / |fd| along a random direction d (float64)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    direction = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    grad = jax.grad(f)(params)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
    shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)  # noqa: E731
    numeric = (f(shift(1.0)) - f(shift(-1.0))) / (2 * eps)
    return float(jnp.abs(analytic - numeric) / jnp.maximum(jnp.abs(numeric), 1e-12))
