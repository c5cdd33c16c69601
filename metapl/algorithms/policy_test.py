"""A trained policy (e.g. DPO on the pooled pairs) answering the prompts of a benchmark's test domains, judged like
a meta-test: the same evaluation prompts and the same per-domain keys as `metapl meta-test`, so the rows pair with
a reward model's meta-test rows domain by domain.

    result = policy_test("runs/dpo", "heldout", MetaTestConfig(eval_prompts=32))

Per domain: the mean gold reward of the trained policy's samples ("gold_adapted") and of the reference policy's
("gold_reference"), the trained policy's gold win rate over the reference (ties ½), its KL to the reference and
both response lengths. No solver runs and no reward model exists, so the optimisation prompts are skipped and
"rm_pair_accuracy" is NaN. A reward-conditioned (dt) policy is asked for the top reward bin, as in training's
evaluation; the reference always sees the plain prompt (so every test of a domain pairs with every other).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from metapl.algorithms.common import start_policy
from metapl.algorithms.offline import conditioning
from metapl.algorithms.policy_gradient import ppo_parameters
from metapl.config import ConfigError
from metapl.data.benchmarks import Benchmark
from metapl.eval.stats import win_rate
from metapl.meta.evaluate import (MetaTestConfig, cross_judge_columns, cross_judge_lines, domain_key, format_interval,
                                  prompt_batch, response_columns, response_lines, summarise)
from metapl.meta.metagrad import MetaConfig
from metapl.models import SamplingConfig
from metapl.models.logprobs import sequence_logprobs
from metapl.models.policy import Policy
from metapl.models.sampling import generate_traced
from metapl.train.checkpoints import checkpoint_manager, restore_checkpoint
from metapl.train.run import read_run_config
from metapl.train.step import init_state, make_optimizer


@dataclasses.dataclass
class RestoredPolicy:
    """A policy run read back: its config, `Policy`, benchmark, the trained and the reference weights (each
    (params, lora) as the model functions take them), how the trained policy is prompted (`render`, None: the
    plain prompt) and the checkpoint step."""

    run_dir: Path
    cfg: Any
    policy: Policy
    bench: Benchmark
    trained: tuple
    reference: tuple
    render: Callable[[str], str] | None
    step: int


def restore_policy(run_dir: str | Path) -> RestoredPolicy:
    """The latest checkpoint of a run that trains a policy (every algorithm but rm, tree-rm and meta)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if cfg.algo in ("meta", "rm", "tree-rm"):
        raise ConfigError(f"{run_dir}: a {cfg.algo!r} run trains a reward model, not a policy; use meta-test")
    manager = checkpoint_manager(run_dir)
    if manager.latest_step() is None:
        raise ConfigError(f"{run_dir}: no checkpoint to read")
    reward_tokens, render = conditioning(cfg)
    policy, _, bench, trainable, frozen = start_policy(cfg, reward_tokens=reward_tokens)
    like, policy_part = trainable, (lambda p: p)
    if cfg.algo == "ppo":  # the checkpoint holds the policy and its value head
        part, like = ppo_parameters(policy, trainable, cfg.seed)
        policy_part = lambda p: p[part]  # noqa: E731
    state = init_state(like, make_optimizer(cfg.optim), jax.random.PRNGKey(cfg.seed))
    state, _ = restore_checkpoint(manager, manager.latest_step(), state)
    return RestoredPolicy(run_dir, cfg, policy, bench, policy.weights(policy_part(state.params), frozen),
                          policy.weights(trainable, frozen), render, int(state.step))  # reference: the start, π_ref


