"""Tree reward model vs chain reward model on synthetic_domains, with the same number of comparisons.

Both grow responses from the same (random, tiny) reference policy and label them with the benchmark's gold
judge (Bradley–Terry noise 0.1); both train the same reward model for the same steps on 16 comparisons per
step; both are evaluated on the same held-out pairs of the training domains.
- tree: depth-2, branching-2 prefix trees, 4 leaf comparisons per tree (stratified by shared prefix);
- chain: two independent responses per prompt (depth-1 trees), one comparison each, with as many prompts as
  the trees have comparisons.
The paper's claim (Qiu et al., arXiv 2402.10184) is that the tree's shared prefixes lower the variance of the
reward model; this script reports both numbers over several seeds and asserts nothing.

    python experiments/tree_vs_chain.py --seeds 3 --steps 150
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tree-prompts", type=int, default=60)
    args = parser.parse_args()

    from bench_common import machine_info, write_results
    from metapl.runs import prepare_run_dir, train

    common = ["algo=tree-rm", f"steps={args.steps}", f"eval_every={args.steps}", "optim.learning_rate=3e-4",
              "data.synthetic.num_domains=30", "data.synthetic.num_heldout=20"]
    results = {"tree": [], "chain": []}
    comparisons = {}
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            tree_dir = Path(tmp) / "tree"
            cfg = prepare_run_dir(tree_dir, None, common + [f"seed={seed}", f"data.tree_prompts={args.tree_prompts}",
                                                             "data.batch_size=4", "tree.pairs_per_tree=4"], False)
            results["tree"].append(train(tree_dir, cfg, progress=False)["pair_accuracy"])
            n = _comparisons(tree_dir)
            chain_dir = Path(tmp) / "chain"
            cfg = prepare_run_dir(chain_dir, None, common + [f"seed={seed}", f"data.tree_prompts={n}",
                                                              "data.batch_size=16", "tree.depth=1",
                                                              "tree.branching=2", "tree.pairs_per_tree=1"],
                                  False)
            results["chain"].append(train(chain_dir, cfg, progress=False)["pair_accuracy"])
            comparisons[seed] = {"tree": n, "chain": _comparisons(chain_dir)}
    rows = {k: {"accuracies": v, "mean": statistics.mean(v), "stdev": statistics.pstdev(v)} for k, v in results.items()}
    lines = ["# Tree vs chain reward model (synthetic_domains)", "",
             f"{args.seeds} seeds, {args.steps} steps of 16 comparisons; held-out pairs of the 10 training domains.",
             "", "| data | held-out pair accuracy, mean ± sd | per seed | comparisons per seed |", "|---|---|---|---|"]
    for k, r in rows.items():
        per_seed = ", ".join(f"{a:.3f}" for a in r["accuracies"])
        counts = ", ".join(str(comparisons[s][k]) for s in range(args.seeds))
        lines.append(f"| {k} | {r['mean']:.3f} ± {r['stdev']:.3f} | {per_seed} | {counts} |")
    lines += ["", "Command: `python experiments/tree_vs_chain.py " + " ".join(sys.argv[1:]) + "`", ""]
    write_results("tree_vs_chain", {"experiment": "tree_vs_chain", "args": vars(args), "machine": machine_info(),
                                    "results": rows, "comparisons": comparisons}, "\n".join(lines))
    print("\n".join(lines))
    return 0


def _comparisons(run_dir: Path) -> int:
    return json.loads((run_dir / "setup.json").read_text())["comparisons"]


if __name__ == "__main__":
    sys.exit(main())
