"""Running a protocol: every method trained on the meta-train domains for every seed, tested on the held-out
domains with the same prompts and keys, then reported (`metapl.protocol.report`).

    cfg = load_protocol("experiments/configs/protocol_quickstart.yaml")
    report = run_protocol(cfg, Path("runs/quickstart"))

The output directory holds `protocol.yaml` (the resolved protocol), `configs/<method>_seed<S>.yaml` (each sub-run's
resolved config, written before it trains), `runs/<method>/seed<S>/` (the sub-runs; a method with a grid has
`runs/<method>/v<K>/seed<S>/` per variant), `results/` (each test's result, the tuning and the variant chosen,
cached) and the report (`report.{json,md}`, `per_domain.csv`, `plots/`). Re-running reuses
every finished sub-run and cached result and resumes an unfinished one from its last checkpoint; a sub-run whose
stored config differs from the protocol's is an error (choose another output directory), never silently mixed;
only the test's execution settings (`domains_per_batch`, `mesh`) may change between runs.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import yaml

from metapl.config import ConfigError, to_dict
from metapl.meta.evaluate import MetaTestConfig
from metapl.protocol.config import ProtocolConfig, protocol_mapping
from metapl.protocol.methods import Method, method
from metapl.runs import meta_test, policy_test, prepare_run_dir, read_run_config, train, tune_solver
from metapl.runtime import read_json, write_json
from metapl.train.checkpoints import checkpoint_manager
from metapl.train.spec import run_config_from_dict

# Rough cost of one training step relative to a Bradley–Terry step, for the ETA before a method has run once.
STEP_COST = {"meta": 8.0, "meta_onpolicy": 12.0, "rloo": 4.0, "ppo": 4.0, "tree_rm": 2.0}
TEST_COST = 40.0  # one held-out test, in the same units


@dataclasses.dataclass
class Stage:
    kind: str  # "train" | "tune" | "select" | "test"
    method: str
    seed: int | None
    weight: float
    seconds: float | None = None
    variant: int | None = None  # the grid variant a "train" stage trains


def ordered_methods(cfg: ProtocolConfig) -> list[str]:
    """The protocol's methods with every method after those whose runs it uses."""
    order: list[str] = []

    def visit(name):
        if name not in order:
            for needed in method(name).needs(cfg.feedback):
                visit(needed)
            order.append(name)

    for name in cfg.methods:
        visit(name)
    return order


def plan(cfg: ProtocolConfig) -> list[Stage]:
    """Every stage in order: per seed, each trained method's training (every variant of a method with a grid);
    then tuning (if a solver grid is given) and the choice of each grid's variant on the validation split; then
    per seed, each method's held-out test."""
    names = ordered_methods(cfg)
    stages = [Stage("train", n, s, cfg.steps(n, v) * STEP_COST.get(n, 1.0), variant=v)
              for s in cfg.seeds for n in names if method(n).algo for v in cfg.variants(n)]
    if cfg.solver_grid:
        stages += [Stage("tune", n, None, TEST_COST * len(cfg.solver_grid) * len(cfg.seeds))
                   for n in names if method(n).kind in ("reward", "oracle")]
    stages += [Stage("select", n, None, TEST_COST * len(cfg.methods[n].grid) * len(cfg.seeds))
               for n in names if cfg.methods[n].grid]
    stages += [Stage("test", n, s, TEST_COST) for s in cfg.seeds for n in names if method(n).kind != "reference"]
    return stages


