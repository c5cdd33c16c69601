"""Gold judges for the real-text benchmarks, and Bradley-Terry preference labels drawn from their scores.

    judge = VaderJudge()
    scores = judge.score(["What a wonderful day!", "This is awful."])   # array([ 0.6..., -0.4...])
    label = bradley_terry_label(scores[0], scores[1], temperature=0.1, rng=np.random.default_rng(0))

`VaderJudge` is VADER (Hutto & Gilbert, ICWSM 2014; the `vaderSentiment==3.3.2` package, MIT): a lexicon- and
rule-based sentiment analyser. Its *compound* score, in [-1, 1], is the judge's reward: > 0.05 reads as positive,
< -0.05 as negative. It is deterministic, fast on CPU and has no model weights.

`PatternJudge` is the second, independent judge: the polarity of TextBlob's `PatternAnalyzer` (the `textblob`
package, MIT; its lexicon is the Pattern library's English adjective lexicon, De Smedt & Daelemans, JMLR 2012):
the mean polarity of the lexicon's words in the text, in [-1, 1], with negation ("not good" = -0.5 x 0.7) and
intensifiers. Another lexicon, built by other authors, with other rules: a policy that games one judge's word list
shows up as a disagreement between the two. The studies use it to cross-check results, never to train.

`bradley_terry_label(s_a, s_b, temperature=T, rng=...)` draws "a is preferred to b" with probability
σ((s_a - s_b) / T): the Bradley-Terry model with the judge's score as the utility. The temperature is the label
noise: with T = 0.1, a compound gap of 0.1 gives P = σ(1) ≈ 0.73 and a gap of 0.5 gives ≈ 0.99; larger T gives
noisier, less decisive labels (T → ∞: coin flips); T = 0 gives deterministic labels (the higher score always wins,
ties are a fair coin), which is the T → 0 limit.
"""

from __future__ import annotations

import importlib.metadata
import math
from typing import Sequence

import numpy as np

__all__ = ["PatternJudge", "VaderJudge", "bradley_terry_label", "bradley_terry_probability"]


class VaderJudge:
    """VADER compound sentiment in [-1, 1] for each text. The analyser (lexicon parsing) is built once, here.

    `name` identifies the judge and its version, for provenance in results files.
    """

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the VADER judge needs vaderSentiment: pip install vaderSentiment==3.3.2") from e
        self._analyzer = SentimentIntensityAnalyzer()
        try:
            version = importlib.metadata.version("vaderSentiment")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            version = "unknown"
        self.version = version
        self.name = f"vader-{version}-compound"

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Compound scores, float64 array of shape (len(texts),), each in [-1, 1]. Empty text scores 0."""
        return _scores(texts, lambda text: self._analyzer.polarity_scores(text)["compound"])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.score(texts)

    def __repr__(self) -> str:
        return f"VaderJudge(name={self.name!r})"


def _scores(texts: Sequence[str], score_one) -> np.ndarray:
    if isinstance(texts, str):
        raise TypeError("score() takes a list of texts; wrap a single text in a list")
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        out[i] = score_one(text)
    return out


class PatternJudge:
    """TextBlob / Pattern lexicon polarity in [-1, 1] for each text (the second sentiment judge)."""

    def __init__(self) -> None:
        try:
            from textblob.en.sentiments import PatternAnalyzer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the Pattern judge needs textblob: pip install textblob") from e
        self._analyzer = PatternAnalyzer()
        try:
            version = importlib.metadata.version("textblob")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            version = "unknown"
        self.version = version
        self.name = f"textblob-{version}-pattern-polarity"

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Polarity scores, float64 array of shape (len(texts),), each in [-1, 1]; 0 when no lexicon word occurs."""
        return _scores(texts, lambda text: self._analyzer.analyze(text).polarity)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.score(texts)

    def __repr__(self) -> str:
        return f"PatternJudge(name={self.name!r})"


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    return temperature


def bradley_terry_probability(score_a, score_b, *, temperature: float) -> np.ndarray | float:
    """P(a ≻ b) = σ((score_a - score_b) / temperature); at temperature 0: 1, 0 or 1/2 (tie). Broadcasts."""
    temperature = _check_temperature(temperature)
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("scores must be finite")
    diff = a - b
    if temperature == 0:
        p = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    else:
        p = 0.5 * (1.0 + np.tanh(diff / (2.0 * temperature)))  # σ(x) without overflow
    return float(p) if p.ndim == 0 else p


def bradley_terry_label(score_a, score_b, *, temperature: float, rng: np.random.Generator) -> np.ndarray | bool:
    """Draw whether a is preferred to b, with P(a ≻ b) = σ((score_a - score_b) / temperature).

    temperature >= 0 is the label-noise knob (see the module docstring); 0 means deterministic labels (the higher
    score wins; ties are a fair coin). One uniform draw from `rng` per pair, whatever the temperature, so the rng
    stream does not depend on it. Scalars in, a bool out; arrays in, a bool array of the broadcast shape out.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    p = np.asarray(bradley_terry_probability(score_a, score_b, temperature=temperature))
    labels = rng.random(p.shape) < p
    return bool(labels) if labels.ndim == 0 else labels
