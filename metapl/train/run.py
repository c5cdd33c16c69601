"""Training runs: a config, a run directory, the loop, checkpoints, metrics, and resume.

A run directory holds `config.yaml` (the full resolved config), `metrics.jsonl` (one JSON object per logged
step or evaluation), TensorBoard event files under `tb/`, and orbax checkpoints under `checkpoints/` with the
train state (params, optimiser state, RNG, counters) and the data iterator's position, so `resume` continues
exactly where the run stopped.

Algorithms are registered in `metapl.train.algorithms`; each turns a `RunConfig` into the trainable params,
the frozen params, an objective, a data iterator and an evaluation function.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from metapl.config import ConfigError, from_dict, load_config, save_config, to_dict
from metapl.data.synthetic import SyntheticConfig
from metapl.parallel import MeshConfig
from metapl.train.step import OptimConfig, TrainState, init_state, make_optimizer, make_train_step


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The policy / reward backbone: a pretrained model (`pretrained`) or a small random one (the other sizes)."""

    pretrained: str | None = None
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 64
    lora_rank: int = 0  # 0: train all weights; > 0: train LoRA adapters only (the reference is the base)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "v")
    dtype: str = "float32"
    remat: str = "dots"  # what the backward keeps per layer: "dots", "full" or "none" (see ModelConfig.remat)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where pairs and prompts come from, and how they are cut into batches."""

    benchmark: str = "synthetic_domains"  # or "sentiment_domains" (built with `metapl data build`)
    data_dir: str | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    batch_size: int = 8
    max_prompt_tokens: int = 16
    max_response_tokens: int = 16
    eval_fraction: float = 0.25  # of each training domain's pairs, held out for evaluation
    eval_prompts: int = 64
    tree_prompts: int = 64  # tree-rm: prompts (over the training domains) to grow preference trees from
    tree: dict = dataclasses.field(default_factory=dict)  # tree-rm: metapl.data.trees.TreeConfig fields
    sample_prompts: int = 64  # offline methods: prompts (over the training domains) to sample from
    samples_per_prompt: int = 4  # offline methods: responses sampled per prompt from the reference policy


@dataclasses.dataclass(frozen=True)
class RunConfig:
    algo: str = "dpo"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    optim: OptimConfig = OptimConfig(learning_rate=1e-3)
    loss: dict = dataclasses.field(default_factory=dict)  # keyword arguments of the algorithm's objective
    precompute_reference: bool = False  # dpo/ipo: reference log-probs of every training pair computed once
    offline: dict = dataclasses.field(default_factory=dict)  # mle-filter/rwr/dt options (see algorithms.py)
    ppo: dict = dataclasses.field(default_factory=dict)  # ppo rollout options (see algorithms.PPO_DEFAULTS)
    meta: dict = dataclasses.field(default_factory=dict)  # meta: MetaConfig, EpisodeConfig and sample options
    mesh: MeshConfig = MeshConfig()  # devices: data x fsdp x tensor (all 1: one device)
    steps: int = 200
    accumulation_steps: int = 1
    log_every: int = 10
    eval_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0


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


class RunError(RuntimeError):
    """The run cannot go on (non-finite losses, a run directory that does not match the config)."""


def _log(msg: str) -> None:
    print(f"[metapl train] {msg}", file=sys.stderr, flush=True)


