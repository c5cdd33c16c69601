"""Why does the meta-learned reward model not beat Bradley–Terry on synthetic_domains? A sweep of the knobs.

Each variant is one `experiments/meta_vs_bt.py --oracle` run (BT and meta reward models trained on the same pairs,
both meta-tested with the same projected solver on the 24 held-out domains, plus the gold-reward oracle: the
same solver guided by the true reward). Variants change one thing from the default comparison: β at meta-train
and meta-test, the Bradley–Terry term λ in the meta objective, K and the inner learning rate, more solver steps
at meta-test than at meta-train, the on-policy inner solver at meta-train (with 4 and 16 meta-test steps), and
the benchmark's domain heterogeneity (`data.synthetic.shift`: 0 = every domain has the same preference weights,
default 0.5, 1.5). Then the default
variant's two reward models and the oracle are meta-tested at other β (no retraining): how much of the gain is
the reward's scale relative to β.

Per-variant results land in experiments/results/investigation/<variant>.{json,md} (the default variant's in
experiments/results/meta_vs_bt.{json,md}, the headline comparison); the summary in
experiments/results/meta_investigation.{json,md}. A finished variant (and the β grid) is reused unless --rerun.

    python experiments/meta_investigation.py               # ~45 min on 2 cores
    python experiments/meta_investigation.py --only base,bt1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from metapl.eval import paired_difference

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

VARIANTS = [  # name, meta_vs_bt.py flags, what changes
    ("base", [], "default: K = 4, lr 0.02, β = 0.5, λ_BT = 0, projected solver, shift 0.5"),
    ("beta0.1", ["--beta", "0.1"], "β = 0.1 at meta-train and meta-test"),
    ("beta2", ["--beta", "2.0"], "β = 2 at meta-train and meta-test"),
    ("bt1", ["--bt-weight", "1.0"], "meta objective + 1.0 · Bradley–Terry on the query pairs"),
    ("k8", ["--inner-steps", "8", "--inner-lr", "0.05"], "K = 8, lr 0.05 at meta-train and meta-test"),
    ("test16", ["--test-steps", "16"], "meta-test solver runs 16 steps (meta-train K = 4)"),
    ("onpolicy", ["--inner-solver", "onpolicy"], "on-policy inner solver at meta-train (meta-test: projected)"),
    ("onpolicy_test16", ["--inner-solver", "onpolicy", "--test-steps", "16"],
     "on-policy inner solver at meta-train, 16 meta-test solver steps"),
    ("shift0", ["--set", "data.synthetic.shift=0"], "identical domains (shift 0)"),
    ("shift1.5", ["--set", "data.synthetic.shift=1.5"], "heterogeneous domains (shift 1.5)"),
]
TEST_BETAS = (0.05, 0.1, 0.5, 2.0)


def run_json(cmd: list[str]) -> dict:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def paired(result: dict) -> dict:
    """meta − BT per held-out domain for a variant whose results predate meta_vs_bt.py's paired figure: from the
    run directories' per-domain meta-tests, redone first if a later meta-test (the β grid) replaced them."""
    args, runs = result["args"], Path(result["run_dirs"])
    steps = args.get("test_steps") or args["inner_steps"]
    tests = {}
    for name in ("bt", "meta"):
        path = runs / name / "meta_test_heldout.json"
        saved = json.loads(path.read_text()) if path.exists() else None
        if saved is None or (saved["solver"]["steps"], saved["solver"]["lr"], saved["solver"]["beta"]) != (
                steps, args["inner_lr"], args["beta"]):
            run_json([sys.executable, "-m", "metapl.cli", "meta-test", "--run", str(runs / name), "--steps",
                      str(steps), "--lr", str(args["inner_lr"]), "--beta", str(args["beta"]), "--seed",
                      str(args["seed"]), "--no-progress"])
            saved = json.loads(path.read_text())
        tests[name] = saved
    return paired_difference(tests["meta"], tests["bt"])


