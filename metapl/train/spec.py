"""What a run is: its configuration types, what an algorithm hands the training loop, and the algorithm registry.

A run's configuration is a `RunConfig` subclass chosen by its `algo`: the common fields (model, data, optimiser,
mesh, steps, seed, ...) plus the algorithm's own typed sections (e.g. `loss: DPOLoss`, `meta: MetaOptions`).
Each algorithm registers itself with `register(Algorithm(...))`, naming its config class and its set-up
function; `metapl.algorithms` imports every family, so importing it fills the registry.

    cfg = load_run_config("experiments/configs/dpo_synthetic.yaml", ["loss.beta=0.3"])
    setup = algorithm(cfg.algo).setup(cfg)

The config a run directory stores is `to_dict(cfg)`: every field, defaults included, so a run is read back
exactly as it ran (`read_run_config`), whatever later versions choose as defaults.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from metapl.config import ConfigError, from_dict, number, read_mapping
from metapl.data.benchmarks import Benchmark, DataSpec, load_benchmark
from metapl.keys import stream_key
from metapl.models.config import ModelConfig
from metapl.models.spec import ModelSpec, build_model
from metapl.parallel import MeshConfig
from metapl.train.step import OptimConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The fields every run has; an algorithm's config subclasses it with its own sections."""

    algo: str = "dpo"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    optim: OptimConfig = OptimConfig(learning_rate=1e-3)
    mesh: MeshConfig = MeshConfig()  # devices: data x fsdp x tensor (all 1: one device)
    steps: int = number(200, ge=1)
    accumulation_steps: int = number(1, ge=1)
    log_every: int = number(10, ge=1)
    eval_every: int = number(50, ge=1)
    checkpoint_every: int = number(50, ge=1)
    seed: int = number(0, ge=0)


def build_model_and_benchmark(cfg: RunConfig, reward_tokens: tuple[str, ...] = ()
                              ) -> tuple[ModelConfig, Any, Benchmark]:
    """(model config, params, benchmark) of a run. A pretrained model brings its tokenizer to the benchmark; a
    random one is sized to the benchmark's vocabulary, after `reward_tokens` (control tokens of reward-conditioned
    SFT) are added to it."""
    if cfg.model.pretrained:
        config, params, tokenizer = build_model(cfg.model, None, stream_key(cfg.seed, "model_init"))
        return config, params, load_benchmark(cfg.data, tokenizer)
    bench = load_benchmark(cfg.data)
    if reward_tokens:
        bench = bench.with_reward_tokens(reward_tokens)
    config, params, _ = build_model(cfg.model, bench.vocab_size, stream_key(cfg.seed, "model_init"))
    return config, params, bench


@dataclasses.dataclass
class Setup:
    """What an algorithm provides to the loop."""

    trainable: Any
    frozen: Any
    objective: Callable  # (trainable, frozen, batch) -> (loss, metrics)
    batches: Any  # iterator of dict batches with state_dict() / load_state_dict()
    evaluate: Callable[[Any, Any], dict]  # (trainable, frozen) -> metrics
    describe: str = ""
    info: dict = dataclasses.field(default_factory=dict)  # facts about the data, written to setup.json


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A registered algorithm.

    name: what `metapl train NAME` and `algo:` call it; config: its RunConfig subclass; setup: RunConfig -> Setup;
    section_defaults: optional, (the raw config mapping) -> {section: defaults that depend on the rest of the
    config}, merged under what the user wrote before the section is parsed (so the stored config holds them).
    """

    name: str
    config: type
    setup: Callable[[Any], Setup]
    summary: str = ""
    section_defaults: Callable[[dict], dict[str, dict]] | None = None


_REGISTRY: dict[str, Algorithm] = {}


def register(entry: Algorithm) -> Algorithm:
    """Add `entry` to the registry (names are unique)."""
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise ValueError(f"algorithm {entry.name!r} is registered twice")
    if not (dataclasses.is_dataclass(entry.config) and issubclass(entry.config, RunConfig)):
        raise TypeError(f"{entry.name}: config must be a RunConfig dataclass, got {entry.config!r}")
    _REGISTRY[entry.name] = entry
    return entry


def algorithm_names() -> list[str]:
    return sorted(_REGISTRY)


def algorithm(name: str) -> Algorithm:
    """The registered algorithm `name` (ConfigError naming the available ones otherwise)."""
    if name not in _REGISTRY:
        available = ", ".join(algorithm_names()) or "none registered (import metapl.algorithms)"
        raise ConfigError(f"algo: unknown algorithm {name!r}; available: {available}")
    return _REGISTRY[name]


def run_config_from_dict(data: dict) -> RunConfig:
    """The typed config of `data` (a nested mapping), its class chosen by `data["algo"]`."""
    algo = data.get("algo", RunConfig.algo)
    if not isinstance(algo, str):
        raise ConfigError(f"algo: expected a string, got {algo!r}")
    entry = algorithm(algo)
    if entry.section_defaults is not None:
        data = dict(data)
        for section, defaults in entry.section_defaults(data).items():
            given = data.get(section) or {}
            if not isinstance(given, dict):
                raise ConfigError(f"{section}: expected a mapping of {section} options, got {given!r}")
            data[section] = {**defaults, **given}
    return from_dict(entry.config, data)


def load_run_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """A run config from a YAML file (optional) plus dotted overrides; errors name the file and the key."""
    data = read_mapping(path, overrides)
    try:
        return run_config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


# Sections a config.yaml of metapl before typed algorithm configs held for every algorithm, empty when unused.
_LEGACY_SECTIONS = ("loss", "offline", "ppo", "meta", "precompute_reference")


def upgrade_saved(data: dict) -> dict:
    """A stored config mapping in today's layout. Configs written before algorithms had typed sections held every
    section (`loss`, `offline`, `ppo`, `meta`: {} when unused; `precompute_reference`: false) and the tree-rm
    options under `data.tree`; the unused empty ones are dropped, `data.tree` becomes `tree`. A non-empty
    section the algorithm does not take stays, and is then refused with its name. A `model` section without
    `shared_prefix` predates that option and gets false, the layout the run was trained with."""
    data = dict(data)
    try:
        fields = {f.name for f in dataclasses.fields(algorithm(data.get("algo", RunConfig.algo)).config)}
    except ConfigError:
        return data  # the unknown algorithm is reported when the config is parsed
    for key in _LEGACY_SECTIONS:
        if key in data and key not in fields and data[key] in ({}, False, None):
            del data[key]
    if isinstance(data.get("model"), dict) and "shared_prefix" not in data["model"]:
        # written before the shared-prefix layout existed: the run scored one row per sequence; keep it so
        data["model"] = {**data["model"], "shared_prefix": False}
    if isinstance(data.get("data"), dict) and "tree" in data["data"]:
        data["data"] = dict(data["data"])
        tree = data["data"].pop("tree")
        if tree or "tree" in fields:
            data["tree"] = {**(tree or {}), **(data.get("tree") or {})}
    return data


__all__ = ["Algorithm", "DataSpec", "ModelSpec", "RunConfig", "Setup", "algorithm", "algorithm_names",
           "build_model_and_benchmark",
           "load_run_config", "register", "run_config_from_dict", "upgrade_saved"]
