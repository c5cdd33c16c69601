"""A protocol's report: per method, its held-out measures over (seed, domain) with two-level bootstrap intervals
(seeds, then domains); per domain, every method side by side; plots.

Measures, per held-out domain (each method's test uses the same prompts and per-domain keys):
  gold       mean gold reward of the method's policy (for the reference method: the reference policy's);
  gain       gold − the reference policy's gold on the same prompts;
  win_ref    gold win rate over the reference policy's answers to the same prompts (ties ½);
  win_base   gold win rate over the baseline method's answers to the same prompts (ties ½);
  minus_base gold − the baseline method's gold (a paired difference per domain);
  kl         KL(policy ‖ reference), nats per response (k1 estimate over the policy's samples);
  length     mean response length in tokens;
  rm_acc     the reward model's accuracy on the domain's labelled pairs (reward methods only).

Files: report.json (everything), report.md (tables), per_domain.csv (one row per method, seed and domain),
plots/win_rates.png (win rate over the reference, per domain and method), plots/gains.png (gain and difference
to the baseline with intervals), plots/training.png (each sub-run's training loss) and, with `revisions`,
plots/revisions.png (each policy's gold reward after 0..n in-context revisions).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from metapl.eval.stats import two_level_interval, win_rate
from metapl.protocol.config import ProtocolConfig
from metapl.protocol.methods import method

MEASURES = ("gold", "gain", "win_ref", "win_base", "minus_base", "kl", "length", "rm_acc", "llm_win_ref",
            "llm_win_base")


def domain_rows(name: str, result: dict, baseline: dict) -> list[dict]:
    """{domain, gold, gain, win_ref, win_base, minus_base, kl, length, rm_acc} per held-out domain of one test
    (`result`), against the baseline method's test of the same seed; the reference method reads the baseline's
    reference columns."""
    nan = float("nan")
    rows = []
    base_rows = {r["domain"]: r for r in baseline["per_domain"]}
    for r in (baseline if name == "reference" else result)["per_domain"]:
        b = base_rows[r["domain"]]
        if name == "reference":
            gold, samples, length, kl = r["gold_reference"], r.get("gold_reference_samples"), \
                r.get("length_reference", nan), 0.0
        else:
            gold, samples, length, kl = r["gold_adapted"], r["gold_adapted_samples"], r.get("length_adapted", nan), \
                r.get("kl", nan)
        rows.append({
            "domain": r["domain"], "gold": gold, "gain": gold - r["gold_reference"],
            "win_ref": 0.5 if name == "reference" else r["win_rate"],
            "win_base": win_rate(samples, b["gold_adapted_samples"]) if samples is not None else nan,
            "minus_base": gold - b["gold_adapted"], "kl": kl, "length": length,
            "rm_acc": r.get("rm_pair_accuracy", nan) if method(name).kind == "reward" else nan,
            "llm_win_ref": 0.5 if name == "reference" and "llm_win_ref" in b else r.get("llm_win_ref", nan),
            "llm_win_base": (1.0 - b["llm_win_ref"]) if name == "reference" and "llm_win_ref" in b
            else r.get("llm_win_base", nan)})
    return rows


def _interval(matrix: list[list[float]], resamples: int) -> dict:
    """Mean and 95% two-level interval of values [seeds][domains] (NaN dropped); NaN when nothing is finite."""
    rows = [[v for v in row if math.isfinite(v)] for row in matrix]
    if not any(rows) or any(not r for r in rows):
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")]}
    out = two_level_interval(rows, resamples=resamples, seed=0)
    return {"mean": out["mean"], "ci95": out["ci95"]}


def build_report(cfg: ProtocolConfig, out: Path, results: dict[str, dict[int, dict]],
                 timings: dict[str, dict[int, float | None]], command: str = "") -> dict:
    """The report of a finished protocol: `results[method][seed]` are the held-out tests (meta_test / policy_test
    layout), `timings[method][seed]` the training seconds."""
    names = list(cfg.methods)
    per: dict[str, dict[int, list[dict]]] = {}
    for name in names:
        per[name] = {s: domain_rows(name, results.get(name, {}).get(s), results[cfg.baseline][s])
                     for s in cfg.seeds}
    domains = [r["domain"] for r in per[cfg.baseline][cfg.seeds[0]]]
    resamples = cfg.test.bootstrap
    methods = {}
    for name in names:
        summary = {k: _interval([[r[k] for r in per[name][s]] for s in cfg.seeds], resamples) for k in MEASURES}
        secs = [t for t in (timings.get(name) or {}).values() if t is not None]
        m = method(name)
        methods[name] = {"label": m.title(cfg.feedback), "kind": m.kind, "source": m.source,
                         "train_seconds": float(np.mean(secs)) if secs else None, **summary}
    selection = {}
    if any(cfg.methods[n].grid for n in names):
        selection = json.loads((out / "results" / "selection.json").read_text())
    for name, chosen in selection.items():
        methods[name]["selection"] = {"variants": [dict(v) for v in cfg.methods[name].grid], **chosen}
    sub_runs = []
    for name in names:
        for s in cfg.seeds:
            chosen = selection.get(name, {}).get("best")
            run = out / "runs" / name / ("" if chosen is None else f"v{chosen}") / f"seed{s}"
            setup = json.loads((run / "setup.json").read_text()) if (run / "setup.json").exists() else {}
            if setup:
                sub_runs.append({"method": name, "seed": s, "run_dir": str(run.relative_to(out)),
                                 "describe": setup.get("describe", "")})
    any_result = next(iter(results[cfg.baseline].values()))
    revisions, revision_wins = {}, {}
    for name in names:  # gold after 0..n in-context revisions, per policy method (means over seeds and domains)
        per_seed = [results.get(name, {}).get(s, {}).get("per_domain", []) for s in cfg.seeds]
        if cfg.revisions and all(rows and "gold_revisions" in rows[0] for rows in per_seed):
            revisions[name] = [_interval([[r["gold_revisions"][i] for r in rows] for rows in per_seed], resamples)
                               for i in range(cfg.revisions + 1)]
        if cfg.revisions and all(rows and "win_rate_revisions" in rows[0] for rows in per_seed):
            revision_wins[name] = [_interval([[r["win_rate_revisions"][i] for r in rows] for rows in per_seed],
                                             resamples) for i in range(cfg.revisions + 1)]
    return {"name": cfg.name, "seeds": list(cfg.seeds), "baseline": cfg.baseline, "domains": domains,
            "revisions": revisions, "revision_win_rates": revision_wins,
            "judge": cfg.judge.get("model", "") if cfg.judge else "",
            "feedback": cfg.feedback,
            "benchmark": (cfg.run.get("data") or {}).get("benchmark", "synthetic_domains"),
            "test": any_result["test"], "methods": methods,
            "per_domain": {name: {str(s): rows for s, rows in per[name].items()} for name in names},
            "sub_runs": sub_runs, "command": command}


def interval_text(s: dict | None, digits: int = 3) -> str:
    """A mean with its 95% interval ({"mean", "ci95"}) as "+0.123 [+0.045, +0.201]"; "–" for none or NaN."""
    if s is None or not math.isfinite(s["mean"]):
        return "–"
    lo, hi = s["ci95"]
    return f"{s['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _plain(s: dict, digits: int = 2) -> str:
    return "–" if not math.isfinite(s["mean"]) else f"{s['mean']:.{digits}f}"


def variant_text(variant: dict) -> str:
    """A grid variant ({"steps": 300, "run": {"optim": {"learning_rate": 0.003}}}) as table text
    ("steps=300, optim.learning_rate=0.003")."""
    parts = [f"steps={variant['steps']}"] if "steps" in variant else []

    def flat(d: dict, prefix: str) -> None:
        for k, v in d.items():
            flat(v, f"{prefix}{k}.") if isinstance(v, dict) else parts.append(f"{prefix}{k}={v}")

    flat(variant.get("run", {}), "")
    return ", ".join(parts)


def render(report: dict) -> str:
    """The report as markdown: the summary table, the per-domain table, the sub-runs and the plots."""
    m, base = report["methods"], report["baseline"]
    t = report["test"]
    seeds = report["seeds"]
    lines = [
        f"# Protocol {report['name']}: {len(m)} methods on {len(report['domains'])} held-out domains of "
        f"{report['benchmark']}",
        "",
        f"Seeds {seeds}. Each method's policy answers {t['eval_prompts']} held-out prompts per domain (one "
        "temperature-1 sample each, the same prompts and per-domain keys for every method). Reward models guide the "
        f"KL-regularised projected solver from the reference policy on {t['prompts']} prompts x "
        f"{t['samples_per_prompt']} reference samples per domain. Means over seeds and domains with 95% two-level "
        f"bootstrap intervals (seeds, then domains); win rates count ties as ½; the baseline is {m[base]['label']}."
        + ("" if not any(method(n).bt_reward for n in m) else
           " The methods that need a reward to train are rewarded by "
           + ("the seed's Bradley–Terry RM." if report.get("feedback", "bt") == "bt" else
              "the benchmark's gold judge (oracle feedback).")),
        "",
        f"| method | gold reward | gain over reference | win rate vs reference | win rate vs {base} | "
        f"minus {base} | KL to reference | length | RM pair acc | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in m.items():
        secs = "–" if s["train_seconds"] is None else f"{s['train_seconds']:.0f}"
        lines.append(f"| {s['label']} | {interval_text(s['gold'])} | {interval_text(s['gain'])} | "
                     f"{_plain(s['win_ref'])} | {_plain(s['win_base'])} | {interval_text(s['minus_base'])} | "
                     f"{_plain(s['kl'])} | "
                     f"{_plain(s['length'], 1)} | {_plain(s['rm_acc'])} | {secs} |")
    if any(math.isfinite(s["llm_win_ref"]["mean"]) for s in m.values()):
        lines += ["", f"LLM judge ({report.get('judge', 'HTTP')}): win rate of each method's answers, ties ½, "
                  "each pair asked in both orders.", "", f"| method | vs reference | vs {base} |", "|---|---|---|"]
        lines += [f"| {s['label']} | {interval_text(s['llm_win_ref'], 2)} | {interval_text(s['llm_win_base'], 2)} |"
                  for s in m.values()]
    names = list(m)
    lines += ["", "Per held-out domain: gold reward of each method's policy (mean over seeds).", "",
              "| domain | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, domain in enumerate(report["domains"]):
        cells = [f"{np.mean([report['per_domain'][n][str(s)][i]['gold'] for s in seeds]):+.3f}" for n in names]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    chosen = {name: s["selection"] for name, s in m.items() if s.get("selection")}
    if chosen:
        lines += ["", "Variants chosen on the validation split (meta-train domains, prompts no run trains on): mean "
                  "validation gold reward over the seeds of each variant; the chosen one is in bold and is the one "
                  "tested above.", "", "| method | variant | settings | validation gold |", "|---|---|---|---|"]
        for name, sel in chosen.items():
            for k, (variant, mean) in enumerate(zip(sel["variants"], sel["means"])):
                mark = "**" if k == sel["best"] else ""
                lines.append(f"| {m[name]['label']} | {mark}{k}{mark} | {variant_text(variant)} | "
                             f"{mark}{mean:+.3f}{mark} |")
    if report.get("revisions"):
        n = len(next(iter(report["revisions"].values()))) - 1
        lines += ["", "In-context revisions (SRPO's inference): gold reward of each policy's answer after i "
                  "revisions of its own previous answer (i = 0: the direct answer).", "",
                  "| method | " + " | ".join(f"i = {i}" for i in range(n + 1)) + " |", "|---|" + "---|" * (n + 1)]
        lines += [f"| {m[name]['label']} | " + " | ".join(interval_text(s) for s in curve) + " |"
                  for name, curve in report["revisions"].items()]
        if report.get("revision_win_rates"):
            lines += ["", "Their gold win rate over the reference policy's answers to the same prompts (ties ½):", "",
                      "| method | " + " | ".join(f"i = {i}" for i in range(n + 1)) + " |", "|---|" + "---|" * (n + 1)]
            lines += [f"| {m[name]['label']} | " + " | ".join(_plain(s) for s in curve) + " |"
                      for name, curve in report["revision_win_rates"].items()]
    lines += ["", "Sub-runs:", ""] + [f"- {r['method']}, seed {r['seed']} (`{r['run_dir']}`): {r['describe']}"
                                      for r in report["sub_runs"]]
    lines += ["", "Where each method comes from:", ""] + \
        [f"- {s['label']}: {s['source']}" for s in m.values() if s["source"]]
    plots = ["win_rates", "gains", "training"] + (["revisions"] if report.get("revisions") else [])
    lines += ["", "Plots: " + ", ".join(f"`plots/{name}.png`" for name in plots) + ". All numbers: `report.json`, "
              "`per_domain.csv`."]
    if report.get("command"):
        lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def write_csv(report: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", *("domain", *MEASURES)])
        for name, by_seed in report["per_domain"].items():
            for seed, rows in by_seed.items():
                for r in rows:
                    writer.writerow([name, seed, r["domain"], *(r[k] for k in MEASURES)])


def write_plots(report: dict, out: Path) -> list[Path]:
    """The three PNGs under out/plots (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    m, seeds, domains = report["methods"], report["seeds"], report["domains"]
    names = [n for n in m if n != "reference"]
    paths = []

    grid = np.array([[np.mean([report["per_domain"][n][str(s)][i]["win_ref"] for s in seeds]) for n in names]
                     for i in range(len(domains))])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 1.0 + 0.28 * len(domains)))
    image = ax.imshow(grid, cmap="RdBu", vmin=0, vmax=1, aspect="auto")
    for i in range(len(domains)):
        for j in range(len(names)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(grid[i, j] - 0.5) > 0.3 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(domains)), domains, fontsize=6)
    ax.set_title("gold win rate over the reference policy", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    paths.append(plots / "win_rates.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 0.9 + 0.35 * len(m)), sharey=True)
    for ax, key, title in ((axes[0], "gain", "gold gain over the reference policy"),
                           (axes[1], "minus_base", f"gold minus {report['baseline']}'s")):
        for j, n in enumerate(m):
            s = m[n][key]
            if math.isfinite(s["mean"]):
                ax.errorbar([s["mean"]], [j], xerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]], fmt="o",
                            capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=8)
    axes[0].set_yticks(range(len(m)), [m[n]["label"] for n in m], fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    paths.append(plots / "gains.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if report.get("revisions"):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, curve in report["revisions"].items():
            means = [c["mean"] for c in curve]
            lo = [c["mean"] - c["ci95"][0] for c in curve]
            hi = [c["ci95"][1] - c["mean"] for c in curve]
            ax.errorbar(range(len(curve)), means, yerr=[lo, hi], marker="o", capsize=3, label=name)
        ax.set_xlabel("in-context revisions")
        ax.set_ylabel("gold reward (held-out)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(plots / "revisions.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    trained = report["sub_runs"]
    kinds = list(dict.fromkeys(r["method"] for r in trained)) or ["(none)"]
    cols = min(4, len(kinds))
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(kinds):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, kinds):
        for r in (x for x in trained if x["method"] == name):
            path = out / r["run_dir"] / "metrics.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
            points = [(x["step"], x["loss"]) for x in rows if x.get("kind") == "train" and "loss" in x]
            if points:
                ax.plot(*zip(*points), marker=".", label=f"seed {r['seed']}")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    for row in axes:
        row[0].set_ylabel("training loss", fontsize=7)
    fig.tight_layout()
    paths.append(plots / "training.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render(report))
    write_csv(report, out / "per_domain.csv")
    write_plots(report, out)


__all__ = ["MEASURES", "build_report", "domain_rows", "interval_text", "render", "variant_text", "write_csv",
           "write_plots", "write_report"]
