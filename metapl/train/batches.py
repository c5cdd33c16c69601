"""Batch iterators the training loop consumes: each yields dict batches of jnp arrays and checkpoints its
position (`state_dict` / `load_state_dict`), so a resumed run sees exactly the batches it would have seen.

    pair_loader(pairs, bench, batch_size, seed)   preference pairs of a benchmark, one fixed padded shape
    PairBatches(loader, extras)                   the pair losses' flat dicts (+ per-pair arrays, e.g. cached
                                                  reference log-probs)
    ArrayBatches(arrays, batch_size, seed)        shuffled rows of equal-length arrays
    eval_pair_batches(pairs, bench, batch_size)   every evaluation pair once (weight-0 padding rows)
    TreeBatches(trees, bench, ...)                preference trees for the tree reward model
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from metapl.data.batching import PairLoader, SequenceShape, ShuffledBatches, TruncationStats, tree_arrays
from metapl.data.benchmarks import Benchmark
from metapl.data.schemas import PreferencePair

# What a PairBatch holds besides the model inputs: not arrays a loss takes.
_NOT_INPUTS = ("domain", "gold_margin")


def pair_shape(bench: Benchmark) -> SequenceShape:
    """Prompt and response limits of the run's data spec, with one padded length (prompt + response + EOS)."""
    spec = bench.spec
    return SequenceShape(spec.max_prompt_tokens, spec.max_response_tokens,
                         buckets=(spec.max_prompt_tokens + spec.max_response_tokens + 1,))


def pair_loader(pairs: Sequence[PreferencePair], bench: Benchmark, batch_size: int, seed: int,
                shared_prefix: bool = False) -> PairLoader:
    """Seeded shuffled batches of `pairs`, encoded by the benchmark's tokenizer; `shared_prefix`: in the
    shared-prefix layout (each prompt once, its two responses after it)."""
    return PairLoader(list(pairs), bench.encode, batch_size=batch_size, shape=pair_shape(bench), pad_id=bench.pad_id,
                      eos_id=bench.eos_id, seed=seed, shared_prefix=shared_prefix)


def pair_inputs(loader: PairLoader, index) -> dict:
    """The pairs at `index` (a list of positions) as the pair losses' flat dict of jnp arrays."""
    return {k: jnp.asarray(v) for k, v in loader.arrays_at(index).items() if k not in _NOT_INPUTS}


class PairBatches:
    """A PairLoader yielding the flat jnp dicts the pair losses take, with per-pair extras (e.g. cached
    reference log-probs, arrays indexed like the loader's pairs) added by index."""

    def __init__(self, loader: PairLoader, extras: dict[str, np.ndarray] | None = None):
        self.loader, self.extras = loader, extras or {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = next(self.loader.order)
        out = pair_inputs(self.loader, idx)
        out.update({k: jnp.asarray(v[idx]) for k, v in self.extras.items()})
        return out

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


class ArrayBatches:
    """Shuffled fixed-size batches of the rows of a dict of equal-length arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int):
        self.arrays = arrays
        self.order = ShuffledBatches(len(next(iter(arrays.values()))), batch_size, seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = next(self.order)
        return {k: jnp.asarray(v[idx]) for k, v in self.arrays.items()}

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


def eval_pair_batches(pairs: Sequence[PreferencePair], bench: Benchmark, batch_size: int,
                      shared_prefix: bool = False) -> list[dict]:
    """Every pair once, in fixed-size batches; the last one is padded with repeats of weight 0 ("weights" [B])."""
    n = len(pairs)
    padded = list(pairs) + list(pairs[: (-n) % batch_size])
    loader = pair_loader(padded, bench, batch_size, seed=0, shared_prefix=shared_prefix)
    out = []
    for start in range(0, len(padded), batch_size):
        arrays = pair_inputs(loader, range(start, start + batch_size))
        arrays["weights"] = jnp.asarray([1.0 if start + i < n else 0.0 for i in range(batch_size)])
        out.append(arrays)
    return out


def weighted_mean(rows: list[dict], weights: list[float]) -> dict:
    """{key: Σ_i w_i rows[i][key] / Σ_i w_i} over metric dicts with the same keys."""
    total = sum(weights)
    return {k: sum(float(r[k]) * w for r, w in zip(rows, weights)) / total for k in rows[0]}


class TreeBatches:
    """Shuffled batches of preference trees as fixed-shape tree reward-model arrays: `batch_size` trees, their
    distinct leaf sequences padded to `max_leaves` per tree and their comparisons to `pairs_per_tree`."""

    def __init__(self, trees, bench: Benchmark, batch_size: int, seed: int, max_leaves: int, pairs_per_tree: int,
                 shared_prefix: bool = False):
        self.trees, self.bench = trees, bench
        self.leaves_per_tree = max_leaves if shared_prefix else None  # each tree's prompt once before its leaves
        self.shape = pair_shape(bench)
        self.sizes = (batch_size * max_leaves, batch_size * pairs_per_tree)
        self.order = ShuffledBatches(len(trees), batch_size, seed)
        self.truncation = TruncationStats()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        arrays = tree_arrays([self.trees[i] for i in next(self.order)], self.bench.encode, self.shape,
                             eos_id=self.bench.eos_id, pad_id=self.bench.pad_id, stats=self.truncation,
                             num_sequences=self.sizes[0], num_pairs=self.sizes[1], length=self.shape.buckets[0],
                             leaves_per_tree=self.leaves_per_tree)
        return {k: jnp.asarray(v) for k, v in arrays.items()}

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


__all__ = ["ArrayBatches", "PairBatches", "TreeBatches", "eval_pair_batches", "pair_inputs", "pair_loader",
           "pair_shape", "weighted_mean"]
