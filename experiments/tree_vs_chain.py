"""Tree vs chain preference data (Qiu et al., arXiv 2402.10184) with the same number of labelled comparisons and
the same annotation judge: the reward models' accuracy, and the policies they produce judged head to head.

The paper's claim: with the same number of labelled comparisons, policies trained against the tree RM (pairs of
leaves of a prefix tree, so each label isolates a suffix difference) beat those of the chain RM (independently
sampled pairs): about 65% average win rate (0.74, 0.63, 0.58 on three tasks; GPT-4 judge; PPO or rejection
sampling), and tree pairs need about 21% fewer annotated tokens.

Each task is an OOD protocol (`metapl.protocol`) with `tree_rm` and `chain_rm` (the chain RM labels exactly as many
comparisons as the tree RM of the same seed; both by the gold judge, with the same label noise): each RM's
held-out pair accuracy, and the KL-regularised solver guided by each (tuned per RM on the validation split).
Then best-of-n (rejection sampling) against each RM: per held-out prompt, n responses of the reference policy, the
one each RM scores highest, judged by the gold reward; the tree pick against the chain pick head to head (ties ½).

    python experiments/tree_vs_chain.py --task synthetic    # mechanism_domains with a suffix-dependent oracle
    python experiments/tree_vs_chain.py --task sentiment    # SmolLM2-135M + LoRA on sentiment_targets (VADER)
    python experiments/tree_vs_chain.py --miniature         # the pipeline end to end (a test runs it)

Runs go under --out (default runs/tree_vs_chain/<task>; re-running reuses finished sub-runs and tests), the results
into experiments/results/tree_vs_chain/<task>.{json,md,png}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_runs import parser, run, tiny  # noqa: E402

from metapl.protocol.report import interval_text as _ci  # noqa: E402

ROOT = Path(__file__).resolve().parent
TASKS = {task: ROOT / "configs" / f"protocol_tree_vs_chain_{task}.yaml" for task in ("synthetic", "sentiment")}
BON_PROMPTS = {"synthetic": 16, "sentiment": 4}  # best-of-n's held-out prompts per domain (SmolLM2 samples cost)
CLAIM = ("with the same number of labelled comparisons, policies optimised against the tree RM beat those of the "
         "chain RM (about 65% average win rate) and tree pairs need about 21% fewer annotated tokens (Qiu et al., "
         "arXiv 2402.10184)")


def miniature(mapping: dict) -> dict:
    """The task's protocol on a tiny model, one seed and a few steps: the pipeline, not the outcome."""
    out = tiny(mapping)
    out["methods"]["tree_rm"] = {"steps": 2, "run": {"data": {"tree_prompts": 8, "batch_size": 2}}}
    out["methods"]["chain_rm"] = {"steps": 2, "run": {"data": {"batch_size": 4}}}
    out["solver_grid"] = out["solver_grid"][:2]
    out["test"] = {"prompts": 2, "eval_prompts": 3, "samples_per_prompt": 2, "bootstrap": 200, "domains_per_batch": 2}
    return out


