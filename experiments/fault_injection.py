"""Fault injection: kill training runs at many points, resume them, and compare with runs that were never killed.

    python experiments/fault_injection.py                 # rm, dpo, rloo and meta; 6 kill points each
    python experiments/fault_injection.py --algo dpo --kills 3 --seed 1

For each algorithm, on a tiny synthetic config, one uninterrupted run is the reference. Then each kill point is a
fresh run that a SIGKILL stops, resumed (`--resume`, as many times as it takes) to the same final step:
  - `time`: the parent kills the child a random 0-0.3 s after it logged a random step (0: the first evaluation),
    wherever that lands: a step, an evaluation, a checkpoint write, a log write;
  - `checkpoint`: the child kills itself in the middle of writing the checkpoint of a random step;
  - `row`: the child kills itself after a random step's metrics row is written, before its checkpoint;
  - `half-row`: the child kills itself half-way through writing a random step's metrics row.
A kill point survives when the resumed run's final parameters, optimiser state and data position equal the
reference's (max |difference| is reported; 0.0 expected) and its metrics.jsonl holds exactly the reference's rows
(every step once, same values, `steps_per_s` aside).

Non-finite values: a NaN in one batch and a NaN in one gradient (the loss stays finite) must each be skipped and
counted by the guard, every checkpoint must stay finite, and the run must finish; a NaN setting
(`optim.learning_rate=nan`) must be refused with exit status 2 before a run directory exists.

Prints a table (scenario, tries, survived, max difference, rows lost or duplicated), writes it to
experiments/results/fault_injection.{json,md}, and exits 1 if any scenario failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
TINY = ["model.hidden_size=16", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
        "model.intermediate_size=32", "data.synthetic.num_domains=30", "data.synthetic.num_heldout=20",
        "data.synthetic.pairs_per_domain=16", "data.eval_prompts=8", "log_every=1", "eval_every=4",
        "optim.learning_rate=0.003"]
ALGOS = {
    "rm": ["data.batch_size=8"],
    "dpo": ["data.batch_size=8"],
    "rloo": ["data.batch_size=2", "data.sample_prompts=8", "data.max_response_tokens=8", "loss.k=2"],
    "meta": ["meta.inner_steps=2", "meta.domains_per_episode=2", "meta.support_prompts=2", "meta.query_pairs=2",
             "meta.support_pool=4", "meta.samples_per_prompt=2", "data.max_response_tokens=8"],
}
STEPS, CHECKPOINT_EVERY = 10, 3
KINDS = ("time", "checkpoint", "row", "half-row")


# ------------------------------------------------------------------------------------------------ the child

def child(args: argparse.Namespace) -> int:
    """One training process (a fresh run, or a resumed one) with the requested fault armed."""
    import jax.numpy as jnp

    import metapl.train.run as run_module
    from metapl.runs import prepare_run_dir, train
    from metapl.runtime import enable_compile_cache

    enable_compile_cache()
    run_dir = Path(args.run_dir)
    overrides = [f"algo={args.algo}", f"steps={STEPS}", f"checkpoint_every={CHECKPOINT_EVERY}", *TINY,
                 *ALGOS[args.algo]]
    cfg = prepare_run_dir(run_dir, None, [] if args.resume else overrides, args.resume)
    fault, at = args.fault, args.at

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if fault == "checkpoint":
        real_save = run_module.save_checkpoint

        def save(manager, step, state, data_state):
            if step == at:  # the library's own save, killed while its asynchronous write is under way
                manager.wait_until_finished = lambda: (time.sleep(random.Random(at).uniform(0.0, 0.01)), die())
            return real_save(manager, step, state, data_state)

        run_module.save_checkpoint = save
    if fault in ("row", "half-row"):
        real_write = run_module.MetricsWriter.write

        def write(self, step, metrics, prefix):
            if step == at and prefix == "train":
                if fault == "half-row":
                    line = json.dumps({"step": step, "kind": prefix, **run_module._jsonable(metrics)})
                    with open(self.path, "a", encoding="utf-8") as f:
                        f.write(line[: len(line) // 2])
                    die()
                real_write(self, step, metrics, prefix)
                die()
            return real_write(self, step, metrics, prefix)

        run_module.MetricsWriter.write = write
    setup = None
    if fault in ("nan-batch", "nan-grad"):
        import jax

        from metapl.train.spec import algorithm

        setup = algorithm(cfg.algo).setup(cfg)
        batches, objective = setup.batches, setup.objective

        class Faulty:  # the at-th batch gets the fault flag; the others carry a zero flag (one compiled step)
            def __init__(self):
                self.n = 0

            def __next__(self):
                self.n += 1
                batch = next(batches)
                return dict(batch, _fault=jnp.float32(float("nan") if self.n == at else 0.0))

            def __getattr__(self, name):
                return getattr(batches, name)

        @jax.custom_vjp
        def poison(x, flag):  # identity forward; its backward multiplies the gradient by the flag's NaN
            return x

        poison.defvjp(lambda x, flag: (x, flag),
                      lambda flag, g: (g * jnp.where(jnp.isnan(flag), jnp.nan, 1.0), jnp.zeros_like(flag)))

        def faulty_objective(trainable, frozen, batch):
            batch = dict(batch)
            flag = batch.pop("_fault")
            if fault == "nan-batch":  # every float array of the batch becomes NaN (the flag's NaN spreads)
                is_float = lambda v: jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)  # noqa: E731
                batch = jax.tree.map(lambda v: v + flag if is_float(v) else v, batch)
                if not any(is_float(v) for v in jax.tree.leaves(batch)):
                    # token ids only: the NaN enters through the embeddings they look up
                    trainable = jax.tree.map(lambda x: x + flag, trainable)
            else:
                trainable = jax.tree.map(lambda x: poison(x, flag), trainable)
            return objective(trainable, frozen, batch)

        setup.batches, setup.objective = Faulty(), faulty_objective
    train(run_dir, cfg, resume=args.resume, progress=False, setup=setup)
    return 0


# ----------------------------------------------------------------------------------------------- the parent

def _logged_step(run_dir: Path) -> int:
    """The last step with a complete row in the run's metrics.jsonl (-1 if none)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, ValueError):
            continue
    return -1


