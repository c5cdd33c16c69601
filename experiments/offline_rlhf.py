"""Offline RLHF (Hu et al., arXiv 2308.12050) at small scale: reward-conditioned SFT ("decision transformer", DT)
against filtered MLE and reward-weighted regression (RWR), with RLOO and PPO on the same judge and each method's
compute beside it.

The paper's claim: DT beats filtered MLE and RWR and is comparable to PPO at about 9-12% of its compute. The
structure it relies on: several scored samples per prompt with real reward variance, so that DT learns from the
low-reward samples as labelled contrast and is asked for a high score at inference.

Each task is an OOD protocol (`metapl.protocol`) with `feedback: gold`: every method's samples are scored by the
task's gold judge, so the methods differ only in how they learn from scores. Each method's steps and learning rate
are chosen on the validation split (the protocol's grid variants; the held-out domains are never seen by the
choice); the chosen variant is tested on the held-out domains, paired per domain against DT. Then the check that
DT's conditioning works: each seed's chosen DT policy is asked for every reward bin on the same held-out prompts
and keys; its gold reward should rise with the bin asked for.

    python experiments/offline_rlhf.py --task synthetic    # synthetic_domains, tiny model, 3 seeds
    python experiments/offline_rlhf.py --task synthetic_longer   # the same with a third, larger grid variant
    python experiments/offline_rlhf.py --miniature         # the pipeline end to end in a minute (a test runs it)

Runs go under --out (default runs/offline_rlhf/<task>; re-running reuses every finished sub-run and test), the
results into experiments/results/offline_rlhf/<task>.{json,md,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_runs import parser, run, tiny  # noqa: E402

from metapl.protocol.report import interval_text as _ci, variant_text  # noqa: E402

ROOT = Path(__file__).resolve().parent
TASKS = {task: ROOT / "configs" / f"protocol_offline_rlhf_{task}.yaml" for task in ("synthetic", "synthetic_longer")}
CLAIM = ("reward-conditioned SFT (DT) beats filtered MLE and reward-weighted regression and is comparable to PPO "
         "at about 9-12% of its compute (Hu et al., arXiv 2308.12050)")
OTHERS = ("mle_filter", "rwr", "rloo", "ppo")


def miniature(mapping: dict) -> dict:
    """The task's protocol shrunk to a tiny model, one seed and a few steps: the pipeline, not the outcome."""
    out = tiny(mapping)
    for name, settings in out["methods"].items():
        if settings and "grid" in settings:
            settings["grid"] = [{"steps": 2}, {"steps": 3}]
        if settings and "data" in settings.get("run", {}):
            settings["run"]["data"] = dict(settings["run"]["data"], sample_prompts=8, samples_per_prompt=4)
    out["test"] = {"prompts": 1, "eval_prompts": 3, "bootstrap": 200, "domains_per_batch": 2}
    return out


def dt_conditioning(cfg, out: Path) -> dict:
    """Per reward bin b: the held-out gold reward [seeds][domains] of each seed's chosen DT policy asked for b,
    and the reference policy's on the same prompts (cached in results/dt_bins.json)."""
    from metapl.protocol.runner import run_dir_of, selected_variant
    from metapl.runs import policy_test, read_run_config
    from metapl.runtime import read_json, write_json

    path = out / "results" / "dt_bins.json"
    done = read_json(path)
    if done is not None:
        return done
    variant = selected_variant(cfg, out, "dt")
    runs = [run_dir_of(out, "dt", s, variant) for s in cfg.seeds]
    bins = read_run_config(runs[0]).offline.bins
    gold, reference = [], None
    for b in range(bins):
        results = [policy_test(run, "heldout", cfg.test, write=False, reward_bin=b) for run in runs]
        gold.append([[r["gold_adapted"] for r in res["per_domain"]] for res in results])
        reference = [[r["gold_reference"] for r in res["per_domain"]] for res in results]
    done = {"bins": bins, "gold": gold, "reference": reference}
    write_json(path, done)
    return done


def _flip(s: dict) -> dict:
    """DT − m from m − DT."""
    return {"mean": -s["mean"], "ci95": [-s["ci95"][1], -s["ci95"][0]]}


def verdict(diff: dict, comparable: bool = False) -> str:
    lo, hi = diff["ci95"]
    if lo > 0:
        return "DT ahead"
    if hi < 0:
        return "DT behind"
    return "level (comparable)" if comparable else "no difference"


