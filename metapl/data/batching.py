"""Records to fixed-shape arrays: tokenisation with masks, truncation, bucketed padding, packing, shuffling.

A sequence is `prompt ⊕ response (⊕ eos)`, right-padded. Truncation keeps the *end* of a long prompt (the part
next to the response) and the *start* of a long response; every truncation is counted in `TruncationStats`.
Lengths are padded up to one of a few bucket sizes, so a jit-compiled step sees few shapes.

`ShuffledBatches` walks an endless stream of per-epoch permutations of the example indices; its whole
position is one integer (`state_dict()`), so a restored iterator continues exactly where it stopped, and no
example is dropped at an epoch boundary (a batch may straddle two epochs).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np

from metapl.data.schemas import DataError, PreferencePair, PromptExample

Encode = Callable[[str], list[int]]


def hf_encoder(tokenizer) -> Encode:
    """`encode(text) -> ids` for a Hugging Face tokenizer, without special tokens (the prompt carries its own)."""
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


def power_of_two_buckets(max_length: int, minimum: int = 16) -> tuple[int, ...]:
    """(minimum, 2 * minimum, ..., max_length): the default bucket sizes."""
    out, n = [], minimum
    while n < max_length:
        out.append(n)
        n *= 2
    return tuple(out) + (max_length,)


@dataclasses.dataclass(frozen=True)
class SequenceShape:
    """Length limits: prompt and response token budgets, and the padded lengths (buckets) to use."""

    max_prompt_tokens: int = 256
    max_response_tokens: int = 256
    buckets: tuple[int, ...] | None = None  # default: powers of two from 16 up to the longest possible sequence
    append_eos: bool = True

    @property
    def max_length(self) -> int:
        return self.max_prompt_tokens + self.max_response_tokens + int(self.append_eos)

    def bucket(self, n: int) -> int:
        """The smallest bucket >= n."""
        buckets = self.buckets or power_of_two_buckets(self.max_length)
        for b in sorted(buckets):
            if b >= n:
                return b
        raise DataError(f"a sequence of {n} tokens exceeds the largest bucket ({max(buckets)})")


@dataclasses.dataclass
class TruncationStats:
    """How many sequences were encoded and how many were cut, with the number of tokens cut."""

    sequences: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0
    prompt_tokens_dropped: int = 0
    response_tokens_dropped: int = 0

    def summary(self) -> str:
        return (f"{self.sequences} sequences; prompts truncated: {self.prompts_truncated} "
                f"({self.prompt_tokens_dropped} tokens, from the left); responses truncated: "
                f"{self.responses_truncated} ({self.response_tokens_dropped} tokens, from the right)")


class Encoded(NamedTuple):
    """One tokenised sequence: ids = prompt ⊕ response (⊕ eos); the first `prompt_length` ids are the prompt."""

    ids: list[int]
    prompt_length: int


def encode_sequence(prompt: Sequence[int], response: Sequence[int], shape: SequenceShape, eos_id: int | None,
                    stats: TruncationStats) -> Encoded:
    """Truncate (prompt from the left, response from the right), append eos, and count what was cut."""
    stats.sequences += 1
    if not prompt:
        raise DataError("the prompt tokenised to nothing", field="prompt")
    if len(prompt) > shape.max_prompt_tokens:
        stats.prompts_truncated += 1
        stats.prompt_tokens_dropped += len(prompt) - shape.max_prompt_tokens
        prompt = prompt[len(prompt) - shape.max_prompt_tokens:]
    if len(response) > shape.max_response_tokens:
        stats.responses_truncated += 1
        stats.response_tokens_dropped += len(response) - shape.max_response_tokens
        response = response[: shape.max_response_tokens]
    tail = [eos_id] if shape.append_eos and eos_id is not None else []
    return Encoded(list(prompt) + list(response) + tail, len(prompt))


class SequenceBatch(NamedTuple):
    """Right-padded sequences. tokens [B, L] int32; attention_mask, response_mask [B, L] bool."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray


