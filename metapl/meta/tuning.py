"""Choosing the meta-test solver's settings (β, steps, learning rate) for a reward model without seeing a held-out
domain: every setting of a grid is meta-tested on the *validation* split (the meta-train domains, on prompts no
training run reads), averaged over the runs given (e.g. the seeds of one method), and the best mean gold reward of
the adapted policy wins; ties go to the earlier (cheaper) setting of the grid.

    choice = tune_solver(["runs/bt/seed0", "runs/bt/seed1"], [{"beta": 0.25}, {"beta": 0.5}])
    choice["best"]          # {"beta": ...}; choice["table"]: every setting's per-run and mean criterion

The held-out split is refused here, so no tuning path can read it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

from metapl.config import ConfigError
from metapl.meta.evaluate import MetaTestConfig, meta_test

TUNING_SPLIT = "validation"
SOLVER_KNOBS = ("steps", "lr", "beta", "prox")


def check_tuning_split(split: str) -> None:
    """Refuse any split but the validation one (the held-out domains are never read by tuning)."""
    if split != TUNING_SPLIT:
        raise ConfigError(f"tuning reads only the {TUNING_SPLIT!r} split (meta-train domains, unseen prompts); "
                          f"got {split!r}" + (": the held-out domains are for the final measurement alone"
                                              if split == "heldout" else ""))


def tune_solver(run_dirs: Sequence[str | Path], grid: Sequence[dict], test: MetaTestConfig = MetaTestConfig(), *,
                split: str = TUNING_SPLIT, evaluate: Callable[..., dict] = meta_test, progress: bool = True) -> dict:
    """{"best": the chosen setting, "criterion": its mean, "table": [{"setting", "per_run", "mean"}]}.

    grid: solver overrides ({"beta": 0.5, "steps": 4, ...}, keys of SOLVER_KNOBS) in order of preference on ties;
    test: the other meta-test settings (prompts, samples, reward "model" or "gold"); evaluate: `meta_test` or a
    function with its signature (run_dir, split, test, write=, progress=, pair_accuracies=) -> a result with
    "gold_adapted". Each run's reward-model pair accuracies are computed at its first setting and reused."""
    check_tuning_split(split)
    if not run_dirs or not grid:
        raise ConfigError("tune_solver needs at least one run and one setting")
    for setting in grid:
        unknown = set(setting) - set(SOLVER_KNOBS)
        if unknown:
            raise ConfigError(f"tune_solver: unknown solver setting(s) {sorted(unknown)} (known: {SOLVER_KNOBS})")
    table, accuracies = [], {}  # keyed by run, checkpoint step and domain, so one dict serves every run
    for i, setting in enumerate(grid):
        trial = dataclasses.replace(test, **setting)
        per_run = [evaluate(run, split, trial, write=False, progress=False,
                            pair_accuracies=accuracies)["gold_adapted"]["mean"] for run in run_dirs]
        table.append({"setting": dict(setting), "per_run": per_run, "mean": sum(per_run) / len(per_run)})
        if progress:
            print(f"[metapl tune] {i + 1}/{len(grid)} {setting}: validation gold {table[-1]['mean']:+.4f}",
                  file=sys.stderr, flush=True)
    return {"split": split, **best_setting(table), "table": table, "runs": [str(r) for r in run_dirs],
            "test": dataclasses.asdict(test)}


def best_setting(table: Sequence[dict]) -> dict:
    """{"best": setting, "criterion": its mean} of a tuning table ([{"setting", "mean", ...}] in order of
    preference): the highest mean, ties to the earlier row."""
    best = max(range(len(table)), key=lambda i: (table[i]["mean"], -i))
    return {"best": table[best]["setting"], "criterion": table[best]["mean"]}


__all__ = ["SOLVER_KNOBS", "TUNING_SPLIT", "best_setting", "check_tuning_split", "tune_solver"]
