"""The inference-time forward pass: tokens appended to a key/value cache, as the sampler runs it.

`transformer.hidden_states` is the training and scoring forward (layers scanned, differentiable). This module
is the decoding forward over the same parameters, laid out once per `generate` call by `decoding_weights`:

- every projection is stored [out, in] and applied as `W @ x` to a feature-major residual stream x [D, B*T];
  q/k/v are fused into one matrix, as are gate/up, and LoRA adapters are folded into the kernels;
- the LM head yields logits [V, B], the layout the sampler keeps them in.

On XLA:CPU the skinny matmuls of a one-token step run about 20% faster in this orientation than as
`x [B, D] @ kernel [D, out]` (experiments/bench_decode_step.py). Attention reuses `layers.apply_rope` and
`layers.grouped_attention`, so the numbers equal `transformer.apply` (tests/models/test_kv_cache.py).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metapl.models.config import ModelConfig
from metapl.models.layers import ACTIVATIONS, MASK_VALUE, apply_rope, at_least_f32, grouped_attention
from metapl.models.lora import merge_lora
from metapl.models.transformer import Params, default_positions, rope_tables, unembedding, unstack_layers


class KVCache(NamedTuple):
    """Key/value cache for incremental decoding; rows are aligned (left-padded prompts).

    k, v: L arrays [B, KV, S, hd], one buffer per layer (heads-first, as attention reads them), so that a
      decoding loop updates each in place.
    valid: [B, S] bool, which slots hold real (non-pad) tokens.
    index: [] int32, the next slot to write (the same for every row).
    next_position: [B] int32, the position id of the next real token of each row.
    """

    k: list[jax.Array]
    v: list[jax.Array]
    valid: jax.Array
    index: jax.Array
    next_position: jax.Array


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache of `max_len` slots per row."""
    dtype = dtype or config.compute_dtype
    shape = (batch, config.num_kv_heads, max_len, config.dim_per_head)
    return KVCache(
        k=[jnp.zeros(shape, dtype) for _ in range(config.num_layers)],
        v=[jnp.zeros(shape, dtype) for _ in range(config.num_layers)],
        valid=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


def decoding_weights(params: Params, config: ModelConfig, lora: Params | None = None) -> Params:
    """The parameters laid out for `cached_forward`, in the compute dtype, with `lora` merged in.

    Per layer: "qkv" [(H + 2 KV) * hd, D], "o" [D, H * hd], "up" [2F, D] (gate rows first) or [F, D],
    "down" [D, F], biases as columns [out, 1], and the two norms as stored. Plus "embed" [V, D],
    "pos_embed" [P, D] (learned positions), "final_norm" and "head" [V, D].
    """
    if lora is not None:
        params = merge_lora(params, lora, config)
    dt = config.compute_dtype

    def rows(*kernels):  # [in, out] kernels -> one [sum(out), in] matrix
        return jnp.concatenate([k.T for k in kernels], axis=0).astype(dt)

    def column(*biases):
        return jnp.concatenate(biases)[:, None].astype(dt)

    layers = []
    for p in unstack_layers(params)["layers"]:
        a, m = p["attn"], p["mlp"]
        up = ("gate", "up") if config.gated_mlp else ("up",)
        layer = {
            "attn_norm": p["attn_norm"],
            "mlp_norm": p["mlp_norm"],
            "qkv": rows(*(a[n]["kernel"] for n in "qkv")),
            "o": rows(a["o"]["kernel"]),
            "up": rows(*(m[n]["kernel"] for n in up)),
            "down": rows(m["down"]["kernel"]),
        }
        if config.qkv_bias:
            layer["qkv_bias"] = column(*(a[n]["bias"] for n in "qkv"))
        if config.out_bias:
            layer["o_bias"] = column(a["o"]["bias"])
        if config.mlp_bias:
            layer["up_bias"] = column(*(m[n]["bias"] for n in up))
            layer["down_bias"] = column(m["down"]["bias"])
        layers.append(layer)
    weights = {
        "embed": params["embed"]["embedding"],
        "layers": layers,
        "final_norm": params["final_norm"],
        "head": unembedding(params, config).astype(dt),
    }
    if config.positions == "learned":
        weights["pos_embed"] = params["pos_embed"]["embedding"]
    return weights


def _norm(x: jax.Array, p: Params, config: ModelConfig) -> jax.Array:
    """RMSNorm or LayerNorm over the features of a feature-major x [D, N] (as layers.RMSNorm/LayerNorm)."""
    x32 = x.astype(at_least_f32(x.dtype))
    if config.norm == "rms":
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=0, keepdims=True) + config.norm_eps)
        return p["scale"].astype(x.dtype)[:, None] * y.astype(x.dtype)
    mean = jnp.mean(x32, axis=0, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=0, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + config.norm_eps) * p["scale"][:, None] + p["bias"][:, None]
    return y.astype(x.dtype)