def collate(sequences: Sequence[Encoded], length: int, pad_id: int) -> SequenceBatch:
    """Stack encoded sequences into a SequenceBatch of padded length `length`."""
    b = len(sequences)
    tokens = np.full((b, length), pad_id, np.int32)
    attention = np.zeros((b, length), bool)
    response = np.zeros((b, length), bool)
    for i, (ids, p) in enumerate(sequences):
        if len(ids) > length:
            raise DataError(f"sequence {i} has {len(ids)} tokens, more than the padded length {length}")
        tokens[i, : len(ids)] = ids
        attention[i, : len(ids)] = True
        response[i, p: len(ids)] = True
    return SequenceBatch(tokens, attention, response)


class PairBatch(NamedTuple):
    """Preference pairs as arrays. chosen, rejected: SequenceBatch [B, L] (same L);
    domain [B] int32 (index into the loader's domain list); gold_margin [B] float32 (NaN when unknown)."""

    chosen: SequenceBatch
    rejected: SequenceBatch
    domain: np.ndarray
    gold_margin: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat dict the pair losses take: chosen_tokens, chosen_attention_mask, chosen_response_mask,
        the same for rejected, domain, gold_margin."""
        out = {"domain": self.domain, "gold_margin": self.gold_margin}
        for side, seqs in (("chosen", self.chosen), ("rejected", self.rejected)):
            out.update({f"{side}_{k}": v for k, v in seqs._asdict().items()})
        return out


    def shared_prefix_arrays(self, prompt_length: int, response_length: int, pad_id: int) -> dict[str, np.ndarray]:
        """The pairs in the shared-prefix layout (`metapl.models.shared_prefix`): prompt_tokens, prompt_mask
        [B, prompt_length] (left-padded), response_tokens, response_mask [B, 2, response_length] (chosen first,
        right-padded), domain, gold_margin. Each pair's prompt is stored once."""
        out = shared_prefix_layout([(self.chosen, self.rejected)], prompt_length, response_length, pad_id)
        out = {k: v[:, 0] for k, v in out.items()}
        return dict(out, domain=self.domain, gold_margin=self.gold_margin)


def shared_prefix_layout(groups: Sequence[Sequence[SequenceBatch]], prompt_length: int, response_length: int,
                         pad_id: int) -> dict[str, np.ndarray]:
    """Row batches regrouped by prompt: G groups of K SequenceBatches [B, L] whose row i shares one prompt within a
    group -> prompt_tokens, prompt_mask [B, G, prompt_length] (left-padded) and response_tokens, response_mask
    [B, G, K, response_length] (right-padded). A DataError names the row whose prompts differ or do not fit."""
    b, g, k = len(groups[0][0].tokens), len(groups), len(groups[0])
    prompt = np.full((b, g, prompt_length), pad_id, np.int32)
    prompt_mask = np.zeros((b, g, prompt_length), bool)
    responses = np.full((b, g, k, response_length), pad_id, np.int32)
    response_mask = np.zeros((b, g, k, response_length), bool)
    for j, group in enumerate(groups):
        for i in range(b):
            prompts = []
            for c, seqs in enumerate(group):
                real, resp = seqs.attention_mask[i].astype(bool), seqs.response_mask[i].astype(bool)
                prompts.append(seqs.tokens[i][real & ~resp])
                y = seqs.tokens[i][resp]
                if len(y) > response_length:
                    raise DataError(f"row {i}: a response of {len(y)} tokens exceeds the {response_length} slots")
                responses[i, j, c, : len(y)], response_mask[i, j, c, : len(y)] = y, True
            if any(not np.array_equal(prompts[0], x) for x in prompts[1:]):
                raise DataError(f"row {i}: the sequences of group {j} do not share their prompt")
            n = len(prompts[0])
            if n > prompt_length:
                raise DataError(f"row {i}: a prompt of {n} tokens exceeds the {prompt_length} slots")
            prompt[i, j, prompt_length - n:], prompt_mask[i, j, prompt_length - n:] = prompts[0], True
    return {"prompt_tokens": prompt, "prompt_mask": prompt_mask, "response_tokens": responses,
            "response_mask": response_mask}