class Progress:
    """One line per stage with the elapsed time and an ETA for the whole protocol (costs re-estimated from the
    stages already timed)."""

    def __init__(self, stages: list[Stage], enabled: bool):
        self.stages, self.enabled, self.t0 = stages, enabled, time.perf_counter()

    def eta(self) -> float | None:
        timed = [s for s in self.stages if s.seconds is not None and s.seconds > 1.0]
        if not timed:
            return None
        rate = sum(s.seconds for s in timed) / sum(s.weight for s in timed)
        return rate * sum(s.weight for s in self.stages if s.seconds is None)

    def say(self, i: int, message: str) -> None:
        if not self.enabled:
            return
        eta = self.eta()
        tail = f"elapsed {_clock(time.perf_counter() - self.t0)}" + (f", ETA {_clock(eta)}" if eta is not None else "")
        print(f"[metapl protocol] ({i + 1}/{len(self.stages)}) {message} · {tail}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def run_dir_of(out: Path, name: str, seed: int, variant: int | None = None) -> Path:
    return out / "runs" / name / ("" if variant is None else f"v{variant}") / f"seed{seed}"


def sub_run_mapping(cfg: ProtocolConfig, out: Path, name: str, seed: int, variant: int | None = None) -> dict:
    """The resolved sub-run mapping: the protocol's settings, one evaluation and one checkpoint at the end unless
    the settings say otherwise, and the seed's BT run as reward model where the method needs one (with `feedback:
    gold`, none: the run's own default, the gold judge)."""
    data = cfg.run_mapping(name, seed, variant)
    steps = data["steps"]
    data.setdefault("eval_every", steps)
    data.setdefault("checkpoint_every", steps)
    if method(name).bt_reward and cfg.feedback == "bt":
        data["reward"] = dict(data.get("reward") or {}, model=str(run_dir_of(out, "bt", seed)))
    if method(name).budget_of:  # as many labelled comparisons as that run's (from a few more prompts, spread
        # over the same domains, so that pairs of identical responses can be dropped and the budget still met)
        setup = read_json(run_dir_of(out, method(name).budget_of, seed) / "setup.json")
        if setup is None:
            raise ConfigError(f"the {name} runs label as many comparisons as the {method(name).budget_of} run of "
                              f"seed {seed}, which has not been set up yet")
        n = setup["comparisons"]
        data["comparison_budget"] = n
        data["data"] = dict(data.get("data") or {}, tree_prompts=n + n // 10 + setup["prompt_domains"])
    return data


def train_sub_run(cfg: ProtocolConfig, out: Path, name: str, seed: int, variant: int | None = None
                  ) -> tuple[Path, bool]:
    """(run directory, reused?): a finished sub-run is reused, an unfinished one resumed, a new one trained."""
    data = sub_run_mapping(cfg, out, name, seed, variant)
    wanted = run_config_from_dict(dict(data))
    config_file = out / "configs" / f"{name}{'' if variant is None else f'_v{variant}'}_seed{seed}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(to_dict(wanted), sort_keys=False))
    run_dir = run_dir_of(out, name, seed, variant)
    resume = (run_dir / "config.yaml").exists()
    if resume:
        stored = to_dict(read_run_config(run_dir))
        differ = sorted(k for k, v in to_dict(wanted).items() if stored.get(k) != v)
        if differ:
            raise ConfigError(f"{run_dir} was trained with other settings ({', '.join(differ)} differ from "
                              f"{config_file}); choose another output directory for a changed protocol")
        if checkpoint_manager(run_dir).latest_step() == wanted.steps:
            return run_dir, True
    run = prepare_run_dir(run_dir, None if resume else str(config_file), [], resume=resume)
    train(run_dir, run, resume=resume, progress=False)
    return run_dir, False


def tuned_setting(cfg: ProtocolConfig, out: Path, name: str) -> dict:
    """The validation-chosen solver setting of a reward method or the oracle (cached in results/tuning.json);
    {} without a solver grid (the test's settings, else the run's own `meta` section)."""
    if not cfg.solver_grid:
        return {}
    path = out / "results" / "tuning.json"
    done = read_json(path) or {}
    if name not in done:
        source = "bt" if method(name).kind == "oracle" else name
        trial = dataclasses.replace(cfg.test, reward="gold" if method(name).kind == "oracle" else "model")
        runs = [run_dir_of(out, source, s) for s in cfg.seeds]
        done[name] = tune_solver(runs, [dict(x) for x in cfg.solver_grid], trial, progress=False)
        write_json(path, done)
    return done[name]["best"]


def selected_variant(cfg: ProtocolConfig, out: Path, name: str) -> int | None:
    """The grid variant of policy method `name` with the best mean validation gold reward over the seeds (ties to
    the earlier), cached with every variant's per-seed validation gold in results/selection.json; None without a
    grid."""
    grid = cfg.methods[name].grid
    if not grid:
        return None
    path = out / "results" / "selection.json"
    done = read_json(path) or {}
    if name not in done:
        gold = [[policy_test(run_dir_of(out, name, s, v), "validation", cfg.test, write=False)["gold_adapted"]["mean"]
                 for s in cfg.seeds] for v in range(len(grid))]
        means = [sum(g) / len(g) for g in gold]
        best = max(range(len(grid)), key=lambda v: (means[v], -v))
        done[name] = {"validation_gold": gold, "means": means, "best": best, "setting": grid[best]}
        write_json(path, done)
    return done[name]["best"]


def held_out_result(cfg: ProtocolConfig, out: Path, m: Method, seed: int) -> dict:
    """The held-out result of method `m` and `seed` (cached in results/<method>_seed<S>.json); a method with a
    grid is tested with its chosen variant."""
    path = out / "results" / f"{m.name}_seed{seed}.json"
    cached = read_json(path)
    if cached is not None:
        return cached
    test: MetaTestConfig = cfg.test
    if m.kind == "policy":
        run = run_dir_of(out, m.name, seed, selected_variant(cfg, out, m.name))
        result = policy_test(run, "heldout", test, write=False, revisions=cfg.revisions)
    else:
        source = "bt" if m.kind == "oracle" else m.name
        trial = dataclasses.replace(test, reward="gold" if m.kind == "oracle" else "model",
                                    **tuned_setting(cfg, out, m.name))
        result = meta_test(run_dir_of(out, source, seed), "heldout", trial, write=False, progress=False)
    write_json(path, result)
    return result


EXECUTION_ONLY = ("domains_per_batch", "mesh")  # test settings that change how fast a test runs, never its numbers


def _numbers_part(mapping: dict) -> dict:
    """A resolved protocol without its execution-only test settings: resuming may change those (e.g. more domains
    per batch on a bigger machine), nothing else."""
    test = {k: v for k, v in (mapping.get("test") or {}).items() if k not in EXECUTION_ONLY}
    return {**mapping, "test": test}


def run_protocol(cfg: ProtocolConfig, out: str | Path, *, progress: bool = True, command: str = "") -> dict:
    """Train, tune and test every method of `cfg` under `out`, then write the report; returns it."""
    from metapl.protocol.report import build_report, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stored = out / "protocol.yaml"
    mapping = protocol_mapping(cfg)
    if stored.exists() and _numbers_part(yaml.safe_load(stored.read_text())) != \
            _numbers_part(yaml.safe_load(yaml.safe_dump(mapping))):
        raise ConfigError(f"{stored} holds another protocol; choose another output directory (or delete it)")
    stored.write_text(yaml.safe_dump(mapping, sort_keys=False))
    stages = plan(cfg)
    log = Progress(stages, progress)
    results: dict[str, dict[int, dict]] = {}
    timings: dict[str, dict[int, float]] = {}
    for i, stage in enumerate(stages):
        t0 = time.perf_counter()
        m = method(stage.method)
        if stage.kind == "train":
            v = stage.variant
            log.say(i, f"training {m.name}{'' if v is None else f' variant {v}'} (seed {stage.seed}, "
                    f"{cfg.steps(m.name, v)} steps)")
            _, reused = train_sub_run(cfg, out, m.name, stage.seed, v)
            seconds = _training_seconds(out, m.name, stage.seed, None if reused else time.perf_counter() - t0, v)
            timings.setdefault(m.name, {})[(stage.seed, v)] = seconds
            if reused:
                stage.weight = 0.0  # nothing left to do: not a measure of the method's cost
        elif stage.kind == "tune":
            log.say(i, f"tuning {m.name}'s solver on the validation split ({len(cfg.solver_grid)} settings)")
            tuned_setting(cfg, out, m.name)
        elif stage.kind == "select":
            log.say(i, f"choosing {m.name}'s variant on the validation split ({len(cfg.methods[m.name].grid)} "
                    "variants)")
            selected_variant(cfg, out, m.name)
        else:
            log.say(i, f"testing {m.name} (seed {stage.seed}) on the held-out domains")
            results.setdefault(m.name, {})[stage.seed] = held_out_result(cfg, out, m, stage.seed)
        stage.seconds = time.perf_counter() - t0
    if cfg.judge:
        if progress:
            print(f"[metapl protocol] asking the LLM judge {cfg.judge['model']} at {cfg.judge['base_url']}",
                  file=sys.stderr, flush=True)
        llm_judged(cfg, out, results)
    chosen = {n: selected_variant(cfg, out, n) for n in timings}
    timings = {n: {s: t for (s, v), t in by.items() if v == chosen[n]} for n, by in timings.items()}
    full = build_report(cfg, out, results, timings, command=command)
    write_report(full, out)
    if progress:
        print(f"[metapl protocol] done in {_clock(time.perf_counter() - log.t0)}: {out / 'report.md'}",
              file=sys.stderr, flush=True)
    return full


def llm_judged(cfg: ProtocolConfig, out: Path, results: dict[str, dict[int, dict]]) -> None:
    """Adds to every held-out row the LLM judge's win rate of the method's answers over the reference policy's
    ("llm_win_ref") and over the baseline method's ("llm_win_base"), on the same prompts (ties ½). Verdicts are
    cached in results/judge_cache, so a re-run asks only what is new."""
    from metapl.data.schemas import PromptExample
    from metapl.eval.http_judge import HttpJudge

    judge = HttpJudge(**{"cache_dir": str(out / "results" / "judge_cache"), "progress": True, **cfg.judge})
    for seed in cfg.seeds:
        base = {r["domain"]: r for r in results[cfg.baseline][seed]["per_domain"]}
        for name, by_seed in results.items():
            rows = by_seed[seed]["per_domain"]
            prompts = [PromptExample(p, r["domain"]) for r in rows for p in r["prompts"]]
            mine = [y for r in rows for y in r["responses_adapted"]]
            versus = {"llm_win_ref": [y for r in rows for y in r["responses_reference"]],
                      "llm_win_base": [y for r in rows for y in base[r["domain"]]["responses_adapted"]]}
            for key, theirs in versus.items():
                verdicts, start = judge.compare(prompts, mine, theirs), 0
                for r in rows:
                    n = len(r["prompts"])
                    r[key] = float(verdicts[start:start + n].mean())
                    start += n


def _training_seconds(out: Path, name: str, seed: int, spent: float | None, variant: int | None = None
                      ) -> float | None:
    """The wall-clock training seconds of a sub-run, summed over the invocations that trained it (kept in
    results/train_seconds.json); `spent`: this invocation's, None when the run was reused."""
    path = out / "results" / "train_seconds.json"
    done = read_json(path) or {}
    key = f"{name}{'' if variant is None else f'_v{variant}'}_seed{seed}"
    if spent is not None:
        done[key] = done.get(key, 0.0) + spent
        write_json(path, done)
    return done.get(key)


__all__ = ["Stage", "held_out_result", "llm_judged", "ordered_methods", "plan", "run_dir_of", "run_protocol",
           "selected_variant", "sub_run_mapping", "train_sub_run", "tuned_setting"]
