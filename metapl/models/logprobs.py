"""The one definition of a token log-probability, shared by the sampler and every learner.

    log p_T(y_t | y_<t) = z[y_t] / T - logsumexp(z / T),   z = float32 logits, T = temperature.

`logprob_of` applies it to logits already in hand (the sampler's one position per step). `token_logprobs`
applies it along a sequence from hidden states, chunked over positions so the [B, T, V] logits are never
held at once: each chunk's logits are recomputed in the backward pass instead of being stored.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.layers import at_least_f32
from metapl.models.transformer import Params, hidden_states, unembedding


def logprob_of(
    logits: jax.Array, targets: jax.Array, temperature: float | jax.Array = 1.0, *, axis: int = -1
) -> jax.Array:
    """log-softmax(logits / temperature) at `targets`, over the vocabulary axis `axis`.

    logits [..., V] (or V at `axis`), targets: logits' shape without `axis`, int -> that shape, float32.
    """
    z = logits.astype(at_least_f32(logits.dtype)) / temperature
    # Shift by the row maximum before picking, so large logits do not cancel catastrophically in float32.
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))
    picked = jnp.take_along_axis(z, jnp.expand_dims(targets.astype(jnp.int32), axis), axis=axis)
    return jnp.squeeze(picked, axis) - jnp.log(jnp.sum(jnp.exp(z), axis=axis))


def hidden_logprobs(
    hidden: jax.Array,
    head: jax.Array,
    targets: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    chunk_size: int | None = 128,
) -> jax.Array:
    """Log-probs of targets [B, N] under logits `hidden @ head.T`; hidden [B, N, D], head [V, D] -> [B, N].

    With `chunk_size`, positions are processed `chunk_size` at a time (padded up to a multiple), and each
    chunk is rematerialised in the backward pass, so peak memory holds B * chunk_size * V logits.
    """
    chex.assert_rank(hidden, 3)
    b, n, d = hidden.shape
    chex.assert_shape(targets, (b, n))
    chex.assert_shape(head, (None, d))

    def chunk_fn(h, y):
        logits = jnp.einsum("bnd,vd->bnv", h.astype(head.dtype), head, preferred_element_type=at_least_f32(head.dtype))
        return logprob_of(logits, y, temperature)

    if chunk_size is None or n <= chunk_size:
        return chunk_fn(hidden, targets)
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n_chunks, chunk_size, d).swapaxes(0, 1)
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n_chunks, chunk_size).swapaxes(0, 1)
    out = jax.lax.map(lambda hy: jax.checkpoint(chunk_fn)(*hy), (h, y))  # [n_chunks, B, chunk]
    return out.swapaxes(0, 1).reshape(b, n_chunks * chunk_size)[:, :n]


def token_logprobs(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    lora: Params | None = None,
    temperature: float | jax.Array = 1.0,
    chunk_size: int | None = 128,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Per-token log-probs [B, T], aligned with tokens: entry t is log p(tokens[t] | tokens[<t]); entry 0 is 0.

    Entries at padding are meaningless; multiply by a mask (e.g. the response mask) before summing.
    """
    hidden = hidden_states(
        params, config, tokens, attention_mask=attention_mask, lora=lora, positions=positions,
        segment_ids=segment_ids,
    )
    head = unembedding(params, config).astype(config.compute_dtype)
    lp = hidden_logprobs(hidden[:, :-1], head, tokens[:, 1:], temperature=temperature, chunk_size=chunk_size)
    return jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)


def sequence_logprobs(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    response_mask: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    lora: Params | None = None,
    temperature: float | jax.Array = 1.0,
    chunk_size: int | None = 128,
) -> tuple[jax.Array, jax.Array]:
    """(per-token log-probs [B, T] masked to the response, their sum per sequence [B]).

    response_mask [B, T]: 1 on the response tokens whose log-probs count (never on position 0).
    """
    chex.assert_equal_shape([tokens, response_mask])
    lp = token_logprobs(
        params, config, tokens, attention_mask=attention_mask, lora=lora, temperature=temperature,
        chunk_size=chunk_size,
    )
    lp = lp * response_mask.astype(lp.dtype)
    return lp, lp.sum(axis=1)
