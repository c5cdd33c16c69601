"""Meta-learned reward model vs a Bradley–Terry reward model, each guiding the same KL-regularised policy
optimisation on the held-out domains of synthetic_domains (default) or sentiment_domains (--sentiment).

Both reward models see the same pairs: the training split of the meta-train domains (with
meta.feedback_budget >= pairs per domain the meta run's feedback pool is every training pair). Both train for
--steps outer steps with the same outer optimiser. Then `metapl meta-test` runs the same projected solver
(--test-steps steps, lr --test-lr, β --beta) from the reference policy on every held-out domain, and the gold
judge scores the adapted and reference policies. Results: mean gold reward, gold gain and win rate over the
reference per domain, with bootstrap 95% intervals; JSON + markdown in experiments/results/.

    python experiments/meta_vs_bt.py                       # defaults below, ~10 min on 2 cores
    python experiments/meta_vs_bt.py --steps 300 --inner-steps 8
    python experiments/meta_vs_bt.py --sentiment --data-dir DIR   # SmolLM2-135M + LoRA, small config (~45 min)
    python experiments/meta_vs_bt.py --oracle --set data.synthetic.shift=1.5   # + the gold-reward oracle row

--set KEY=VALUE (repeatable) overrides the run config of both runs (e.g. the benchmark's knobs); --oracle adds a
meta-test of the same solver guided by the gold reward (`metapl meta-test --reward gold`): the ceiling any reward
model can reach with that solver and β.

--sentiment uses experiments/configs/meta_sentiment.yaml (model, data shapes, episodes) for both runs and a
sentiment_domains build in --data-dir (built there first if missing, with the settings the config names).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metapl.eval import paired_difference


def run(cmd: list[str]) -> dict:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# Defaults per benchmark; the sentiment ones are experiments/configs/meta_sentiment.yaml's.
SYNTHETIC = {"steps": 150, "batch_size": 16, "inner_steps": 4, "inner_lr": 0.02}
SENTIMENT = {"steps": 16, "batch_size": 8, "inner_steps": 2, "inner_lr": 0.05, "prompts": 2, "eval_prompts": 6,
             "samples": 4}


def _build_options(config: Path) -> list[str]:
    """`metapl data build` flags from the config's comment line `# build: ...`."""
    for line in config.read_text().splitlines():
        if line.startswith("# build:"):
            return line.split(":", 1)[1].split()
    return []


