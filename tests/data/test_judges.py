"""The VADER gold judge and the Pattern cross-check judge against hand-checked sentences, and Bradley-Terry labels
against their closed form."""

import math

import numpy as np
import pytest

from metapl.data.judges import PatternJudge, VaderJudge, bradley_terry_label, bradley_terry_probability

POSITIVE = [
    "I love this movie, it is absolutely wonderful and the acting is brilliant!",
    "What a fantastic, happy day. Everything went great and I feel amazing.",
    "Thank you so much, this is the best gift ever!",
]
NEGATIVE = [
    "This was a terrible, boring, awful waste of time. I hated it.",
    "The food was disgusting and the staff were rude and horrible.",
    "I am so sad and angry; this is the worst thing that could happen.",
]
NEUTRAL = [
    "The meeting is scheduled for Tuesday at 3 pm.",
    "The book has 300 pages.",
    "The train leaves from platform four.",
]


@pytest.fixture(scope="module")
def judge():
    return VaderJudge()


def test_vader_scores_hand_checked_sentences(judge):
    scores = judge.score(POSITIVE + NEGATIVE + NEUTRAL + [""])
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64 and scores.shape == (10,)
    assert np.all(scores[:3] > 0.5), scores[:3]
    assert np.all(scores[3:6] < -0.5), scores[3:6]
    np.testing.assert_allclose(scores[6:], 0.0, atol=0.05)
    assert np.all((scores >= -1) & (scores <= 1))


def test_vader_is_batched_consistent_and_built_once(judge):
    analyzer = judge._analyzer
    batch = judge.score(POSITIVE + NEGATIVE)
    singles = np.concatenate([judge.score([t]) for t in POSITIVE + NEGATIVE])
    np.testing.assert_array_equal(batch, singles)
    assert judge._analyzer is analyzer
    np.testing.assert_array_equal(judge(POSITIVE), judge.score(POSITIVE))
    assert judge.score([]).shape == (0,)
    # the judge agrees with the reference implementation it wraps
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    assert batch[0] == SentimentIntensityAnalyzer().polarity_scores(POSITIVE[0])["compound"]


def test_vader_judge_name_and_input_checks(judge):
    import importlib.metadata

    assert judge.name == f"vader-{importlib.metadata.version('vaderSentiment')}-compound" and "vader" in repr(judge)
    with pytest.raises(TypeError, match="list"):
        judge.score("a single string")
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        judge.score(["fine", 3])


def _pattern_lexicon_polarity(word: str) -> float:
    """The mean polarity of `word`'s senses in the lexicon file textblob ships (read here, not through textblob)."""
    import os
    import re

    import textblob

    path = os.path.join(os.path.dirname(textblob.__file__), "en", "en-sentiment.xml")
    values = [float(m) for line in open(path, encoding="utf-8") if f'form="{word}"' in line
              for m in re.findall(r' polarity="([-0-9.]+)"', line)]
    assert values, word
    return float(np.mean(values))


def test_pattern_judge_reads_its_lexicon_with_negation():
    judge = PatternJudge()
    good, awful = _pattern_lexicon_polarity("good"), _pattern_lexicon_polarity("awful")
    scores = judge.score(["good", "not good", "awful", "The train leaves at four.", ""])
    np.testing.assert_allclose(scores, [good, -0.5 * good, awful, 0.0, 0.0], atol=1e-9)  # negation: x -0.5
    both = judge.score(POSITIVE + NEGATIVE)
    assert np.all(both[:3] > 0.3) and np.all(both[3:] < -0.3), both
    assert judge.name.startswith("textblob-") and "pattern" in repr(judge)
    with pytest.raises(TypeError, match="list"):
        judge.score("a single string")


def test_bradley_terry_probability_matches_the_closed_form():
    a = np.linspace(-1, 1, 9)
    b = a[::-1]
    for t in (0.05, 0.3, 1.0, 10.0):
        expected = np.array([1 / (1 + math.exp(-(x - y) / t)) for x, y in zip(a, b)])
        np.testing.assert_allclose(bradley_terry_probability(a, b, temperature=t), expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(bradley_terry_probability(a, b, temperature=t)
                                   + bradley_terry_probability(b, a, temperature=t), 1.0)
    assert bradley_terry_probability(0.2, 0.2, temperature=0.1) == 0.5
    assert bradley_terry_probability(1.0, -1.0, temperature=1e-6) == 1.0  # no overflow far out in the tails
    assert bradley_terry_probability(-1.0, 1.0, temperature=1e-6) == 0.0


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_bradley_terry_label_frequency_matches_the_probability(temperature):
    s_a, s_b, n = 0.35, 0.2, 20_000
    p = 1 / (1 + math.exp(-(s_a - s_b) / temperature))
    rng = np.random.default_rng(0)
    labels = bradley_terry_label(np.full(n, s_a), np.full(n, s_b), temperature=temperature, rng=rng)
    assert labels.dtype == bool and labels.shape == (n,)
    assert abs(labels.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    rng = np.random.default_rng(1)  # scalar calls, one draw each
    draws = [bradley_terry_label(s_a, s_b, temperature=temperature, rng=rng) for _ in range(4000)]
    assert all(isinstance(d, bool) for d in draws)
    assert abs(np.mean(draws) - p) < 4 * math.sqrt(p * (1 - p) / 4000)


def test_bradley_terry_label_zero_temperature_limit():
    rng = np.random.default_rng(0)
    a = np.array([0.3, -0.2, 0.9, 0.11])
    b = np.array([0.1, 0.0, -0.9, 0.1])
    for t in (0.0, 1e-9):
        for _ in range(50):
            np.testing.assert_array_equal(bradley_terry_label(a, b, temperature=t, rng=rng), a > b)
    ties = bradley_terry_label(np.zeros(4000), np.zeros(4000), temperature=0.0, rng=rng)
    assert abs(ties.mean() - 0.5) < 0.05  # ties are a fair coin at any temperature
    # the rng stream does not depend on the temperature: one uniform per pair
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    bradley_terry_label(a, b, temperature=0.0, rng=r1)
    bradley_terry_label(a, b, temperature=0.7, rng=r2)
    assert r1.random() == r2.random()


def test_bradley_terry_argument_checks():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="temperature"):
        bradley_terry_label(0.1, 0.2, temperature=-1.0, rng=rng)
    with pytest.raises(ValueError, match="temperature"):
        bradley_terry_probability(0.1, 0.2, temperature=float("inf"))
    with pytest.raises(TypeError, match="Generator"):
        bradley_terry_label(0.1, 0.2, temperature=0.1, rng=0)
    with pytest.raises(ValueError, match="finite"):
        bradley_terry_probability(float("nan"), 0.2, temperature=0.1)
