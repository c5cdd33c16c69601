"""Meta-test: a frozen reward model guides KL-regularised policy optimisation on domains it was not trained on.

For each test domain: `prompts` prompts of the domain, N reference samples each, their rewards under the frozen
r_φ, then K projected-solver steps from the reference policy θ₀ (the same inner problem as meta-training, so a
meta-learned reward is tested in the regime it was learned for). The adapted and the reference policy then
answer `eval_prompts` further prompts of the domain (one temperature-1 sample each, the same key), and the
benchmark's gold judge scores both. Reported per domain: mean gold reward of each, the gold win rate of the
adapted policy over the reference (ties count ½), and the reward model's accuracy on the domain's labelled pairs;
over domains: means with percentile-bootstrap 95% intervals (domains resampled).

Works with a `metapl train meta` run or a `metapl train rm` run (the Bradley–Terry baseline): both store the
reward model in the same layout. With `reward="gold"` the same solver is guided by the benchmark's gold reward of
the reference samples instead of r_φ (an oracle: what this solver reaches with the true reward, at the same β).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metapl.bilevel import inner_solve
from metapl.config import ConfigError
from metapl.data.batching import SequenceShape, TruncationStats, prompt_arrays
from metapl.meta.metagrad import MetaConfig, domain_problem
from metapl.meta.objectives import pair_rewards, reward_function, sample_rewards
from metapl.meta.train import meta_options
from metapl.models import SamplingConfig, init_lora
from metapl.models.sampling import generate_traced
from metapl.parallel import MeshConfig, batch_ways, global_batch, param_shardings, place, run_mesh, to_host


@dataclasses.dataclass(frozen=True)
class MetaTestConfig:
    """prompts: optimisation prompts per domain; eval_prompts: further prompts per domain for the gold judge;
    samples_per_prompt: reference samples N; steps, lr, beta, prox: the projected solver (default: the run
    config's `meta` section, or MetaConfig's defaults for an rm run without one); bootstrap: resamples for the
    intervals; domains_per_batch: domains adapted and decoded together (vmapped; memory grows with it); reward:
    "model" (the run's r_φ) or "gold" (the gold judge's scores of the reference samples: the oracle); mesh: the
    devices (a chunk's domains are split over data x fsdp, so domains_per_batch must divide by it; weights are
    laid out by `metapl.parallel`'s rules; the numbers do not depend on the mesh)."""

    prompts: int = 16
    eval_prompts: int = 32
    samples_per_prompt: int = 4
    steps: int | None = None
    lr: float | None = None
    beta: float | None = None
    prox: float | None = None
    bootstrap: int = 2000
    seed: int = 0
    domains_per_batch: int = 8
    reward: str = "model"
    mesh: MeshConfig = MeshConfig()

    def __post_init__(self):
        if self.reward not in ("model", "gold"):
            raise ValueError(f"reward must be 'model' or 'gold', got {self.reward!r}")
        if self.domains_per_batch % batch_ways(self.mesh):
            raise ConfigError(f"domains_per_batch = {self.domains_per_batch} does not split over mesh data x fsdp "
                              f"= {batch_ways(self.mesh)}")


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of the mean of `values` (resampled with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_difference(a: dict, b: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """Per-domain gold reward of the adapted policy, result `a` minus result `b` (two meta-tests of the same
    domains, prompts, reference samples and keys, e.g. two reward models): mean, bootstrap 95% interval and how
    many domains `a` wins. Raises if the two did not test the same domains from the same reference policy."""
    rows_a, rows_b = a["per_domain"], b["per_domain"]
    if [r["domain"] for r in rows_a] != [r["domain"] for r in rows_b] or \
            [r["gold_reference"] for r in rows_a] != [r["gold_reference"] for r in rows_b]:
        raise ValueError("paired_difference: the two meta-tests differ in domains or reference samples")
    d = np.asarray([x["gold_adapted"] - y["gold_adapted"] for x, y in zip(rows_a, rows_b)])
    lo, hi = bootstrap_interval(d, resamples, seed)
    return {"mean": float(d.mean()), "ci95": [lo, hi], "a_better": int((d > 0).sum()), "domains": len(d)}


def _restore_reward(run_dir: Path):
    """(run config, policy config, reference params, benchmark, trained φ, frozen reward backbone, step) of a meta
    or rm run directory (its latest checkpoint). The reward model's layout is rebuilt, not the run's whole set-up
    (a meta run's would draw its reference samples again)."""
    from metapl.train import init_state, make_optimizer
    from metapl.train.algorithms import _model_and_benchmark, reward_model_parameters
    from metapl.train.run import _checkpointer, _restore, prepare_run_dir

    cfg = prepare_run_dir(run_dir, None, [], resume=True)
    if cfg.algo not in ("meta", "rm"):
        raise ConfigError(f"{run_dir}: meta-test needs a `meta` or `rm` run, this one is {cfg.algo!r}")
    manager = _checkpointer(run_dir)
    if manager.latest_step() is None:
        raise ConfigError(f"{run_dir}: no checkpoint to test")
    config, params, bench = _model_and_benchmark(cfg)
    like, rm_frozen = reward_model_parameters(config, params, cfg.seed)
    state = init_state(like, make_optimizer(cfg.optim), jax.random.PRNGKey(cfg.seed))
    state, _ = _restore(manager, manager.latest_step(), state)
    return cfg, config, params, bench, state.params, rm_frozen, int(state.step)


def meta_test(run_dir: str | Path, split: str = "heldout", test: MetaTestConfig = MetaTestConfig(),
              write: bool = True, progress: bool = True) -> dict:
    """Run the meta-test of a reward model on the benchmark's `split` domains ("heldout" or "train")."""
    from metapl.train.algorithms import _pair_batches, domain_split, gold_scores

    run_dir = Path(run_dir)
    cfg, config, params, bench, phi, rm_frozen, step = _restore_reward(run_dir)
    # The run's inner problem: a meta run's, or the `meta` section an rm run was given (e.g. the same config file
    # as the meta run it is compared with); MetaConfig's defaults otherwise.
    meta = meta_options(cfg)[0] if cfg.algo == "meta" or cfg.meta else MetaConfig()
    meta = dataclasses.replace(meta, **{k: v for k, v in (("inner_steps", test.steps), ("inner_lr", test.lr),
                                                          ("beta", test.beta), ("prox", test.prox)) if v is not None})
    if config.lora is None:
        theta0, base = params, None
    else:
        theta0, base = init_lora(config, jax.random.PRNGKey(cfg.seed + 3)), params
    ref_config = config.replace(lora=None)
    # Weights enter the compiled functions as arguments (closed over, they would be baked in as constants).
    frozen = {"theta0": theta0, "base": base, "rm": rm_frozen}
    mesh = run_mesh(test.mesh)
    if mesh is not None:  # weights by the rules; each chunk's per-domain arrays split over data x fsdp below
        phi, frozen = place((phi, frozen), param_shardings((phi, frozen), mesh))
        theta0, base = frozen["theta0"], frozen["base"]
    spread = (lambda x: x) if mesh is None else (lambda x: global_batch(x, mesh))  # noqa: E731

    def adapt(rewards, frozen, support):  # one domain: rewards [P, N], support [P, N, T] -> (θ, inner losses [K])
        problem = domain_problem(meta, config, frozen["base"], frozen["theta0"])  # the projected solver
        theta, _, losses = inner_solve(problem, rewards, frozen["theta0"], support)
        return theta, losses

    domains = domain_split(cfg, split, test.prompts + test.eval_prompts)  # checks `split`
    shape = SequenceShape(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)
    sampling = SamplingConfig(max_new_tokens=cfg.data.max_response_tokens, temperature=1.0,
                              stop_token_ids=(bench.eos_id,))

    def sample(policy, base, tokens, mask, key):  # one domain's prompts [B, P] under θ -> prompt ⊕ response
        p, lora, c = (policy, None, ref_config) if base is None else (base, policy, config)
        return generate_traced(p, c, tokens, mask, key, sampling, pad_id=bench.pad_id, lora=lora).sequences()

    # Domains go through in chunks of `domains_per_batch`, vmapped: the chunk's adaptations in one call and its
    # decoding as one batch (decoding is bound by reading the weights, so batching domains is nearly free).
    # Every domain has its own keys, so the numbers do not depend on the chunking.
    d, n = test.domains_per_batch, test.samples_per_prompt
    adapt_chunk = jax.jit(jax.vmap(adapt, in_axes=(0, None, 0)))
    model_rewards = jax.jit(lambda phi, frozen, support: sample_rewards(reward_function(config, frozen["rm"]), phi,
                                                                        support))
    sample_chunk = jax.jit(jax.vmap(sample, in_axes=(0, None, 0, 0, 0)))
    sample_reference_chunk = jax.jit(jax.vmap(sample, in_axes=(None, None, 0, 0, 0)))

    @jax.jit
    def sample_support(frozen, tokens, mask, keys):  # N reference samples per prompt: [D, P, N, T]
        out = sample_reference_chunk(frozen["theta0"], frozen["base"], tokens, mask, keys)
        return jax.tree.map(lambda v: v.reshape(d, test.prompts, n, -1), out)

    @jax.jit
    def pair_acc(phi, frozen, b):
        chosen, rejected = pair_rewards(reward_function(config, frozen["rm"]), phi, b)
        return jnp.mean(chosen > rejected)

    def prompt_batch(chunk_prompts):  # [D] lists of prompts -> tokens, mask [D, B, max_prompt_tokens]
        arrays = [prompt_arrays(ps, bench.encode, shape, bench.pad_id, TruncationStats(),
                                length=cfg.data.max_prompt_tokens) for ps in chunk_prompts]
        return tuple(jnp.asarray(np.stack(a)) for a in zip(*arrays))

    names, tp = list(domains), cfg.data.max_prompt_tokens

    def gold_rewards(chunk, support):  # the gold judge's scores of the support samples [D, P, N]
        support = to_host(support)
        scores = []
        for j, name in enumerate(chunk):
            prompts = [p for p in domains[name][0][: test.prompts] for _ in range(n)]
            flat = {k: v[j].reshape(test.prompts * n, -1)[:, tp:] for k, v in support.items()}
            scores.append(np.reshape(gold_scores(bench, prompts, flat["tokens"], flat["response_mask"]),
                                     (test.prompts, n)))
        return jnp.asarray(np.stack(scores), jnp.float32)

    rows = []
    for start in range(0, len(names), d):
        chunk = names[start:start + d]
        chunk = (chunk * d)[:d]  # one compiled shape; the repeats are dropped
        keys = spread(jnp.stack([jax.random.PRNGKey(test.seed * 100_003 + names.index(name)) for name in chunk]))
        # N reference samples of each optimisation prompt: support [D, P, N, T].
        tokens, mask = spread(prompt_batch([[p for p in domains[name][0][: test.prompts] for _ in range(n)]
                                            for name in chunk]))
        support = sample_support(frozen, tokens, mask, keys)
        rewards = spread(gold_rewards(chunk, support)) if test.reward == "gold" else \
            model_rewards(phi, frozen, support)
        thetas, losses = adapt_chunk(rewards, frozen, support)
        eval_prompts = [domains[name][0][test.prompts:] for name in chunk]
        tokens, mask = spread(prompt_batch(eval_prompts))
        eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        outs = {"adapted": sample_chunk(thetas, base, tokens, mask, eval_keys),
                "reference": sample_reference_chunk(theta0, base, tokens, mask, eval_keys)}
        outs, losses = to_host((outs, losses))  # numpy from here: no per-domain device slicing
        for j, domain in enumerate(chunk[: len(names) - start]):
            gold = {name: np.asarray(gold_scores(bench, eval_prompts[j], o["tokens"][j, :, tp:],
                                                 o["response_mask"][j, :, tp:])) for name, o in outs.items()}
            wins = np.mean((gold["adapted"] > gold["reference"]) + 0.5 * (gold["adapted"] == gold["reference"]))
            pairs = domains[domain][1]
            if pairs:
                loader = _pair_batches(pairs, bench, cfg, len(pairs), cfg.seed)
                arrays = {k: jnp.asarray(v) for k, v in loader.batch_at(range(len(pairs))).arrays().items()}
                accuracy = float(pair_acc(phi, frozen, arrays))
            else:  # a domain whose pairs were all identical continuations (counted at build time)
                accuracy = float("nan")
            rows.append({"domain": domain, "gold_adapted": float(gold["adapted"].mean()),
                         "gold_reference": float(gold["reference"].mean()), "win_rate": float(wins),
                         "rm_pair_accuracy": accuracy, "pairs": len(pairs),
                         "inner_loss_first": float(losses[j, 0]), "inner_loss_last": float(losses[j, -1])})
            if progress:
                r = rows[-1]
                print(f"[metapl meta-test] {domain}: gold {r['gold_reference']:+.3f} -> {r['gold_adapted']:+.3f}, "
                      f"win rate {r['win_rate']:.2f}, RM pair accuracy {r['rm_pair_accuracy']:.2f} "
                      f"({len(rows)}/{len(names)})", file=sys.stderr, flush=True)

    def summary(key):  # over the domains where the measure exists (a domain may have no labelled pairs)
        v = np.asarray([r[key] for r in rows])
        v = v[np.isfinite(v)]
        lo, hi = bootstrap_interval(v, test.bootstrap, test.seed)
        return {"mean": float(v.mean()), "ci95": [lo, hi], "domains": int(len(v))}

    gain = np.asarray([r["gold_adapted"] - r["gold_reference"] for r in rows])
    lo, hi = bootstrap_interval(gain, test.bootstrap, test.seed)
    result = {
        "run_dir": str(run_dir), "algo": cfg.algo, "checkpoint_step": step, "split": split, "domains": len(rows),
        "reward": test.reward,
        "solver": {"kind": "projected", "steps": meta.inner_steps, "lr": meta.inner_lr, "optimizer":
                   meta.inner_optimizer, "beta": meta.beta, "prox": meta.prox},
        "test": dataclasses.asdict(test),
        "gold_adapted": summary("gold_adapted"), "gold_reference": summary("gold_reference"),
        "gold_gain": {"mean": float(gain.mean()), "ci95": [lo, hi]},
        "win_rate": summary("win_rate"), "rm_pair_accuracy": summary("rm_pair_accuracy"),
        "per_domain": rows,
    }
    if write:
        stem = f"meta_test_{split}" + ("_gold" if test.reward == "gold" else "")
        (run_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (run_dir / f"{stem}.md").write_text(render(result))
    return result


def render(result: dict) -> str:
    def ci(s):
        return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"

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
        "",
        "| domain | gold ref | gold adapted | win rate | RM pair acc |",
        "|---|---|---|---|---|",
        *[f"| {r['domain']} | {r['gold_reference']:.3f} | {r['gold_adapted']:.3f} | {r['win_rate']:.2f} | "
          f"{r['rm_pair_accuracy']:.2f} |" for r in result["per_domain"]],
        "",
    ]
    return "\n".join(lines)
