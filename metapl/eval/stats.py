"""Intervals over domains: percentile bootstrap of a mean, summaries of per-domain measures, paired differences."""

from __future__ import annotations

import numpy as np


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of the mean of `values` (resampled with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = np.asarray(values)[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def mean_interval(values, resamples: int, seed: int) -> dict:
    """{"mean", "ci95", "domains"} of the finite entries of `values` (a domain may lack a measure: NaN)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = bootstrap_interval(v, resamples, seed)
    return {"mean": float(v.mean()), "ci95": [lo, hi], "domains": int(len(v))}


def paired_difference(a: dict, b: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """Per-domain gold reward of the adapted policy, result `a` minus result `b` (two meta-tests of the same
    domains, prompts, reference samples and keys, e.g. two reward models): mean, bootstrap 95% interval and how
    many domains `a` wins. Raises if the two did not test the same domains from the same reference policy."""
    rows_a, rows_b = a["per_domain"], b["per_domain"]
    if [r["domain"] for r in rows_a] != [r["domain"] for r in rows_b] or \
            [r["gold_reference"] for r in rows_a] != [r["gold_reference"] for r in rows_b]:
        raise ValueError("paired_difference: the two meta-tests differ in domains or reference samples")
    d = np.asarray([x["gold_adapted"] - y["gold_adapted"] for x, y in zip(rows_a, rows_b)])
    lo, hi = bootstrap_interval(d, resamples, seed)
    return {"mean": float(d.mean()), "ci95": [lo, hi], "a_better": int((d > 0).sum()), "domains": len(d)}


__all__ = ["bootstrap_interval", "mean_interval", "paired_difference"]