def spawn(run_dir: Path, algo: str, fault: str = "none", at: int = 0, resume: bool = False,
          kill_after_step: tuple[int, float] | None = None) -> int:
    """The exit code of one child process. `kill_after_step` (step, delay): SIGKILL it `delay` seconds after the
    run has logged `step`."""
    cmd = [sys.executable, __file__, "--child", str(run_dir), "--algo", algo, "--fault", fault, "--at", str(at)]
    if resume:
        cmd.append("--resume")
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        if kill_after_step is not None:
            step, delay = kill_after_step
            while proc.poll() is None and _logged_step(run_dir) < step:
                time.sleep(0.005)
            time.sleep(delay)
            proc.kill()
        proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            err.seek(0)
            print(err.read()[-3000:], file=sys.stderr)
    return proc.returncode


def _restore(manager, step: int) -> dict:
    import orbax.checkpoint as ocp

    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         data=ocp.args.JsonRestore()))


def finished_state(run_dir: Path):
    """(state leaves as numpy, data position, metrics rows) of a finished run's final checkpoint."""
    import jax
    import numpy as np

    from metapl.train.checkpoints import checkpoint_manager

    out = _restore(checkpoint_manager(run_dir), STEPS)
    leaves = [np.asarray(x) for x in jax.tree.leaves(out["state"])]
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append({k: v for k, v in json.loads(line).items() if k != "steps_per_s"})
        except json.JSONDecodeError:  # a row a kill cut short and nobody removed
            rows.append({"step": None, "kind": "unreadable"})
    return leaves, out["data"], rows


def compare(run_dir: Path, reference) -> tuple[bool, float, int, int, str]:
    """(same?, max |difference| of the state, rows lost, rows duplicated, what differs)."""
    import numpy as np

    leaves, data, rows = finished_state(run_dir)
    ref_leaves, ref_data, ref_rows = reference
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
               for a, b in zip(leaves, ref_leaves))
    key = lambda r: (r["step"], r["kind"])  # noqa: E731
    have = [key(r) for r in rows]
    want = [key(r) for r in ref_rows]
    lost = sum(1 for k in set(want) if have.count(k) < want.count(k))
    duplicated = sum(have.count(k) - 1 for k in set(have) if have.count(k) > 1)
    values = max((abs(float(a[k]) - float(b[k])) for a, b in zip(rows, ref_rows) for k in a
                  if k not in ("step", "kind") and isinstance(a[k], (int, float)) and k in b), default=0.0)
    problems = []
    if diff != 0.0:
        problems.append(f"state differs by {diff:.3g}")
    if data != ref_data:
        problems.append(f"data position {data} != {ref_data}")
    if have != want:
        problems.append(f"rows {have} != {want}" if len(str(have)) < 300 else
                        f"rows differ: {len(have)} rows for {len(want)}, {duplicated} duplicated, {lost} lost, "
                        f"{have.count((None, 'unreadable'))} unreadable")
    elif values != 0.0:
        problems.append(f"metric values differ by {values:.3g}")
    return not problems, diff, lost, duplicated, "; ".join(problems)


