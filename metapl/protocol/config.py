"""The protocol's config: which methods, on what benchmark and model, with which seeds and test settings.

    name: quickstart
    seeds: [0]
    run:                        # every sub-run's settings (a run-config mapping: model, data, optim, ...)
      data: {benchmark: mechanism_domains, mechanisms: {attributes: 2}}
      model: {hidden_size: 32, num_layers: 2}
    methods:                    # in order; each may set its training steps and its own run settings
      bt: {steps: 150}
      meta: {run: {meta: {inner_steps: 4}}}
      dpo: {grid: [{steps: 100}, {steps: 300, run: {optim: {learning_rate: 3.0e-3}}}]}   # policy methods only
      gold: {}
    baseline: bt                # head-to-head win rates against this method
    feedback: bt                # what rewards rloo, ppo and the offline methods: bt (the seed's BT RM) or gold
    test: {prompts: 16, eval_prompts: 32}   # metapl.meta.evaluate.MetaTestConfig fields
    solver_grid: []             # optional: meta-test settings tuned per reward model on the validation split
    revisions: 0                # optional: policies revise their answers n times in context (SRPO's inference)
    judge: {base_url: http://127.0.0.1:8000/v1, model: NAME}   # optional: LLM win rates (metapl.eval.HttpJudge)

A sub-run's settings are the protocol's `run`, then the method's defaults (`metapl.protocol.methods`), then the
method's own `run`, then (for a method with a `grid`) the variant's `run`, then algo, steps and seed; the resolved
config of each sub-run is written before it trains. A policy method's `grid` lists variants of its settings: each
is trained for every seed, tested on the validation split (meta-train domains, prompts no run trains on), and the
one with the best mean validation gold reward over the seeds (ties to the earlier) is the one tested held out.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from metapl.config import ConfigError, from_dict, number, read_mapping, to_dict
from metapl.eval.http_judge import HttpJudge
from metapl.meta.evaluate import MetaTestConfig
from metapl.protocol.methods import method

SOLVER_KEYS = ("steps", "lr", "beta", "prox")
FEEDBACK = ("bt", "gold")


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """steps: training steps (None: the method's default); run: the method's own run settings (a mapping); grid:
    variants ({steps, run} each, over the method's own) chosen between on the validation split (policy methods)."""

    steps: int | None = number(None, ge=1)
    run: dict = dataclasses.field(default_factory=dict)
    grid: tuple[dict, ...] = ()


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    name: str = "protocol"
    seeds: tuple[int, ...] = number((0,), ge=0)
    run: dict = dataclasses.field(default_factory=dict)
    methods: dict = dataclasses.field(default_factory=lambda: {"bt": MethodSettings(), "gold": MethodSettings()})
    baseline: str = "bt"
    feedback: str = "bt"
    test: MetaTestConfig = MetaTestConfig()
    solver_grid: tuple[dict, ...] = ()
    revisions: int = number(0, ge=0)  # policies also revise their answers this many times in context (SRPO's inference)
    judge: dict = dataclasses.field(default_factory=dict)  # an LLM judge over HTTP (`metapl.eval.HttpJudge` fields)

    def __post_init__(self):
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.judge:
            missing = [k for k in ("base_url", "model") if k not in self.judge]
            if missing:
                raise ConfigError(f"judge: give {' and '.join(missing)} (an OpenAI-compatible API and its model)")
            try:
                HttpJudge(**self.judge)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"judge: {e}") from None
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {list(self.seeds)} repeats a seed")
        for key in ("algo", "steps", "seed"):
            if key in self.run:
                raise ConfigError(f"run.{key}: the protocol sets it for each sub-run")
        if self.feedback not in FEEDBACK:
            raise ConfigError(f"feedback: {self.feedback!r}; use bt (the seed's BT reward model rewards the methods "
                              "that need a reward) or gold (the benchmark's gold judge does)")
        names = list(self.methods)
        for name in names:
            for needed in method(name).needs(self.feedback):
                if needed not in self.methods:
                    raise ConfigError(f"methods.{name} uses the {needed!r} runs: add {needed} to methods")
        if self.baseline not in self.methods:
            raise ConfigError(f"baseline: {self.baseline!r} is not one of the methods ({', '.join(names)})")
        if method(self.baseline).kind == "reference":
            raise ConfigError("baseline: every method is already compared with the reference policy (gain, win rate "
                              "vs reference); choose a method that is tested, e.g. bt")
        for name, settings in self.methods.items():
            if settings.grid and method(name).kind != "policy":
                raise ConfigError(f"methods.{name}.grid: only policy methods choose between variants on the "
                                  "validation split (a reward model's solver is tuned by solver_grid)")
            for i, variant in enumerate(settings.grid):
                if not isinstance(variant, dict) or set(variant) - {"steps", "run"} or not variant:
                    raise ConfigError(f"methods.{name}.grid[{i}]: expected a mapping with steps and/or run, got "
                                      f"{variant!r}")
                steps = variant.get("steps")
                if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
                    raise ConfigError(f"methods.{name}.grid[{i}].steps: expected an integer >= 1, got {steps!r}")
                if not isinstance(variant.get("run", {}), dict):
                    raise ConfigError(f"methods.{name}.grid[{i}].run: expected a mapping")
        for i, setting in enumerate(self.solver_grid):
            unknown = sorted(set(setting) - set(SOLVER_KEYS))
            if unknown:
                raise ConfigError(f"solver_grid[{i}]: unknown solver setting(s) {unknown}; use {list(SOLVER_KEYS)}")

    def variants(self, name: str) -> list[int | None]:
        """The variants of method `name` to train: indices into its grid, or [None] without one."""
        return list(range(len(self.methods[name].grid))) or [None]

    def steps(self, name: str, variant: int | None = None) -> int:
        grid = self.methods[name].grid
        given = grid[variant].get("steps") if variant is not None else None
        return given or self.methods[name].steps or method(name).steps

    def run_mapping(self, name: str, seed: int, variant: int | None = None) -> dict:
        """The sub-run config mapping of method `name`, `seed` and grid `variant` (before the reward model's path
        is added)."""
        m = method(name)
        data = _merged(_merged(copy.deepcopy(self.run), m.run), self.methods[name].run)
        if variant is not None:
            data = _merged(data, self.methods[name].grid[variant].get("run", {}))
        return dict(data, algo=m.algo, steps=self.steps(name, variant), seed=seed)


def _merged(base: dict, extra: dict) -> dict:
    """`extra` deep-merged over `base` (nested mappings merged key by key, anything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def protocol_from_mapping(data: dict, where: str = "") -> ProtocolConfig:
    """A ProtocolConfig from its mapping; errors name the file (`where`) and the key."""
    prefix = f"{where}: " if where else ""
    data = dict(data)
    methods = data.pop("methods", None)
    try:
        if methods is not None:
            if not isinstance(methods, dict) or not methods:
                raise ConfigError("methods: expected a mapping of method names to their settings ({} for none)")
            for name in methods:
                method(name)
            data["methods"] = {name: from_dict(MethodSettings, value or {}, prefix=f"methods.{name}.")
                               for name, value in methods.items()}
        cfg = from_dict(ProtocolConfig, data)
        _check_sub_runs(cfg)
        return cfg
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def _check_sub_runs(cfg: ProtocolConfig) -> None:
    """Every sub-run's config parses (names, types, ranges), so a bad setting stops the protocol before it starts;
    the error names the method whose run it breaks."""
    from metapl.train.spec import run_config_from_dict

    for name in cfg.methods:
        if method(name).algo:
            for variant in cfg.variants(name):
                try:
                    run_config_from_dict(cfg.run_mapping(name, cfg.seeds[0], variant))
                except ConfigError as e:
                    where = "" if variant is None else f" (grid[{variant}])"
                    raise ConfigError(f"the {name} runs{where}: {e}") from None


def load_protocol(path: str | Path | None, overrides: list[str] = ()) -> ProtocolConfig:
    """The protocol of a YAML file (optional) with dotted overrides (`methods.bt.steps=50`)."""
    return protocol_from_mapping(read_mapping(path, overrides), str(path) if path else "")


def protocol_mapping(cfg: ProtocolConfig) -> dict:
    """The plain mapping of a ProtocolConfig (what `protocol.yaml` in the output directory holds)."""
    return to_dict(cfg)


__all__ = ["MethodSettings", "ProtocolConfig", "load_protocol", "protocol_from_mapping", "protocol_mapping"]
