"""Batched autoregressive sampling with a KV cache, compiled once per (batch, prompt bucket, length bucket).

`generate` is the array-level entry point; `generate_text` tokenises, buckets and decodes strings.
The log-prob reported for each sampled token is `metapl.models.logprobs.logprob_of` at the sampling
temperature over the full (untruncated) vocabulary — the same number a learner computes for that token
with `token_logprobs(..., temperature=T)`. Greedy decoding reports log-probs at temperature 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metapl.config import number
from metapl.models.config import ModelConfig
from metapl.models.decoding import KVCache, cached_forward, decoding_weights, init_cache, next_token_logits
from metapl.models.logprobs import logprob_of
from metapl.models.transformer import Params

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. temperature=0 means greedy; top_k=0 and top_p=1 disable those filters."""

    max_new_tokens: int = number(64, ge=1)
    temperature: float = number(1.0, ge=0)
    top_k: int = number(0, ge=0)
    top_p: float = number(1.0, gt=0, le=1)
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class GenerationOutput(NamedTuple):
    """Result of `generate`. N = max_new_tokens (or its bucket when called through `generate`).

    tokens [B, N] int32: sampled tokens, `pad_id` after a row stopped.
    mask [B, N] bool: True on generated tokens, including the stop token itself.
    logprobs [B, N] float32: log-prob of each sampled token (0 where mask is False).
    prompt_tokens [B, P], prompt_mask [B, P]: the prompts, left-aligned as they were fed.
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    prompt_tokens: jax.Array
    prompt_mask: jax.Array

    def sequences(self) -> dict[str, jax.Array]:
        """Prompt ⊕ response as a learner's batch: tokens, attention_mask, response_mask [B, P + N]."""
        return {"tokens": jnp.concatenate([self.prompt_tokens, self.tokens], axis=1),
                "attention_mask": jnp.concatenate([self.prompt_mask, self.mask], axis=1),
                "response_mask": jnp.concatenate([jnp.zeros_like(self.prompt_mask), self.mask], axis=1)}


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= max(n, minimum): the few lengths we compile for."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def left_align(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Move each row's real tokens to the right end (left padding), keeping their order. [B, T] -> same."""
    order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)
    return jnp.take_along_axis(tokens, order, axis=1), jnp.take_along_axis(mask, order, axis=1)


