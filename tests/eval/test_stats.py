"""The statistics the reports rest on: win rates by hand, and the percentile bootstrap's coverage on a known
distribution."""

import numpy as np

from metapl.eval import bootstrap_interval, mean_interval, paired_difference, win_rate


def test_win_rate_by_hand():
    assert win_rate([1, 2, 3, 4], [0, 2, 5, 4]) == (1 + 0.5 + 0 + 0.5) / 4


def test_mean_interval_skips_missing_domains_by_hand():
    out = mean_interval([0.2, float("nan"), 0.4], resamples=500, seed=0)
    assert out["domains"] == 2 and abs(out["mean"] - 0.3) < 1e-12 and 0.2 <= out["ci95"][0] <= out["ci95"][1] <= 0.4


def test_the_95_percent_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials, covered = 300, 0
    for t in range(trials):  # 24 "domains" from an exponential distribution (skewed, mean 1)
        lo, hi = bootstrap_interval(rng.exponential(1.0, size=24), resamples=1000, seed=t)
        covered += lo <= 1.0 <= hi
    # the percentile bootstrap under-covers a little at n = 24 on a skewed law; far off means a broken interval
    assert 0.86 <= covered / trials <= 0.99, covered / trials


def test_paired_difference_by_hand():
    a = {"per_domain": [{"domain": "d0", "gold_adapted": 0.5, "gold_reference": 0.1},
                        {"domain": "d1", "gold_adapted": 0.2, "gold_reference": 0.0}]}
    b = {"per_domain": [{"domain": "d0", "gold_adapted": 0.3, "gold_reference": 0.1},
                        {"domain": "d1", "gold_adapted": 0.4, "gold_reference": 0.0}]}
    out = paired_difference(a, b, resamples=500)
    assert abs(out["mean"] - 0.0) < 1e-12 and out["a_better"] == 1 and out["domains"] == 2
