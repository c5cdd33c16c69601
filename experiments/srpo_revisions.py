"""SRPO (Choi et al., ICLR 2025, arXiv 2406.01660) against DPO and IPO out of distribution: the gold win rate over
the reference policy after 0-5 in-context self-revisions.

The paper's claim: trained on one task (TL;DR) and evaluated out of distribution (XSum), SRPO's win rate against
human references rises with each self-revision, to about 90% after 5, about 15 points above DPO, while DPO and IPO
gain nothing from revisions. The structure it relies on: one model trained both to answer and to improve a given
answer in context, from a reference model that can read the answer it is asked to revise.

Each task is an OOD protocol (`metapl.protocol`) with `srpo`, `dpo` and `ipo` trained on the meta-train domains'
labelled pairs and `revisions: 5`: on every held-out prompt each policy answers, then revises its own previous
answer five times with the benchmark's revision prompt (the same prompt for every method). Per method and revision:
the gold reward and the win rate over the reference policy's answers to the same prompts (ties ½); the gain from
revising (i = 5 minus i = 0, paired per domain) and SRPO minus DPO at each i.

    python experiments/srpo_revisions.py --task sentiment   # SmolLM2-135M + LoRA on sentiment_targets
    python experiments/srpo_revisions.py --task synthetic   # the tiny model on synthetic_domains
    python experiments/srpo_revisions.py --miniature        # the pipeline end to end (a test runs it)

Runs go under --out (default runs/srpo_revisions/<task>; re-running reuses finished sub-runs and tests), the results
into experiments/results/srpo_revisions/<task>.{json,md,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_runs import parser, run, tiny  # noqa: E402

from metapl.protocol.report import interval_text as _ci  # noqa: E402

ROOT = Path(__file__).resolve().parent
TASKS = {task: ROOT / "configs" / f"protocol_srpo_{task}.yaml" for task in ("sentiment", "synthetic")}
CLAIM = ("out of distribution, SRPO's win rate over the references rises with each self-revision (to about 90% "
         "after 5, about 15 points above DPO), while DPO and IPO gain nothing from revisions (Choi et al., "
         "arXiv 2406.01660)")
POLICIES = ("srpo", "dpo", "ipo")


def miniature(mapping: dict) -> dict:
    """The synthetic task on a tiny model, one seed, a few steps and two revisions: the pipeline, not the outcome."""
    out = tiny(mapping)
    out["revisions"] = 2
    for name in POLICIES:
        out["methods"][name]["steps"] = 2
    out["test"] = {"prompts": 1, "eval_prompts": 3, "bootstrap": 200, "domains_per_batch": 2}
    return out


def curves(cfg, out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per policy method: "gold" and "win" [seeds, domains, revisions + 1] from the cached held-out tests."""
    from metapl.runtime import read_json

    found = {}
    for name in POLICIES:
        rows = [read_json(out / "results" / f"{name}_seed{s}.json")["per_domain"] for s in cfg.seeds]
        found[name] = {"gold": np.asarray([[r["gold_revisions"] for r in seed] for seed in rows]),
                       "win": np.asarray([[r["win_rate_revisions"] for r in seed] for seed in rows])}
    return found