def best_of_n(cfg, out: Path, n: int, prompts_per_domain: int) -> dict:
    """Per seed and held-out domain, over its first `prompts_per_domain` prompts with n reference samples each:
    the gold reward of the sample each RM scores highest, of a random sample (the mean) and of the best one, and
    the tree pick's win rate over the chain pick (ties ½). Cached in results/best_of_n.json."""
    from metapl.data.sample_sets import SampleSetConfig, sample_responses
    from metapl.protocol.runner import run_dir_of
    from metapl.algorithms.common import reward_model_scorer
    from metapl.runs import read_run_config
    from metapl.runtime import read_json, write_json
    from metapl.train.spec import build_model_and_benchmark

    path = out / "results" / "best_of_n.json"
    done = read_json(path) or {}
    key = f"n{n}_p{prompts_per_domain}"
    for i, seed in enumerate(cfg.seeds):
        if f"{key}_seed{seed}" in done:
            continue
        started = time.perf_counter()
        runs = {m: run_dir_of(out, m, seed) for m in ("tree_rm", "chain_rm")}
        run_cfg = read_run_config(runs["tree_rm"])
        config, params, bench = build_model_and_benchmark(run_cfg)  # the reference policy of this seed
        domains = bench.domain_split("heldout", prompts_per_domain)
        prompts = [p for d in domains for p in domains[d][0][:prompts_per_domain]]
        print(f"[best-of-{n}] seed {seed} ({i + 1}/{len(cfg.seeds)}): {n} reference samples for each of "
              f"{len(prompts)} held-out prompts, scored by both RMs", file=sys.stderr, flush=True)
        spec = bench.spec
        sampled = sample_responses(params, config, prompts, bench.encode, bench.decode,
                                   SampleSetConfig(samples_per_prompt=n, max_new_tokens=spec.max_response_tokens,
                                                   max_prompt_tokens=spec.max_prompt_tokens, seed=1000 + seed,
                                                   policy="reference"),
                                   stop_token_ids=(bench.eos_id,), pad_id=bench.pad_id, progress=False)
        gold = np.asarray([[bench.gold(p.domain, p.prompt, y) if y.strip() else 0.0 for y in ys]
                           for p, ys in zip(prompts, sampled)])  # [P, n]
        picks = {}
        for m, run_dir in runs.items():
            scorer = reward_model_scorer(run_dir, run_cfg.data)
            scores = np.asarray(scorer.score([p.domain for p in prompts for _ in range(n)],
                                             [p.prompt for p in prompts for _ in range(n)],
                                             [y for ys in sampled for y in ys])).reshape(len(prompts), n)
            picks[m] = gold[np.arange(len(prompts)), scores.argmax(1)]
        names = list(domains)
        per_domain = np.repeat(np.arange(len(names)), prompts_per_domain)
        rows = []
        for i, d in enumerate(names):
            at = per_domain == i
            t, c = picks["tree_rm"][at], picks["chain_rm"][at]
            rows.append({"domain": d, "tree": float(t.mean()), "chain": float(c.mean()),
                         "random": float(gold[at].mean()), "best": float(gold[at].max(1).mean()),
                         "tree_win": float(np.mean((t > c) + 0.5 * (t == c)))})
        done[f"{key}_seed{seed}"] = rows
        write_json(path, done)
        print(f"[best-of-{n}] seed {seed} done in {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
    return {s: done[f"{key}_seed{s}"] for s in cfg.seeds}


def summarise(task: str, cfg, report: dict, bon: dict, out: Path, n: int, command: str) -> dict:
    from metapl.eval import two_level_interval
    from metapl.protocol.runner import run_dir_of
    from metapl.runtime import read_json

    b = cfg.test.bootstrap
    m = report["methods"]
    setups = {name: [read_json(run_dir_of(out, name, s) / "setup.json") for s in cfg.seeds]
              for name in ("tree_rm", "chain_rm")}
    matrix = {k: np.asarray([[r[k] for r in bon[s]] for s in cfg.seeds]) for k in ("tree", "chain", "random",
                                                                                   "best", "tree_win")}
    bon_summary = {"n": n, "tree_gain": two_level_interval(matrix["tree"] - matrix["random"], b),
                   "chain_gain": two_level_interval(matrix["chain"] - matrix["random"], b),
                   "tree_minus_chain": two_level_interval(matrix["tree"] - matrix["chain"], b),
                   "tree_win_rate": two_level_interval(matrix["tree_win"], b),
                   "best_gain": two_level_interval(matrix["best"] - matrix["random"], b)}
    tokens = {name: [s["annotation_tokens"] for s in ss] for name, ss in setups.items()}
    comparisons = {name: [s["comparisons"] for s in ss] for name, ss in setups.items()}
    lo, hi = bon_summary["tree_win_rate"]["ci95"]
    verdicts = {"best-of-n, tree policy's win rate over the chain policy's":
                "tree ahead" if lo > 0.5 else "chain ahead" if hi < 0.5 else "no difference",
                "KL solver, tree − chain (gold)": _side(m["tree_rm"]["minus_base"])}
    acc = {name: m[name]["rm_acc"] for name in ("tree_rm", "chain_rm")}
    return {"experiment": "tree_vs_chain", "task": task, "claim": CLAIM, "protocol": report["name"],
            "seeds": report["seeds"], "domains": len(report["domains"]), "comparisons": comparisons,
            "annotation_tokens": tokens,
            "token_ratio": float(np.sum(tokens["tree_rm"]) / np.sum(tokens["chain_rm"])),
            "rm_pair_accuracy": acc, "solver": {name: {"gain": m[name]["gain"], "win_ref": m[name]["win_ref"]}
                                                for name in ("tree_rm", "chain_rm")},
            "solver_tree_minus_chain": m["tree_rm"]["minus_base"], "solver_tree_win_rate": m["tree_rm"]["win_base"],
            "best_of_n": bon_summary, "verdicts": verdicts, "command": command}


def _side(s: dict) -> str:
    lo, hi = s["ci95"]
    return "tree ahead" if lo > 0 else "chain ahead" if hi < 0 else "no difference"


def markdown(r: dict, config: str) -> str:
    bon, acc = r["best_of_n"], r["rm_pair_accuracy"]
    lines = [f"# Tree vs chain preference data on `{r['task']}`", "", f"The paper's claim: {r['claim']}.", "",
             f"Protocol `{r['protocol']}` ([config]({config})): seeds {r['seeds']}, {r['domains']} held-out domains. "
             f"Labelled comparisons per seed: tree {r['comparisons']['tree_rm']}, chain {r['comparisons']['chain_rm']} "
             "(the same judge and label noise). Annotated tokens (per comparison the prompt and both responses, a "
             f"shared prefix read once): tree {r['annotation_tokens']['tree_rm']}, chain "
             f"{r['annotation_tokens']['chain_rm']}, ratio {r['token_ratio']:.2f}. 95% two-level bootstrap intervals "
             "(seeds, then domains); win rates count ties as ½.", "",
             "| measure | tree RM | chain RM | tree − chain |", "|---|---|---|---|",
             f"| held-out pair accuracy | {acc['tree_rm']['mean']:.3f} | {acc['chain_rm']['mean']:.3f} | "
             f"{acc['tree_rm']['mean'] - acc['chain_rm']['mean']:+.3f} |",
             f"| best-of-{bon['n']}: gold gain over a random reference sample | {_ci(bon['tree_gain'])} | "
             f"{_ci(bon['chain_gain'])} | {_ci(bon['tree_minus_chain'])} |",
             f"| KL solver guided by the RM: gold gain over the reference | {_ci(r['solver']['tree_rm']['gain'])} | "
             f"{_ci(r['solver']['chain_rm']['gain'])} | {_ci(r['solver_tree_minus_chain'])} |", "",
             f"Head to head, the tree RM's pick over the chain RM's: best-of-{bon['n']} "
             f"{bon['tree_win_rate']['mean']:.3f} [{bon['tree_win_rate']['ci95'][0]:.3f}, "
             f"{bon['tree_win_rate']['ci95'][1]:.3f}]; KL-solver policies {r['solver_tree_win_rate']['mean']:.3f}. "
             f"The best of the {bon['n']} samples by the gold reward gains {_ci(bon['best_gain'])} (the ceiling).",
             "", "Against the paper:", ""]
    lines += [f"- {k}: {v}" for k, v in r["verdicts"].items()]
    lines += [f"- annotated tokens, tree over chain: {r['token_ratio']:.2f} (the paper: about 0.79)",
              "", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bon = r["best_of_n"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3))
    rows = [("best-of-n, tree", bon["tree_gain"]), ("best-of-n, chain", bon["chain_gain"]),
            ("KL solver, tree", r["solver"]["tree_rm"]["gain"]), ("KL solver, chain", r["solver"]["chain_rm"]["gain"])]
    for j, (label, s) in enumerate(rows):
        a.errorbar([s["mean"]], [j], xerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]], fmt="o", capsize=3)
    a.set_yticks(range(len(rows)), [x[0] for x in rows], fontsize=7)
    a.invert_yaxis()
    a.axvline(0, color="grey", lw=0.8)
    a.xaxis.set_major_locator(plt.MaxNLocator(5))
    a.tick_params(axis="x", labelsize=7)
    a.set_title("held-out gold gain over the reference", fontsize=8)
    w = bon["tree_win_rate"]
    b.bar([0], [w["mean"]], yerr=[[w["mean"] - w["ci95"][0]], [w["ci95"][1] - w["mean"]]], capsize=4)
    b.axhline(0.5, color="grey", lw=0.8)
    b.axhline(0.65, color="C3", lw=0.8, ls="--", label="paper (~0.65)")
    b.set_xticks([0], [f"best-of-{bon['n']}"])
    b.tick_params(labelsize=7)
    b.set_ylim(0, 1)
    b.legend(fontsize=7)
    b.set_title("tree RM's pick over the chain RM's (gold)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    cli = parser(__doc__, "tree_vs_chain", TASKS, "synthetic", "synthetic")
    cli.add_argument("--n", type=int, default=8, help="best-of-n: reference samples per prompt")
    cli.add_argument("--bon-prompts", type=int, help="best-of-n: held-out prompts per domain (default: "
                     + ", ".join(f"{t} {k}" for t, k in BON_PROMPTS.items()) + ")")
    args = cli.parse_args(argv)
    n, prompts = (2, 2) if args.miniature else (args.n, args.bon_prompts or BON_PROMPTS[args.task])

    def measure(task, cfg, out, report, command):
        return summarise(task, cfg, report, best_of_n(cfg, out, n, prompts), out, n, command)

    return run(args, "tree_vs_chain", TASKS, "synthetic", miniature, measure, markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
