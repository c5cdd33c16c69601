"""Meta-test: a frozen reward model guides KL-regularised policy optimisation on domains it was not trained on.

For each test domain: `prompts` prompts of the domain, N reference samples each, their rewards under the frozen
r_φ, then K projected-solver steps from the reference policy θ₀ (the same inner problem as meta-training, so a
meta-learned reward is tested in the regime it was learned for). The adapted and the reference policy then
answer `eval_prompts` further prompts of the domain (one temperature-1 sample each, the same key), and the
benchmark's gold judge scores both. Reported per domain: mean gold reward of each, the gold win rate of the
adapted policy over the reference (ties count ½), and the reward model's accuracy on the domain's labelled pairs;
over domains: means with percentile-bootstrap 95% intervals (domains resampled).

Works with a `metapl train meta` run, a `metapl train rm` run (the Bradley–Terry baseline) or a `tree-rm` run:
each stores its reward model and a `meta` section (the solver). With `reward="gold"` the same solver is guided
by the benchmark's gold reward of the reference samples instead of r_φ (an oracle: what this solver reaches
with the true reward, at the same β).

The stages, each usable alone:

    restored = restore_reward_model(run_dir)                 # config, model, benchmark, trained φ
    solver = solver_config(restored.cfg.meta.bilevel(), test)  # the run's inner problem, test overrides
    outputs = adapt_and_sample(restored, solver, domains, test)  # per domain: both policies' samples
    rows = judge(restored, domains, outputs, test)           # per domain: gold rewards, win rate, RM accuracy
    result = summarise(rows, test, ...)                      # means and intervals over domains
    render(result)                                           # markdown
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metapl.bilevel import inner_solve
from metapl.config import ConfigError, number
from metapl.data.batching import SequenceShape, TruncationStats, prompt_arrays
from metapl.data.benchmarks import Benchmark
from metapl.eval.stats import bootstrap_interval, mean_interval, win_rate
from metapl.keys import stream_key
from metapl.meta.reference_samples import fingerprint, remembered
from metapl.meta.episodes import shared_support
from metapl.meta.metagrad import MetaConfig, domain_problem
from metapl.meta.objectives import pair_rewards, policy_logprobs, reward_function, sample_rewards
from metapl.meta.parameters import meta_parameters
from metapl.models import SamplingConfig
from metapl.models.config import ModelConfig
from metapl.models.heads import init_head_params
from metapl.models.lora import merged
from metapl.models.policy import Policy
from metapl.models.sampling import generate_traced
from metapl.parallel import MeshConfig, batch_ways, global_batch, param_shardings, place, run_mesh, to_host
from metapl.train.batches import pair_inputs, pair_loader
from metapl.train.checkpoints import checkpoint_manager, restore_checkpoint
from metapl.train.run import read_run_config
from metapl.train.spec import RunConfig, build_model_and_benchmark
from metapl.train.step import init_state, make_optimizer


@dataclasses.dataclass(frozen=True)
class MetaTestConfig:
    """prompts: optimisation prompts per domain; eval_prompts: further prompts per domain for the gold judge;
    samples_per_prompt: reference samples N; steps, lr, beta, prox: the projected solver (default: the run
    config's `meta` section); bootstrap: resamples for the intervals; domains_per_batch: domains adapted and
    decoded together (vmapped; memory grows with it); reward: "model" (the run's r_φ) or "gold" (the gold
    judge's scores of the reference samples: the oracle); mesh: the devices (a chunk's domains are split over
    data x fsdp, so domains_per_batch must divide by it; weights are laid out by `metapl.parallel`'s rules; the
    numbers do not depend on the mesh)."""

    prompts: int = number(16, ge=1)
    eval_prompts: int = number(32, ge=1)
    samples_per_prompt: int = number(4, ge=1)
    steps: int | None = number(None, ge=1)
    lr: float | None = number(None, ge=0)
    beta: float | None = number(None, gt=0)
    prox: float | None = number(None, ge=0)
    bootstrap: int = number(2000, ge=1)
    seed: int = number(0, ge=0)
    domains_per_batch: int = number(8, ge=1)
    reward: str = "model"
    mesh: MeshConfig = MeshConfig()

    def __post_init__(self):
        if self.reward not in ("model", "gold"):
            raise ValueError(f"reward must be 'model' or 'gold', got {self.reward!r}")
        if self.domains_per_batch % batch_ways(self.mesh):
            raise ConfigError(f"domains_per_batch = {self.domains_per_batch} does not split over mesh data x fsdp "
                              f"= {batch_ways(self.mesh)}")


# ------------------------------------------------------------------------------------------------- restore

@dataclasses.dataclass
class RestoredReward:
    """A reward-model run read back: its config, the policy's model config and weights, the benchmark, the
    trained φ with the frozen trees ({"theta0", "base", "rm"}, see `meta_parameters`), and the checkpoint step."""

    run_dir: Path
    cfg: RunConfig
    config: ModelConfig
    bench: Benchmark
    phi: Any
    frozen: dict
    step: int


def restore_reward_model(run_dir: str | Path) -> RestoredReward:
    """The latest checkpoint of a `meta` or `rm` run. The reward model's layout is rebuilt from the stored config,
    not the run's whole set-up (a meta run's would draw its reference samples again)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if cfg.algo not in ("meta", "rm", "tree-rm"):
        raise ConfigError(f"{run_dir}: meta-test needs a `meta`, `rm` or `tree-rm` run, this one is {cfg.algo!r}")
    manager = checkpoint_manager(run_dir)
    if manager.latest_step() is None:
        raise ConfigError(f"{run_dir}: no checkpoint to test")
    config, params, bench = build_model_and_benchmark(cfg)
    like, frozen = meta_parameters(cfg.seed, config, params)
    if cfg.algo == "tree-rm":  # a full-weight head model whatever the LoRA settings (setup_tree_rm)
        like, frozen = init_head_params(config, stream_key(cfg.seed, "reward_head"), backbone=params), \
            dict(frozen, rm=None)
    state = init_state(like, make_optimizer(cfg.optim), jax.random.PRNGKey(cfg.seed))
    state, _ = restore_checkpoint(manager, manager.latest_step(), state)
    return RestoredReward(run_dir, cfg, config, bench, state.params, frozen, int(state.step))