def kill_and_resume(work: Path, algo: str, kind: str, rng: random.Random, reference) -> dict:
    run_dir = work / f"{algo}-{kind}-{rng.randrange(10**6)}"
    at = rng.randint(1, STEPS)  # the step of the fault (checkpoint faults: a step that writes one)
    if kind == "checkpoint":
        at = rng.choice([s for s in range(1, STEPS + 1) if s % CHECKPOINT_EVERY == 0 or s == STEPS])
    if kind == "time":  # leaves the run a step to go when the kill comes
        at = rng.randint(1, STEPS - 1)
    delay = rng.uniform(0.0, 0.3) if kind == "time" else None  # after step `at - 1` was logged
    code = spawn(run_dir, algo, "none" if kind == "time" else kind, at,
                 kill_after_step=(at - 1, delay) if kind == "time" else None)
    kills = int(code == -signal.SIGKILL)
    torn = None
    if kind == "checkpoint":  # did the kill land before the checkpoint was committed?
        from metapl.train.checkpoints import checkpoint_manager

        torn = at not in checkpoint_manager(run_dir).all_steps()
    for _ in range(5):  # resume until it finishes
        if code == 0:
            break
        code = spawn(run_dir, algo, resume=(run_dir / "config.yaml").exists())
    if code != 0:
        return {"ok": False, "killed": kills, "why": f"did not finish (exit {code})", "diff": None, "lost": None,
                "duplicated": None}
    ok, diff, lost, duplicated, why = compare(run_dir, reference)
    where = f"{delay:.2f} s after step {at - 1} was logged" if kind == "time" else f"step {at}"
    if torn is not None:
        where += ", checkpoint left unfinished" if torn else ", checkpoint finished before the kill"
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"ok": ok and kills == 1, "killed": kills, "diff": diff, "lost": lost, "duplicated": duplicated,
            "why": why or ("" if kills else "the kill did not land (the run finished first)"), "where": where}


def nan_run(work: Path, algo: str, kind: str, rng: random.Random) -> dict:
    import jax
    import numpy as np

    from metapl.runs import read_metrics
    from metapl.train.checkpoints import checkpoint_manager

    run_dir = work / f"{algo}-{kind}"
    at = rng.randint(2, STEPS - 1)
    code = spawn(run_dir, algo, kind, at)
    if code != 0:
        return {"ok": False, "why": f"exit {code}", "where": f"step {at}"}
    skipped = {r["step"] for r in read_metrics(run_dir, "train") if r.get("skipped")}
    manager = checkpoint_manager(run_dir)
    finite = all(np.all(np.isfinite(np.asarray(x))) for step in manager.all_steps()
                 for x in jax.tree.leaves(_restore(manager, step)["state"]) if np.asarray(x).dtype.kind == "f")
    ok = skipped == {at} and finite
    why = "" if ok else f"skipped steps {sorted(skipped)} (expected [{at}]); checkpoints finite: {finite}"
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"ok": ok, "why": why, "where": f"step {at}"}


