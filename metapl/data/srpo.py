"""SRPO data (Choi et al., ICLR 2025, arXiv 2406.01660): the six sequences of a preference pair, the revision
context, and revising with a model.

One model is both the generator π(y | x) and an in-context reviser π(y | x, y′): it reads a prompt and a
previous response and writes a better one. The loss (`metapl.losses.srpo`) needs six sequence log-probs per
preference pair (x, y_w, y_l); this module builds the six sequences, in this order everywhere
(`SRPO_SEQUENCES`; batch keys "{name}_tokens", "{name}_attention_mask", "{name}_response_mask"):

    chosen                   x            → y_w
    rejected                 x            → y_l
    chosen_given_rejected    (x, y_l)     → y_w
    rejected_given_rejected  (x, y_l)     → y_l
    chosen_given_chosen      (x, y_w)     → y_w
    rejected_given_chosen    (x, y_w)     → y_l

The revision context (x, y′) is the string `revision_prompt(x, y′)` (`DEFAULT_REVISION_TEMPLATE`, or any
template with {prompt} and {response}); it is tokenised as one prompt, so `SequenceShape.max_prompt_tokens`
must leave room for x, the template and y′ (a longer context loses its *start*, which is x).

    batch = srpo_sequences(pairs, tok.encode, shape, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    loss, metrics = srpo_objective(params, batch.arrays(), config=config, beta=0.1, alpha=0.5, ref_params=ref)

At inference the model generates, then revises its own output n times in the same context (`revise`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from metapl.data.batching import (
    Encode, SequenceBatch, SequenceShape, TruncationStats, collate, encode_sequence, shared_prefix_layout,
)
from metapl.data.schemas import PreferencePair
from metapl.models.config import ModelConfig
from metapl.models.sampling import SamplingConfig, generate_text

__all__ = [
    "DEFAULT_REVISION_TEMPLATE", "SRPO_SEQUENCES", "SrpoBatch", "revise", "revision_prompt", "srpo_sequences",
]

Params = Any

SRPO_SEQUENCES = (
    "chosen", "rejected", "chosen_given_rejected", "rejected_given_rejected", "chosen_given_chosen",
    "rejected_given_chosen",
)

# In the spirit of the paper's self-improvement prompts: the original request, the response to improve, and an
# instruction to write a better one; the model's revision follows the template directly.
DEFAULT_REVISION_TEMPLATE = (
    "{prompt}\n\n"
    "Here is a response to the request above:\n"
    "{response}\n\n"
    "Improve this response. Improved response:\n"
)


def revision_prompt(prompt: str, response: str, template: str = DEFAULT_REVISION_TEMPLATE) -> str:
    """The context (x, y′) in which the model revises `response` to `prompt`: `template` with {prompt} and
    {response} filled in. The revision is the continuation of this string."""
    if "{prompt}" not in template or "{response}" not in template:
        raise ValueError(f"a revision template needs {{prompt}} and {{response}}, got {template!r}")
    return template.format(prompt=prompt, response=response)


# --------------------------------------------------------------------------------------------------- builders


class SrpoBatch(NamedTuple):
    """The six sequences of each pair as SequenceBatches [B, L] (one L for all six)."""

    chosen: SequenceBatch
    rejected: SequenceBatch
    chosen_given_rejected: SequenceBatch
    rejected_given_rejected: SequenceBatch
    chosen_given_chosen: SequenceBatch
    rejected_given_chosen: SequenceBatch

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat dict `metapl.losses.srpo.srpo_objective` takes: "{name}_tokens", "{name}_attention_mask",
        "{name}_response_mask" [B, L] for each name in SRPO_SEQUENCES."""
        out = {}
        for name, seqs in zip(self._fields, self):
            out.update({f"{name}_{k}": v for k, v in seqs._asdict().items()})
        return out

    def shared_prefix_arrays(self, prompt_length: int, response_length: int, pad_id: int) -> dict[str, np.ndarray]:
        """The six sequences as three prompts with two responses each (`metapl.models.shared_prefix`): contexts x,
        (x, y_l), (x, y_w) in that order, prompt_tokens, prompt_mask [B, 3, prompt_length]; responses (y_w, y_l)
        of each, response_tokens, response_mask [B, 3, 2, response_length]."""
        groups = [(self.chosen, self.rejected), (self.chosen_given_rejected, self.rejected_given_rejected),
                  (self.chosen_given_chosen, self.rejected_given_chosen)]
        return shared_prefix_layout(groups, prompt_length, response_length, pad_id)


def srpo_sequences(
    pairs: Sequence[PreferencePair],
    encode: Encode,
    shape: SequenceShape,
    *,
    eos_id: int | None,
    pad_id: int = 0,
    template: str = DEFAULT_REVISION_TEMPLATE,
    stats: TruncationStats | None = None,
    length: int | None = None,
) -> SrpoBatch:
    """Tokenise the six sequences of each pair (see the module docstring) with the shared batching code.

    Contexts: x for the generator, `revision_prompt(x, y′, template)` for the reviser; each response is
    encoded once per pair. All six are padded to `length` (default: the bucket of the longest of them).
    Deterministic: pairs stay in order.
    """
    if not pairs:
        raise ValueError("no preference pairs")
    stats = stats if stats is not None else TruncationStats()
    rows: dict[str, list] = {k: [] for k in SRPO_SEQUENCES}
    for pair in pairs:
        x, y_w, y_l = encode(pair.prompt), encode(pair.chosen), encode(pair.rejected)
        ctx_l = encode(revision_prompt(pair.prompt, pair.rejected, template))
        ctx_w = encode(revision_prompt(pair.prompt, pair.chosen, template))
        for name, (ctx, y) in zip(SRPO_SEQUENCES, ((x, y_w), (x, y_l), (ctx_l, y_w), (ctx_l, y_l), (ctx_w, y_w),
                                                   (ctx_w, y_l))):
            rows[name].append(encode_sequence(ctx, y, shape, eos_id, stats))
    if length is None:
        length = shape.bucket(max(len(e.ids) for seqs in rows.values() for e in seqs))
    return SrpoBatch(*(collate(rows[name], length, pad_id) for name in SRPO_SEQUENCES))


# --------------------------------------------------------------------------------------------------- inference


def revise(
    params: Params,
    config: ModelConfig,
    tokenizer,
    prompts: Sequence[str],
    n: int,
    sampling: SamplingConfig,
    key: jax.Array,
    *,
    template: str = DEFAULT_REVISION_TEMPLATE,
    chat: bool = False,
    lora: Params | None = None,
) -> list[list[str]]:
    """Generate a response to each prompt, then revise it n times in context.

    Step 0 samples y_0 from x; step i = 1..n samples y_i from `revision_prompt(x, y_{i−1}, template)`. Step i
    uses the key `fold_in(key, i)`, so a chain is a function of (params, prompts, n, sampling, key).
    Returns, for each prompt, [y_0, y_1, ..., y_n] (y_n is the final answer). With chat=True every context is
    wrapped in the tokenizer's chat template as a user turn (see `generate_text`).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    prompts = list(prompts)
    current = generate_text(params, config, tokenizer, prompts, jax.random.fold_in(key, 0), sampling, chat=chat,
                            lora=lora)
    chains = [[y] for y in current]
    for i in range(1, n + 1):
        contexts = [revision_prompt(x, y, template) for x, y in zip(prompts, current)]
        current = generate_text(params, config, tokenizer, contexts, jax.random.fold_in(key, i), sampling,
                                chat=chat, lora=lora)
        for chain, y in zip(chains, current):
            chain.append(y)
    return chains
