"""Meta-learned reward model vs a Bradley–Terry reward model on synthetic_domains, each guiding the same
KL-regularised policy optimisation on the held-out domains.

Both reward models see the same pairs: the training split of the meta-train domains (with
meta.feedback_budget >= pairs per domain the meta run's feedback pool is every training pair). Both train for
--steps outer steps with the same outer optimiser. Then `metapl meta-test` runs the same projected solver
(--test-steps steps, lr --test-lr, β --beta) from the reference policy on every held-out domain, and the gold
judge scores the adapted and reference policies. Results: mean gold reward, gold gain and win rate over the
reference per domain, with bootstrap 95% intervals; JSON + markdown in experiments/results/.

    python experiments/meta_vs_bt.py                       # defaults below, ~10 min on 2 cores
    python experiments/meta_vs_bt.py --steps 300 --inner-steps 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str]) -> dict:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-3, help="outer (reward-model) learning rate, both runs")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per BT step")
    p.add_argument("--inner-steps", type=int, default=4, help="K, at meta-train and at meta-test")
    p.add_argument("--inner-lr", type=float, default=0.02)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--beta-out", type=float, default=1.0)
    p.add_argument("--method", default="unrolled")
    p.add_argument("--inner-solver", default="projected")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run directories (default: a temporary directory)")
    p.add_argument("--name", default="meta_vs_bt")
    args = p.parse_args()

    metapl = [sys.executable, "-m", "metapl.cli"]
    root = Path(args.out or tempfile.mkdtemp(prefix="metapl-meta-vs-bt-"))
    common = [f"steps={args.steps}", f"eval_every={args.steps}", f"checkpoint_every={args.steps}",
              f"optim.learning_rate={args.lr}", f"seed={args.seed}", "--no-progress"]
    t0 = time.perf_counter()
    bt = run(metapl + ["train", "rm", "--run-dir", str(root / "bt"), f"data.batch_size={args.batch_size}", *common])
    bt_s = time.perf_counter() - t0
    meta_opts = [f"meta.inner_steps={args.inner_steps}", f"meta.inner_lr={args.inner_lr}", f"meta.beta={args.beta}",
                 f"meta.beta_out={args.beta_out}", f"meta.method={args.method}",
                 f"meta.inner_solver={args.inner_solver}", "meta.feedback_budget=64"]
    t0 = time.perf_counter()
    meta = run(metapl + ["train", "meta", "--run-dir", str(root / "meta"), *meta_opts, *common])
    meta_s = time.perf_counter() - t0
    test = ["--steps", str(args.inner_steps), "--lr", str(args.inner_lr), "--beta", str(args.beta), "--no-progress",
            "--seed", str(args.seed)]
    results = {name: run(metapl + ["meta-test", "--run", str(root / name), *test]) for name in ("bt", "meta")}

    def ci(s):
        return f"{s['mean']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]"

    rows = [f"| {label} | {ci(r['gold_adapted'])} | {ci(r['gold_gain'])} | {ci(r['win_rate'])} | "
            f"{ci(r['rm_pair_accuracy'])} |"
            for label, r in (("Bradley–Terry RM", results["bt"]), ("meta-learned RM", results["meta"]))]
    ref = results["bt"]["gold_reference"]
    command = "python experiments/meta_vs_bt.py " + " ".join(sys.argv[1:])
    md = "\n".join([
        "# Meta-learned vs Bradley–Terry reward model on synthetic_domains (held-out domains)",
        "",
        f"{results['bt']['domains']} held-out domains. Both reward models: {args.steps} steps, Adam lr {args.lr}, "
        f"the same training pairs (40 meta-train domains' training split). Meta-training: {args.inner_solver} "
        f"inner solver, {args.method} hypergradient, K = {args.inner_steps}, inner lr {args.inner_lr}, "
        f"β = {args.beta}, β_o = {args.beta_out}. Meta-test (both): projected solver, K = {args.inner_steps}, "
        f"lr {args.inner_lr}, β = {args.beta}, from the reference policy. Reference policy gold reward: {ci(ref)}.",
        "",
        "| reward model | gold reward, adapted | gold gain vs reference | win rate vs reference | RM pair accuracy "
        "(held-out domains) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Means over domains with bootstrap 95% intervals. Training time: BT {bt_s:.0f} s, meta {meta_s:.0f} s "
        "(including compilation).",
        "",
        f"Command: `{command}`",
        "",
    ])
    payload = {"command": command, "args": vars(args), "bt_train": bt, "meta_train": meta, "meta_test": results,
               "train_seconds": {"bt": bt_s, "meta": meta_s}, "run_dirs": str(root)}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{args.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