def encode_pairs(pairs: Sequence[PreferencePair], encode: Encode, shape: SequenceShape, eos_id: int | None,
                 stats: TruncationStats) -> list[tuple[Encoded, Encoded]]:
    """Tokenise each pair's two sequences (the prompt is tokenised once per pair)."""
    out = []
    for pair in pairs:
        prompt = encode(pair.prompt)
        out.append((encode_sequence(prompt, encode(pair.chosen), shape, eos_id, stats),
                    encode_sequence(prompt, encode(pair.rejected), shape, eos_id, stats)))
    return out


def collate_pairs(encoded: Sequence[tuple[Encoded, Encoded]], pairs: Sequence[PreferencePair],
                  domain_index: dict[str, int], shape: SequenceShape, pad_id: int,
                  length: int | None = None) -> PairBatch:
    """A PairBatch padded to `length` (default: the bucket of the longest sequence in the batch)."""
    if length is None:
        length = shape.bucket(max(max(len(c.ids), len(r.ids)) for c, r in encoded))
    chosen = collate([c for c, _ in encoded], length, pad_id)
    rejected = collate([r for _, r in encoded], length, pad_id)
    domain = np.asarray([domain_index[p.domain] for p in pairs], np.int32)
    margin = np.asarray([np.nan if p.gold_margin is None else p.gold_margin for p in pairs], np.float32)
    return PairBatch(chosen, rejected, domain, margin)


