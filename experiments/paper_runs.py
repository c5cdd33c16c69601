"""What the seed-paper experiments (offline_rlhf.py, tree_vs_chain.py, srpo_revisions.py) share: the command line,
a task's protocol run (or its miniature), and the result files.

Each script supplies its tasks (name -> protocol config), how it shrinks a protocol to a miniature, and its own
analysis (`measure`: (task, cfg, out, report, command) -> the result dict), markdown and plot.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Callable

import yaml


def tiny(mapping: dict) -> dict:
    """A protocol mapping on a tiny model, one seed and a tiny synthetic world (the part every miniature shares)."""
    out = copy.deepcopy(mapping)
    out["name"] += "_miniature"
    out["seeds"] = [0]
    run = out.setdefault("run", {})
    run["model"] = {"hidden_size": 16, "num_layers": 1}
    run["data"] = dict(run.get("data", {}), synthetic={"num_domains": 8, "num_heldout": 4, "pairs_per_domain": 8})
    return out


def parser(doc: str, script: str, tasks: dict[str, Path], default: str, miniature_task: str) -> argparse.ArgumentParser:
    """--task, --miniature (the `miniature_task` shrunk), --out (default runs/<script>/<task>) and --results."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(tasks), default=default)
    p.add_argument("--miniature", action="store_true", help=f"the {miniature_task} task shrunk (pipeline check)")
    p.add_argument("--out", type=Path, help=f"runs directory (default runs/{script}/<task>)")
    p.add_argument("--results", type=Path, help=f"where the result files go (default experiments/results/{script})")
    return p


def run(args: argparse.Namespace, script: str, tasks: dict[str, Path], miniature_task: str,
        shrink: Callable[[dict], dict], measure: Callable, markdown: Callable[[dict, str], str],
        plot: Callable[[dict, Path], None]) -> int:
    """Run the task's protocol (reusing finished sub-runs), `measure` it, write <results>/<task>.{json,md,png}
    and print the markdown."""
    from metapl.protocol import protocol_from_mapping, run_protocol
    from metapl.runtime import enable_compile_cache, write_json

    enable_compile_cache()  # every sub-run and test after the first loads its programs instead of compiling them
    config = tasks[miniature_task if args.miniature else args.task]
    mapping = yaml.safe_load(config.read_text())
    task = f"{miniature_task}_miniature" if args.miniature else args.task
    if args.miniature:
        mapping = shrink(mapping)
    cfg = protocol_from_mapping(mapping, str(config))
    out = args.out or Path("runs") / script / task
    command = f"python experiments/{script}.py " + ("--miniature" if args.miniature else f"--task {args.task}")
    report = run_protocol(cfg, out, command=command)
    result = measure(task, cfg, out, report, command)
    results = args.results or Path(__file__).resolve().parent / "results" / script
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / f"{task}.json", result)
    (results / f"{task}.md").write_text(markdown(result, f"../../configs/{config.name}"))
    plot(result, results / f"{task}.png")
    print(markdown(result, f"experiments/configs/{config.name}"))
    return 0


__all__ = ["parser", "run", "tiny"]