def policy_test(run_dir: str | Path, split: str = "heldout", test: MetaTestConfig = MetaTestConfig(),
                write: bool = True) -> dict:
    """Judge the latest checkpoint of a policy run on the benchmark's `split` domains; with `write`,
    policy_test_<split>.{json,md} go into the run directory. Same result layout as `meta_test`."""
    restored = restore_policy(run_dir)
    run_dir, cfg, policy, bench, render = restored.run_dir, restored.cfg, restored.policy, restored.bench, \
        restored.render
    trained, reference = restored.trained, restored.reference
    spec = bench.spec
    sampling = SamplingConfig(max_new_tokens=spec.max_response_tokens, temperature=1.0, stop_token_ids=(bench.eos_id,))

    @jax.jit
    def sample(weights, tokens, mask, key):
        params, lora = weights
        return generate_traced(params, policy.config, tokens, mask, key, sampling, pad_id=bench.pad_id,
                               lora=lora).sequences()

    @jax.jit
    def log_ratios(trained, reference, s):  # log π(y|x) − log π_ref(y|x) of the trained policy's samples [B]
        def logp(weights):
            params, lora = weights
            return sequence_logprobs(params, policy.config, s["tokens"], s["response_mask"],
                                     attention_mask=s["attention_mask"], lora=lora)[1]
        return logp(trained) - logp(reference)

    domains = bench.domain_split(split, test.prompts + test.eval_prompts)
    names, tp, rows = list(domains), spec.max_prompt_tokens, []
    for index, name in enumerate(names):
        prompts = domains[name][0][test.prompts:]
        shown = [dataclasses.replace(x, prompt=render(x.prompt)) for x in prompts] if render else prompts
        key = jax.random.fold_in(domain_key(test, index), 1)  # meta-test's evaluation key of this domain
        gold, samples = {}, {}
        for side, weights, asked in (("adapted", trained, shown), ("reference", reference, prompts)):
            tokens, mask = prompt_batch(bench, [asked])
            out = sample(weights, tokens[0], mask[0], key)
            if side == "adapted":
                ratios = np.asarray(jax.device_get(log_ratios(trained, reference, out)))
            out = jax.device_get(out)
            samples[side] = {"tokens": out["tokens"][:, tp:], "response_mask": out["response_mask"][:, tp:]}
            gold[side] = np.asarray(bench.gold_scores(prompts, samples[side]["tokens"],
                                                      samples[side]["response_mask"]))
        rows.append({"domain": name, "gold_adapted": float(gold["adapted"].mean()),
                     "gold_reference": float(gold["reference"].mean()),
                     "win_rate": win_rate(gold["adapted"], gold["reference"]),
                     "rm_pair_accuracy": float("nan"), "pairs": len(domains[name][1]),
                     "gold_adapted_samples": gold["adapted"].tolist(),
                     "gold_reference_samples": gold["reference"].tolist(),
                     "inner_loss_first": float("nan"), "inner_loss_last": float("nan"),
                     **response_columns(bench, samples, ratios),
                     **cross_judge_columns(bench, prompts, samples)})
    result = summarise(rows, test, solver=MetaConfig(), split=split,
                       about={"run_dir": str(run_dir), "algo": cfg.algo, "checkpoint_step": restored.step})
    result["solver"] = {"kind": "none (the trained policy answers)"}
    if write:
        (run_dir / f"policy_test_{split}.json").write_text(json.dumps(result, indent=1) + "\n")
        (run_dir / f"policy_test_{split}.md").write_text(_render(result))
    return result


def _render(result: dict) -> str:
    ci = format_interval

    return "\n".join([
        f"# Policy test of {result['run_dir']} ({result['algo']} run, step {result['checkpoint_step']}) on "
        f"{result['domains']} {result['split']} domains",
        "",
        f"One temperature-1 sample per prompt, {result['test']['eval_prompts']} prompts per domain, the trained and "
        "the reference policy on the same keys. Means over domains with bootstrap 95% intervals.",
        "",
        "| measure | mean [95% CI] |",
        "|---|---|",
        f"| gold reward, reference policy | {ci(result['gold_reference'])} |",
        f"| gold reward, trained policy | {ci(result['gold_adapted'])} |",
        f"| gold gain (trained − reference) | {ci(result['gold_gain'])} |",
        f"| gold win rate vs reference | {ci(result['win_rate'])} |",
        *response_lines(result, "trained"),
        *cross_judge_lines(result),
        "",
        "| domain | gold ref | gold trained | win rate |",
        "|---|---|---|---|",
        *[f"| {r['domain']} | {r['gold_reference']:.3f} | {r['gold_adapted']:.3f} | {r['win_rate']:.2f} |"
          for r in result["per_domain"]],
        "",
    ])


__all__ = ["RestoredPolicy", "policy_test", "restore_policy"]
