"""Training runs: a run directory, the loop, checkpoints, metrics, and resume.

A run directory holds `config.yaml` (the fully resolved config: every field, defaults included), `setup.json`
(what the algorithm set up), `metrics.jsonl` (one JSON object per logged step or evaluation), TensorBoard event
files under `tb/`, and orbax checkpoints under `checkpoints/` with the train state (params, optimiser state, RNG,
counters) and the data iterator's position, so `resume` continues exactly where the run stopped. On resume, what
a killed run wrote past its last checkpoint is set aside first (`rewind_run_files`), so every step is logged once.

The loop runs any `Setup` (`metapl.train.spec`): trainable and frozen params, an objective, a data iterator and
an evaluation function. Algorithms register with `metapl.train.spec.register`; `metapl.algorithms` holds them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

from metapl.config import ConfigError, apply_overrides, check_settings, read_mapping, save_config, to_dict
from metapl.train.checkpoints import NonFiniteState, checkpoint_manager, restore_checkpoint, save_checkpoint
from metapl.train.spec import RunConfig, Setup, algorithm, load_run_config, run_config_from_dict, upgrade_saved
from metapl.train.step import init_state, make_optimizer, make_train_step


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
    """metrics.jsonl plus TensorBoard scalars (when tensorboardX is installed). `purge_step`: TensorBoard hides the
    events an earlier writer logged at this step or later (a resumed run's steps past its checkpoint)."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)
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


SET_ASIDE = "discarded"  # where rewind_run_files moves what a killed run wrote past its checkpoint


def rewind_run_files(run_dir: Path, step: int) -> list[str]:
    """Bring a run directory's logs back to `step`, the step a resumed run continues after (0: from scratch, so
    its step-0 evaluation is logged again): metrics.jsonl rows past it, and test results (`*.json` + `.md` with a
    `checkpoint_step`) of checkpoints past it, are moved to `discarded/` (rows appended to
    `discarded/metrics.jsonl`). Returns what was moved, one phrase each."""
    moved, aside = [], run_dir / SET_ASIDE
    keep = (lambda row: row.get("step", 0) <= step) if step > 0 else (lambda row: False)
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept, dropped = [], []
        for line in lines:
            try:
                (kept if keep(json.loads(line)) else dropped).append(line)
            except json.JSONDecodeError:  # a row cut short by the kill
                dropped.append(line)
        if dropped:
            aside.mkdir(exist_ok=True)
            with open(aside / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write("\n".join(dropped) + "\n")
            log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            moved.append(f"{len(dropped)} metrics.jsonl row(s) past step {step}")
    for result in sorted(run_dir.glob("*.json")):
        try:
            tested = json.loads(result.read_text(encoding="utf-8")).get("checkpoint_step")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(tested, int) and tested > step:
            aside.mkdir(exist_ok=True)
            for path in (result, result.with_suffix(".md")):
                if path.exists():
                    path.replace(aside / path.name)
            moved.append(f"{result.name} (tested step {tested})")
    return moved


def read_run_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The config a run directory stored (upgraded if an earlier metapl wrote it), plus dotted overrides."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    data = upgrade_saved(read_mapping(saved))
    try:
        return run_config_from_dict(apply_overrides(data, list(overrides)))
    except ConfigError as e:
        raise ConfigError(f"{saved}: {e}") from None


def prepare_run_dir(run_dir: Path, config_file: str | None, overrides: list[str], resume: bool) -> RunConfig:
    """The run's config: from the file + overrides (new run), or the saved one (+ overrides) on resume. The
    directory's config.yaml is (re)written fully resolved."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: --run-dir names a file, not a directory")
    if resume:
        if not saved.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no config.yaml)")
        cfg = read_run_config(run_dir, overrides)
        before = to_dict(read_run_config(run_dir))
        changed = sorted(k for k, v in to_dict(cfg).items() if k not in ("steps", "mesh") and v != before[k])
        if changed:
            raise ConfigError(f"--resume may only change `steps` and `mesh`; these differ from the saved run: "
                              f"{changed}")
        save_config(cfg, saved)  # the run now goes to cfg.steps
        return cfg
    if saved.exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    cfg = load_run_config(config_file, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return cfg


def train(run_dir: str | Path, cfg: RunConfig, *, resume: bool = False, progress: bool = True,
          setup: Setup | None = None) -> dict:
    """Run (or resume) training; returns the final evaluation metrics. `setup`: what to train (default: the
    registered algorithm `cfg.algo` set up from `cfg`)."""
    run_dir = Path(run_dir)
    check_settings(cfg)  # a config built in Python; one read from a file or overrides was checked as it was read
    if setup is None:
        setup = algorithm(cfg.algo).setup(cfg)
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
    manager = checkpoint_manager(run_dir)
    if resume and manager.latest_step() is not None:
        state, data_state = restore_checkpoint(manager, manager.latest_step(), state)  # onto `state`'s shardings
        setup.batches.load_state_dict(data_state)
        _log(f"resumed from step {int(state.step)}")
    start = int(state.step)
    if resume:
        moved = rewind_run_files(run_dir, start)
        if moved:
            _log(f"set aside in {run_dir / SET_ASIDE}, written after the checkpoint the run resumes from: "
                 f"{'; '.join(moved)}")
    writer = MetricsWriter(run_dir, purge_step=start + 1 if resume else None)
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
            if "solver_breakdown" in metrics and float(metrics["solver_breakdown"]) > 0:
                _log(f"warning: step {step}: the implicit hypergradient's linear solve broke down (non-positive "
                     f"curvature or a growing residual) after {int(metrics.get('solver_iterations', -1))} "
                     "iterations; its meta-gradient is unreliable (raise meta.damping or meta.prox)")
            if int(state.nonfinite_run) >= cfg.optim.max_nonfinite_steps:
                raise RunError(f"{cfg.optim.max_nonfinite_steps} consecutive non-finite steps at step {step}; "
                               f"stopping ({_kept(manager)})")
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = jax.device_get(metrics)
                metrics["steps_per_s"] = (step - start) / (time.perf_counter() - t0)
                writer.write(step, metrics, "train")
                bar(step, metrics)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last = setup.evaluate(state.params, frozen)
                writer.write(step, last, "eval")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                try:
                    save_checkpoint(manager, step, state, setup.batches.state_dict())
                except NonFiniteState as e:
                    raise RunError(f"step {step}: {e}; stopping ({_kept(manager)})") from None
    finally:
        writer.close()
    if not last:
        last = setup.evaluate(state.params, frozen)
    return last


def _kept(manager) -> str:
    step = manager.latest_step()
    return "no checkpoint was written yet" if step is None else f"the last checkpoint, step {step}, is kept"


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


__all__ = ["MetricsWriter", "RunError", "prepare_run_dir", "read_metrics", "read_run_config", "rewind_run_files",
           "train"]
