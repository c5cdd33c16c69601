"""The evidence study of experiments/PROTOCOL.md: when does a meta-learned reward model beat pooled Bradley–Terry
on held-out domains? Every method on the same pairs, prompts, reference samples and keys, several training seeds,
settings tuned on validation prompts of the meta-train domains. Two studies: `SYNTHETIC` (one cell per mechanism
of mechanism_domains) and `SENTIMENT` (real text, sentiment_targets with SmolLM2-135M + LoRA); `MINIATURE` runs
the pipeline on a tiny model in a couple of minutes.

    python experiments/evidence.py --cell off            # one cell (H0); resumable: finished stages are reused
    python experiments/evidence.py --cell attributes --cell behaviour
    python experiments/evidence.py --all                 # every cell of the synthetic study
    python experiments/evidence.py --regime attributes   # H4: the cell's trained RMs over solver K and β
    python experiments/evidence.py --cell sentiment_targets --seed 0 --group bt   # H5: one unit (amendment 5)

A cell runs these stages, each written to disk before the next and skipped when its file exists:
1. train, per seed: the Bradley–Terry RM (`rm`), the meta-learned RM (`meta`, projected inner solver), with
   --onpolicy also the on-policy inner solver (`meta_onpolicy`), and DPO on the pooled pairs for each β of the
   study's `dpo_betas`;
2. tune on the validation split (`metapl.meta.tuning`, which refuses the held-out split): each reward model's
   meta-test solver over the study's `solver_grid` and the gold oracle's; DPO's β;
3. measure on the held-out domains with the tuned settings: meta-test of every reward model and of the oracle,
   policy test of DPO;
4. report: paired per-domain differences against BT with two-level bootstrap intervals (seeds, then domains),
   head-to-head win rates, RM pair accuracy; JSON + markdown + PNG in experiments/results/evidence/.

The real-text study tunes per seed (PROTOCOL.md, amendment 5): each (seed, group) runs stages 1-3 on its own runs
(groups: bt with the gold oracle, meta, meta_onpolicy, dpo) and is kept as
experiments/results/evidence/<cell>/units/seed<S>/<group>.json with the sha256 of the data build's records, so
units can run in separate sessions (`--seed S --group G`); the report covers the seeds whose every group is kept
and says which it lacks.

--regime CELL (after the cell) meta-tests the cell's BT and meta-learned reward models on the held-out domains at
every (K, β) of REGIME_STEPS x REGIME_BETAS with the same lr, and reports meta − BT at each: a sweep reported
whole, not a choice, so it does not feed back into any tuned setting.

Run directories go under --out (default runs/evidence). Timing on the 2-core CPU machine: about 18 minutes per
synthetic cell without --onpolicy; the sentiment cell takes hours per seed (resumable).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from metapl.runtime import read_json, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "evidence"


@dataclasses.dataclass(frozen=True)
class Study:
    """A study's cells and fixed settings (PROTOCOL.md, amendment 1): what every cell trains, tunes and measures;
    every run starts from the built-in defaults and these overrides."""

    name: str
    cells: dict  # name -> (benchmark knobs, description)
    seeds: tuple = (0, 1, 2)
    rm_steps: int = 150  # both reward models (as in experiments/meta_vs_bt.py)
    meta_steps: int = 150
    dpo_steps: int = 200
    checkpoint_every: int | None = None  # None: one checkpoint at the end (a killed run restarts from there)
    # True: each (seed, group) is a unit (train, tune on that seed's runs, measure) kept with the results, so the
    # units of a long study can run in separate sessions (amendment 5); False: tuning averages over the seeds
    tune_per_seed: bool = False
    common: tuple = ("data.benchmark=mechanism_domains", "optim.learning_rate=0.001")
    rm: tuple = ("data.batch_size=16",)
    meta: tuple = ("meta.inner_solver=projected", "meta.method=unrolled", "meta.inner_steps=4", "meta.inner_lr=0.02",
                   "meta.beta=0.5", "meta.beta_out=1.0", "meta.domains_per_episode=4", "meta.support_prompts=8",
                   "meta.samples_per_prompt=4", "meta.query_pairs=8", "meta.feedback_budget=64")
    dpo: tuple = ("data.batch_size=8", "optim.max_grad_norm=1.0")
    dpo_betas: tuple = (0.1, 0.5)
    solver_steps: int = 4  # the meta-trained K; H4 (the regime sweep) varies it
    solver_grid: tuple = tuple({"steps": 4, "beta": beta, "lr": lr} for beta in (0.1, 0.3, 1.0) for lr in (0.02, 0.05))
    test: dict = dataclasses.field(default_factory=lambda: {
        "prompts": 16, "eval_prompts": 32, "samples_per_prompt": 4, "seed": 0, "bootstrap": 2000})


# The cells of mechanism_domains (64 domains, 24 held out): each is the benchmark's knobs.
SYNTHETIC = Study("synthetic", {
    "off": ([], "every mechanism off (= synthetic_domains): H0"),
    "attributes": (["data.mechanisms.attributes=2"], "A: two domain attributes spelt in the prompt: H1"),
    "behaviour": (["data.mechanisms.behaviour_shift=2.0"], "B: pairs from a behaviour policy (shift 2.0): H2"),
    "budget16": (["data.synthetic.pairs_per_domain=16"], "C: 16 labelled pairs per domain: H3"),
    # 3 training pairs per domain: the meta run's episodes query all 3 (amendment 3); DPO has no meta section
    "budget4": (["data.synthetic.pairs_per_domain=4", "meta.query_pairs=3"], "C: 4 labelled pairs per domain: H3"),
})
# Real text (H5): sentiment_targets with SmolLM2-135M + LoRA (PROTOCOL.md, amendment 4). The build it reads
# (kept in git under experiments/data, amendment 5; rebuilt in about 36 minutes by
#   metapl data build sentiment_targets --data-dir experiments/data --pairs-per-domain 230 \
#       --heldout-pairs-per-domain 16 --prompts-per-domain 32 --min-margin 0.3 --positive-fraction 0.75 \
#       --pairs-per-prompt 2 --overwrite)
SENTIMENT = Study(
    "sentiment", {"sentiment_targets": ([], "real text, each domain wants the tone its prompts state: H5")},
    rm_steps=300, meta_steps=100, dpo_steps=300, checkpoint_every=50, tune_per_seed=True,
    common=("data.benchmark=sentiment_targets", "data.data_dir=experiments/data", "data.max_prompt_tokens=40",
            "data.max_response_tokens=24", "data.batch_size=8", "data.eval_fraction=0.1", "data.eval_prompts=16",
            "model.pretrained=smollm2-135m", "model.lora_rank=8", "model.lora_targets=[q,k,v,o,up,down]",
            "optim.learning_rate=0.001"),
    rm=(), dpo=(), dpo_betas=(0.1,),
    meta=("meta.inner_solver=projected", "meta.method=unrolled", "meta.inner_steps=2", "meta.inner_lr=0.05",
          "meta.beta=0.5", "meta.beta_out=1.0", "meta.domains_per_episode=2", "meta.support_prompts=2",
          "meta.samples_per_prompt=4", "meta.support_pool=8", "meta.query_pairs=4", "meta.feedback_budget=1000"),
    solver_steps=2, solver_grid=tuple({"steps": 2, "beta": beta, "lr": 0.05} for beta in (0.3, 1.0)),
    test={"prompts": 2, "eval_prompts": 8, "samples_per_prompt": 4, "seed": 0, "bootstrap": 2000,
          "domains_per_batch": 2})
# The pipeline end to end in a couple of minutes (tests/slow/test_evidence_miniature.py): tiny model and benchmark.
MINIATURE = Study(
    "miniature", {"attributes": (["data.mechanisms.attributes=2"], "miniature of cell A")}, seeds=(0, 1),
    rm_steps=3, meta_steps=2, dpo_steps=3,
    common=("data.benchmark=mechanism_domains", "data.synthetic.num_domains=12", "data.synthetic.num_heldout=6",
            "data.synthetic.pairs_per_domain=16", "model.hidden_size=16", "model.num_layers=1"),
    meta=("meta.inner_steps=2", "meta.domains_per_episode=2", "meta.support_prompts=2", "meta.query_pairs=2",
          "meta.support_pool=4"),
    dpo_betas=(0.1, 0.5), solver_steps=2,
    solver_grid=({"steps": 2, "beta": 0.3, "lr": 0.05}, {"steps": 2, "beta": 1.0, "lr": 0.05}),
    test={"prompts": 2, "eval_prompts": 3, "samples_per_prompt": 2, "seed": 0, "bootstrap": 200,
          "domains_per_batch": 2})
STUDIES = {s.name: s for s in (SYNTHETIC, SENTIMENT, MINIATURE)}
CELLS = {cell: study for study in STUDIES.values() for cell in study.cells if study is not MINIATURE}
REGIME_STEPS = (1, 2, 4, 8, 16)
REGIME_BETAS = (0.1, 0.3, 1.0)
REGIME_LR = 0.02
LONG_STEPS, LONG_LR = (16, 64), 0.1  # amendment 2: a solver that moves the policy further


def log(msg: str) -> None:
    print(f"[evidence {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ train

def trained(run_dir: Path, algo: str, overrides: list[str], steps: int, checkpoint_every: int | None = None) -> Path:
    """Train (or finish) a run; a run whose last checkpoint is at `steps` is reused, one with an earlier checkpoint
    resumes from it."""
    from metapl.runs import prepare_run_dir, train
    from metapl.train.checkpoints import checkpoint_manager

    if (run_dir / "config.yaml").exists() and checkpoint_manager(run_dir).latest_step() == steps:
        return run_dir
    resume = (run_dir / "config.yaml").exists()
    args = [f"algo={algo}", f"steps={steps}", f"eval_every={steps}", f"checkpoint_every={checkpoint_every or steps}",
            *overrides]
    cfg = prepare_run_dir(run_dir, None, [] if resume else args, resume=resume)
    t0 = time.perf_counter()
    train(run_dir, cfg, resume=resume, progress=False)
    log(f"trained {run_dir} ({time.perf_counter() - t0:.0f} s)")
    return run_dir


GROUPS = ("bt", "meta", "meta_onpolicy", "dpo")  # what one training run (or DPO's β grid) measures; bt with the oracle


def train_cell(study: Study, cell: str, root: Path, onpolicy: bool, seeds: tuple | None = None,
               groups: tuple = GROUPS) -> dict[str, list[Path]]:
    knobs = study.cells[cell][0]
    runs: dict[str, list[Path]] = {}

    def add(method, algo, overrides, steps, seed):
        if method.split("_beta")[0] in groups:
            runs.setdefault(method, []).append(trained(root / method / f"seed{seed}", algo, overrides, steps,
                                                       study.checkpoint_every))

    policy_knobs = [k for k in knobs if not k.startswith("meta.")]  # a policy run has no meta section
    for seed in study.seeds if seeds is None else seeds:  # the cell's knobs come last: they override the study's
        base = [*study.common, f"seed={seed}"]
        add("bt", "rm", base + list(study.rm) + knobs, study.rm_steps, seed)
        add("meta", "meta", base + list(study.meta) + knobs, study.meta_steps, seed)
        if onpolicy:
            add("meta_onpolicy", "meta", base + list(study.meta) + ["meta.inner_solver=onpolicy"] + knobs,
                study.meta_steps, seed)
        for beta in study.dpo_betas:
            add(f"dpo_beta{beta}", "dpo", base + list(study.dpo) + policy_knobs + [f"loss.beta={beta}"],
                study.dpo_steps, seed)
    return runs


# ------------------------------------------------------------------------------------------------------- tune

def tuned(study: Study, cell_root: Path, runs: dict[str, list[Path]]) -> dict:
    """The validation-chosen setting of every method (stage 2); tuning.json caches it."""
    from metapl.meta.tuning import best_setting, tune_solver
    from metapl.runs import MetaTestConfig, policy_test

    path = cell_root / "tuning.json"
    done = read_json(path) or {}
    test = MetaTestConfig(**study.test)
    reward_models = [m for m in runs if not m.startswith("dpo")]
    for method in reward_models + (["gold"] if "bt" in runs else []):  # the oracle guides BT's (reference) policy
        if method in done:
            continue
        source = runs["bt"] if method == "gold" else runs[method]
        trial = MetaTestConfig(**study.test, reward="gold" if method == "gold" else "model")
        log(f"tuning {method} on the validation split ({len(study.solver_grid)} settings x {len(source)} seeds)")
        done[method] = tune_solver(source, list(study.solver_grid), trial, progress=False)
        write_json(path, done)
    if "dpo" not in done and any(m.startswith("dpo") for m in runs):
        table = []
        for beta in study.dpo_betas:
            per_run = [policy_test(r, "validation", test, write=False)["gold_adapted"]["mean"]
                       for r in runs[f"dpo_beta{beta}"]]
            table.append({"setting": {"loss.beta": beta}, "per_run": per_run, "mean": float(np.mean(per_run))})
        done["dpo"] = {"split": "validation", **best_setting(table), "table": table}
        write_json(path, done)
    return done


# ---------------------------------------------------------------------------------------------------- measure

def measured(study: Study, cell_root: Path, runs: dict[str, list[Path]], tuning: dict) -> dict[str, list[dict]]:
    """Held-out results per method and seed (stage 3), with the tuned settings; heldout/<method>.json caches."""
    from metapl.runs import MetaTestConfig, meta_test, policy_test

    test = MetaTestConfig(**study.test)
    out = {}
    for method, choice in tuning.items():
        path = cell_root / "heldout" / f"{method}.json"
        cached = read_json(path)
        if cached is not None:
            out[method] = cached
            continue
        log(f"held-out measurement of {method} with {choice['best']}")
        if method == "dpo":
            beta = choice["best"]["loss.beta"]
            results = [policy_test(r, "heldout", test, write=False) for r in runs[f"dpo_beta{beta}"]]
        else:
            source = runs["bt"] if method == "gold" else runs[method]
            trial = dataclasses.replace(test, reward="gold" if method == "gold" else "model", **choice["best"])
            results = [meta_test(r, "heldout", trial, write=False, progress=False) for r in source]
        write_json(path, results)
        out[method] = results
    return out


# ------------------------------------------------------------------------------------------------ seed units

def data_fingerprint(run_dir: Path) -> str | None:
    """The content hash of the build a run read (None for a benchmark generated in memory)."""
    from metapl.data.commands import default_data_dir
    from metapl.data.tfds_builders import VERSION, build_fingerprint
    from metapl.runs import read_run_config

    data = read_run_config(run_dir).data
    root = Path(data.data_dir) if data.data_dir else default_data_dir()
    return build_fingerprint(root, data.benchmark) if (root / data.benchmark / "pairs" / VERSION).exists() else None


def seed_unit(study: Study, cell: str, out: Path, seed: int, group: str, units: Path) -> dict:
    """One (seed, group) of a per-seed study (amendment 5): the group's runs trained (bt: the BT RM, measured with
    the gold oracle; meta; meta_onpolicy; dpo: every β), their settings tuned on the validation split with this
    seed's runs only, and every method measured on the held-out domains. Kept as units/seed<S>/<group>.json beside
    the results, with the fingerprint of the build it read, so a later session reuses it without its runs."""
    path = units / f"seed{seed}" / f"{group}.json"
    done = read_json(path)
    if done is not None:
        return done
    root = out / cell / f"seed{seed}" / group
    runs = train_cell(study, cell, out / cell, group == "meta_onpolicy", seeds=(seed,), groups=(group,))
    first = next(iter(runs.values()))[0]
    tuning = tuned(study, root, runs)
    unit = {"seed": seed, "group": group, "data_fingerprint": data_fingerprint(first), "tuning": tuning,
            "heldout": measured(study, root, runs, tuning), "domain_kinds": domain_kinds(first)}
    write_json(path, unit)
    log(f"seed {seed}, {group} of cell {cell} kept in {path}")
    return unit


def merged_units(units: list[dict]) -> tuple[dict, dict, dict]:
    """(results {method: [one result per seed]}, tuning {method: {"best", "criterion", "per_seed"}}, domain kinds)
    of the seed units of one cell (each unit: {"seed", "data_fingerprint", "tuning", "heldout", "domain_kinds"}, one
    or several per seed); units of different builds, or seeds with different methods, are refused."""
    prints = {u["data_fingerprint"] for u in units}
    if len(prints) > 1:
        raise SystemExit(f"the seed units were measured on different builds (fingerprints {sorted(map(str, prints))})"
                         "; rebuild the data with the study's command and re-run the seeds that differ")
    seeds: dict[int, dict] = {}
    for u in units:
        seed = seeds.setdefault(u["seed"], {"tuning": {}, "heldout": {}})
        seed["tuning"].update(u["tuning"])
        seed["heldout"].update(u["heldout"])
    order = sorted(seeds)
    methods = [set(seeds[s]["heldout"]) for s in order]
    if any(m != methods[0] for m in methods):
        raise SystemExit(f"the seeds measured different methods: {dict(zip(order, methods))}")
    results = {m: [seeds[s]["heldout"][m][0] for s in order] for m in seeds[order[0]]["heldout"]}
    tuning = {}
    for m in results:
        per_seed = {f"seed {s}": seeds[s]["tuning"][m] for s in order}
        settings = [t["best"] for t in per_seed.values()]
        tuning[m] = {"best": settings[0] if all(x == settings[0] for x in settings)
                     else {k: t["best"] for k, t in per_seed.items()},
                     "criterion": float(np.mean([t["criterion"] for t in per_seed.values()])),
                     "per_seed": per_seed}
    return results, tuning, units[0]["domain_kinds"]


def kept_units(units: Path, study: Study, groups: tuple) -> tuple[list[dict], dict[int, list[str]]]:
    """(the units of every seed that has all `groups`, {seed: groups kept} of the seeds still incomplete)."""
    complete, partial = [], {}
    for seed in study.seeds:
        found = {g: read_json(units / f"seed{seed}" / f"{g}.json") for g in groups}
        kept = [g for g, u in found.items() if u is not None]
        if len(kept) == len(groups):
            complete += list(found.values())
        elif kept:
            partial[seed] = kept
    return complete, partial


# ----------------------------------------------------------------------------------------------------- report

LABELS = {"bt": "Bradley–Terry RM", "meta": "meta-learned RM (projected)",
          "meta_onpolicy": "meta-learned RM (on-policy)", "gold": "gold reward (oracle)",
          "dpo": "DPO on the pooled pairs (no RM)"}


def domain_kinds(bt_run: Path) -> dict[str, str | None]:
    """Held-out domain -> its kind: interpolation / extrapolation (mechanism_domains with attributes), the
    target tone (sentiment_targets), else None."""
    from metapl.runs import read_run_config
    from metapl.train.spec import build_model_and_benchmark

    bench = build_model_and_benchmark(read_run_config(bt_run))[2]
    if hasattr(bench, "targets"):
        return {d: f"wants {'positive' if t > 0 else 'negative'}" for d, t in bench.targets.items()}
    return {d: bench.domains.heldout_kind(d) for d in bench.domains.heldout_domains}


def head_to_head(a: list[dict], b: list[dict], key: str = "gold_adapted_samples") -> np.ndarray:
    """[S, D] win rate of method a's samples over method b's (same prompts and keys per domain; ties ½), by the
    gold judge (key "cross_adapted_samples": by the second judge)."""
    from metapl.eval import win_rate

    return np.asarray([[win_rate(x[key], y[key])
                        for x, y in zip(ra["per_domain"], rb["per_domain"])] for ra, rb in zip(a, b)])


def per_domain(results: list[dict], key: str) -> np.ndarray:
    return np.asarray([[r[key] for r in res["per_domain"]] for res in results], dtype=float)


def cell_report(study: Study, cell: str, results: dict[str, list[dict]], tuning: dict, kinds: dict,
                command: str, seeds: list | None = None) -> dict:
    from metapl.eval import two_level_interval

    bt = per_domain(results["bt"], "gold_adapted")
    domains = [r["domain"] for r in results["bt"][0]["per_domain"]]
    for method, res in results.items():  # every method was measured on the same domains and reference samples
        if [r["domain"] for r in res[0]["per_domain"]] != domains or \
                not np.allclose(per_domain(res, "gold_reference"), per_domain(results["bt"], "gold_reference")):
            raise ValueError(f"{cell}: {method} was not measured on BT's domains and reference samples")
    subsets = {"all": np.ones(len(domains), bool)}
    for kind in sorted({k for k in kinds.values() if k}):
        subsets[kind] = np.asarray([kinds[d] == kind for d in domains])
    methods = {}
    for method, res in results.items():
        gold = per_domain(res, "gold_adapted")
        ref = per_domain(res, "gold_reference")
        row = {"setting": tuning[method]["best"], "validation_criterion": tuning[method]["criterion"],
               "gold": two_level_interval(gold), "gain": two_level_interval(gold - ref),
               "win_rate_vs_reference": two_level_interval(per_domain(res, "win_rate")),
               "per_seed_gold": gold.mean(axis=1).tolist(), "per_seed_gain": (gold - ref).mean(axis=1).tolist(),
               "per_domain_gold": gold.tolist()}  # [seeds, domains]
        acc = per_domain(res, "rm_pair_accuracy")
        if method != "gold" and np.isfinite(acc).any():  # the oracle has no RM: its runs carry BT's
            row["rm_pair_accuracy"] = two_level_interval(acc)
            row["per_seed_rm_pair_accuracy"] = np.nanmean(acc, axis=1).tolist()
        if method != "bt":
            diff = gold - bt
            row["minus_bt"] = {name: dict(two_level_interval(diff[:, mask]),
                                          wins_per_seed=(diff[:, mask] > 0).sum(axis=1).tolist())
                               for name, mask in subsets.items()}
            row["win_rate_vs_bt"] = two_level_interval(head_to_head(res, results["bt"]))
        if "cross_adapted" in res[0]["per_domain"][0]:  # the second judge's view of the same samples
            cross = per_domain(res, "cross_adapted")
            row["cross"] = {"judge": res[0]["per_domain"][0]["cross_judge"],
                            "gain": two_level_interval(cross - per_domain(res, "cross_reference"))}
            if method != "bt":
                row["cross"]["minus_bt"] = two_level_interval(cross - per_domain(results["bt"], "cross_adapted"))
                row["cross"]["win_rate_vs_bt"] = two_level_interval(
                    head_to_head(res, results["bt"], "cross_adapted_samples"))
        methods[method] = row
    return {"cell": cell, "study": study.name, "description": study.cells[cell][1], "knobs": study.cells[cell][0],
            "seeds": list(study.seeds) if seeds is None else list(seeds), "planned_seeds": list(study.seeds),
            "tuned_per_seed": study.tune_per_seed, "heldout_domains": domains,
            "domain_kinds": {d: kinds.get(d) for d in domains}, "methods": methods, "tuning": tuning,
            "command": command, "settings": dataclasses.asdict(study) | {"cells": None}}


def _ci(s: dict, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(s['mean'])} [{f.format(s['ci95'][0])}, {f.format(s['ci95'][1])}]"


def verdict(s: dict, greater: bool = True) -> str:
    lo, hi = s["ci95"]
    if (lo > 0) if greater else (hi < 0):
        return "supported"
    if (hi < 0) if greater else (lo > 0):
        return "contradicted"
    return "not supported"


def _setting(best: dict) -> str:
    """A tuned setting ({"beta": 0.3}) or one per seed ({"seed 0": {...}, ...}) as table text."""
    if all(isinstance(v, dict) for v in best.values()):
        return "; ".join(f"{seed}: {_setting(v)}" for seed, v in best.items())
    return ", ".join(f"{a}={b}" for a, b in best.items())


def cell_markdown(report: dict) -> str:
    m = report["methods"]
    order = [k for k in ("bt", "meta", "meta_onpolicy", "dpo", "gold") if k in m]
    planned = report.get("planned_seeds", report["seeds"])
    lines = [f"# Evidence cell `{report['cell']}`: {report['description']}", ""]
    if report["seeds"] != planned:
        started = "; ".join(f"seed {k} has {', '.join(v)}" for k, v in report.get("incomplete_seeds", {}).items())
        lines += [f"**Partial: seeds {report['seeds']} of the {planned} the protocol needs"
                  + (f" (under way: {started})" if started else "") + ".** The seeds still to run are the same "
                  "command; nothing below is a verdict until every seed is in.", ""]
    lines += [
        f"{report['study']} study, {', '.join(report['knobs']) or 'no knob set'}; {len(report['heldout_domains'])} "
        f"held-out domains, seeds {report['seeds']}. Every method's settings were chosen on the validation split "
        "(meta-train domains, prompts no training run reads)"
        + (", for each seed on its own runs" if report.get("tuned_per_seed") else "")
        + "; intervals are 95% two-level bootstrap (seeds, then domains)."
        + (f" Data build fingerprint (sha256 of its records): `{report['data_fingerprint'][:16]}…`."
           if report.get("data_fingerprint") else ""),
        "",
        "| method | tuned setting | gold reward (held-out) | gain vs reference | win rate vs reference | "
        "RM pair accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for k in order:
        r = m[k]
        setting = _setting(r["setting"])
        acc = _ci(r["rm_pair_accuracy"]) if "rm_pair_accuracy" in r else "–"
        lines.append(f"| {LABELS[k]} | {setting} | {_ci(r['gold'])} | {_ci(r['gain'], True)} | "
                     f"{_ci(r['win_rate_vs_reference'])} | {acc} |")
    if len(report["seeds"]) > 1 and all("per_seed_gain" in m[k] for k in order):
        lines += ["", "Per training seed: gain vs reference (mean over domains) and, for the reward models, held-out "
                  "pair accuracy:", "", "| method | " + " | ".join(f"seed {s}" for s in report["seeds"]) + " |",
                  "|---|" + "---|" * len(report["seeds"])]
        for k in order:
            gains = m[k]["per_seed_gain"]
            accs = m[k].get("per_seed_rm_pair_accuracy", [None] * len(gains))
            cells = [f"{g:+.3f}" + ("" if a is None else f", accuracy {a:.2f}") for g, a in zip(gains, accs)]
            lines.append(f"| {LABELS[k]} | " + " | ".join(cells) + " |")
    if "meta_onpolicy" not in m:
        lines += ["", "The on-policy meta-learned RM was not run in this cell (`--onpolicy`); the meta RM above is "
                  "the projected one."]
    lines += ["", "Paired per held-out domain against the Bradley–Terry RM (same prompts, reference samples and keys):",
              "", "| method | domains | minus BT, gold reward | domains won per seed | head-to-head win rate vs BT |",
              "|---|---|---|---|---|"]
    for k in order[1:]:
        for subset, s in m[k]["minus_bt"].items():
            lines.append(f"| {LABELS[k]} | {subset} | {_ci(s, True)} | {s['wins_per_seed']} of {s['domains']} | "
                         f"{_ci(m[k]['win_rate_vs_bt']) if subset == 'all' else ''} |")
    if all("cross" in m[k] for k in order):
        lines += ["", f"The same samples by the second judge ({m['bt']['cross']['judge']}), a cross-check no method "
                  "was trained or tuned on:", "",
                  "| method | gain vs reference | minus BT | head-to-head win rate vs BT |", "|---|---|---|---|"]
        for k in order:
            c = m[k]["cross"]
            lines.append(f"| {LABELS[k]} | {_ci(c['gain'], True)} | "
                         + (f"{_ci(c['minus_bt'], True)} | {_ci(c['win_rate_vs_bt'])} |" if k != "bt" else "– | – |"))
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def cell_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["methods"]
    methods = [k for k in ("meta", "meta_onpolicy", "dpo", "gold") if k in m]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, k in enumerate(methods):
        s = m[k]["minus_bt"]["all"]
        ax.errorbar([i], [s["mean"]], yerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]], fmt="o",
                    capsize=4)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(methods)), [LABELS[k].replace(" (", "\n(") for k in methods], fontsize=7)
    ax.set_ylabel("gold reward minus BT's (held-out)")
    ax.set_title(f"cell {report['cell']}: {report['description']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_cell(study: Study, cell: str, out: Path, onpolicy: bool, command: str, results: Path = RESULTS,
             seeds: tuple | None = None, groups: tuple | None = None) -> dict:
    """Every stage of a cell, then its report. A per-seed study can run only some seeds and groups (units); its
    report covers the seeds whose every group is kept and says which seeds it lacks."""
    root = out / cell
    t0 = time.perf_counter()
    if study.tune_per_seed:
        units = results / cell / "units"
        wanted = tuple(g for g in GROUPS if g != "meta_onpolicy" or onpolicy)
        for seed in study.seeds if seeds is None else seeds:
            for group in wanted if groups is None else groups:
                seed_unit(study, cell, out, seed, group, units)
        kept, partial = kept_units(units, study, wanted)
        if not kept:
            log(f"cell {cell}: no seed has every group yet ({partial}); no report")
            return {"cell": cell, "partial": partial}
        measurements, tuning, kinds = merged_units(kept)
        report = cell_report(study, cell, measurements, tuning, kinds, command,
                             seeds=sorted({u["seed"] for u in kept}))
        report["data_fingerprint"] = kept[0]["data_fingerprint"]
        report["incomplete_seeds"] = {str(k): v for k, v in partial.items()}
    else:
        if seeds is not None or groups is not None:
            raise SystemExit(f"--seed and --group apply to per-seed studies only; the {study.name} study tunes over "
                             "all seeds")
        runs = train_cell(study, cell, root, onpolicy)
        tuning = tuned(study, root, runs)
        measurements = measured(study, root, runs, tuning)
        report = cell_report(study, cell, measurements, tuning, domain_kinds(runs["bt"][0]), command)
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / f"{cell}.json", report)
    (results / f"{cell}.md").write_text(cell_markdown(report))
    cell_plot(report, results / f"{cell}.png")
    log(f"cell {cell} done in {time.perf_counter() - t0:.0f} s: {results / cell}.md")
    return report


def regime_grid() -> list[tuple[int, float, float]]:
    """(K, β, lr): the registered sweep (amendment 1) and the longer, faster one added by amendment 2."""
    return [(k, beta, REGIME_LR) for k in REGIME_STEPS for beta in REGIME_BETAS] + \
        [(k, beta, LONG_LR) for k in LONG_STEPS for beta in REGIME_BETAS]


def run_regime(study: Study, cell: str, out: Path, results: Path = RESULTS, grid: list | None = None) -> dict:
    """H4: BT, meta and the gold oracle over the solver's K, β and lr (held-out domains, every seed), meta − BT and
    oracle − BT at each; regime_<cell>.{json,md,png}."""
    from metapl.eval import two_level_interval
    from metapl.runs import MetaTestConfig, meta_test

    root = out / cell
    runs = {m: [root / m / f"seed{s}" for s in study.seeds] for m in ("bt", "meta")}
    missing = [str(r) for rs in runs.values() for r in rs if not (r / "config.yaml").exists()]
    if missing:
        raise SystemExit(f"run the cell first (python experiments/evidence.py --cell {cell}); missing {missing}")
    cache = root / "regime.json"
    done = read_json(cache) or {}
    rows = []
    grid = grid or regime_grid()
    for k, beta, lr in grid:
        key = f"K={k},beta={beta},lr={lr}"
        if key not in done:
            log(f"regime {cell}: {key}")
            test = dataclasses.replace(MetaTestConfig(**study.test), steps=k, beta=beta, lr=lr)
            done[key] = {m: [meta_test(r, "heldout", test, write=False, progress=False)["per_domain"] for r in rs]
                         for m, rs in runs.items()}
            done[key]["gold"] = [meta_test(r, "heldout", dataclasses.replace(test, reward="gold"), write=False,
                                           progress=False)["per_domain"] for r in runs["bt"]]
            write_json(cache, done)
        gold = {m: np.asarray([[r["gold_adapted"] for r in seed] for seed in done[key][m]]) for m in done[key]}
        ref = np.asarray([[r["gold_reference"] for r in seed] for seed in done[key]["bt"]])
        rows.append({"steps": k, "beta": beta, "lr": lr,
                     "meta_minus_bt": two_level_interval(gold["meta"] - gold["bt"]),
                     "gold_minus_bt": two_level_interval(gold["gold"] - gold["bt"]),
                     **{f"{m}_gain": two_level_interval(gold[m] - ref) for m in ("bt", "meta", "gold")}})
    report = {"cell": cell, "description": study.cells[cell][1], "seeds": list(study.seeds), "rows": rows,
              "trained_steps": study.solver_steps, "command": f"python experiments/evidence.py --regime {cell}"}
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / f"regime_{cell}.json", report)
    lines = [f"# Solver regime (H4), cell `{cell}`: {study.cells[cell][1]}", "",
             f"Held-out domains, seeds {list(study.seeds)}; the projected solver for K steps at learning rate lr with "
             f"KL weight β, guided by each reward model (meta-trained for K = {study.solver_steps}) and by the gold "
             "reward (the oracle: what this solver reaches with the true reward). Every setting is reported; none is "
             "chosen here. 95% two-level bootstrap intervals (seeds, then domains).", "",
             "| K | lr | β | BT gain | meta gain | oracle gain | meta − BT | oracle − BT |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['lr']} | {r['beta']} | {_ci(r['bt_gain'], True)} | {_ci(r['meta_gain'], True)} | "
              f"{_ci(r['gold_gain'], True)} | {_ci(r['meta_minus_bt'], True)} | {_ci(r['gold_minus_bt'], True)} |"
              for r in rows]
    lines += ["", f"Command: `{report['command']}`", ""]
    (results / f"regime_{cell}.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=False)
    for ax, key, title in ((axes[0], "meta_minus_bt", "meta − BT"), (axes[1], "gold_minus_bt", "oracle − BT")):
        for j, beta in enumerate(REGIME_BETAS):
            for lr, style in zip(sorted({g[2] for g in grid}), ("o-", "s--", "^:")):
                sel = [r for r in rows if r["beta"] == beta and r["lr"] == lr]
                x = np.log2([r["steps"] for r in sel]) + (j - 1) * 0.06
                mean = np.asarray([r[key]["mean"] for r in sel])
                lo = np.asarray([r[key]["ci95"][0] for r in sel])
                hi = np.asarray([r[key]["ci95"][1] for r in sel])
                ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt=style, capsize=3, color=f"C{j}",
                            label=f"β = {beta}, lr {lr}")
        ax.axhline(0, color="grey", lw=0.8)
        ticks = sorted({r["steps"] for r in rows})
        ax.set_xticks(np.log2(ticks), [str(k) for k in ticks])
        ax.set_xlabel("meta-test solver steps K")
        ax.set_ylabel(f"{title}, gold reward")
        ax.set_title(f"cell {cell}: {title} (held-out domains)", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(results / f"regime_{cell}.png", dpi=120)
    plt.close(fig)
    log(f"regime {cell} done: {results}/regime_{cell}.md")
    return report


def _cell_diffs(out: Path, cell: str, method: str, subset: str = "all", results: Path = RESULTS
                ) -> np.ndarray | None:
    """[S, D] per-domain gold differences method − BT of a finished cell (None if not measured): from the cell's
    kept report when it holds the per-domain gold, else from the cell's cached held-out stages under `out`."""
    report = read_json(results / f"{cell}.json")
    if report is None or method not in report["methods"]:
        return None
    kinds = report["domain_kinds"]
    keep = np.asarray([subset == "all" or kinds.get(d) == subset for d in report["heldout_domains"]])
    kept = {m: report["methods"][m].get("per_domain_gold") for m in (method, "bt")}
    if all(g is not None for g in kept.values()):
        return (np.asarray(kept[method]) - np.asarray(kept["bt"]))[:, keep]
    heldout = out / cell / "heldout"  # the stages list the domains in the report's order (cell_report checks it)
    a, b = read_json(heldout / f"{method}.json"), read_json(heldout / "bt.json")
    if a is None or b is None:
        return None
    diffs = per_domain(a, "gold_adapted") - per_domain(b, "gold_adapted")
    # cached stages may come from a later rerun of the cell (other code): use them only if they are the report's
    if not np.isclose(diffs.mean(), report["methods"][method]["minus_bt"]["all"]["mean"], rtol=0, atol=1e-9):
        return None
    return diffs[:, keep]


