"""Tools over finished runs and protocols: re-evaluate a run, export its policy for transformers, render a report.

    evaluate_run("runs/quickstart/runs/dpo/seed0")            # policy_test (policies) or meta_test (reward models)
    export_policy("runs/dpo", "exported/dpo")                  # a Hugging Face directory, LoRA merged
    report_directory("runs/quickstart")                        # report.md (+ CSV, plots) of a protocol or a run
"""

from __future__ import annotations

import json
from pathlib import Path

from metapl.algorithms.policy_test import restore_policy
from metapl.config import ConfigError
from metapl.meta.evaluate import MetaTestConfig, render
from metapl.models import merge_lora, save_hf_directory
from metapl.runs import meta_test, policy_test, read_metrics, read_run_config

REWARD_ALGOS = ("rm", "tree-rm", "meta")


def evaluate_run(run_dir: str | Path, split: str = "heldout", test: MetaTestConfig = MetaTestConfig(),
                 progress: bool = True) -> dict:
    """The held-out (or `split`) test of a run's latest checkpoint, written into the run directory: `meta_test`
    for a reward model (rm, tree-rm, meta), `policy_test` for a policy."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    if read_run_config(run_dir).algo in REWARD_ALGOS:
        return meta_test(run_dir, split, test, write=True, progress=progress)
    return policy_test(run_dir, split, test, write=True)


def export_policy(run_dir: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    """The trained policy of a run as a Hugging Face directory (config.json, model.safetensors, the tokenizer's
    files when the benchmark has a Hugging Face tokenizer), LoRA adapters merged into the weights, and
    metapl_export.json saying where it came from. `transformers.AutoModelForCausalLM.from_pretrained` loads it."""
    restored = restore_policy(run_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; export into a new directory")
    params, lora = restored.trained
    config = restored.policy.config
    if lora is not None:
        params, config = merge_lora(params, lora, config), config.replace(lora=None)
    tokenizer = restored.bench.tokenizer
    hf_tokenizer = tokenizer if hasattr(tokenizer, "save_pretrained") else None
    save_hf_directory(out, params, config, tokenizer=hf_tokenizer, dtype=dtype)
    info = {"run_dir": str(restored.run_dir), "algo": restored.cfg.algo, "checkpoint_step": restored.step,
            "lora_merged": lora is not None, "dtype": dtype or "float32",
            "tokenizer": "saved" if hf_tokenizer is not None else
            f"not saved: the benchmark's tokenizer ({type(tokenizer).__name__}) is not a Hugging Face one"}
    if restored.render is not None:
        info["prompting"] = f"trained with reward tokens: ask as {restored.render('PROMPT')!r}"
    (out / "metapl_export.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def report_directory(path: str | Path) -> Path:
    """Render the report of a protocol directory (from its report.json: report.md, per_domain.csv, plots/) or of
    a run directory (report.md: its settings, last metrics, training curve and every test result it holds)."""
    from metapl.protocol.report import write_report

    path = Path(path)
    if (path / "protocol.yaml").exists():
        if not (path / "report.json").exists():
            raise ConfigError(f"{path}: the protocol has not finished (no report.json); run it again to finish")
        write_report(json.loads((path / "report.json").read_text()), path)
        return path / "report.md"
    if not (path / "config.yaml").exists():
        raise ConfigError(f"{path}: neither a protocol directory (protocol.yaml) nor a run directory (config.yaml)")
    return _run_report(path)


def _run_report(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = read_run_config(run_dir)
    train_rows, eval_rows = read_metrics(run_dir, "train"), read_metrics(run_dir, "eval")
    setup = json.loads((run_dir / "setup.json").read_text()) if (run_dir / "setup.json").exists() else {}
    lines = [f"# Run {run_dir.name}: {cfg.algo}, {cfg.steps} steps, seed {cfg.seed}", "",
             setup.get("describe", ""), ""]
    if eval_rows:
        last = eval_rows[-1]
        lines += [f"Last evaluation (step {last['step']}):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in last.items() if k not in ("step", "kind") and isinstance(v, float)]
        lines.append("")
    points = [(r["step"], r["loss"]) for r in train_rows if "loss" in r]
    if points:
        fig, ax = plt.subplots(figsize=(4, 2.6))
        ax.plot(*zip(*points), marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{cfg.algo} ({run_dir.name})", fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "training.png", dpi=120)
        plt.close(fig)
        lines += ["Training loss: `training.png`.", ""]
    for result_file in sorted(run_dir.glob("meta_test_*.json")) + sorted(run_dir.glob("policy_test_*.json")):
        result = json.loads(result_file.read_text())
        if result_file.name.startswith("meta_test"):
            lines += [render(result), ""]
        else:
            lines += [(run_dir / result_file.with_suffix(".md").name).read_text()
                      if result_file.with_suffix(".md").exists() else f"`{result_file.name}`", ""]
    if not list(run_dir.glob("*_test_*.json")):
        lines += ["No held-out test yet: `metapl eval --run " + str(run_dir) + "` runs it.", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return run_dir / "report.md"


__all__ = ["evaluate_run", "export_policy", "report_directory"]
