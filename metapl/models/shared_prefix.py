"""Shared-prefix scoring: one prompt computed once, attended to by each of its K continuations.

One packed row per prompt, L = P + K·R tokens:

    [ prompt (P, padded on either side) | continuation 1 (R, right-padded) | ... | continuation K (R) ]

A prompt token attends to the earlier prompt tokens; a continuation token to the prompt's real tokens and the
earlier tokens of its own continuation, never to another continuation. Prompt positions count the prompt's real
tokens from 0; each continuation's positions continue from the prompt's length. So each continuation's hidden
states equal those of the separate row prompt ⊕ continuation up to float reassociation, for (P + K·R) / (K·(P + R))
of the tokens: the K forward (and backward) passes over the prompt become one.

The first token of every continuation is predicted from the hidden state of the prompt's last real token; the
others from the previous token of the same continuation. Log-probs, rewards and values are computed only where
they are read, [B, K, R] or [B, K], so the LM head never runs over prompt positions.

Inputs everywhere: prompt_tokens, prompt_mask [B, P] (≥ 1 real token per row); response_tokens,
response_mask [B, K, R] (True on real continuation tokens, all of which are scored).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.heads import last_token_index, scalar_head
from metapl.models.logprobs import hidden_logprobs
from metapl.models.transformer import Params, hidden_states, unembedding

__all__ = [
    "continuation_rewards", "continuation_values", "is_shared_prefix", "packed_row", "predicting_states",
    "response_logprobs", "response_token_logprobs", "shared_hidden", "shared_inputs",
]


def is_shared_prefix(batch) -> bool:
    """Whether a batch dict is in this layout (its responses under "response_tokens") rather than one row per
    sequence."""
    return "response_tokens" in batch


def shared_inputs(batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(prompt_tokens, prompt_mask, response_tokens, response_mask) of a batch dict in this layout."""
    return batch["prompt_tokens"], batch["prompt_mask"], batch["response_tokens"], batch["response_mask"]


def packed_row(prompt_tokens: jax.Array, prompt_mask: jax.Array, response_tokens: jax.Array,
               response_mask: jax.Array) -> dict[str, jax.Array]:
    """The packed row's model inputs: tokens, attention_mask, positions, segment_ids, all [B, P + K·R].

    segment_ids: 0 on the prompt, k + 1 on continuation k.
    """
    chex.assert_rank([prompt_tokens, prompt_mask, response_tokens, response_mask], [2, 2, 3, 3])
    chex.assert_equal_shape([prompt_tokens, prompt_mask])
    chex.assert_equal_shape([response_tokens, response_mask])
    b, p = prompt_tokens.shape
    _, k, r = response_tokens.shape
    chex.assert_equal(response_tokens.shape[0], b)
    prompt_mask, response_mask = prompt_mask.astype(bool), response_mask.astype(bool)
    prompt_count = jnp.cumsum(prompt_mask.astype(jnp.int32), axis=1)
    prompt_pos = jnp.maximum(prompt_count - 1, 0)
    response_pos = prompt_count[:, -1:, None] + jnp.maximum(jnp.cumsum(response_mask.astype(jnp.int32), 2) - 1, 0)
    segments = jnp.concatenate([jnp.zeros((p,), jnp.int32), jnp.repeat(jnp.arange(1, k + 1, dtype=jnp.int32), r)])
    return {
        "tokens": jnp.concatenate([prompt_tokens, response_tokens.reshape(b, k * r)], axis=1),
        "attention_mask": jnp.concatenate([prompt_mask, response_mask.reshape(b, k * r)], axis=1),
        "positions": jnp.concatenate([prompt_pos, response_pos.reshape(b, k * r)], axis=1),
        "segment_ids": jnp.broadcast_to(segments, (b, p + k * r)),
    }


def shared_hidden(params: Params, config: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                  response_tokens: jax.Array, response_mask: jax.Array, *, lora: Params | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """(hidden state of each prompt's last real token [B, D], continuation hidden states [B, K, R, D])."""
    row = packed_row(prompt_tokens, prompt_mask, response_tokens, response_mask)
    hidden = hidden_states(params, config, row["tokens"], attention_mask=row["attention_mask"],
                           positions=row["positions"], segment_ids=row["segment_ids"], shared_prefix=True, lora=lora)
    b, p = prompt_tokens.shape
    _, k, r = response_tokens.shape
    last = last_token_index(prompt_mask)
    prompt_last = jnp.take_along_axis(hidden[:, :p], last[:, None, None], axis=1)[:, 0]
    return prompt_last, hidden[:, p:].reshape(b, k, r, hidden.shape[-1])


def predicting_states(prompt_last: jax.Array, response_hidden: jax.Array) -> jax.Array:
    """[B, K, R, D]: the hidden state whose logits predict each continuation token (the prompt's last token for
    position 0, the previous continuation token after it)."""
    b, k, _, d = response_hidden.shape
    first = jnp.broadcast_to(prompt_last[:, None, None, :], (b, k, 1, d))
    return jnp.concatenate([first, response_hidden[:, :, :-1]], axis=2)


def response_token_logprobs(params: Params, config: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                            response_tokens: jax.Array, response_mask: jax.Array, *, lora: Params | None = None,
                            temperature: float | jax.Array = 1.0, chunk_size: int | None = 128) -> jax.Array:
    """log p(y_{k,t} | x, y_{k,<t}) [B, K, R] of each continuation token (0 where response_mask is False)."""
    prompt_last, hidden = shared_hidden(params, config, prompt_tokens, prompt_mask, response_tokens, response_mask,
                                        lora=lora)
    b, k, r, d = hidden.shape
    head = unembedding(params, config).astype(config.compute_dtype)
    lp = hidden_logprobs(predicting_states(prompt_last, hidden).reshape(b, k * r, d), head,
                         response_tokens.reshape(b, k * r), temperature=temperature, chunk_size=chunk_size)
    return lp.reshape(b, k, r) * response_mask.astype(lp.dtype)


def response_logprobs(params: Params, config: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                      response_tokens: jax.Array, response_mask: jax.Array, *, lora: Params | None = None,
                      temperature: float | jax.Array = 1.0, chunk_size: int | None = 128) -> jax.Array:
    """Summed log-prob [B, K] of each continuation given its prompt."""
    return response_token_logprobs(params, config, prompt_tokens, prompt_mask, response_tokens, response_mask,
                                   lora=lora, temperature=temperature, chunk_size=chunk_size).sum(axis=2)


def _last_states(prompt_last: jax.Array, hidden: jax.Array, response_mask: jax.Array) -> jax.Array:
    """[B, K, D]: the hidden state of each continuation's last real token (the prompt's last, if it is empty)."""
    r = response_mask.shape[2]
    last = jnp.max(jnp.where(response_mask.astype(bool), jnp.arange(r), -1), axis=2)  # [B, K]
    picked = jnp.take_along_axis(hidden, jnp.maximum(last, 0)[:, :, None, None], axis=2)[:, :, 0]
    return jnp.where((last >= 0)[..., None], picked, prompt_last[:, None, :])


def continuation_rewards(params: Params, config: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                         response_tokens: jax.Array, response_mask: jax.Array, *, lora: Params | None = None
                         ) -> jax.Array:
    """Scalar reward [B, K] (float32) of a scalar-head model (`heads`), read at each continuation's last token."""
    prompt_last, hidden = shared_hidden(params["backbone"], config, prompt_tokens, prompt_mask, response_tokens,
                                        response_mask, lora=lora)
    return scalar_head(params, _last_states(prompt_last, hidden, response_mask))


def continuation_values(params: Params, config: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                        response_tokens: jax.Array, response_mask: jax.Array, *, lora: Params | None = None
                        ) -> tuple[jax.Array, jax.Array]:
    """Values of a scalar-head model: (after the prompt [B], after each continuation token [B, K, R])."""
    prompt_last, hidden = shared_hidden(params["backbone"], config, prompt_tokens, prompt_mask, response_tokens,
                                        response_mask, lora=lora)
    return scalar_head(params, prompt_last), scalar_head(params, hidden)