def summary(out: Path, results: Path = RESULTS) -> dict:
    """Per hypothesis of PROTOCOL.md: the cell(s), meta − BT with its interval, the verdict (summary.{json,md,png})."""
    from metapl.eval import two_level_interval, two_level_means

    def interval(cell, method="meta", subset="all"):
        """(meta − BT, the cell it comes from): the cell report's own paired interval (the same bootstrap over the
        same per-domain differences), else one from cached stages, else from a rerun kept beside the report."""
        report = read_json(results / f"{cell}.json")
        kept = (report or {}).get("methods", {}).get(method, {}).get("minus_bt", {}).get(subset)
        if kept is not None:
            return {k: kept[k] for k in ("mean", "ci95", "seeds", "domains")}, cell
        d = _cell_diffs(out, cell, method, subset, results)
        if d is not None:
            return two_level_interval(d), cell
        for rerun in reruns(cell):
            kept = read_json(rerun)["methods"].get(method, {}).get("minus_bt", {}).get(subset)
            if kept is not None:
                return {k: kept[k] for k in ("mean", "ci95", "seeds", "domains")}, f"{cell} ({rerun.stem})"
        return None, cell

    def reruns(cell):
        return sorted((results / "reruns").glob(f"{cell}_at_*.json"))

    rows = []

    missing = []

    def add(hypothesis, cell, subset, predicted, method="meta"):
        s, source = interval(cell, method, subset)
        if s is None:
            missing.append(f"{hypothesis} ({cell}, {method})")
        else:
            rows.append({"hypothesis": hypothesis, "cell": source, "subset": subset, "method": method,
                         "meta_minus_bt": s, "verdict": verdict_of(s, predicted)})

    add("H0 (tie)", "off", "all", "tie", "meta_onpolicy")
    add("H0 (projected, reported)", "off", "all", "tie")
    add("H1a interpolation", "attributes", "interpolation", "greater")
    add("H1b extrapolation", "attributes", "extrapolation", "greater")
    add("H1 (on-policy)", "attributes", "all", "greater", "meta_onpolicy")
    add("H2 behaviour shift", "behaviour", "all", "greater")
    add("H2 (on-policy)", "behaviour", "all", "greater", "meta_onpolicy")
    for cell in ("off", "budget16", "budget4"):
        add(f"H3 budget {dict(off=64, budget16=16, budget4=4)[cell]} pairs/domain", cell, "all", "greater")
    for cell in ("off", "budget16", "budget4"):
        add(f"H3 (on-policy) budget {dict(off=64, budget16=16, budget4=4)[cell]} pairs/domain", cell, "all",
            "greater", "meta_onpolicy")
    for method, name in (("meta", "H3 trend (4 minus 64 pairs/domain)"),
                         ("meta_onpolicy", "H3 (on-policy) trend (4 minus 64 pairs/domain)")):
        # both ends from the registered cells, else both from reruns of one code version (never one of each)
        d64, d4 = (_cell_diffs(out, c, method, results=results) for c in ("off", "budget4"))
        source = "budget4 − off"
        if d64 is None or d4 is None:
            d64 = d4 = None
            found = [[r for r in reruns(c) if "per_domain_gold" in read_json(r)["methods"].get(method, {})]
                     for c in ("off", "budget4")]
            if all(found):
                r64, r4 = found[0][-1], found[1][-1]
                d64, d4 = (np.asarray(read_json(r)["methods"][method]["per_domain_gold"])
                           - np.asarray(read_json(r)["methods"]["bt"]["per_domain_gold"]) for r in (r64, r4))
                source = f"{r4.stem} − {r64.stem}"
        if d64 is not None and d4 is not None:
            diff = two_level_means(d4, 5000, 1) - two_level_means(d64, 5000, 2)
            trend = {"mean": float(d4.mean() - d64.mean()), "ci95": np.percentile(diff, [2.5, 97.5]).tolist()}
            rows.append({"hypothesis": name, "cell": source, "subset": "all", "method": method,
                         "meta_minus_bt": trend, "verdict": verdict_of(trend, "greater")})
        else:
            missing.append(f"H3 trend (budget4 − off, {method})")
    for cell in ("attributes", "off"):
        regime = read_json(results / f"regime_{cell}.json")
        if regime:
            registered = [r for r in regime["rows"] if r["lr"] == REGIME_LR]
            best = max(registered, key=lambda r: r["meta_minus_bt"]["mean"])
            ahead = sum(r["meta_minus_bt"]["ci95"][0] > 0 for r in registered)
            behind = sum(r["meta_minus_bt"]["ci95"][1] < 0 for r in registered)
            rows.append({"hypothesis": f"H4 solver regime ({cell}; the registered setting with the best mean)",
                         "cell": cell, "subset": f"K={best['steps']}, β={best['beta']}; of {len(registered)} "
                         f"settings meta is ahead in {ahead}, behind in {behind}", "method": "meta",
                         "meta_minus_bt": best["meta_minus_bt"], "verdict": verdict_of(best["meta_minus_bt"],
                                                                                      "greater")})
    h5 = h5_rows(read_json(results / "sentiment_targets.json"))
    rows += h5["rows"]
    rows = with_earlier_rows(rows, (read_json(results / "summary.json") or {}).get("rows", []))
    missing += h5["missing"]
    report = {"rows": rows, "not_computed": missing, "h5_precondition": h5["precondition"],
              "command": "python experiments/evidence.py --summary"}
    if missing:
        log(f"summary: not computed (not in the cell's report, no per-domain gold and no cached stages): "
            f"{'; '.join(missing)}")
    write_json(results / "summary.json", report)
    lines = ["# Evidence summary: meta-learned RM minus Bradley–Terry, per hypothesis of PROTOCOL.md", "",
             "Held-out gold reward of the policy each reward model guides (same solver, prompts, samples and keys), "
             "paired per domain; 95% two-level bootstrap intervals (seeds, then domains). Verdicts by the "
             "protocol's rule: supported when the interval excludes 0 in the predicted direction, contradicted "
             "when it excludes 0 in the other, not supported otherwise (for the tie, supported when it contains 0).",
             "", "| hypothesis | cell | domains | meta − BT | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['hypothesis']}{' (earlier summary)' if r.get('earlier') else ''} | {r['cell']} | "
              f"{r['subset']} | {_ci(r['meta_minus_bt'], True)} | {r['verdict']} |" for r in rows]
    if any(r.get("earlier") for r in rows):
        lines += ["", "Rows marked *earlier summary* were computed by an earlier run of this command from per-domain "
                  "stages that are no longer cached and that the kept cell reports do not hold; they are kept as "
                  "they were computed (summary.json in git history) until re-running the cells recomputes them."]
    if h5["precondition"]:
        p = h5["precondition"]
        lines += ["", f"H5's precondition (PROTOCOL.md): the BT RM ranks the held-out pairs of `sentiment_targets` at "
                  f"{_ci(p['bt_pair_accuracy'])} over seeds {p['seeds']}, {'at least' if p['met'] else 'below'} "
                  f"0.70. H5 is two-sided; its rows by target tone are exploratory (no verdict)."]
    if missing:
        lines += ["", "Not computed (the method was not run in that cell, or the row needs per-domain gold that "
                  "neither the cell's report nor its cached held-out stages hold; re-running the cell computes "
                  "it): " + "; ".join(missing) + "."]
    lines += ["", f"Command: `{report['command']}`", ""]
    (results / "summary.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.4))
    for i, r in enumerate(rows):
        s = r["meta_minus_bt"]
        ax.errorbar([i], [s["mean"]], yerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]], fmt="o",
                    capsize=4, color={"supported": "C2", "meta ahead": "C2", "contradicted": "C3",
                                                  "meta behind": "C3"}.get(r["verdict"], "C0"))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(rows)), [r["hypothesis"].split(" (")[0] + f"\n{r['subset']}" for r in rows],
                  fontsize=6, rotation=30, ha="right")
    ax.set_ylabel("meta − BT, held-out gold reward")
    ax.set_title("evidence by hypothesis (green: supported or meta ahead, red: contradicted or meta behind)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(results / "summary.png", dpi=120)
    plt.close(fig)
    log(f"summary: {results}/summary.md")
    return report


def verdict_of(s: dict, predicted: str) -> str:
    lo, hi = s["ci95"]
    if predicted == "tie":
        return "supported" if lo <= 0 <= hi else "not supported"
    if predicted == "two-sided":
        return "meta ahead" if lo > 0 else "meta behind" if hi < 0 else "no difference"
    return verdict(s)


def with_earlier_rows(rows: list[dict], earlier: list[dict]) -> list[dict]:
    """`rows` plus the rows of an earlier summary that cannot be computed now (their per-domain stages were
    cached on a machine that no longer has them), each marked `"earlier": True` and kept in its earlier place."""
    def key(r):
        return r["hypothesis"], r["cell"], r["subset"]

    now = {key(r) for r in rows}
    out = list(rows)
    for i, r in enumerate(earlier):
        if key(r) in now:
            continue
        before = {key(e) for e in earlier[:i]}
        at = max((j + 1 for j, e in enumerate(out) if key(e) in before), default=0)
        out.insert(at, {**r, "earlier": True})
    return out


def h5_rows(report: dict | None) -> dict:
    """H5's summary rows from the `sentiment_targets` report: meta − BT over all held-out domains (two-sided; a
    verdict only when every planned seed is in and BT's held-out pair accuracy is at least 0.70) and, as exploratory
    rows, by the tone the domain wants."""
    if report is None or "meta" not in report["methods"]:
        return {"rows": [], "missing": ["H5 real text (sentiment_targets, meta)"], "precondition": None}
    seeds, planned = report["seeds"], report.get("planned_seeds", report["seeds"])
    accuracy = report["methods"]["bt"]["rm_pair_accuracy"]
    met = accuracy["mean"] >= 0.70
    rows = []
    for subset, s in report["methods"]["meta"]["minus_bt"].items():
        if subset != "all":
            judged = "exploratory"
        elif len(seeds) < len(planned):
            judged = f"no verdict (seeds {seeds} of {planned})"
        elif not met:
            judged = f"untestable (BT held-out pair accuracy {accuracy['mean']:.2f} < 0.70)"
        else:
            judged = verdict_of(s, "two-sided")
        rows.append({"hypothesis": "H5 real text" + ("" if subset == "all" else " (by target tone)"),
                     "cell": "sentiment_targets", "subset": subset, "method": "meta",
                     "meta_minus_bt": {k: s[k] for k in ("mean", "ci95", "seeds", "domains")}, "verdict": judged})
    return {"rows": rows, "missing": [],
            "precondition": {"bt_pair_accuracy": accuracy, "seeds": seeds, "met": met}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", action="append", choices=sorted(CELLS), default=[])
    p.add_argument("--all", action="store_true", help="every cell of the synthetic study")
    p.add_argument("--onpolicy", action="store_true", help="also the meta-learned RM with the on-policy inner solver")
    p.add_argument("--regime", action="append", choices=sorted(SYNTHETIC.cells), default=[],
                   help="after the cell: its reward models over the solver's K and β (H4)")
    p.add_argument("--seed", action="append", type=int, default=None,
                   help="only this training seed of a per-seed study's cell (repeatable; the real-text cell)")
    p.add_argument("--group", action="append", choices=GROUPS, default=None,
                   help="only this group of a per-seed study's seeds (bt measures the oracle too; repeatable)")
    p.add_argument("--summary", action="store_true", help="the per-hypothesis summary of the finished cells")
    p.add_argument("--miniature", action="store_true", help="the pipeline on a tiny model and benchmark (a test)")
    p.add_argument("--out", default="runs/evidence", help="run directories (reused when the study is re-run)")
    p.add_argument("--results", default=None, help="results directory (default experiments/results/evidence)")
    args = p.parse_args(argv)
    cells = sorted(SYNTHETIC.cells) if args.all else args.cell
    if not cells and not args.regime and not args.miniature and not args.summary:
        p.error("name a --cell or a --regime, or pass --all, --summary or --miniature")
    from metapl.runtime import enable_compile_cache

    enable_compile_cache()
    results = Path(args.results) if args.results else RESULTS
    if args.miniature:
        run_cell(MINIATURE, "attributes", Path(args.out), args.onpolicy, "python experiments/evidence.py --miniature",
                 results)
        run_regime(MINIATURE, "attributes", Path(args.out), results, grid=[(1, 0.3, 0.05), (2, 0.3, 0.05),
                                                                           (2, 1.0, 0.1)])
    for cell in cells:
        study = CELLS[cell]
        if args.seed and set(args.seed) - set(study.seeds):
            p.error(f"--seed {sorted(set(args.seed) - set(study.seeds))}: the {study.name} study's seeds are "
                    f"{list(study.seeds)}")
        command = f"python experiments/evidence.py --cell {cell}" + (" --onpolicy" if args.onpolicy else "") + \
            ("".join(f" --seed {s}" for s in study.seeds) if study.tune_per_seed else "")
        run_cell(study, cell, Path(args.out), args.onpolicy, command, results,
                 tuple(args.seed) if args.seed else None, tuple(args.group) if args.group else None)
    for cell in args.regime:
        run_regime(CELLS[cell], cell, Path(args.out), results)
    if args.summary:
        summary(Path(args.out), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
