"""Scalar heads on the transformer backbone: a reward model and a value model.

Parameter tree of either: `{"backbone": <transformer params, lm_head unused>, "head": {"kernel": [D, 1], "bias": [1]}}`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.layers import at_least_f32
from metapl.models.transformer import Params, hidden_states, init_params


def init_head_params(config: ModelConfig, key: jax.Array, backbone: Params | None = None) -> Params:
    """A scalar-head model: the given backbone (e.g. a pretrained LM's params, LM head dropped) or a random one."""
    k_backbone, k_head = jax.random.split(key)
    if backbone is None:
        backbone = init_params(config, k_backbone)
    backbone = {k: v for k, v in backbone.items() if k != "lm_head"}
    kernel = jax.random.normal(k_head, (config.hidden_size, 1)) / jnp.sqrt(config.hidden_size + 1.0)
    return {
        "backbone": backbone,
        "head": {"kernel": kernel.astype(config.params_dtype), "bias": jnp.zeros((1,), config.params_dtype)},
    }


def scalar_head(params: Params, hidden: jax.Array) -> jax.Array:
    """The head's scalar [...] (float32) of hidden states [..., D]."""
    h = params["head"]
    acc = at_least_f32(hidden.dtype)
    return (jnp.dot(hidden.astype(acc), h["kernel"].astype(acc)) + h["bias"].astype(acc))[..., 0]


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index [B] of the last real token of each row (left or right padding)."""
    t = attention_mask.shape[1]
    return jnp.max(jnp.where(attention_mask.astype(bool), jnp.arange(t)[None, :], 0), axis=1)


def reward(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    attention_mask: jax.Array,
    *,
    lora: Params | None = None,
) -> jax.Array:
    """Scalar reward [B] (float32) read at the last non-pad token of each row of tokens [B, T]."""
    chex.assert_equal_shape([tokens, attention_mask])
    hidden = hidden_states(params["backbone"], config, tokens, attention_mask=attention_mask, lora=lora)
    last = last_token_index(attention_mask)
    h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return scalar_head(params, h_last)


def values(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    attention_mask: jax.Array,
    *,
    lora: Params | None = None,
) -> jax.Array:
    """Per-token values [B, T] (float32): entry t estimates the return after seeing tokens[: t + 1]."""
    hidden = hidden_states(params["backbone"], config, tokens, attention_mask=attention_mask, lora=lora)
    return scalar_head(params, hidden)
