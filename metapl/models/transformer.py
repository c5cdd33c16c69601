"""The decoder-only transformer as pure functions of a parameter pytree.

Parameter tree (L = num_layers, D = hidden_size, V = vocab_size):

    {"embed": {"embedding": [V, D]},
     "pos_embed": {"embedding": [P, D]},            # learned positions only (GPT-2)
     "layers": <Block params, each leaf stacked [L, ...]>,
     "final_norm": {"scale": [D] (, "bias": [D])},
     "lm_head": {"embedding": [V, D]}}              # untied embeddings only (stored [V, D] like the input
                                                    # embedding: the [V, D] layout is the faster LM head on CPU)

LoRA weights, when used, form a separate tree `{"layers": {"attn": {"q": {"a": [L, in, r], "b": [L, r, out]}}}}`
(see `lora.py`); passing `lora=None` gives the base (reference) model.

"layers" may also be a list of L per-layer trees (`unstack_layers`). Stacked layers are scanned (one compiled
block: the training layout, fast to compile); a list is unrolled. Decoding with a KV cache has its own
forward pass over per-layer weights, `decoding.cached_forward` (a scan would copy a layer's slice out of the
stacked arrays at every step, which on CPU costs more than the matmuls of a one-token step).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig, rope_inverse_frequencies
from metapl.models.layers import Block, at_least_f32, make_norm

Params = Any


def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random parameters (normal(0.02) weights, unit norms, zero biases)."""
    k_embed, k_pos, k_layers, k_head = jax.random.split(key, 4)
    d, pdt = config.hidden_size, config.params_dtype
    hd = config.dim_per_head
    block = Block(config.replace(lora=None))
    dummy = (
        jnp.zeros((1, 1, d), pdt),
        jnp.zeros((1, 1, hd), jnp.float32),
        jnp.zeros((1, 1, hd), jnp.float32),
        jnp.ones((1, 1, 1), bool),
    )
    layers = jax.vmap(lambda k: block.init(k, *dummy)["params"])(jax.random.split(k_layers, config.num_layers))
    params = {
        "embed": {"embedding": (0.02 * jax.random.normal(k_embed, (config.vocab_size, d))).astype(pdt)},
        "layers": layers,
        "final_norm": make_norm(config, "final_norm").init(k_head, dummy[0])["params"],
    }
    if config.positions == "learned":
        params["pos_embed"] = {
            "embedding": (0.02 * jax.random.normal(k_pos, (config.max_position_embeddings, d))).astype(pdt)
        }
    if not config.tie_embeddings:
        params["lm_head"] = {"embedding": (0.02 * jax.random.normal(k_head, (config.vocab_size, d))).astype(pdt)}
    return params


def unstack_layers(tree: Params) -> Params:
    """A copy of `tree` whose "layers" entry is a list of per-layer trees (a no-op if it already is)."""
    if tree is None or isinstance(tree["layers"], (list, tuple)):
        return tree
    layers = tree["layers"]
    n = jax.tree_util.tree_leaves(layers)[0].shape[0]
    return dict(tree, layers=[jax.tree_util.tree_map(lambda a, i=i: a[i], layers) for i in range(n)])


def default_positions(attention_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Position ids [B, T]: the count of earlier real tokens (restarting at each new segment when packed).

    Works for left and right padding alike: the first real token of a row gets position 0.
    """
    mask = attention_mask.astype(jnp.int32)
    if segment_ids is None:
        return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    # Within-segment count: cumulative count minus the count at the start of the token's segment.
    total = jnp.cumsum(mask, axis=1)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    before_start = jnp.where(starts, total - mask, 0)
    offset = jax.lax.cummax(before_start, axis=1)
    return jnp.maximum(total - offset - 1, 0)


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, hd] (float32) for integer positions [B, T]."""
    inv_freq = jnp.asarray(rope_inverse_frequencies(config))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def hidden_states(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    shared_prefix: bool = False,
    lora: Params | None = None,
) -> jax.Array:
    """Final-norm hidden states [B, T, D] of tokens [B, T].

    attention_mask [B, T]: 1 for real tokens, 0 for padding (left or right). positions default to
    `default_positions`. segment_ids [B, T] confine attention to tokens of the same packed segment; with
    `shared_prefix`, segment 0 is a prompt that every segment of its row also attends to (`shared_prefix.py`).
    """
    chex.assert_rank(tokens, 2)
    b, t = tokens.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), bool)
    chex.assert_shape([attention_mask] + [a for a in (positions, segment_ids) if a is not None], (b, t))
    attention_mask = attention_mask.astype(bool)
    if positions is None:
        positions = default_positions(attention_mask, segment_ids)
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & attention_mask[:, None, :]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        if shared_prefix:
            same = same | (segment_ids[:, None, :] == 0)
        mask = mask & same
    elif shared_prefix:
        raise ValueError("shared_prefix needs segment_ids (0 marks the shared prompt)")

    x = jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(config.compute_dtype)
    if config.positions == "learned":
        x = x + jnp.take(params["pos_embed"]["embedding"], positions, axis=0).astype(config.compute_dtype)
        cos = sin = jnp.zeros((b, t, config.dim_per_head), jnp.float32)
    else:
        cos, sin = rope_tables(config, positions)

    block = Block(config)

    def layer(x, p, l):
        return block.apply({"params": p} if l is None else {"params": p, "lora": l}, x, cos, sin, mask)

    scanned = not isinstance(params["layers"], (list, tuple))
    if config.remat != "none":
        policy = (jax.checkpoint_policies.dots_saveable if config.remat == "dots"
                  else jax.checkpoint_policies.nothing_saveable)
        # Inside scan, CSE cannot merge the recomputation away, so it needs no barrier.
        layer = jax.checkpoint(layer, policy=policy, prevent_cse=not scanned)

    if scanned:
        x, _ = jax.lax.scan(lambda x, pl: (layer(x, *pl), None), x,
                            (params["layers"], None if lora is None else lora["layers"]))
    else:
        layer_lora = [None] * len(params["layers"]) if lora is None else unstack_layers(lora)["layers"]
        for p, l in zip(params["layers"], layer_lora):
            x = layer(x, p, l)
    return make_norm(config, "final_norm").apply({"params": params["final_norm"]}, x)


def unembedding(params: Params, config: ModelConfig) -> jax.Array:
    """The LM head as a [V, D] matrix: logits = hidden @ unembedding.T (the input embedding when tied)."""
    if config.tie_embeddings:
        return params["embed"]["embedding"]
    return params["lm_head"]["embedding"]


def logits_from_hidden(params: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Float32 logits [..., V] from hidden states [..., D]."""
    w = unembedding(params, config).astype(config.compute_dtype)
    return jnp.einsum("...d,vd->...v", hidden.astype(config.compute_dtype), w,
                      preferred_element_type=at_least_f32(config.compute_dtype))


def apply(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    lora: Params | None = None,
) -> jax.Array:
    """Next-token logits [B, T, V] (float32) of tokens [B, T]. Pure; works under grad, vmap and scan."""
    hidden = hidden_states(
        params, config, tokens, attention_mask=attention_mask, positions=positions, segment_ids=segment_ids, lora=lora
    )
    return logits_from_hidden(params, config, hidden)