def _model_line(args) -> str:
    return "SmolLM2-135M-Instruct, LoRA policy and reward model" if args.sentiment else \
        "the default tiny transformer, full weights"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="both runs (default 150; sentiment 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="outer (reward-model) learning rate, both runs")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per BT step (16; sentiment 8 = the meta run's query pairs per episode)")
    p.add_argument("--inner-steps", type=int, default=None, help="K, at meta-train and at meta-test (4; sentiment 2)")
    p.add_argument("--inner-lr", type=float, default=None, help="(0.02; sentiment 0.05)")
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--beta-out", type=float, default=1.0)
    p.add_argument("--bt-weight", type=float, default=0.0, help="λ of the meta run's Bradley–Terry term")
    p.add_argument("--test-steps", type=int, default=None, help="meta-test solver steps (default: --inner-steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for both runs")
    p.add_argument("--oracle", action="store_true", help="also meta-test with the gold reward guiding the solver")
    p.add_argument("--method", default="unrolled")
    p.add_argument("--inner-solver", default="projected")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run directories (default: a temporary directory)")
    p.add_argument("--name", default=None, help="results file stem (default meta_vs_bt[_sentiment])")
    p.add_argument("--sentiment", action="store_true", help="sentiment_domains with SmolLM2-135M + LoRA")
    p.add_argument("--data-dir", default=None, help="sentiment_domains build directory")
    p.add_argument("--prompts", type=int, default=None, help="meta-test optimisation prompts per domain")
    p.add_argument("--eval-prompts", type=int, default=None, help="meta-test evaluation prompts per domain")
    p.add_argument("--samples", type=int, default=None, help="meta-test reference samples per prompt")
    args = p.parse_args()
    name = args.name or ("meta_vs_bt_sentiment" if args.sentiment else "meta_vs_bt")
    defaults = SENTIMENT if args.sentiment else SYNTHETIC
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    metapl = [sys.executable, "-m", "metapl.cli"]
    root = Path(args.out or tempfile.mkdtemp(prefix="metapl-meta-vs-bt-"))
    common = [f"steps={args.steps}", f"eval_every={args.steps}", f"checkpoint_every={args.steps}",
              f"optim.learning_rate={args.lr}", f"seed={args.seed}", *args.set, "--no-progress"]
    benchmark = "synthetic_domains"
    if args.sentiment:
        benchmark = "sentiment_domains"
        config = Path(__file__).resolve().parent / "configs" / "meta_sentiment.yaml"
        data_dir = Path(args.data_dir or root / "data")
        if not (data_dir / "sentiment_domains").exists():
            build = _build_options(config)
            subprocess.run(metapl + ["data", "build", "sentiment_domains", "--data-dir", str(data_dir), *build],
                           check=True)
        common = ["--config", str(config), f"data.data_dir={data_dir}", *common]
    t0 = time.perf_counter()
    bt = run(metapl + ["train", "rm", "--run-dir", str(root / "bt"), *common,
                       f"data.batch_size={args.batch_size}"])
    bt_s = time.perf_counter() - t0
    meta_opts = [f"meta.inner_steps={args.inner_steps}", f"meta.inner_lr={args.inner_lr}", f"meta.beta={args.beta}",
                 f"meta.beta_out={args.beta_out}", f"meta.method={args.method}",
                 f"meta.inner_solver={args.inner_solver}", f"meta.bt_weight={args.bt_weight}"]
    meta_opts += [] if args.sentiment else ["meta.feedback_budget=64"]
    t0 = time.perf_counter()
    meta = run(metapl + ["train", "meta", "--run-dir", str(root / "meta"), *common, *meta_opts])
    meta_s = time.perf_counter() - t0
    test_steps = args.test_steps or args.inner_steps
    test = ["--steps", str(test_steps), "--lr", str(args.inner_lr), "--beta", str(args.beta), "--no-progress",
            "--seed", str(args.seed)]
    for flag, value in (("--prompts", args.prompts), ("--eval-prompts", args.eval_prompts),
                        ("--samples", args.samples)):
        if value is not None:
            test += [flag, str(value)]
    results = {name: run(metapl + ["meta-test", "--run", str(root / name), *test]) for name in ("bt", "meta")}
    per_domain = {name: json.loads((root / name / "meta_test_heldout.json").read_text()) for name in ("bt", "meta")}
    paired = paired_difference(per_domain["meta"], per_domain["bt"])
    if args.oracle:
        results["gold"] = run(metapl + ["meta-test", "--run", str(root / "bt"), *test, "--reward", "gold"])

    def ci(s):
        return f"{s['mean']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]"

    rows = [f"| {label} | {ci(r['gold_adapted'])} | {ci(r['gold_gain'])} | {ci(r['win_rate'])} | "
            f"{ci(r['rm_pair_accuracy'])} |"
            for label, r in (("Bradley–Terry RM", results["bt"]), ("meta-learned RM", results["meta"]),
                             ("gold reward (oracle)", results.get("gold"))) if r is not None]
    ref = results["bt"]["gold_reference"]
    setup = json.loads((root / "meta" / "setup.json").read_text())
    command = "python experiments/meta_vs_bt.py " + " ".join(sys.argv[1:])
    md = "\n".join([
        f"# Meta-learned vs Bradley–Terry reward model on {benchmark} (held-out domains)",
        "",
        f"{results['bt']['domains']} held-out domains. Both reward models: {args.steps} steps, Adam lr {args.lr}, "
        f"the same training pairs ({setup['train_pairs']} pairs of the "
        f"meta-train domains' training split). Model: {_model_line(args)}. Meta-training: {args.inner_solver} "
        f"inner solver, {args.method} hypergradient, K = {args.inner_steps}, inner lr {args.inner_lr}, "
        f"β = {args.beta}, β_o = {args.beta_out}, λ_BT = {args.bt_weight}. Meta-test (both): projected solver, "
        f"K = {test_steps}, "
        f"lr {args.inner_lr}, β = {args.beta}, from the reference policy. Reference policy gold reward: {ci(ref)}."
        + (f" Config overrides (both runs): {', '.join(args.set)}." if args.set else "")
        + (" The oracle row's solver is guided by the gold reward; its pair accuracy is the BT model's."
           if args.oracle else ""),
        "",
        "| reward model | gold reward, adapted | gold gain vs reference | win rate vs reference | RM pair accuracy "
        "(held-out domains) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Means over domains with bootstrap 95% intervals. Paired per domain (same prompts, samples and keys), "
        f"meta − BT gold reward of the adapted policies: {paired['mean']:+.4f} [{paired['ci95'][0]:+.4f}, "
        f"{paired['ci95'][1]:+.4f}]; the meta-learned RM's policy is better on {paired['a_better']} of "
        f"{paired['domains']} domains. Training time: BT {bt_s:.0f} s, meta {meta_s:.0f} s (including compilation).",
        "",
        f"Command: `{command}`",
        "",
    ])
    payload = {"command": command, "args": vars(args), "bt_train": bt, "meta_train": meta, "meta_test": results,
               "paired_meta_minus_bt": paired,
               "train_seconds": {"bt": bt_s, "meta": meta_s}, "run_dirs": str(root)}
    out = Path(__file__).resolve().parent / "results"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
