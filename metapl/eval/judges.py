"""Judges behind one interface: which of two responses to a prompt is better.

    verdicts = judge.compare(prompts, first, second)   # [n] floats: 1 first better, 0 second better, ½ a tie

`prompts` are `PromptExample`s (prompt text and domain), `first` and `second` response texts. Scoring judges
score each response on its own and compare the scores (`ScoringJudge`): the benchmark's gold judge
(`GoldJudge`), the second transparent judge of a real-text benchmark (`GoldJudge(bench, cross=True)`), a trained
reward model or any other sample scorer (`ScorerJudge`). Pairwise judges only compare: an LLM behind an
OpenAI-compatible API (`metapl.eval.http_judge.HttpJudge`). A win rate is the mean verdict (`win_rate_of`).
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from metapl.data.benchmarks import Benchmark
from metapl.data.sample_sets import Scorer
from metapl.data.schemas import PromptExample


def verdicts_from_scores(first, second) -> np.ndarray:
    """[n] verdicts of paired scores: 1 where first > second, 0 where first < second, ½ where equal."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"verdicts_from_scores: {a.shape} scores against {b.shape}")
    return (a > b) + 0.5 * (a == b)


class Judge(abc.ABC):
    """Compares two responses to each prompt. `name` identifies the judge (and its version) in results files."""

    name: str = "judge"

    @abc.abstractmethod
    def compare(self, prompts: Sequence[PromptExample], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """[n] verdicts in {0, ½, 1}: 1 where `first[i]` is the better answer to `prompts[i]`."""

    @staticmethod
    def _check(prompts, first, second) -> None:
        if not len(prompts) == len(first) == len(second):
            raise ValueError(f"a judge compares one pair per prompt: {len(prompts)} prompts, {len(first)} first "
                             f"and {len(second)} second responses")


class ScoringJudge(Judge):
    """A judge that scores each response alone; comparing two is comparing their scores."""

    @abc.abstractmethod
    def score(self, prompts: Sequence[PromptExample], responses: Sequence[str]) -> np.ndarray:
        """[n] float scores of `responses[i]` as an answer to `prompts[i]` (higher is better)."""

    def compare(self, prompts, first, second) -> np.ndarray:
        self._check(prompts, first, second)
        return verdicts_from_scores(self.score(prompts, first), self.score(prompts, second))


class GoldJudge(ScoringJudge):
    """The benchmark's gold judge (`Benchmark.gold`), or with `cross` its second, independent judge
    (`Benchmark.cross_gold`; real-text benchmarks only). An empty response scores 0, as in the meta-test."""

    def __init__(self, bench: Benchmark, cross: bool = False):
        self.bench, self.cross = bench, cross
        kind = "cross" if cross else "gold"
        self.name = f"{bench.name}:{kind}"

    def score(self, prompts, responses) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses")
        fn = self.bench.cross_gold if self.cross else self.bench.gold
        return np.asarray([fn(p.domain, p.prompt, r) if r.strip() else 0.0 for p, r in zip(prompts, responses)],
                          dtype=float)


class ScorerJudge(ScoringJudge):
    """Any sample scorer as judge (`metapl.data.sample_sets.Scorer`: `score(domains, prompts, responses)`), e.g. a
    trained reward model as a `RewardModelScorer` (`metapl.algorithms.common.reward_model_scorer` reads one from a
    run) or `GoldJudgeScorer.text(VaderJudge())`."""

    def __init__(self, scorer: Scorer, name: str | None = None):
        self.scorer = scorer
        self.name = name or scorer.name

    def score(self, prompts, responses) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses")
        return np.asarray(self.scorer.score([p.domain for p in prompts], [p.prompt for p in prompts],
                                            list(responses)), dtype=float)


def win_rate_of(verdicts) -> float:
    """The mean verdict: the share of comparisons the first side wins, ties counting ½."""
    v = np.asarray(verdicts, dtype=float)
    if not len(v):
        raise ValueError("win_rate_of: no verdicts")
    return float(v.mean())


__all__ = ["GoldJudge", "Judge", "ScorerJudge", "ScoringJudge", "verdicts_from_scores", "win_rate_of"]