def solver_config(meta: MetaConfig, test: MetaTestConfig) -> MetaConfig:
    """The run's inner problem with the test's solver overrides (steps, lr, beta, prox) applied."""
    overrides = {"inner_steps": test.steps, "inner_lr": test.lr, "beta": test.beta, "prox": test.prox}
    return dataclasses.replace(meta, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------------------------------- adapt

def prompt_batch(bench: Benchmark, chunk_prompts) -> tuple[jax.Array, jax.Array]:
    """[D] lists of prompts -> tokens, mask [D, B, max_prompt_tokens]."""
    spec = bench.spec
    shape = SequenceShape(spec.max_prompt_tokens, spec.max_response_tokens)
    arrays = [prompt_arrays(ps, bench.encode, shape, bench.pad_id, TruncationStats(), length=spec.max_prompt_tokens)
              for ps in chunk_prompts]
    return tuple(jnp.asarray(np.stack(a)) for a in zip(*arrays))


def domain_key(test: MetaTestConfig, index: int) -> jax.Array:
    """The key of the index-th test domain (its reference samples; fold_in(·, 1): its evaluation samples)."""
    return jax.random.PRNGKey(test.seed * 100_003 + index)


def adapt_and_sample(restored: RestoredReward, solver: MetaConfig, domains: dict[str, tuple[list, list]],
                     test: MetaTestConfig, progress: bool = False) -> dict[str, dict]:
    """Per domain: {"adapted", "reference"}: the two policies' samples of the domain's evaluation prompts (tokens,
    response_mask [eval_prompts, T]), "inner_losses" [K] of its adaptation, and "log_ratios" [eval_prompts]:
    log π_θ(y|x) − log π_ref(y|x) of each adapted sample (their mean estimates KL(π_θ ‖ π_ref) per response).

    Domains go through in chunks of `domains_per_batch`, vmapped: the chunk's adaptations in one call and its
    decoding as one batch (decoding is bound by reading the weights, so batching domains is nearly free). Every
    domain has its own keys, so the numbers do not depend on the chunking.
    """
    config, bench = restored.config, restored.bench
    policy = Policy(config)
    phi, frozen = restored.phi, restored.frozen
    mesh = run_mesh(test.mesh)
    if mesh is not None:  # weights by the rules; each chunk's per-domain arrays split over data x fsdp below
        phi, frozen = place((phi, frozen), param_shardings((phi, frozen), mesh))
    spread = (lambda x: x) if mesh is None else (lambda x: global_batch(x, mesh))  # noqa: E731
    spec = bench.spec
    sampling = SamplingConfig(max_new_tokens=spec.max_response_tokens, temperature=1.0,
                              stop_token_ids=(bench.eos_id,))

    # Weights enter the compiled functions as arguments (closed over, they would be baked in as constants).
    def adapt(rewards, frozen, support):  # one domain: rewards [P, N], support [P, N, T] -> (θ, inner losses [K])
        problem = domain_problem(solver, config, frozen["base"], frozen["theta0"])  # the projected solver
        theta, _, losses = inner_solve(problem, rewards, frozen["theta0"], support)
        return theta, losses

    def sample(theta, base, tokens, mask, key):  # one domain's prompts [B, P] under θ -> prompt ⊕ response
        params, lora = policy.weights(theta, base)
        return generate_traced(params, config, tokens, mask, key, sampling, pad_id=bench.pad_id,
                               lora=lora).sequences()

    def log_ratios(theta, theta0, base, s):  # one domain's samples under θ and θ₀ -> [B]
        logp = lambda t: policy_logprobs(t, base, config, s["tokens"], s["attention_mask"], s["response_mask"])  # noqa: E731
        return logp(theta) - logp(theta0)

    d, n, p = test.domains_per_batch, test.samples_per_prompt, test.prompts
    adapt_chunk = jax.jit(jax.vmap(adapt, in_axes=(0, None, 0)))
    log_ratio_chunk = jax.jit(jax.vmap(log_ratios, in_axes=(0, None, None, 0)))
    sample_chunk = jax.jit(jax.vmap(sample, in_axes=(0, None, 0, 0, 0)))
    sample_reference_chunk = jax.jit(jax.vmap(sample, in_axes=(None, None, 0, 0, 0)))

    @jax.jit
    def model_rewards(phi, frozen, support):  # r_φ of the support samples [D, P, N]
        return sample_rewards(reward_function(config, frozen["rm"]), phi, support)

    @jax.jit
    def sample_support(frozen, tokens, mask, keys):  # N reference samples per prompt: [D, P, N, T]
        out = sample_reference_chunk(frozen["theta0"], frozen["base"], tokens, mask, keys)
        return jax.tree.map(lambda v: v.reshape(d, p, n, -1), out)

    names, tp = list(domains), spec.max_prompt_tokens
    shared_prefix = restored.cfg.model.shared_prefix
    # θ₀'s samples depend on its weights (LoRA merged: runs whose θ₀ differ only in an adapter that adds nothing
    # share them), the prompts and the keys only, so the meta-tests of one process (a tuning grid, a protocol's
    # tests of several reward models) decode them once; on a mesh they are drawn afresh.
    weights = None if mesh is not None else fingerprint(
        merged(*policy.weights(frozen["theta0"], frozen["base"]), config),
        static=(config, sampling, bench.pad_id, d, p, n))

    def reference(tag, arrays, draw):
        return draw() if weights is None else remembered(weights, tag, arrays, draw)

    def gold_rewards(chunk, support):  # the gold judge's scores of the support samples [D, P, N]
        support = to_host(support)
        scores = []
        for j, name in enumerate(chunk):
            prompts = [x for x in domains[name][0][:p] for _ in range(n)]
            flat = {k: v[j].reshape(p * n, -1)[:, tp:] for k, v in support.items()}
            scores.append(np.reshape(bench.gold_scores(prompts, flat["tokens"], flat["response_mask"]), (p, n)))
        return jnp.asarray(np.stack(scores), jnp.float32)

    out: dict[str, dict] = {}
    for start in range(0, len(names), d):
        chunk = names[start:start + d]
        chunk = (chunk * d)[:d]  # one compiled shape; the repeats are dropped
        keys = spread(jnp.stack([domain_key(test, names.index(name)) for name in chunk]))
        tokens, mask = spread(prompt_batch(bench, [[x for x in domains[name][0][:p] for _ in range(n)]
                                                    for name in chunk]))
        support = reference("support", (tokens, mask, keys), lambda: sample_support(frozen, tokens, mask, keys))
        scored = shared_support(support, tp) if shared_prefix else support  # each prompt once for its N samples
        rewards = spread(gold_rewards(chunk, support)) if test.reward == "gold" else \
            model_rewards(phi, frozen, scored)
        thetas, losses = adapt_chunk(rewards, frozen, scored)
        tokens, mask = spread(prompt_batch(bench, [domains[name][0][p:] for name in chunk]))
        eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        samples = {"adapted": sample_chunk(thetas, frozen["base"], tokens, mask, eval_keys),
                   "reference": reference("evaluation", (tokens, mask, eval_keys), lambda: sample_reference_chunk(
                       frozen["theta0"], frozen["base"], tokens, mask, eval_keys))}
        ratios = log_ratio_chunk(thetas, frozen["theta0"], frozen["base"], samples["adapted"])
        samples, losses, ratios = to_host((samples, losses, ratios))  # numpy from here: no per-domain device slicing
        for j, name in enumerate(chunk[: len(names) - start]):
            out[name] = {side: {"tokens": s["tokens"][j, :, tp:], "response_mask": s["response_mask"][j, :, tp:]}
                         for side, s in samples.items()}
            out[name]["inner_losses"] = losses[j]
            out[name]["log_ratios"] = ratios[j]
        if progress:
            print(f"[metapl meta-test] adapted {min(start + d, len(names))}/{len(names)} domains", file=sys.stderr,
                  flush=True)
    return out


# --------------------------------------------------------------------------------------------------- judge

def pair_accuracy_fn(config: ModelConfig):
    """(φ, frozen reward part, pair batch [Q, T]) -> the fraction of pairs r_φ ranks chosen over rejected."""

    @jax.jit
    def accuracy(phi, rm_frozen, b):
        chosen, rejected = pair_rewards(reward_function(config, rm_frozen), phi, b)
        return jnp.mean(chosen > rejected)

    return accuracy


def pair_accuracy(restored: RestoredReward, pairs: list, accuracy_fn=None) -> float:
    """The reward model's accuracy on labelled pairs (NaN when there are none, e.g. a domain whose pairs were
    all identical continuations, counted at build time)."""
    if not pairs:
        return float("nan")
    accuracy_fn = accuracy_fn or pair_accuracy_fn(restored.config)
    b = pair_inputs(pair_loader(pairs, restored.bench, len(pairs), restored.cfg.seed), range(len(pairs)))
    return float(accuracy_fn(restored.phi, restored.frozen["rm"], b))


def cross_judge_columns(bench, prompts: list, samples: dict[str, dict]) -> dict:
    """The second judge's columns of a row (none when the benchmark has no second judge): its mean score of the
    adapted and the reference samples, the adapted policy's win rate over the reference by it, and its score of
    each adapted sample. samples: {"adapted" | "reference": {"tokens", "response_mask"} [B, N]}."""
    if bench.cross_judge is None:
        return {}
    cross = {side: np.asarray(bench.gold_scores(prompts, s["tokens"], s["response_mask"], cross=True))
             for side, s in samples.items()}
    return {"cross_judge": bench.cross_judge, "cross_adapted": float(cross["adapted"].mean()),
            "cross_reference": float(cross["reference"].mean()),
            "cross_win_rate": win_rate(cross["adapted"], cross["reference"]),
            "cross_adapted_samples": cross["adapted"].tolist()}


def response_columns(bench, samples: dict[str, dict], log_ratios) -> dict:
    """A row's columns about the responses themselves: "kl", the mean of log π(y|x) − log π_ref(y|x) over the
    adapted (or trained) policy's samples (the k1 estimate of KL(π ‖ π_ref), nats per response), and the mean
    response length in tokens (eos not counted) of each side."""
    def length(s):
        return float(np.mean(np.sum(s["response_mask"] & (s["tokens"] != bench.eos_id), axis=-1)))

    return {"kl": float(np.mean(log_ratios)), "length_adapted": length(samples["adapted"]),
            "length_reference": length(samples["reference"])}


def response_texts(bench, prompts: list, samples: dict[str, dict]) -> dict:
    """A row's texts: the prompts and both policies' decoded responses (eos dropped), for judges that read text
    (e.g. an LLM judge comparing two methods' answers to the same prompts)."""
    adapted, reference = samples["adapted"], samples["reference"]
    return {"prompts": [p.prompt for p in prompts],
            "responses_adapted": bench.decode_responses(adapted["tokens"], adapted["response_mask"]),
            "responses_reference": bench.decode_responses(reference["tokens"], reference["response_mask"])}


def judge(restored: RestoredReward, domains: dict[str, tuple[list, list]], outputs: dict[str, dict],
          test: MetaTestConfig, progress: bool = False, accuracies: dict | None = None) -> list[dict]:
    """One row per domain: mean gold reward of the adapted and the reference policy, the adapted policy's gold
    win rate over the reference (ties ½), the reward model's pair accuracy, the first and last inner loss, the
    gold score of each adapted and reference sample (for head-to-head win rates between tests on the same keys), the KL
    to the reference and the response lengths (`response_columns`), and the second judge's columns when the
    benchmark has one (`cross_judge_columns`). accuracies: a dict kept across judgements of the same reward model
    (e.g. a tuning grid): each domain's pair accuracy, which no solver setting changes, is computed once."""
    bench, rows, accuracy_fn = restored.bench, [], pair_accuracy_fn(restored.config)
    accuracies = {} if accuracies is None else accuracies
    for name, out in outputs.items():
        prompts = domains[name][0][test.prompts:]
        gold = {side: np.asarray(bench.gold_scores(prompts, out[side]["tokens"], out[side]["response_mask"]))
                for side in ("adapted", "reference")}
        pairs = domains[name][1]
        known = (str(restored.run_dir.resolve()), restored.step, name, len(pairs))
        if known not in accuracies:
            accuracies[known] = pair_accuracy(restored, pairs, accuracy_fn)
        rows.append({"domain": name, "gold_adapted": float(gold["adapted"].mean()),
                     "gold_reference": float(gold["reference"].mean()),
                     "win_rate": win_rate(gold["adapted"], gold["reference"]),
                     "rm_pair_accuracy": accuracies[known], "pairs": len(pairs),
                     "gold_adapted_samples": gold["adapted"].tolist(),
                     "gold_reference_samples": gold["reference"].tolist(),
                     "inner_loss_first": float(out["inner_losses"][0]),
                     "inner_loss_last": float(out["inner_losses"][-1]),
                     **response_columns(bench, out, out["log_ratios"]),
                     **response_texts(bench, prompts, out),
                     **cross_judge_columns(bench, prompts, {side: out[side] for side in ("adapted", "reference")})})
        if progress:
            r = rows[-1]
            print(f"[metapl meta-test] {name}: gold {r['gold_reference']:+.3f} -> {r['gold_adapted']:+.3f}, "
                  f"win rate {r['win_rate']:.2f}, RM pair accuracy {r['rm_pair_accuracy']:.2f} "
                  f"({len(rows)}/{len(outputs)})", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- summarise

def summarise(rows: list[dict], test: MetaTestConfig, *, solver: MetaConfig, split: str, about: dict) -> dict:
    """Means over domains with bootstrap 95% intervals, the solver and test settings, and the rows.
    about: what was tested ({"run_dir", "algo", "checkpoint_step"})."""
    def summary(key):  # over the domains where the measure exists (a domain may have no labelled pairs)
        return mean_interval([r[key] for r in rows], test.bootstrap, test.seed)

    gain = np.asarray([r["gold_adapted"] - r["gold_reference"] for r in rows])
    lo, hi = bootstrap_interval(gain, test.bootstrap, test.seed)
    cross = {}
    if rows and "cross_judge" in rows[0]:  # the second judge's view of the same samples
        cross_gain = np.asarray([r["cross_adapted"] - r["cross_reference"] for r in rows])
        cross = {"cross": {"judge": rows[0]["cross_judge"], "adapted": summary("cross_adapted"),
                           "reference": summary("cross_reference"), "win_rate": summary("cross_win_rate"),
                           "gain": {"mean": float(cross_gain.mean()),
                                    "ci95": list(bootstrap_interval(cross_gain, test.bootstrap, test.seed))}}}
    return {
        **about, "split": split, "domains": len(rows), "reward": test.reward, **cross,
        "solver": {"kind": "projected", "steps": solver.inner_steps, "lr": solver.inner_lr,
                   "optimizer": solver.inner_optimizer, "beta": solver.beta, "prox": solver.prox},
        "test": dataclasses.asdict(test),
        "gold_adapted": summary("gold_adapted"), "gold_reference": summary("gold_reference"),
        "gold_gain": {"mean": float(gain.mean()), "ci95": [lo, hi]},
        "win_rate": summary("win_rate"), "rm_pair_accuracy": summary("rm_pair_accuracy"),
        **({k: summary(k) for k in ("kl", "length_adapted", "length_reference")} if rows and "kl" in rows[0] else {}),
        "per_domain": rows,
    }


def response_lines(result: dict, side: str = "adapted") -> list[str]:
    """Summary-table rows of the KL to the reference and the response lengths (none in results without them)."""
    if "kl" not in result:
        return []
    ci = format_interval
    return [f"| KL({side} ‖ reference), nats per response | {ci(result['kl'])} |",
            f"| response length, reference / {side} (tokens) | {result['length_reference']['mean']:.1f} / "
            f"{result['length_adapted']['mean']:.1f} |"]


def cross_judge_lines(result: dict) -> list[str]:
    """Summary-table rows of the second judge (none without one)."""
    if "cross" not in result:
        return []
    c, name = result["cross"], result["cross"]["judge"]
    return [f"| second judge ({name}): gain | {format_interval(c['gain'])} |",
            f"| second judge ({name}): win rate vs reference | {format_interval(c['win_rate'])} |"]


def format_interval(s: dict) -> str:
    """{"mean", "ci95"} as "mean [lo, hi]" (3 decimals)."""
    return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def render(result: dict) -> str:
    """A meta-test result as markdown: the settings, the summary table and one row per domain."""
    ci = format_interval

    s = result["solver"]
    lines = [
        f"# Meta-test of {result['run_dir']} ({result['algo']} run, step {result['checkpoint_step']}) on "
        f"{result['domains']} {result['split']} domains"
        + (", solver guided by the gold reward (oracle)" if result.get("reward") == "gold" else ""),
        "",
        f"Projected solver: {s['steps']} {s['optimizer']} steps, lr {s['lr']}, β {s['beta']}, prox {s['prox']}; "
        f"{result['test']['prompts']} prompts × {result['test']['samples_per_prompt']} reference samples per domain; "
        f"{result['test']['eval_prompts']} evaluation prompts per domain. Means over domains with bootstrap 95% "
        "intervals.",
        "",
        "| measure | mean [95% CI] |",
        "|---|---|",
        f"| gold reward, reference policy | {ci(result['gold_reference'])} |",
        f"| gold reward, adapted policy | {ci(result['gold_adapted'])} |",
        f"| gold gain (adapted − reference) | {ci(result['gold_gain'])} |",
        f"| gold win rate vs reference | {ci(result['win_rate'])} |",
        f"| reward-model pair accuracy | {ci(result['rm_pair_accuracy'])} |",
        *response_lines(result),
        *cross_judge_lines(result),
        "",
        "| domain | gold ref | gold adapted | win rate | RM pair acc |",
        "|---|---|---|---|---|",
        *[f"| {r['domain']} | {r['gold_reference']:.3f} | {r['gold_adapted']:.3f} | {r['win_rate']:.2f} | "
          f"{r['rm_pair_accuracy']:.2f} |" for r in result["per_domain"]],
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- all

def meta_test(run_dir: str | Path, split: str = "heldout", test: MetaTestConfig = MetaTestConfig(),
              write: bool = True, progress: bool = True, pair_accuracies: dict | None = None) -> dict:
    """Run the meta-test of a reward model on the benchmark's `split` domains ("heldout" or "train"); with
    `write`, meta_test_<split>[_gold].{json,md} go into the run directory. pair_accuracies: a dict to keep across
    meta-tests of the same run and split (a tuning grid), so the reward model's pair accuracies are computed once."""
    restored = restore_reward_model(run_dir)
    solver = solver_config(restored.cfg.meta.bilevel(), test)
    domains = restored.bench.domain_split(split, test.prompts + test.eval_prompts)
    outputs = adapt_and_sample(restored, solver, domains, test, progress=progress)
    rows = judge(restored, domains, outputs, test, progress=progress, accuracies=pair_accuracies)
    result = summarise(rows, test, solver=solver, split=split,
                       about={"run_dir": str(restored.run_dir), "algo": restored.cfg.algo,
                              "checkpoint_step": restored.step})
    if write:
        stem = f"meta_test_{split}" + ("_gold" if test.reward == "gold" else "")
        (restored.run_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (restored.run_dir / f"{stem}.md").write_text(render(result))
    return result


__all__ = ["MetaTestConfig", "RestoredReward", "adapt_and_sample", "domain_key", "judge", "meta_test",
           "pair_accuracy", "pair_accuracy_fn", "prompt_batch", "render", "response_columns", "response_lines",
           "response_texts", "restore_reward_model", "solver_config", "summarise"]