def _attend_one(q, k, v, mask):
    """grouped_attention for one query per row, as broadcast multiply-and-sum (no batched matmuls).

    q [B, 1, H, hd]; k, v [B, KV, S, hd]; mask [B, 1, S] -> [B, 1, H, hd].
    """
    b, _, h, hd = q.shape
    kv = k.shape[1]
    qh = q.reshape(b, kv, h // kv, 1, hd).astype(at_least_f32(q.dtype))
    scores = jnp.sum(qh * k[:, :, None].astype(qh.dtype), axis=-1) / np.sqrt(hd)  # [B, KV, G, S]
    scores = jnp.where(mask[:, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.sum(probs[..., None] * v[:, :, None], axis=-2)  # [B, KV, G, hd]
    return out.reshape(b, 1, h, hd)


def _project(layer: Params, name: str, x: jax.Array) -> jax.Array:
    y = jnp.dot(layer[name], x)
    return y + layer[name + "_bias"] if name + "_bias" in layer else y


def cached_forward(
    weights: Params,
    config: ModelConfig,
    tokens: jax.Array,
    cache: KVCache,
    attention_mask: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    """Feed tokens [B, T] (mask [B, T], 1 = real) into the cache at slot `cache.index`.

    Returns the final-norm hidden states feature-major, [D, B, T], and the updated cache. Each token attends
    to the real tokens in the slots up to its own; positions continue from `cache.next_position`.
    """
    chex.assert_rank(tokens, 2)
    b, t = tokens.shape
    chex.assert_shape(cache.valid, (b, None))
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), bool)
    chex.assert_shape(attention_mask, (b, t))
    attention_mask = attention_mask.astype(bool)
    dt = config.compute_dtype
    heads, kv_heads, hd = config.num_heads, config.num_kv_heads, config.dim_per_head

    positions = default_positions(attention_mask) + cache.next_position[:, None]
    zero = jnp.zeros((), cache.index.dtype)  # literal 0s would be int64 under jax_enable_x64
    at = (zero, zero, cache.index, zero)
    valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (zero, cache.index))
    slots = jnp.arange(valid.shape[1])
    mask = valid[:, None, :] & (slots[None, None, :] <= cache.index + jnp.arange(t)[None, :, None])

    x = jnp.take(weights["embed"], tokens.reshape(-1), axis=0).astype(dt)
    if config.positions == "learned":
        x = x + jnp.take(weights["pos_embed"], positions.reshape(-1), axis=0).astype(dt)
    else:
        cos, sin = rope_tables(config, positions)
    x = x.T  # [D, B*T]

    new_k, new_v = [], []
    for i, layer in enumerate(weights["layers"]):
        qkv = _project(layer, "qkv", _norm(x, layer["attn_norm"], config))
        # Split before transposing: XLA would otherwise fold the transpose into the dot, and XLA:CPU runs that
        # transposed-output dot outside its fast matmul library.
        q, k, v = (z.T.reshape(b, t, -1, hd) for z in jnp.split(qkv, [heads * hd, (heads + kv_heads) * hd], axis=0))
        if config.positions == "rope":
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = jax.lax.dynamic_update_slice(cache.k[i], k.swapaxes(1, 2).astype(cache.k[i].dtype), at)
        v = jax.lax.dynamic_update_slice(cache.v[i], v.swapaxes(1, 2).astype(cache.v[i].dtype), at)
        new_k.append(k)
        new_v.append(v)
        if t == 1:
            out = _attend_one(q, k.astype(dt), v.astype(dt), mask)
        else:
            out = grouped_attention(q, k.astype(dt), v.astype(dt), mask)  # [B, T, H, hd]
        x = x + _project(layer, "o", out.reshape(b * t, heads * hd).T)

        hidden = _project(layer, "up", _norm(x, layer["mlp_norm"], config))
        act = ACTIVATIONS[config.activation]
        if config.gated_mlp:
            gate, up = jnp.split(hidden, 2, axis=0)
            hidden = act(gate) * up
        else:
            hidden = act(hidden)
        x = x + _project(layer, "down", hidden)

    x = _norm(x, weights["final_norm"], config)
    new_cache = KVCache(
        k=new_k,
        v=new_v,
        valid=valid,
        index=cache.index + t,
        next_position=cache.next_position + attention_mask.sum(axis=1).astype(jnp.int32),
    )
    return x.reshape(-1, b, t), new_cache


def next_token_logits(weights: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Float32 logits [V, B] from feature-major hidden states [D, B]."""
    return jnp.dot(weights["head"], hidden.astype(config.compute_dtype),
                   preferred_element_type=at_least_f32(config.compute_dtype))