def nan_setting(work: Path) -> dict:
    run_dir = work / "nan-setting"
    proc = subprocess.run([sys.executable, "-m", "metapl.cli", "train", "dpo", "--run-dir", str(run_dir),
                           "--no-progress", "optim.learning_rate=nan"], capture_output=True, text=True)
    ok = proc.returncode == 2 and "optim.learning_rate" in proc.stderr and not run_dir.exists()
    return {"ok": ok, "why": "" if ok else f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}",
            "where": "optim.learning_rate=nan"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", action="append", choices=sorted(ALGOS), default=None)
    p.add_argument("--kills", type=int, default=6, help="kill points per algorithm (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--no-nan", action="store_true", help="only the kill points (no NaN scenarios)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--fault", default="none", help=argparse.SUPPRESS)
    p.add_argument("--at", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.run_dir, args.algo = args.child, args.algo[-1]
        return child(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    algos = args.algo or list(ALGOS)
    rng = random.Random(args.seed)
    rows, t_start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metapl-faults-") as tmp:
        work = Path(tmp)
        for algo in algos:
            ref_dir = work / f"{algo}-reference"
            t0 = time.perf_counter()
            code = spawn(ref_dir, algo)
            duration = time.perf_counter() - t0
            if code != 0:
                print(f"{algo}: the uninterrupted run failed (exit {code})", file=sys.stderr)
                return 1
            reference = finished_state(ref_dir)
            print(f"{algo}: reference run {duration:.1f} s", file=sys.stderr, flush=True)
            results = {kind: [] for kind in KINDS}
            for i in range(args.kills):
                kind = KINDS[i % len(KINDS)]
                r = kill_and_resume(work, algo, kind, rng, reference)
                results[kind].append(r)
                print(f"  {algo} {kind} ({r.get('where', '')}): {'survived' if r['ok'] else 'FAILED ' + r['why']}",
                      file=sys.stderr, flush=True)
            for kind, rs in results.items():
                if rs:
                    diffs = [r["diff"] for r in rs if r["diff"] is not None]
                    torn = sum("left unfinished" in r.get("where", "") for r in rs)
                    label = f"{algo}: SIGKILL ({kind}" + (f"; {torn} of {len(rs)} left it unfinished)"
                                                          if kind == "checkpoint" else ")")
                    rows.append({"scenario": label, "tries": len(rs),
                                 "survived": sum(r["ok"] for r in rs), "max_difference": max(diffs, default=None),
                                 "rows_lost": sum(r["lost"] or 0 for r in rs),
                                 "rows_duplicated": sum(r["duplicated"] or 0 for r in rs),
                                 "failures": [f"{r.get('where', '')}: {r['why']}" for r in rs if not r["ok"]]})
            for kind in () if args.no_nan else ("nan-batch", "nan-grad"):
                r = nan_run(work, algo, kind, rng)
                print(f"  {algo} {kind} ({r['where']}): {'survived' if r['ok'] else 'FAILED ' + r['why']}",
                      file=sys.stderr, flush=True)
                rows.append({"scenario": f"{algo}: NaN in {'a batch' if kind == 'nan-batch' else 'a gradient'} "
                             "(skipped, checkpoints finite)", "tries": 1, "survived": int(r["ok"]),
                             "max_difference": None, "rows_lost": 0, "rows_duplicated": 0,
                             "failures": [f"{r['where']}: {r['why']}"] if not r["ok"] else []})
        if not args.no_nan:
            r = nan_setting(work)
            rows.append({"scenario": "NaN setting (optim.learning_rate=nan): exit 2, no run directory", "tries": 1,
                         "survived": int(r["ok"]), "max_difference": None, "rows_lost": 0, "rows_duplicated": 0,
                         "failures": [] if r["ok"] else [r["why"]]})
    kill_points = sum(r["tries"] for r in rows if "SIGKILL" in r["scenario"])
    failed = [r for r in rows if r["survived"] < r["tries"]]
    command = "python experiments/fault_injection.py" + "".join(f" --algo {a}" for a in args.algo or []) + \
        (f" --kills {args.kills}" if args.kills != 6 else "") + (f" --seed {args.seed}" if args.seed else "") + \
        (" --no-nan" if args.no_nan else "")
    report = {"command": command, "kill_points": kill_points, "steps_per_run": STEPS, "rows": rows,
              "passed": not failed, "seconds": round(time.perf_counter() - t_start, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"}
    fmt = lambda v: "" if v is None else f"{v:.3g}"  # noqa: E731
    lines = ["# Fault injection: killed and resumed runs against uninterrupted ones", "",
             f"{kill_points} kill points over {len(algos)} algorithms ({STEPS} steps each, checkpoints every "
             f"{CHECKPOINT_EVERY}); "
             f"{'every scenario survived' if not failed else f'{len(failed)} scenario(s) FAILED'}. "
             f"{report['seconds']:.0f} s on {report['machine']}.", "",
             "| scenario | tries | survived | max difference | rows lost | rows duplicated |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['tries']} | {r['survived']} | {fmt(r['max_difference'])} | {r['rows_lost']} | "
              f"{r['rows_duplicated']} |" for r in rows]
    for r in failed:
        lines.append(f"\nFAILED {r['scenario']}: " + "; ".join(r["failures"]))
    lines += ["", f"Command: `{command}`", ""]
    text = "\n".join(lines)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "fault_injection.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / "fault_injection.md").write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