def summarise(task: str, cfg, report: dict, bins: dict, command: str) -> dict:
    """The paper's comparisons from the protocol's report (with every grid variant's validation gold reward) and
    the conditioning check."""
    from metapl.eval import two_level_interval

    m = report["methods"]
    rows = {}
    for name, s in m.items():
        if name == "reference":
            continue
        row = {"label": s["label"], "gain": s["gain"], "win_ref": s["win_ref"], "train_seconds": s["train_seconds"],
               "chosen": (s.get("selection") or {}).get("setting")}
        if name != "dt":
            row["dt_minus"] = _flip(s["minus_base"])
            row["dt_win_rate"] = 1.0 - s["win_base"]["mean"]
        rows[name] = row
    gold = np.asarray(bins["gold"])  # [bins, seeds, domains]
    reference = np.asarray(bins["reference"])
    by_bin = [two_level_interval(gold[b] - reference, resamples=cfg.test.bootstrap) for b in range(bins["bins"])]
    rise = two_level_interval(gold[-1] - gold[0], resamples=cfg.test.bootstrap)
    seconds = {n: rows[n]["train_seconds"] for n in rows}
    verdicts = {f"DT vs {m[n]['label']}": verdict(rows[n]["dt_minus"], comparable=n in ("rloo", "ppo"))
                for n in OTHERS if n in rows}
    compute = {f"DT / {n}": seconds["dt"] / seconds[n] for n in ("rloo", "ppo")
               if n in seconds and seconds[n] and seconds.get("dt")}
    return {"experiment": "offline_rlhf", "task": task, "claim": CLAIM, "protocol": report["name"],
            "seeds": report["seeds"], "domains": len(report["domains"]), "feedback": report.get("feedback"),
            "methods": rows, "dt_bins": {"gain_by_bin": by_bin, "top_minus_bottom": rise},
            "verdicts": verdicts, "compute_ratio": compute,
            "variants": {n: {"settings": s["selection"]["variants"], "validation_gold": s["selection"]["means"],
                             "chosen": s["selection"]["best"]} for n, s in m.items() if s.get("selection")},
            "command": command}


def markdown(r: dict, config: str) -> str:
    lines = [f"# Offline RLHF on `{r['task']}`: reward-conditioned SFT against filtered MLE, RWR, RLOO and PPO", "",
             f"The paper's claim: {r['claim']}.", "",
             f"Protocol `{r['protocol']}` ([config]({config})): seeds {r['seeds']}, {r['domains']} held-out domains, "
             "every method's samples scored by the gold judge. Each method's steps and learning rate were chosen on "
             "the validation split. Held-out gold reward, 95% two-level bootstrap intervals (seeds, then domains); "
             "DT − method is paired per domain on the same prompts and keys; win rates count ties as ½; training "
             "seconds include drawing and scoring the offline sample set.", "",
             "| method | chosen variant | gain over reference | win rate vs reference | DT − method | DT's win rate "
             "vs method | training s |", "|---|---|---|---|---|---|---|"]
    for name, row in r["methods"].items():
        chosen = "–" if not row["chosen"] else variant_text(row["chosen"])
        secs = "–" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}"
        lines.append(f"| {row['label']} | {chosen} | {_ci(row['gain'])} | {row['win_ref']['mean']:.2f} | "
                     f"{_ci(row.get('dt_minus'))} | "
                     f"{'–' if 'dt_win_rate' not in row else format(row['dt_win_rate'], '.2f')} | {secs} |")
    b = r["dt_bins"]
    lines += ["", "The conditioning check: the chosen DT policies asked for each reward bin (0 lowest) on the same "
              "held-out prompts and keys, gold gain over the reference policy:", "",
              "| bin asked for | " + " | ".join(str(i) for i in range(len(b["gain_by_bin"]))) + " |",
              "|---|" + "---|" * len(b["gain_by_bin"]),
              "| gain | " + " | ".join(_ci(s) for s in b["gain_by_bin"]) + " |", "",
              f"Top bin minus bottom bin: {_ci(b['top_minus_bottom'])}.", "", "Against the paper:", ""]
    lines += [f"- {k}: {v}" for k, v in r["verdicts"].items()]
    lines += [f"- compute, DT's training seconds over {k.split('/ ')[1]}'s: {v:.2f}"
              for k, v in r["compute_ratio"].items()]
    if r.get("variants"):
        lines += ["", "Every grid variant trained (all seeds), by mean validation gold reward over the seeds; the "
                  "chosen one is marked *:", "", "| method | variant | validation gold |", "|---|---|---|"]
        for n, v in r["variants"].items():
            lines += [f"| {r['methods'][n]['label']} | {variant_text(setting)}{' *' if k == v['chosen'] else ''} | "
                      f"{gold:+.3f} |" for k, (setting, gold) in enumerate(zip(v["settings"], v["validation_gold"]))]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = list(r["methods"])
    for j, n in enumerate(names):
        s = r["methods"][n]["gain"]
        a.errorbar([s["mean"]], [j], xerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]], fmt="o",
                   capsize=3)
        secs = r["methods"][n]["train_seconds"]
        if secs is not None:
            a.annotate(f"{secs:.0f} s", (s["ci95"][1], j), xytext=(4, -3), textcoords="offset points", fontsize=7)
    a.set_yticks(range(len(names)), names, fontsize=7)
    a.invert_yaxis()
    a.axvline(0, color="grey", lw=0.8)
    a.set_title("held-out gold gain over the reference (training s)", fontsize=8)
    gains = r["dt_bins"]["gain_by_bin"]
    b.errorbar(range(len(gains)), [g["mean"] for g in gains],
               yerr=[[g["mean"] - g["ci95"][0] for g in gains], [g["ci95"][1] - g["mean"] for g in gains]],
               marker="o", capsize=3)
    b.axhline(0, color="grey", lw=0.8)
    b.set_xticks(range(len(gains)))
    b.set_xlabel("reward bin DT is asked for", fontsize=8)
    b.set_title("DT's gold gain by the bin it is conditioned on", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, "offline_rlhf", TASKS, "synthetic", "synthetic").parse_args(argv)

    def measure(task, cfg, out, report, command):
        return summarise(task, cfg, report, dt_conditioning(cfg, out), command)

    return run(args, "offline_rlhf", TASKS, "synthetic", miniature, measure, markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