def prompt_arrays(prompts: Sequence[PromptExample], encode: Encode, shape: SequenceShape, pad_id: int,
                  stats: TruncationStats, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt tokens [B, P] and mask [B, P] for sampling (prompts truncated from the left)."""
    ids = [encode_sequence(encode(p.prompt), [], dataclasses.replace(shape, append_eos=False), None, stats).ids
           for p in prompts]
    if length is None:
        length = shape.bucket(max(len(x) for x in ids))
    tokens = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), bool)
    for i, x in enumerate(ids):
        tokens[i, length - len(x):] = x
        mask[i, length - len(x):] = True
    return tokens, mask


class PackedBatch(NamedTuple):
    """Several sequences per row. tokens [R, L]; segment_ids [R, L] (1, 2, ... per sequence, 0 = padding);
    positions [R, L] (restarting at each sequence); attention_mask, response_mask [R, L] bool."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray


def pack(sequences: Sequence[Encoded], row_length: int, pad_id: int) -> PackedBatch:
    """Pack sequences in order into rows of `row_length` (first fit: a sequence starts a new row when the
    current one is full). Every sequence must fit in a row."""
    rows: list[list[Encoded]] = [[]]
    used = 0
    for i, seq in enumerate(sequences):
        if len(seq.ids) > row_length:
            raise DataError(f"sequence {i} has {len(seq.ids)} tokens; it cannot be packed into rows of {row_length}")
        if used + len(seq.ids) > row_length:
            rows.append([])
            used = 0
        rows[-1].append(seq)
        used += len(seq.ids)
    shape = (len(rows), row_length)
    tokens = np.full(shape, pad_id, np.int32)
    segments = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    response = np.zeros(shape, bool)
    for r, row in enumerate(rows):
        start = 0
        for s, (ids, p) in enumerate(row, start=1):
            end = start + len(ids)
            tokens[r, start:end] = ids
            segments[r, start:end] = s
            positions[r, start:end] = np.arange(len(ids))
            response[r, start + p: end] = True
            start = end
    return PackedBatch(tokens, segments, positions, segments > 0, response)


class ShuffledBatches:
    """Batches of example indices from an endless stream of seeded per-epoch permutations.

    Epoch e's order is `default_rng([seed, e]).permutation(n)`; batch k holds stream items
    [k * batch_size, (k + 1) * batch_size). The position is the number of batches taken (`state_dict`).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0):
        if num_examples < 1 or batch_size < 1:
            raise ValueError(f"need num_examples >= 1 and batch_size >= 1, got {num_examples}, {batch_size}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.step = 0
        self._epoch_cache: dict[int, np.ndarray] = {}

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._epoch_cache:
            self._epoch_cache = {e: np.random.default_rng([self.seed, e]).permutation(self.num_examples)}
        return self._epoch_cache[e]

    def batch(self, k: int) -> np.ndarray:
        """The k-th batch of indices [batch_size] (a pure function of k)."""
        start = k * self.batch_size
        out = []
        while len(out) < self.batch_size:
            e, i = divmod(start + len(out), self.num_examples)
            take = min(self.batch_size - len(out), self.num_examples - i)
            out.extend(self._epoch(e)[i: i + take])
        return np.asarray(out)

    @property
    def epoch(self) -> float:
        """Epochs completed so far (fractional)."""
        return self.step * self.batch_size / self.num_examples

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "num_examples": self.num_examples,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_examples", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot restore: the saved iterator has {key}={state[key]}, this one "
                                 f"{getattr(self, key)}")
        self.step = int(state["step"])


class PairLoader:
    """Endless, shuffled, bucketed PairBatches over preference pairs (tokenised once, up front).

    domains: the domain list that defines `PairBatch.domain` indices (default: sorted domains of the pairs).
    """

    def __init__(self, pairs: Sequence[PreferencePair], encode: Encode, *, batch_size: int,
                 shape: SequenceShape = SequenceShape(), pad_id: int = 0, eos_id: int | None = None,
                 seed: int = 0, domains: Sequence[str] | None = None, fixed_length: int | None = None,
                 shared_prefix: bool = False):
        if not pairs:
            raise DataError("no preference pairs to load")
        self.pairs, self.shape, self.pad_id, self.fixed_length = list(pairs), shape, pad_id, fixed_length
        self.shared_prefix = shared_prefix
        self.domains = list(domains) if domains is not None else sorted({p.domain for p in pairs})
        self.domain_index = {d: i for i, d in enumerate(self.domains)}
        unknown = sorted({p.domain for p in pairs} - set(self.domains))
        if unknown:
            raise DataError(f"pairs from domains not in the domain list: {', '.join(unknown)}", field="domain")
        self.truncation = TruncationStats()
        self.encoded = encode_pairs(self.pairs, encode, shape, eos_id, self.truncation)
        self.order = ShuffledBatches(len(self.pairs), batch_size, seed)

    def __iter__(self):
        return self

    def __next__(self) -> PairBatch:
        return self.batch_at(next(self.order))

    def batch_at(self, indices: Sequence[int]) -> PairBatch:
        """The PairBatch of the pairs at these indices (in this order)."""
        idx = list(indices)
        return collate_pairs([self.encoded[i] for i in idx], [self.pairs[i] for i in idx], self.domain_index,
                             self.shape, self.pad_id, self.fixed_length)

    def arrays_at(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The batch at these indices as the pair losses' flat dict: separate rows (`PairBatch.arrays`), or with
        `shared_prefix` each prompt once before its two responses (`PairBatch.shared_prefix_arrays`; prompt slots
        max_prompt_tokens, response slots max_response_tokens + EOS)."""
        batch = self.batch_at(indices)
        if not self.shared_prefix:
            return batch.arrays()
        return batch.shared_prefix_arrays(self.shape.max_prompt_tokens,
                                          self.shape.max_response_tokens + int(self.shape.append_eos), self.pad_id)

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


def tree_arrays(trees, encode: Encode, shape: SequenceShape, *, eos_id: int | None, pad_id: int,
                stats: TruncationStats, num_sequences: int | None = None, num_pairs: int | None = None,
                length: int | None = None, leaves_per_tree: int | None = None) -> dict[str, np.ndarray]:
    """A tree reward-model batch: each distinct (prompt, leaf response) sequence once, and index pairs into them.

    Returns tokens, attention_mask, response_mask [S, L]; chosen_index, rejected_index, pair_mask [P].
    S and P are padded to num_sequences / num_pairs (fixed shapes) when given.

    With `leaves_per_tree` = M, the shared-prefix layout instead (`metapl.models.shared_prefix`): each tree's
    prompt once, prompt_tokens, prompt_mask [T, max_prompt_tokens] (left-padded; T = num_sequences / M trees),
    its distinct leaves after it, response_tokens, response_mask [T, M, max_response_tokens + EOS]; the indices
    point into the T·M leaf slots.
    """
    index: dict[tuple, int] = {}
    encoded: list[Encoded] = []
    chosen, rejected = [], []
    for t, tree in enumerate(trees):
        prompt = encode(tree.prompt)
        leaves = 0  # distinct leaves of this tree so far
        for c in tree.comparisons:
            pair = []
            for leaf in (c.chosen, c.rejected):
                key = (tree.prompt, tree.response(leaf)) if leaves_per_tree is None else (t, tree.response(leaf))
                if key not in index:
                    if leaves_per_tree is None:
                        index[key] = len(encoded)
                    elif leaves == leaves_per_tree:
                        raise DataError(f"tree {t} has more than {leaves_per_tree} distinct leaves")
                    else:
                        index[key], leaves = t * leaves_per_tree + leaves, leaves + 1
                    encoded.append(encode_sequence(prompt, encode(key[1]), shape, eos_id, stats))
                pair.append(index[key])
            chosen.append(pair[0])
            rejected.append(pair[1])
    s, p = num_sequences or len(encoded), num_pairs or len(chosen)
    if len(encoded) > s or len(chosen) > p:
        raise DataError(f"the trees hold {len(encoded)} distinct sequences and {len(chosen)} pairs; the batch has "
                        f"room for {s} and {p}")
    pad = p - len(chosen)
    pairs = {"chosen_index": np.asarray(chosen + [0] * pad, np.int32),
             "rejected_index": np.asarray(rejected + [0] * pad, np.int32),
             "pair_mask": np.asarray([1] * len(chosen) + [0] * pad, np.float32)}
    if leaves_per_tree is not None:
        return dict(pairs, **_tree_leaves(encoded, list(index.values()), s // leaves_per_tree, leaves_per_tree,
                                          shape, pad_id))
    dummy = Encoded([pad_id], 0)
    seqs = collate(encoded + [dummy] * (s - len(encoded)),
                   length or shape.bucket(max(len(e.ids) for e in encoded)), pad_id)
    return dict(pairs, tokens=seqs.tokens, attention_mask=seqs.attention_mask, response_mask=seqs.response_mask)


def _tree_leaves(encoded: list[Encoded], slots: list[int], trees: int, leaves: int, shape: SequenceShape,
                 pad_id: int) -> dict[str, np.ndarray]:
    """Encoded (prompt ⊕ leaf) sequences placed in their leaf slots of the shared-prefix layout."""
    tp, r = shape.max_prompt_tokens, shape.max_response_tokens + int(shape.append_eos)
    prompt = np.full((trees, tp), pad_id, np.int32)
    prompt_mask = np.zeros((trees, tp), bool)
    response = np.full((trees * leaves, r), pad_id, np.int32)
    response_mask = np.zeros((trees * leaves, r), bool)
    for (ids, n), slot in zip(encoded, slots):
        t = slot // leaves
        prompt[t, tp - n:], prompt_mask[t, tp - n:] = ids[:n], True
        y = ids[n:]
        response[slot, : len(y)], response_mask[slot, : len(y)] = y, True
    prompt_mask[~prompt_mask.any(axis=1), -1] = True  # a padding tree: one pad token as its prompt
    return {"prompt_tokens": prompt, "prompt_mask": prompt_mask,
            "response_tokens": response.reshape(trees, leaves, r),
            "response_mask": response_mask.reshape(trees, leaves, r)}