def filter_logits(logits: jax.Array, top_k: int, top_p: float | jax.Array, use_top_p: bool) -> jax.Array:
    """Logits [B, V] with everything outside the top-k / nucleus set to the lowest float (probability 0)."""
    neg = jnp.finfo(logits.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if use_top_p:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        keep = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return logits


def _pick(logits, key, temperature, top_p, *, greedy, top_k, use_top_p):
    """Next tokens [B] int32 from logits [V, B]."""
    if greedy:
        return jnp.argmax(logits, axis=0).astype(jnp.int32)
    z = logits / temperature
    if top_k > 0 or use_top_p:
        return jax.random.categorical(key, filter_logits(z.T, top_k, top_p, use_top_p), axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, z, axis=0).astype(jnp.int32)


class _Loop(NamedTuple):
    step: jax.Array  # [] int32: the next output column
    cache: KVCache
    logits: jax.Array  # [V, B] float32: logits of the next token
    tokens: jax.Array  # [B, N]
    logprobs: jax.Array  # [B, N]
    mask: jax.Array  # [B, N]
    done: jax.Array  # [B] bool
    key: jax.Array


_STATIC = ("config", "max_len", "greedy", "top_k", "use_top_p", "stop_token_ids", "pad_id", "num_samples")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate(weights, prompt_tokens, prompt_mask, key, max_new_tokens, temperature, top_p, *,
              config, max_len, greedy, top_k, use_top_p, stop_token_ids, pad_id, num_samples):
    b, p = prompt_tokens.shape
    prompt_tokens, prompt_mask = left_align(prompt_tokens, prompt_mask.astype(bool))
    hidden, cache = cached_forward(weights, config, prompt_tokens, init_cache(config, b, p + max_len), prompt_mask)
    logits = next_token_logits(weights, config, hidden[:, :, -1])  # [V, B]
    if num_samples > 1:  # each prompt prefilled once; its cache and next-token logits copied to its sample rows
        rows = lambda x, axis=0: jnp.repeat(x, num_samples, axis=axis)  # noqa: E731
        cache = cache._replace(k=[rows(x) for x in cache.k], v=[rows(x) for x in cache.v], valid=rows(cache.valid),
                               next_position=rows(cache.next_position))
        logits, prompt_tokens, prompt_mask = rows(logits, 1), rows(prompt_tokens), rows(prompt_mask)
        b = b * num_samples
    stop_ids = jnp.asarray(stop_token_ids if stop_token_ids else (-1,), jnp.int32)
    logp_temperature = jnp.where(greedy, 1.0, temperature)

    def emit(s: _Loop) -> tuple[jax.Array, jax.Array, _Loop]:
        """Choose the tokens of column `s.step` from `s.logits` and record them."""
        key, sub = jax.random.split(s.key)
        token = _pick(s.logits, sub, temperature, top_p, greedy=greedy, top_k=top_k, use_top_p=use_top_p)
        lp = logprob_of(s.logits, token, logp_temperature, axis=0)
        live = ~s.done
        token = jnp.where(live, token, pad_id)
        s = s._replace(
            step=s.step + 1,
            tokens=s.tokens.at[:, s.step].set(token),
            logprobs=s.logprobs.at[:, s.step].set(jnp.where(live, lp, 0.0).astype(s.logprobs.dtype)),
            mask=s.mask.at[:, s.step].set(live),
            done=s.done | jnp.isin(token, stop_ids),
            key=key,
        )
        return token, live, s

    def body(s: _Loop) -> _Loop:
        token, live, s = emit(s)
        hidden, cache = cached_forward(weights, config, token[:, None], s.cache, live[:, None])
        return s._replace(cache=cache, logits=next_token_logits(weights, config, hidden[:, :, 0]))

    def cond(s: _Loop) -> jax.Array:
        # The last column is emitted after the loop: no forward pass is needed past it.
        return (s.step < max_new_tokens - 1) & ~jnp.all(s.done)

    # Inside shard_map the drawn tokens may vary over the manual mesh axes (per-shard weights, prompts or keys),
    # so the outputs' carry is declared varying over all of them from the start (a no-op outside shard_map).
    manual_axes = tuple(jax.sharding.get_abstract_mesh().manual_axes)
    varying = lambda x: jax.lax.pcast(x, manual_axes, to="varying")  # noqa: E731
    state = _Loop(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits=logits,
        tokens=varying(jnp.full((b, max_len), pad_id, jnp.int32)),
        logprobs=varying(jnp.zeros((b, max_len), jnp.float32)),
        mask=varying(jnp.zeros((b, max_len), bool)),
        done=varying(jnp.zeros((b,), bool)),
        key=key,
    )
    _, _, state = emit(jax.lax.while_loop(cond, body, state))
    return GenerationOutput(state.tokens, state.mask, state.logprobs, prompt_tokens, prompt_mask)


_decoding_weights = jax.jit(decoding_weights, static_argnames="config")


def generate(
    params: Params,
    config: ModelConfig,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    sampling: SamplingConfig,
    *,
    pad_id: int = 0,
    lora: Params | None = None,
    mesh: jax.sharding.Mesh | None = None,
    num_samples: int = 1,
) -> GenerationOutput:
    """Sample `sampling.max_new_tokens` tokens after each prompt; `num_samples` of them per prompt.

    prompt_tokens, prompt_mask [B, P]: prompts padded on either side (each with >= 1 real token); P should
    already be bucketed (see `bucket`) to limit recompilation. Output arrays are trimmed to max_new_tokens.

    mesh: sample sharded — the weights laid out by `metapl.parallel`'s rules (a no-op when they already are)
    and the prompts split over data x fsdp. A B the split does not divide is padded with copies of the first
    prompt, whose outputs are dropped. Across processes every process passes the same prompts and receives
    every row. The random stream is the same on any mesh when B divides (JAX's partitionable threefry), so a
    sharded draw equals the one-device draw up to float reassociation.

    num_samples = k > 1: each prompt's cache is prefilled once and copied to its k rows, so the output has B·k
    rows, prompt-major (row b·k + j is sample j of prompt b), the draw of `generate` on the prompts repeated k
    times (`jnp.repeat(prompt_tokens, k, axis=0)`) without computing each prompt k times.
    """
    prompt_mask = np.asarray(prompt_mask)  # host-side checks on the host copy
    chex.assert_rank(prompt_mask, 2)
    chex.assert_shape(prompt_tokens, prompt_mask.shape)
    lengths = prompt_mask.sum(axis=1)
    if not np.all(lengths > 0):
        raise ValueError("every prompt needs at least one real token")
    if config.positions == "learned" and lengths.max() + sampling.max_new_tokens > config.max_position_embeddings:
        raise ValueError(
            f"prompt ({lengths.max()} tokens) + max_new_tokens ({sampling.max_new_tokens}) exceeds the model's "
            f"{config.max_position_embeddings} learned positions"
        )
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if mesh is not None:
        return _generate_on_mesh(mesh, params, config, np.asarray(prompt_tokens, np.int32), prompt_mask, key,
                                 sampling, pad_id=pad_id, lora=lora, num_samples=num_samples)
    return generate_traced(params, config, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask), key,
                           sampling, pad_id=pad_id, lora=lora, num_samples=num_samples, _weights=_decoding_weights)


