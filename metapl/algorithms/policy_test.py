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
import jax.numpy as jnp
import numpy as np

from metapl.algorithms.common import start_policy
from metapl.algorithms.offline import conditioning
from metapl.algorithms.policy_gradient import ppo_parameters
from metapl.config import ConfigError
from metapl.data.batching import SequenceShape, TruncationStats, prompt_arrays
from metapl.data.benchmarks import Benchmark
from metapl.data.srpo import DEFAULT_REVISION_TEMPLATE, revision_prompt
from metapl.eval.stats import mean_interval, win_rate
from metapl.meta.reference_samples import fingerprint, remembered
from metapl.meta.evaluate import (MetaTestConfig, cross_judge_columns, cross_judge_lines, domain_key, format_interval,
                                  prompt_batch, response_columns, response_lines, response_texts, summarise)
from metapl.meta.metagrad import MetaConfig
from metapl.models import SamplingConfig
from metapl.models.lora import merged
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


def restore_policy(run_dir: str | Path, reward_bin: int | None = None) -> RestoredPolicy:
    """The latest checkpoint of a run that trains a policy (every algorithm but rm, tree-rm and meta); a dt policy
    is prompted for `reward_bin` (default: its top bin)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if cfg.algo in ("meta", "rm", "tree-rm"):
        raise ConfigError(f"{run_dir}: a {cfg.algo!r} run trains a reward model, not a policy; use meta-test")
    manager = checkpoint_manager(run_dir)
    if manager.latest_step() is None:
        raise ConfigError(f"{run_dir}: no checkpoint to read")
    reward_tokens, render = conditioning(cfg, reward_bin)
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
                write: bool = True, revisions: int = 0, reward_bin: int | None = None) -> dict:
    """Judge the latest checkpoint of a policy run on the benchmark's `split` domains; with `write`,
    policy_test_<split>.{json,md} go into the run directory. Same result layout as `meta_test`.

    revisions n > 0: after its direct answer y_0 the trained policy revises its own answer n times in context
    (SRPO's inference: y_i answers `revision_prompt(x, y_{i−1})`, the benchmark's revision template, key
    fold_in(evaluation key, i + 1)); each row then holds "gold_revisions" [n + 1], the mean gold reward of y_0..y_n,
    and "win_rate_revisions" [n + 1], their gold win rates over the reference policy's answers to the same prompts
    (ties ½), and the result their summary. The direct answer stays the row's "gold_adapted", so tests keep pairing.

    reward_bin: a reward-conditioned (dt) policy is asked for this bin instead of its top one (the check that its
    conditioning works: gold reward should rise with the bin asked for)."""
    if revisions < 0:
        raise ConfigError(f"revisions must be >= 0, got {revisions}")
    restored = restore_policy(run_dir, reward_bin)
    run_dir, cfg, policy, bench, render = restored.run_dir, restored.cfg, restored.policy, restored.bench, \
        restored.render
    trained, reference = restored.trained, restored.reference
    spec = bench.spec
    sampling = SamplingConfig(max_new_tokens=spec.max_response_tokens, temperature=1.0, stop_token_ids=(bench.eos_id,))

    def sample(weights, tokens, mask, key):  # one domain's prompts [B, P] -> prompt ⊕ response
        params, lora = weights
        return generate_traced(params, policy.config, tokens, mask, key, sampling, pad_id=bench.pad_id,
                               lora=lora).sequences()

    def log_ratios(trained, reference, s):  # log π(y|x) − log π_ref(y|x) of one domain's trained samples [B]
        def logp(weights):
            params, lora = weights
            return sequence_logprobs(params, policy.config, s["tokens"], s["response_mask"],
                                     attention_mask=s["attention_mask"], lora=lora)[1]
        return logp(trained) - logp(reference)

    # Domains go through in chunks of test.domains_per_batch, vmapped (decoding is bound by reading the weights, so
    # a chunk costs little more than one domain); every domain keeps its own keys, as in meta-test.
    sample_chunk = jax.jit(jax.vmap(sample, in_axes=(None, 0, 0, 0)))
    log_ratio_chunk = jax.jit(jax.vmap(log_ratios, in_axes=(None, None, 0)))

    domains = bench.domain_split(split, test.prompts + test.eval_prompts)
    names, tp, rows, d = list(domains), spec.max_prompt_tokens, [], test.domains_per_batch
    reference_print = fingerprint(merged(*reference, policy.config),  # merged, as it decodes
                                  static=(policy.config, sampling, bench.pad_id, d))
    for start in range(0, len(names), d):
        chunk = names[start:start + d]
        chunk = (chunk * d)[:d]  # one compiled shape; the repeats are dropped
        prompts = [domains[name][0][test.prompts:] for name in chunk]
        shown = [[dataclasses.replace(x, prompt=render(x.prompt)) for x in ps] for ps in prompts] if render \
            else prompts
        keys = jnp.stack([jax.random.fold_in(domain_key(test, names.index(name)), 1)  # meta-test's evaluation keys
                          for name in chunk])
        tokens, mask = prompt_batch(bench, shown)
        adapted = sample_chunk(trained, tokens, mask, keys)
        ratios = np.asarray(jax.device_get(log_ratio_chunk(trained, reference, adapted)))
        tokens, mask = prompt_batch(bench, prompts)  # the same in every test of this reference: decoded once
        plain = remembered(reference_print, "policy-test reference", (tokens, mask, keys),
                           lambda: sample_chunk(reference, tokens, mask, keys))
        samples = {side: {k: out[k][:, :, tp:] for k in ("tokens", "response_mask")}
                   for side, out in (("adapted", jax.device_get(adapted)), ("reference", jax.device_get(plain)))}
        curves = revision_golds(restored, prompts, samples["adapted"], keys, revisions, sample_chunk) \
            if revisions else None
        for j, name in enumerate(chunk[: len(names) - start]):
            mine = {side: {k: v[j] for k, v in s.items()} for side, s in samples.items()}
            gold = {side: np.asarray(bench.gold_scores(prompts[j], s["tokens"], s["response_mask"]))
                    for side, s in mine.items()}
            revised = {}
            if revisions:
                curve = [gold["adapted"]] + [c[j] for c in curves]
                revised["gold_revisions"] = [float(np.mean(g)) for g in curve]
                revised["win_rate_revisions"] = [win_rate(g, gold["reference"]) for g in curve]
            rows.append({"domain": name, "gold_adapted": float(gold["adapted"].mean()),
                         "gold_reference": float(gold["reference"].mean()),
                         "win_rate": win_rate(gold["adapted"], gold["reference"]),
                         "rm_pair_accuracy": float("nan"), "pairs": len(domains[name][1]),
                         "gold_adapted_samples": gold["adapted"].tolist(),
                         "gold_reference_samples": gold["reference"].tolist(),
                         "inner_loss_first": float("nan"), "inner_loss_last": float("nan"),
                         **response_columns(bench, mine, ratios[j]), **response_texts(bench, prompts[j], mine),
                         **cross_judge_columns(bench, prompts[j], mine), **revised})
    about = {"run_dir": str(run_dir), "algo": cfg.algo, "checkpoint_step": restored.step}
    if reward_bin is not None:
        about["reward_bin"] = reward_bin
    result = summarise(rows, test, solver=MetaConfig(), split=split, about=about)
    result["solver"] = {"kind": "none (the trained policy answers)"}
    if revisions:
        result["revisions"] = [mean_interval([r["gold_revisions"][i] for r in rows], test.bootstrap, test.seed)
                               for i in range(revisions + 1)]
        result["revision_win_rates"] = [mean_interval([r["win_rate_revisions"][i] for r in rows], test.bootstrap,
                                                      test.seed) for i in range(revisions + 1)]
    if write:
        (run_dir / f"policy_test_{split}.json").write_text(json.dumps(result, indent=1) + "\n")
        (run_dir / f"policy_test_{split}.md").write_text(_render(result))
    return result


def revision_golds(restored: RestoredPolicy, prompts: list[list], first: dict, keys, n: int,
                   sample_chunk) -> list[np.ndarray]:
    """The gold scores [D, B] of n successive in-context revisions by the trained policy of D domains' prompts
    (`prompts` [D][B]), starting from its answers `first` (tokens, response_mask [D, B, T]); revision i samples
    with fold_in(keys[d], i + 1); `sample_chunk(weights, tokens, mask, keys)` is the vmapped sampler."""
    bench, spec = restored.bench, restored.bench.spec
    template = bench.revision_template or DEFAULT_REVISION_TEMPLATE
    length = 2 * spec.max_prompt_tokens + spec.max_response_tokens  # x, the previous answer and the template
    shape = SequenceShape(length, spec.max_response_tokens)
    current, out = first, []
    for i in range(1, n + 1):
        arrays = []
        for ps, tokens, mask in zip(prompts, current["tokens"], current["response_mask"]):
            contexts = [dataclasses.replace(x, prompt=revision_prompt(x.prompt, y, template))
                        for x, y in zip(ps, bench.decode_responses(tokens, mask))]
            arrays.append(prompt_arrays(contexts, bench.encode, shape, bench.pad_id, TruncationStats(), length=length))
        tokens, mask = (jnp.asarray(np.stack(a)) for a in zip(*arrays))
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i + 1))(keys)
        s = jax.device_get(sample_chunk(restored.trained, tokens, mask, step_keys))
        current = {"tokens": s["tokens"][:, :, length:], "response_mask": s["response_mask"][:, :, length:]}
        out.append(np.stack([bench.gold_scores(ps, t, m) for ps, t, m in
                             zip(prompts, current["tokens"], current["response_mask"])]))
    return out


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