def summarise(task: str, cfg, report: dict, c: dict, command: str) -> dict:
    from metapl.eval import two_level_interval

    b = cfg.test.bootstrap
    n = cfg.revisions
    methods = {}
    for name, k in c.items():
        methods[name] = {
            "label": report["methods"][name]["label"],
            "gold": [two_level_interval(k["gold"][:, :, i], b) for i in range(n + 1)],
            "win": [two_level_interval(k["win"][:, :, i], b) for i in range(n + 1)],
            "win_gain": two_level_interval(k["win"][:, :, n] - k["win"][:, :, 0], b),
            "gold_gain": two_level_interval(k["gold"][:, :, n] - k["gold"][:, :, 0], b),
            "train_seconds": report["methods"][name]["train_seconds"]}
    versus = {other: [two_level_interval(c["srpo"]["win"][:, :, i] - c[other]["win"][:, :, i], b)
                      for i in range(n + 1)] for other in ("dpo", "ipo")}

    def side(s, up="rises", down="falls", flat="no change"):
        lo, hi = s["ci95"]
        return up if lo > 0 else down if hi < 0 else flat

    verdicts = {f"{methods[name]['label']}: win rate from i = 0 to i = {n}": side(methods[name]["win_gain"])
                for name in methods}
    verdicts[f"SRPO − DPO, win rate at i = {n}"] = side(versus["dpo"][n], "SRPO ahead", "SRPO behind", "level")
    return {"experiment": "srpo_revisions", "task": task, "claim": CLAIM, "protocol": report["name"],
            "seeds": report["seeds"], "domains": len(report["domains"]), "revisions": n, "methods": methods,
            "srpo_minus": versus, "verdicts": verdicts, "command": command}


def _rate(s: dict) -> str:
    return f"{s['mean']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"


def markdown(r: dict, config: str) -> str:
    n = r["revisions"]
    head = "| method | " + " | ".join(f"i = {i}" for i in range(n + 1)) + " |"
    rule = "|---|" + "---|" * (n + 1)
    lines = [f"# SRPO, DPO and IPO revising their own answers on `{r['task']}`", "",
             f"The paper's claim: {r['claim']}.", "",
             f"Protocol `{r['protocol']}` ([config]({config})): seeds {r['seeds']}, {r['domains']} held-out domains "
             "(never trained on); i = 0 is the direct answer, i = k the k-th revision of the policy's own previous "
             "answer, every method prompted with the same revision template. 95% two-level bootstrap intervals "
             "(seeds, then domains); win rates count ties as ½.", "",
             "Gold win rate over the reference policy's answers to the same prompts:", "", head, rule]
    lines += [f"| {m['label']} | " + " | ".join(_rate(s) for s in m["win"]) + " |" for m in r["methods"].values()]
    lines += ["", "Mean gold reward:", "", head, rule]
    lines += [f"| {m['label']} | " + " | ".join(_ci(s) for s in m["gold"]) + " |" for m in r["methods"].values()]
    lines += ["", f"Gain from revising (i = {n} minus i = 0, paired per domain) and training seconds:", "",
              "| method | win rate gain | gold gain | training s |", "|---|---|---|---|"]
    lines += [f"| {m['label']} | {_ci(m['win_gain'])} | {_ci(m['gold_gain'])} | "
              f"{'–' if m['train_seconds'] is None else format(m['train_seconds'], '.0f')} |"
              for m in r["methods"].values()]
    lines += ["", "SRPO minus DPO and minus IPO, win rate, per revision:", "", head.replace("method", "versus"), rule]
    lines += [f"| {other} | " + " | ".join(_ci(s) for s in curve) + " |" for other, curve in r["srpo_minus"].items()]
    lines += ["", "Against the paper:", ""] + [f"- {k}: {v}" for k, v in r["verdicts"].items()]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, m in r["methods"].items():
        means = [s["mean"] for s in m["win"]]
        ax.errorbar(range(len(means)), means, yerr=[[s["mean"] - s["ci95"][0] for s in m["win"]],
                                                    [s["ci95"][1] - s["mean"] for s in m["win"]]],
                    marker="o", capsize=3, label=name)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("in-context revisions of the policy's own answer")
    ax.set_ylabel("gold win rate over the reference")
    ax.set_title(f"held-out domains of {r['task']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, "srpo_revisions", TASKS, "sentiment", "synthetic").parse_args(argv)

    def measure(task, cfg, out, report, command):
        return summarise(task, cfg, report, curves(cfg, out), command)

    return run(args, "srpo_revisions", TASKS, "synthetic", miniature, measure, markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