def _generate_on_mesh(mesh, params, config, tokens, mask, key, sampling, *, pad_id, lora, num_samples):
    from metapl.parallel import batch_sharding, batch_ways, param_shardings, place, to_host

    b = tokens.shape[0]
    extra = -b % batch_ways(mesh)
    if extra:
        tokens = np.concatenate([tokens, np.repeat(tokens[:1], extra, axis=0)])
        mask = np.concatenate([mask, np.repeat(mask[:1], extra, axis=0)])
    params, lora = place((params, lora), (param_shardings(params, mesh), param_shardings(lora, mesh)))
    tokens, mask = place((tokens, mask), (batch_sharding(mesh, 2),) * 2)
    out = generate_traced(params, config, tokens, mask, key, sampling, pad_id=pad_id, lora=lora,
                          num_samples=num_samples, _weights=_decoding_weights)
    if jax.process_count() > 1:  # every process gets every row, as from a one-process draw
        out = to_host(out)
    return jax.tree.map(lambda x: x[:b * num_samples], out) if extra else out


def generate_traced(params: Params, config: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                    key: jax.Array, sampling: SamplingConfig, *, pad_id: int = 0, lora: Params | None = None,
                    num_samples: int = 1, _weights=decoding_weights) -> GenerationOutput:
    """`generate` without its host-side checks, so it can run inside jit, vmap, scan or a loss (e.g. on-policy
    samples drawn inside an inner optimisation loop). Every prompt row must hold at least one real token."""
    max_len = bucket(sampling.max_new_tokens)
    out = _generate(
        _weights(params, config, lora), prompt_tokens, prompt_mask, key,
        jnp.int32(sampling.max_new_tokens), jnp.float32(max(sampling.temperature, 1e-6)),
        jnp.float32(sampling.top_p),
        config=config, max_len=max_len, greedy=sampling.temperature == 0,
        top_k=min(sampling.top_k, config.vocab_size),
        use_top_p=sampling.top_p < 1.0, stop_token_ids=tuple(int(t) for t in sampling.stop_token_ids),
        pad_id=int(pad_id), num_samples=int(num_samples),
    )
    n = sampling.max_new_tokens
    return out._replace(tokens=out.tokens[:, :n], mask=out.mask[:, :n], logprobs=out.logprobs[:, :n])


def encode_prompts(tokenizer, prompts: Sequence[str], *, chat: bool = False, min_bucket: int = MIN_BUCKET):
    """Tokenise prompts, left-padded to a bucketed length. Returns (tokens [B, P], mask [B, P]) as numpy."""
    if chat:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
    else:
        texts = list(prompts)
    ids = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    if any(len(x) == 0 for x in ids):
        raise ValueError("a prompt tokenised to nothing; every prompt needs at least one token")
    p = bucket(max(len(x) for x in ids), min_bucket)
    tokens = np.zeros((len(ids), p), np.int32)
    mask = np.zeros((len(ids), p), bool)
    for i, x in enumerate(ids):
        tokens[i, p - len(x):] = x
        mask[i, p - len(x):] = True
    return tokens, mask


def default_stop_ids(tokenizer) -> tuple[int, ...]:
    """EOS plus chat end-of-turn tokens the vocabulary has (e.g. <|im_end|>)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        if t in vocab:
            ids.add(int(vocab[t]))
    return tuple(sorted(ids))


def generate_text(
    params: Params,
    config: ModelConfig,
    tokenizer,
    prompts: Sequence[str],
    key: jax.Array,
    sampling: SamplingConfig,
    *,
    chat: bool = False,
    lora: Params | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> list[str]:
    """Sample a continuation of each prompt and return the decoded text (stop tokens removed); with `mesh`,
    sharded as in `generate`."""
    tokens, mask = encode_prompts(tokenizer, prompts, chat=chat)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = generate(params, config, tokens, mask, key, sampling, pad_id=pad, lora=lora, mesh=mesh)
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    stops = set(sampling.stop_token_ids)
    texts = []
    for row, row_mask in zip(toks, m):
        ids = [int(t) for t, keep in zip(row, row_mask) if keep and int(t) not in stops]
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts
