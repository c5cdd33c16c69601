"""Sample sets for offline RLHF and rejection sampling: n responses per prompt from a policy, scored, stored.

The offline methods of Hu et al. (arXiv 2308.12050) — MLE on filtered / best-of-n samples, reward-weighted
regression, reward-conditioned SFT — all start from the same thing: pre-generate n samples per prompt from a
policy, label each with a reward model or a gold judge, store them, then train. This module builds that set:

    cfg = SampleSetConfig(samples_per_prompt=8, max_new_tokens=32, batch_size=32, seed=0, policy="sft-v1")
    samples, report = build_sample_set(params, config, prompts, tok.encode, tok.decode, scorer, cfg,
                                       stop_token_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    write_sample_set("samples.jsonl", samples)
    best = best_of_n(samples)                                # one sample per prompt
    kept, freport = filter_by_zscore(samples, threshold=0.5)  # z >= 0.5 within its prompt; counts in freport

Scorers share one protocol, `scorer.score(domains, prompts, responses) -> np.ndarray [N]`, and have a `name`:
`GoldJudgeScorer` calls a judge per example (the synthetic gold reward; VADER over prompt + response) and
`RewardModelScorer` runs a scalar reward model (`metapl.models.heads.reward`) in fixed-shape jitted batches.

Determinism: the samples are a function of (params, prompts in order, sampling settings, batch_size, seed):
batch k of rows is sampled with key `fold_in(key(seed), k)`, so the same seed gives the same samples, but a
different batch_size regroups the rows and gives different (equally valid) samples.

Nothing is dropped silently: prompts truncated, padding rows, responses that hit the length limit, empty
responses and filtered samples are all counted (`SampleSetReport`, `FilterReport`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import jax
import numpy as np

from metapl.data.batching import (
    Encode,
    SequenceShape,
    TruncationStats,
    collate,
    encode_sequence,
    prompt_arrays,
)
from metapl.data.records import ReadResult, read_jsonl, write_jsonl
from metapl.data.schemas import DataError, PromptExample, ScoredSample

__all__ = [
    "FilterReport", "GoldJudgeScorer", "RewardModelScorer", "SampleSetConfig", "SampleSetReport", "Scorer",
    "best_of_n", "build_sample_set", "filter_by_zscore", "read_sample_set", "sample_responses", "score_samples",
    "write_sample_set", "zscore_by_prompt",
]

Decode = Callable[[Sequence[int]], str]


# --------------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class SampleSetConfig:
    """How to build a sample set.

    samples_per_prompt: n responses per prompt. max_new_tokens, temperature, top_k, top_p: as in
    `metapl.models.sampling.SamplingConfig` (temperature 0 = greedy, which makes the n samples identical).
    batch_size: rows (prompt copies) per sampler call; fixed, so the sampler compiles once — the last batch is
    padded with copies of its own rows and the padding rows are discarded.
    max_prompt_tokens: longer prompts keep their last tokens (counted in the report).
    seed: the sampling seed. policy: the policy's name, stored in every ScoredSample (provenance).
    """

    samples_per_prompt: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32
    max_prompt_tokens: int = 256
    seed: int = 0
    policy: str = "policy"

    def __post_init__(self):
        for name in ("samples_per_prompt", "batch_size", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.policy.strip():
            raise ValueError("policy must be a non-empty name")
        self.sampling()  # validates max_new_tokens, temperature, top_k, top_p

    def sampling(self, stop_token_ids: Sequence[int] = ()):
        from metapl.models.sampling import SamplingConfig

        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, stop_token_ids=tuple(int(t) for t in stop_token_ids))


@dataclasses.dataclass
class SampleSetReport:
    """What happened while building a sample set (counts of everything padded, cut or dropped).

    sampled: responses generated (prompts x samples_per_prompt). padding_rows: rows added to fill the last batch
    (sampled, then discarded). unfinished: responses that reached max_new_tokens without a stop token (kept,
    cut at the limit). empty: responses with no text after removing stop tokens (dropped: a ScoredSample needs
    a non-empty response). scored: samples in the set. prompt_truncation: prompts cut to max_prompt_tokens.
    """

    prompts: int = 0
    samples_per_prompt: int = 0
    batches: int = 0
    sampled: int = 0
    padding_rows: int = 0
    unfinished: int = 0
    empty: int = 0
    scored: int = 0
    prompt_truncation: TruncationStats = dataclasses.field(default_factory=TruncationStats)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.prompts} prompts x {self.samples_per_prompt} = {self.sampled} responses in {self.batches} "
                f"batches (+{self.padding_rows} padding rows, discarded); {self.unfinished} hit max_new_tokens; "
                f"{self.empty} empty (dropped); {self.scored} scored; prompts truncated: "
                f"{self.prompt_truncation.prompts_truncated} ({self.prompt_truncation.prompt_tokens_dropped} "
                f"tokens); {self.seconds:.1f}s")


def _log(message: str) -> None:
    print(f"[sample_sets] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- sampling


def sample_responses(
    params,
    config,
    prompts: Sequence[PromptExample],
    encode: Encode,
    decode: Decode,
    sample_config: SampleSetConfig,
    *,
    stop_token_ids: Sequence[int] = (),
    pad_id: int = 0,
    lora=None,
    report: SampleSetReport | None = None,
    progress: bool = True,
    mesh=None,
) -> list[list[str]]:
    """`samples_per_prompt` decoded responses for each prompt: out[i][j] is the j-th sample for prompts[i].

    Each prompt is repeated n times (rows i*n .. i*n+n-1) and the rows are sampled `batch_size` at a time with the
    shared sampler (`metapl.models.sampling.generate`), all at one prompt length (the bucket of the longest
    prompt), so one shape is compiled. A response ends at its first stop token; stop tokens and everything after
    are removed before `decode(ids)`. Pass e.g. `stop_token_ids=(tokenizer.eos_token_id,)` or
    `default_stop_ids(hf_tokenizer)`; with none, every response runs to max_new_tokens.

    encode: text -> ids, used as is (add a BOS yourself if the model expects one). report: if given, its
    sampling counts are filled in. progress: a line per batch on stderr. mesh: sample sharded (see `generate`).
    """
    from metapl.models.sampling import bucket, generate

    if not prompts:
        raise DataError("no prompts to sample from")
    report = report if report is not None else SampleSetReport()
    n, b = sample_config.samples_per_prompt, sample_config.batch_size
    sampling = sample_config.sampling(stop_token_ids)
    stops = set(sampling.stop_token_ids)

    # Every prompt tokenised once, at one bucketed length for all batches.
    shape = SequenceShape(max_prompt_tokens=sample_config.max_prompt_tokens, max_response_tokens=0,
                          append_eos=False)
    truncation = TruncationStats()
    lengths = []
    for p in prompts:
        ids = encode(p.prompt)
        if not ids:
            raise DataError(f"the prompt {p.prompt[:40]!r} tokenised to nothing", field="prompt")
        lengths.append(min(len(ids), shape.max_prompt_tokens))
    tokens, mask = prompt_arrays(prompts, encode, shape, pad_id, truncation, length=bucket(max(lengths)))
    rows = np.repeat(np.arange(len(prompts)), n)  # row r samples prompts[rows[r]]

    key = jax.random.key(sample_config.seed)
    num_batches = -(-len(rows) // b)
    texts: list[str] = []
    unfinished = 0
    t0 = time.perf_counter()
    for k in range(num_batches):
        idx = rows[k * b: (k + 1) * b]
        real = len(idx)
        idx = np.resize(idx, b)  # pad the last batch with copies of its own rows (cycled); discarded below
        out = generate(params, config, tokens[idx], mask[idx], jax.random.fold_in(key, k), sampling,
                       pad_id=pad_id, lora=lora, mesh=mesh)
        toks, live = np.asarray(out.tokens)[:real], np.asarray(out.mask)[:real]
        for row, row_mask in zip(toks, live):
            ids, finished = [], False
            for t, keep in zip(row.tolist(), row_mask.tolist()):
                if not keep:
                    break
                if t in stops:
                    finished = True
                    break
                ids.append(t)
            unfinished += not finished
            texts.append(decode(ids))
        if progress:
            _log(f"sampled batch {k + 1}/{num_batches}: {len(texts)}/{len(rows)} responses "
                 f"({time.perf_counter() - t0:.1f}s)")

    report.prompts, report.samples_per_prompt = len(prompts), n
    report.batches, report.sampled = num_batches, len(rows)
    report.padding_rows = num_batches * b - len(rows)
    report.unfinished = unfinished
    report.prompt_truncation = truncation
    return [texts[i * n: (i + 1) * n] for i in range(len(prompts))]


# -------------------------------------------------------------------------------------------------- scorers


class Scorer(Protocol):
    """Scores responses: `score(domains, prompts, responses)` -> float array [N] (all three lists of length N)."""

    name: str

    def score(self, domains: Sequence[str], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


def _check_lengths(domains, prompts, responses) -> int:
    if not len(domains) == len(prompts) == len(responses):
        raise ValueError(f"domains, prompts and responses differ in length: {len(domains)}, {len(prompts)}, "
                         f"{len(responses)}")
    return len(responses)


class GoldJudgeScorer:
    """A judge called once per example: `fn(domain, prompt, response) -> float`.

        GoldJudgeScorer.synthetic(SyntheticDomains(cfg))   # the synthetic benchmark's gold reward r_d(x, y)
        GoldJudgeScorer.text(VaderJudge())                  # VADER compound of prompt + response
    """

    def __init__(self, fn: Callable[[str, str, str], float], name: str):
        self.fn, self.name = fn, name

    @classmethod
    def synthetic(cls, benchmark) -> GoldJudgeScorer:
        """The gold reward of a `SyntheticDomains` benchmark."""
        return cls(benchmark.gold_reward, f"synthetic-gold-seed{benchmark.config.seed}")

    @classmethod
    def text(cls, judge, *, separator: str = "", include_prompt: bool = True) -> GoldJudgeScorer:
        """A text judge (`judge.score(texts)`, e.g. `VaderJudge`) over `prompt + separator + response`
        (the response alone with include_prompt=False). The default matches the sentiment benchmark, where
        the response continues the prompt."""

        def fn(domain: str, prompt: str, response: str) -> float:
            return float(judge.score([prompt + separator + response if include_prompt else response])[0])

        return cls(fn, getattr(judge, "name", type(judge).__name__))

    def score(self, domains: Sequence[str], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_lengths(domains, prompts, responses)
        return np.asarray([float(self.fn(d, p, r)) for d, p, r in zip(domains, prompts, responses)], np.float64)

    def __repr__(self) -> str:
        return f"GoldJudgeScorer(name={self.name!r})"


@functools.partial(jax.jit, static_argnames="config")
def _reward(params, tokens, attention_mask, lora, *, config):
    from metapl.models.heads import reward

    return reward(params, config, tokens, attention_mask, lora=lora)


class RewardModelScorer:
    """A scalar reward model (`metapl.models.heads.reward`) over `prompt ⊕ response (⊕ eos)`.

    Sequences are built with the shared batching code (`encode_sequence` with `shape`, default `SequenceShape()`:
    prompt cut from the left, response from the right, eos appended when `eos_id` is given and
    `shape.append_eos`; every cut counted in `self.truncation`), right-padded to one length per `score` call
    (`length`, or the shape's bucket of the longest sequence) and scored `batch_size` rows at a time under jit
    (the last batch padded, padding discarded).
    Use the same `encode`, `shape` and `eos_id` the reward model was trained with.
    """

    def __init__(self, params, config, encode: Encode, *, shape: SequenceShape | None = None,
                 eos_id: int | None = None, pad_id: int = 0, batch_size: int = 32, length: int | None = None,
                 lora=None, name: str = "reward-model"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.params, self.config, self.encode = params, config, encode
        self.shape = shape if shape is not None else SequenceShape()
        self.eos_id, self.pad_id, self.batch_size, self.length, self.lora = eos_id, pad_id, batch_size, length, lora
        self.name = name
        self.truncation = TruncationStats()

    def score(self, domains: Sequence[str], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        n = _check_lengths(domains, prompts, responses)
        if n == 0:
            return np.zeros((0,), np.float64)
        encoded = [encode_sequence(self.encode(p), self.encode(r), self.shape, self.eos_id, self.truncation)
                   for p, r in zip(prompts, responses)]
        length = self.length or self.shape.bucket(max(len(e.ids) for e in encoded))
        out = []
        for start in range(0, n, self.batch_size):
            chunk = encoded[start: start + self.batch_size]
            chunk = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # one compiled shape
            batch = collate(chunk, length, self.pad_id)
            r = _reward(self.params, batch.tokens, batch.attention_mask, self.lora, config=self.config)
            out.append(np.asarray(r, np.float64)[: min(self.batch_size, n - start)])
        return np.concatenate(out)

    def __repr__(self) -> str:
        return f"RewardModelScorer(name={self.name!r}, batch_size={self.batch_size})"


# ---------------------------------------------------------------------------------------------- sample sets


def score_samples(prompts: Sequence[PromptExample], responses: Sequence[Sequence[str]], scorer: Scorer,
                  policy: str, report: SampleSetReport | None = None) -> list[ScoredSample]:
    """ScoredSamples for responses[i][j] to prompts[i], in that order; empty (whitespace-only) responses are
    dropped and counted in `report.empty`. Raises ValueError if the scorer returns a non-finite reward."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    report = report if report is not None else SampleSetReport()
    flat = [(p, r) for p, rs in zip(prompts, responses) for r in rs]
    kept = [(p, r) for p, r in flat if r.strip()]
    report.empty = len(flat) - len(kept)
    rewards = np.asarray(scorer.score([p.domain for p, _ in kept], [p.prompt for p, _ in kept],
                                      [r for _, r in kept]), np.float64)
    if rewards.shape != (len(kept),):
        raise ValueError(f"scorer {scorer.name!r} returned shape {rewards.shape}, expected ({len(kept)},)")
    bad = int(np.sum(~np.isfinite(rewards)))
    if bad:
        raise ValueError(f"scorer {scorer.name!r} returned {bad} non-finite rewards out of {len(kept)}")
    report.scored = len(kept)
    return [ScoredSample(p.prompt, r, float(x), p.domain, policy) for (p, r), x in zip(kept, rewards)]


def build_sample_set(
    params,
    config,
    prompts: Sequence[PromptExample],
    encode: Encode,
    decode: Decode,
    scorer: Scorer,
    sample_config: SampleSetConfig,
    *,
    stop_token_ids: Sequence[int] = (),
    pad_id: int = 0,
    lora=None,
    progress: bool = True,
    mesh=None,
) -> tuple[list[ScoredSample], SampleSetReport]:
    """Sample `samples_per_prompt` responses per prompt (`sample_responses`), score them, and return
    (samples grouped by prompt in prompt order, report). Empty responses are dropped (counted in the report)."""
    t0 = time.perf_counter()
    report = SampleSetReport()
    responses = sample_responses(params, config, prompts, encode, decode, sample_config,
                                 stop_token_ids=stop_token_ids, pad_id=pad_id, lora=lora, report=report,
                                 progress=progress, mesh=mesh)
    samples = score_samples(prompts, responses, scorer, sample_config.policy, report)
    report.seconds = time.perf_counter() - t0
    if progress:
        _log(f"scored with {scorer.name}: {report.summary()}")
    return samples, report


def write_sample_set(path: str | Path, samples: Sequence[ScoredSample]) -> int:
    """Write samples as JSON Lines (one ScoredSample per line); returns the count."""
    return write_jsonl(path, samples)


def read_sample_set(path: str | Path, *, skip_invalid: bool = False) -> ReadResult:
    """Read and validate a sample-set JSONL file: `ReadResult(records=[ScoredSample...], skipped=[...])`."""
    return read_jsonl(path, ScoredSample, skip_invalid=skip_invalid)


# ---------------------------------------------------------------------------------- helpers for the methods


def _groups(samples: Sequence[ScoredSample]) -> dict[tuple[str, str], list[int]]:
    """Indices of the samples of each (domain, prompt), groups in order of first appearance."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(s.domain, s.prompt)].append(i)
    return groups


def best_of_n(samples: Sequence[ScoredSample]) -> list[ScoredSample]:
    """The highest-reward sample of each prompt (a prompt = a (domain, prompt) pair, across policies), in order
    of each prompt's first appearance. Ties are broken by the lexicographically smallest response, then by the
    earliest position, so the choice does not depend on the order of tied samples."""
    out = []
    for idx in _groups(samples).values():
        best = min(idx, key=lambda i: (-samples[i].reward, samples[i].response, i))
        out.append(samples[best])
    return out


def _zscores(samples: Sequence[ScoredSample]) -> tuple[np.ndarray, int]:
    z = np.zeros(len(samples), np.float64)
    zero_variance = 0
    for idx in _groups(samples).values():
        r = np.asarray([samples[i].reward for i in idx], np.float64)
        if np.ptp(r) == 0:  # all rewards identical (or a single sample): no signal within the prompt
            zero_variance += 1
            continue
        z[idx] = (r - r.mean()) / r.std()
    return z, zero_variance


def zscore_by_prompt(samples: Sequence[ScoredSample]) -> list[ScoredSample]:
    """The samples with each reward replaced by its z-score within its prompt: (r - mean) / std over the
    prompt's samples (population std, ddof=0; a prompt = a (domain, prompt) pair).

    A prompt whose samples all have exactly the same reward (including a prompt with a single sample) has zero
    variance and no ranking signal: its samples get 0, not NaN. `filter_by_zscore` reports how many such
    prompts there were."""
    z, _ = _zscores(samples)
    return [dataclasses.replace(s, reward=float(x)) for s, x in zip(samples, z)]


@dataclasses.dataclass(frozen=True)
class FilterReport:
    """filter_by_zscore: samples kept and dropped, prompts seen, and prompts with zero reward variance (z = 0)."""

    kept: int
    dropped: int
    prompts: int
    prompts_with_none_kept: int
    zero_variance_prompts: int

    def summary(self) -> str:
        return (f"kept {self.kept} of {self.kept + self.dropped} samples ({self.dropped} dropped) from "
                f"{self.prompts} prompts; {self.prompts_with_none_kept} prompts lost every sample; "
                f"{self.zero_variance_prompts} prompts had zero reward variance (z = 0)")


def filter_by_zscore(samples: Sequence[ScoredSample], threshold: float) -> tuple[list[ScoredSample], FilterReport]:
    """The samples whose within-prompt z-score (see `zscore_by_prompt`) is >= threshold, in their original order
    and with their original rewards, and a FilterReport. A zero-variance prompt's samples (z = 0) are kept
    only if threshold <= 0."""
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    z, zero_variance = _zscores(samples)
    keep = z >= threshold
    groups = _groups(samples)
    none_kept = sum(1 for idx in groups.values() if not keep[idx].any())
    kept = [s for s, k in zip(samples, keep) if k]
    return kept, FilterReport(kept=len(kept), dropped=len(samples) - len(kept), prompts=len(groups),
                              prompts_with_none_kept=none_kept, zero_variance_prompts=zero_variance)