def ci(s: dict) -> str:
    return f"{s['mean']:+.4f} [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    p.add_argument("--rerun", action="store_true", help="rerun variants whose results exist")
    p.add_argument("--out", default="runs/investigation", help="run directories")
    args = p.parse_args()
    names = [v[0] for v in VARIANTS] if args.only is None else args.only.split(",")
    unknown = set(names) - {v[0] for v in VARIANTS}
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; known: {[v[0] for v in VARIANTS]}")

    results = {}
    for name, flags, what in VARIANTS:
        stem = "meta_vs_bt" if name == "base" else f"investigation/{name}"
        path = RESULTS / f"{stem}.json"
        # the β grid below meta-tests the default variant's run directories again
        missing_runs = name == "base" and path.exists() and not Path(
            json.loads(path.read_text())["run_dirs"], "meta").exists()
        if name in names and (args.rerun or not path.exists() or missing_runs):
            subprocess.run([sys.executable, str(HERE / "meta_vs_bt.py"), "--oracle", "--name", stem,
                            "--out", f"{args.out}/{name}", *flags], check=True)
        if path.exists():
            results[name] = {"what": what, "flags": flags, **json.loads(path.read_text())}
            if "paired_meta_minus_bt" not in results[name]:
                results[name]["paired_meta_minus_bt"] = paired(results[name])

    # β at meta-test only, for the default variant's reward models and the oracle.
    summary = RESULTS / "meta_investigation.json"
    beta_grid = [] if args.rerun or not summary.exists() else json.loads(summary.read_text())["test_beta_grid"]
    if "base" in results and not beta_grid:
        runs = results["base"]["run_dirs"]
        for beta in TEST_BETAS:
            row = {"beta": beta}
            for label, run, reward in (("bt", "bt", "model"), ("meta", "meta", "model"), ("gold", "bt", "gold")):
                row[label] = run_json([sys.executable, "-m", "metapl.cli", "meta-test", "--run", f"{runs}/{run}",
                                       "--steps", "4", "--lr", "0.02", "--beta", str(beta), "--reward", reward,
                                       "--no-progress"])
            beta_grid.append(row)

    lines = ["# Meta-learned vs Bradley–Terry reward model on synthetic_domains: what moves the comparison", "",
             "Each row: both reward models trained on the same pairs (150 steps), meta-tested by the same projected "
             "solver from the reference policy on the 24 held-out domains; the oracle row's solver is guided by the "
             "gold reward of the same reference samples. Gold gain = adapted − reference policy, mean over domains "
             "with bootstrap 95% intervals; RM acc = pair accuracy on the held-out domains' labelled pairs.", "",
             "Paired: meta − BT gold reward of the adapted policies per domain (same prompts, reference samples "
             "and keys), with its interval and the number of domains where the meta-learned RM's policy is better.",
             "",
             "| variant | what changes | BT gain | meta gain | paired meta − BT | oracle gain | BT win | meta win | "
             "BT acc | meta acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        t = r["meta_test"]
        d = r["paired_meta_minus_bt"]
        lines.append(f"| {name} | {r['what']} | {ci(t['bt']['gold_gain'])} | {ci(t['meta']['gold_gain'])} | "
                     f"{ci(d)} ({d['a_better']}/{d['domains']}) | {ci(t['gold']['gold_gain'])} | "
                     f"{t['bt']['win_rate']['mean']:.3f} | {t['meta']['win_rate']['mean']:.3f} | "
                     f"{t['bt']['rm_pair_accuracy']['mean']:.3f} | {t['meta']['rm_pair_accuracy']['mean']:.3f} |")
    if beta_grid:
        lines += ["", "## β at meta-test only (the default variant's reward models; solver K = 4, lr 0.02)", "",
                  "| β | BT gain | meta gain | oracle gain | BT win | meta win | oracle win |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['beta']} | {ci(r['bt']['gold_gain'])} | {ci(r['meta']['gold_gain'])} | "
                  f"{ci(r['gold']['gold_gain'])} | {r['bt']['win_rate']['mean']:.3f} | "
                  f"{r['meta']['win_rate']['mean']:.3f} | {r['gold']['win_rate']['mean']:.3f} |" for r in beta_grid]
    command = "python experiments/meta_investigation.py " + " ".join(sys.argv[1:])
    lines += ["", f"Command: `{command}` (per-variant commands and tables in experiments/results/investigation/).", ""]
    md = "\n".join(lines)
    payload = {"command": command, "variants": results, "test_beta_grid": beta_grid}
    (RESULTS / "meta_investigation.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "meta_investigation.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
