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
    if not len(v):  # no domain has the measure (e.g. a policy run has no reward model to score pairs)
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "domains": 0}
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


def win_rate(a, b) -> float:
    """The fraction of paired scores where a beats b, ties counting ½ (a, b [n])."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.mean((a > b) + 0.5 * (a == b)))


def _finite_rows(values) -> list[np.ndarray]:
    rows = [np.asarray(r, dtype=float) for r in values]
    rows = [r[np.isfinite(r)] for r in rows]
    if not rows or any(not len(r) for r in rows):
        raise ValueError("two_level_interval: every row needs at least one finite value")
    return rows


def two_level_means(values, resamples: int = 5000, seed: int = 0) -> np.ndarray:
    """[resamples] bootstrap means of values [S, D] (e.g. seeds x domains): the S rows resampled with replacement
    and, within each drawn row, its entries with replacement (NaN entries dropped per row)."""
    return _resampled_means(_finite_rows(values), resamples, seed)


def _resampled_means(rows: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(0, len(rows), size=len(rows))
        means[i] = np.mean([rows[j][rng.integers(0, len(rows[j]), size=len(rows[j]))].mean() for j in picked])
    return means


def two_level_interval(values, resamples: int = 5000, seed: int = 0) -> dict:
    """values [S, D] (e.g. seeds x domains): the mean and the 95% percentile interval of `two_level_means`.
    {"mean", "ci95", "seeds", "domains"}."""
    rows = _finite_rows(values)
    lo, hi = np.percentile(_resampled_means(rows, resamples, seed), [2.5, 97.5])
    return {"mean": float(np.mean([r.mean() for r in rows])), "ci95": [float(lo), float(hi)], "seeds": len(rows),
            "domains": int(len(rows[0]))}


__all__ = ["bootstrap_interval", "mean_interval", "paired_difference", "two_level_interval", "two_level_means",
           "win_rate"]