def _jsonable(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        v = float(np.asarray(v))
        out[k] = v if math.isfinite(v) else str(v)
    return out


class MetricsWriter:
    """metrics.jsonl plus TensorBoard scalars (when tensorboardX is installed)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self.tb = None

    def write(self, step: int, metrics: dict, prefix: str) -> None:
        values = _jsonable(metrics)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "kind": prefix, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _checkpointer(run_dir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(run_dir.resolve() / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2))


def _save(manager, step: int, state: TrainState, data_state: dict) -> None:
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data_state)), force=True)
    manager.wait_until_finished()


def _restore(manager, step: int, like: TrainState) -> tuple[TrainState, dict]:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        data=ocp.args.JsonRestore()))
    return TrainState(*out["state"]), out["data"]


def prepare_run_dir(run_dir: Path, config_file: str | None, overrides: list[str], resume: bool) -> RunConfig:
    """The run's config: from the file + overrides (new run), or the saved one (+ overrides) on resume."""
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no config.yaml)")
        cfg = load_config(RunConfig, saved, overrides)
        before = to_dict(load_config(RunConfig, saved))
        changed = sorted(k for k, v in to_dict(cfg).items() if k not in ("steps", "mesh") and v != before[k])
        if changed:
            raise ConfigError(f"--resume may only change `steps` and `mesh`; these differ from the saved run: "
                              f"{changed}")
        save_config(cfg, saved)  # the run now goes to cfg.steps
        return cfg
    if saved.exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    cfg = load_config(RunConfig, config_file, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return cfg


def train(run_dir: str | Path, cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) training; returns the final evaluation metrics."""
    from metapl.train.algorithms import setup_algorithm

    run_dir = Path(run_dir)
    setup = setup_algorithm(cfg)
    _log(f"{cfg.algo}: {setup.describe}")
    (run_dir / "setup.json").write_text(json.dumps({"describe": setup.describe, **setup.info}, indent=1))
    optimizer = make_optimizer(cfg.optim)
    state = init_state(setup.trainable, optimizer, jax.random.PRNGKey(cfg.seed))
    step_fn = make_train_step(setup.objective, optimizer, accumulation_steps=cfg.accumulation_steps,
                              jit=not cfg.mesh.sharded)
    frozen, sharded = setup.frozen, cfg.mesh.sharded
    if sharded:
        from metapl.parallel import make_mesh, shard_step

        step_fn, state, frozen = shard_step(step_fn, state, frozen, make_mesh(cfg.mesh))
        _log(f"mesh: {cfg.mesh} ({cfg.mesh.size} of {jax.device_count()} devices)")
    manager = _checkpointer(run_dir)
    if resume and manager.latest_step() is not None:
        state, data_state = _restore(manager, manager.latest_step(), state)  # onto `state`'s shardings
        setup.batches.load_state_dict(data_state)
        _log(f"resumed from step {int(state.step)}")
    writer = MetricsWriter(run_dir)
    start = int(state.step)
    if start == 0:
        writer.write(0, setup.evaluate(state.params, frozen), "eval")
    bar = _progress(cfg.steps, start, progress)
    t0, last = time.perf_counter(), {}
    try:
        for step in range(start + 1, cfg.steps + 1):
            if hasattr(setup.batches, "set_params"):  # on-policy data is sampled from the current params
                setup.batches.set_params(state.params)
            state, metrics = step_fn(state, frozen, next(setup.batches))
            if sharded:  # queued steps with collectives can deadlock simulated CPU devices
                jax.block_until_ready(state)
            if int(state.nonfinite_run) >= cfg.optim.max_nonfinite_steps:
                raise RunError(f"{cfg.optim.max_nonfinite_steps} consecutive non-finite steps at step {step}; "
                               f"stopping (the last checkpoint, step {manager.latest_step()}, is kept)")
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = jax.device_get(metrics)
                metrics["steps_per_s"] = (step - start) / (time.perf_counter() - t0)
                writer.write(step, metrics, "train")
                bar(step, metrics)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last = setup.evaluate(state.params, frozen)
                writer.write(step, last, "eval")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save(manager, step, state, setup.batches.state_dict())
    finally:
        writer.close()
    if not last:
        last = setup.evaluate(state.params, frozen)
    return last


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return lambda step, metrics: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, file=sys.stderr, dynamic_ncols=True, desc="train")

    def update(step, metrics):
        bar.n = step
        bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", refresh=True)

    return update


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The rows of a run's metrics.jsonl (optionally only "train" or "eval")."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if kind is None or r["kind"] == kind]


__all__ = ["DataSpec", "ModelSpec", "RunConfig", "RunError", "Setup", "from_dict", "prepare_run_dir",
           "read_metrics", "train"]
