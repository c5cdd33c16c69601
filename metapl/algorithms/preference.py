"""Preference-pair algorithms: `rm` (Bradley–Terry reward model), `dpo` and `ipo`, `tree-rm` (Bradley–Terry on
leaf pairs of preference trees grown from the model itself and judged by the benchmark's gold judge) and `srpo`
(self-improving robust preference optimisation: six log-probabilities per pair)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from metapl.algorithms.common import pair_evaluator, policy_gold_reward, start_policy, training_prompts
from metapl.config import ConfigError, number
from metapl.data.batching import PairLoader, SequenceShape, TruncationStats
from metapl.data.benchmarks import BENCHMARKS, DataSpec
from metapl.data.srpo import DEFAULT_REVISION_TEMPLATE, srpo_sequences
from metapl.data.trees import TreeConfig, generate_trees
from metapl.keys import stream_key
from metapl.losses import preference, srpo
from metapl.meta.options import MetaOptions
from metapl.models.config import ModelConfig
from metapl.models.heads import init_head_params
from metapl.models.policy import RewardModel
from metapl.parallel import run_mesh
from metapl.train.batches import ArrayBatches, PairBatches, TreeBatches, pair_inputs, pair_loader
from metapl.train.spec import Algorithm, RunConfig, Setup, build_model_and_benchmark, register

# ------------------------------------------------------------------------------------------- Bradley–Terry RM

@dataclasses.dataclass(frozen=True)
class RMLoss:
    """centering: weight c of the penalty c·(r_w + r_l)²; use_margin: subtract the pairs' label margins."""

    centering: float = number(0.0, ge=0)
    use_margin: bool = False


@dataclasses.dataclass(frozen=True)
class RMRun(RunConfig):
    """`rm`: a Bradley–Terry reward model on the training domains' pairs. Its `meta` section is what
    `metapl meta-test` uses to test it (the same solver as the meta-learned reward model it is compared with)."""

    algo: str = "rm"
    loss: RMLoss = RMLoss()
    meta: MetaOptions = MetaOptions()


def reward_model_objective(reward_model: RewardModel, loss: RMLoss):
    """(φ, frozen, pair batch) -> the Bradley–Terry loss and metrics of r_φ."""

    def objective(phi, frozen, batch):
        if frozen is None:
            return preference.rm_objective(phi, batch, config=reward_model.config, **dataclasses.asdict(loss))
        return preference.rm_objective(dict(frozen, head=phi["head"]), batch, config=reward_model.config,
                                       lora=phi["lora"], **dataclasses.asdict(loss))

    return objective


def _rm_metrics(m: dict) -> dict:
    return {"pair_accuracy": m["accuracy"], "loss": m["loss"], "reward_margin": m["reward_margin"]}


def setup_rm(cfg: RMRun) -> Setup:
    config, backbone, bench = build_model_and_benchmark(cfg)
    reward_model = RewardModel(config)
    trainable, frozen = reward_model.init(backbone, stream_key(cfg.seed, "reward_head"),
                                          stream_key(cfg.seed, "adapters"))
    objective = reward_model_objective(reward_model, cfg.loss)
    evaluate_pairs = pair_evaluator(objective, bench, cfg)
    loader = pair_loader(bench.train_pairs, bench, cfg.data.batch_size * cfg.accumulation_steps, cfg.seed,
                         cfg.model.shared_prefix)
    return Setup(trainable, frozen, objective, PairBatches(loader), lambda t, f: _rm_metrics(evaluate_pairs(t, f)),
                 f"{len(bench.train_pairs)} train pairs, {len(bench.eval_pairs)} eval pairs, "
                 f"{'LoRA + head' if config.lora else 'all weights'}")


# ------------------------------------------------------------------------------------------------- DPO / IPO

@dataclasses.dataclass(frozen=True)
class DPOLoss:
    """beta: the KL weight β; label_smoothing: ε of conservative DPO (DPO only; 0 is plain DPO)."""

    beta: float = number(0.1, gt=0)
    label_smoothing: float = number(0.0, ge=0, le=0.5)


@dataclasses.dataclass(frozen=True)
class DPORun(RunConfig):
    """`dpo` / `ipo` on the training domains' pairs. precompute_reference: the reference log-probs of every
    training pair computed once at set-up (else on the fly at every step)."""

    algo: str = "dpo"
    loss: DPOLoss = DPOLoss()
    precompute_reference: bool = False


@dataclasses.dataclass(frozen=True)
class IPORun(DPORun):
    """`ipo`: DPO's options; `loss.label_smoothing` does not apply."""

    algo: str = "ipo"


def reference_cache(ref_params, config: ModelConfig, loader: PairLoader) -> dict[str, np.ndarray]:
    """Reference log-probs {"ref_chosen_logps", "ref_rejected_logps"} [n] of every pair of the loader, computed
    once with `ref_params` under `config` (no LoRA)."""
    n, b = len(loader.pairs), loader.order.batch_size
    fn = jax.jit(lambda p, batch: preference.reference_logprobs(p, config, batch))
    out: dict[str, list] = {"ref_chosen_logps": [], "ref_rejected_logps": []}
    for start in range(0, n, b):
        idx = [min(i, n - 1) for i in range(start, start + b)]  # the last batch repeats the last pair
        for k, v in jax.device_get(fn(ref_params, pair_inputs(loader, idx))).items():
            out[k].append(np.asarray(v)[: min(b, n - start)])
    return {k: np.concatenate(v) for k, v in out.items()}


def setup_dpo(cfg: DPORun) -> Setup:
    policy, params, bench, trainable, frozen = start_policy(cfg)
    config, kind = policy.config, cfg.algo

    def objective(t, f, batch):
        p, lora = policy.weights(t, f)
        # With LoRA the reference is the base: the same params without adapters.
        return preference.dpo_objective(p, batch, config=config, kind=kind, lora=lora,
                                        ref_params=None if policy.uses_lora else f, **dataclasses.asdict(cfg.loss))

    evaluate_pairs = pair_evaluator(objective, bench, cfg)
    gold = policy_gold_reward(policy, bench, cfg)

    def evaluate(t, f):
        m = evaluate_pairs(t, f)
        return {"pair_accuracy": m["accuracy"], "loss": m["loss"], "gold_reward": gold(t, f)}

    loader = pair_loader(bench.train_pairs, bench, cfg.data.batch_size * cfg.accumulation_steps, cfg.seed,
                         cfg.model.shared_prefix)
    extras = reference_cache(params, policy.base_config, loader) if cfg.precompute_reference else None
    return Setup(trainable, frozen, objective, PairBatches(loader, extras), evaluate,
                 f"{kind}: {len(bench.train_pairs)} train pairs, {len(bench.eval_pairs)} eval pairs, "
                 f"{'cached' if extras else 'on-the-fly'} reference log-probs, "
                 f"{len(bench.eval_prompts)} eval prompts, {'LoRA' if config.lora else 'all weights'}")


# --------------------------------------------------------------------------------------------------- tree RM

@dataclasses.dataclass(frozen=True)
class TreeRMLoss:
    """centering: weight c of the penalty c·(r_w + r_l)²."""

    centering: float = number(0.0, ge=0)


@dataclasses.dataclass(frozen=True)
class TreeRMRun(RunConfig):
    """`tree-rm`: `tree` says how each prompt's preference tree is grown (`metapl.data.trees.TreeConfig`; the
    defaults of a tree-rm run are in `tree_defaults`). Its reward model has full weights (LoRA settings apply to
    nothing here); its `meta` section is the solver `metapl meta-test` tests it with, as for `rm`."""

    algo: str = "tree-rm"
    loss: TreeRMLoss = TreeRMLoss()
    tree: TreeConfig = TreeConfig()
    meta: MetaOptions = MetaOptions()
    comparison_budget: int | None = number(None, ge=1)  # at most this many labelled comparisons (None: all grown)


def tree_defaults(raw: dict) -> dict[str, dict]:
    """tree-rm's defaults for its `tree` section, some derived from the rest of the config: depth-2 binary trees
    with segments of the response length over the depth (half of it at depth 2; all of it at depth 1, a chain), 4
    compared pairs per tree, the run's seed, and the benchmark's segment separators (synthetic_domains has no
    sentence ends: segments are cut by length)."""
    data = raw.get("data") or {}
    benchmark = BENCHMARKS.get(data.get("benchmark", DataSpec.benchmark))
    depth = (raw.get("tree") or {}).get("depth", 2)
    depth = depth if isinstance(depth, int) and depth >= 1 else 2  # a bad depth is reported by the config's check
    defaults = {"depth": 2, "branching": 2, "pairs_per_tree": 4, "batch_size": 16,
                "segment_tokens": max(1, int(data.get("max_response_tokens", DataSpec.max_response_tokens)) // depth),
                "seed": raw.get("seed", RunConfig.seed)}
    if benchmark is not None and benchmark.tree_separators is not None:
        defaults["separators"] = benchmark.tree_separators
    return {"tree": defaults}


def setup_tree_rm(cfg: TreeRMRun) -> Setup:
    config, backbone, bench = build_model_and_benchmark(cfg)
    if bench.tokenizer is None:
        raise ConfigError("tree-rm needs the benchmark's tokenizer")
    prompts = training_prompts(bench, cfg.data.tree_prompts)
    grown = generate_trees(backbone, config.replace(lora=None), bench.tokenizer, prompts, bench.gold, cfg.tree,
                           mesh=run_mesh(cfg.mesh))
    trees = grown.trees
    if not trees:
        raise ConfigError("no tree produced a comparison (all leaves identical?); raise tree.segment_tokens")
    grown_comparisons = sum(len(t.comparisons) for t in trees)
    if cfg.comparison_budget is not None:
        if grown_comparisons < cfg.comparison_budget:
            raise ConfigError(f"comparison_budget = {cfg.comparison_budget} but the {len(trees)} trees of "
                              f"data.tree_prompts = {cfg.data.tree_prompts} gave {grown_comparisons} comparisons; "
                              "raise data.tree_prompts")
        trees = within_budget(trees, cfg.comparison_budget, cfg.seed)
    max_leaves = int(np.prod(cfg.tree.branchings))
    params = init_head_params(config, stream_key(cfg.seed, "reward_head"), backbone=backbone)

    def objective(t, f, batch):
        return preference.tree_rm_objective(t, batch, config=config, **dataclasses.asdict(cfg.loss))

    evaluate_pairs = pair_evaluator(lambda t, f, b: preference.rm_objective(t, b, config=config), bench, cfg)
    comparisons = sum(len(t.comparisons) for t in trees)
    pairs_per_tree = cfg.tree.pairs_per_tree or max_leaves * (max_leaves - 1) // 2
    batches = TreeBatches(trees, bench, cfg.data.batch_size, cfg.seed, max_leaves, pairs_per_tree,
                          cfg.model.shared_prefix)
    tokens = annotation_tokens(trees, bench.encode)
    return Setup(params, None, objective, batches, lambda t, f: _rm_metrics(evaluate_pairs(t, f)),
                 f"{len(trees)} trees, {comparisons} comparisons ({grown.stats.summary()}), "
                 f"{len(bench.eval_pairs)} eval pairs",
                 info={"trees": len(trees), "comparisons": comparisons, "grown_comparisons": grown_comparisons,
                       "annotation_tokens": tokens, "prompt_domains": len({p.domain for p in prompts})})


def within_budget(trees: list, budget: int, seed: int) -> list:
    """Trees in a seeded random order until they hold `budget` comparisons (the last one cut to fit), so a
    budget below what was grown keeps every domain's share in expectation rather than the first domains'."""
    order = np.random.default_rng([seed, 7]).permutation(len(trees))
    kept, left = [], budget
    for i in order:
        if left == 0:
            break
        tree = trees[i]
        kept.append(dataclasses.replace(tree, comparisons=tree.comparisons[:left]))
        left -= len(kept[-1].comparisons)
    return kept


def annotation_tokens(trees: list, encode) -> int:
    """The tokens an annotator reads to label every comparison: per comparison, the prompt and the nodes on the
    two leaves' paths, a prefix the leaves share read once (node texts encoded one by one)."""
    total = 0
    for tree in trees:
        sizes = [len(encode(node.text)) for node in tree.nodes]
        prompt = len(encode(tree.prompt))
        for c in tree.comparisons:
            total += prompt + sum(sizes[i] for i in set(tree.path(c.chosen)) | set(tree.path(c.rejected)))
    return total


# ------------------------------------------------------------------------------------------------------ SRPO

@dataclasses.dataclass(frozen=True)
class SRPOLoss:
    """beta: the KL weight β; alpha: the weight α of L_self against L_gen."""

    beta: float = number(0.1, gt=0)
    alpha: float = number(0.5, ge=0, le=1)


@dataclasses.dataclass(frozen=True)
class SRPORun(RunConfig):
    """`srpo` on the training domains' pairs; the revision context is the benchmark's revision template."""

    algo: str = "srpo"
    loss: SRPOLoss = SRPOLoss()


def setup_srpo(cfg: SRPORun) -> Setup:
    """SRPO on the benchmark's pairs: the six log-probs per pair, reference = initial weights (or LoRA base)."""
    policy, _, bench, trainable, frozen = start_policy(cfg)
    config = policy.config
    shape = SequenceShape(2 * cfg.data.max_prompt_tokens + cfg.data.max_response_tokens, cfg.data.max_response_tokens)
    template = bench.revision_template or DEFAULT_REVISION_TEMPLATE
    sequences = srpo_sequences(bench.train_pairs, bench.encode, shape, eos_id=bench.eos_id, pad_id=bench.pad_id,
                               template=template, stats=TruncationStats(), length=shape.max_length)
    if cfg.model.shared_prefix:  # three contexts per pair, each computed once for its two responses
        train = sequences.shared_prefix_arrays(shape.max_prompt_tokens, shape.max_response_tokens + 1, bench.pad_id)
    else:
        train = sequences.arrays()

    def objective(t, f, batch):
        p, lora = policy.weights(t, f)
        return srpo.srpo_objective(p, batch, config=config, lora=lora, ref_params=None if policy.uses_lora else f,
                                   **dataclasses.asdict(cfg.loss))

    gold = policy_gold_reward(policy, bench, cfg)
    return Setup(trainable, frozen, objective, ArrayBatches(train, cfg.data.batch_size * cfg.accumulation_steps,
                                                            cfg.seed),
                 lambda t, f: {"gold_reward": gold(t, f)},
                 f"srpo: {len(bench.train_pairs)} train pairs (six sequences each)")


register(Algorithm("rm", RMRun, setup_rm, "Bradley–Terry reward model on the training domains' pairs"))
register(Algorithm("dpo", DPORun, setup_dpo, "direct preference optimisation"))
register(Algorithm("ipo", IPORun, setup_dpo, "identity preference optimisation"))
register(Algorithm("srpo", SRPORun, setup_srpo, "self-improving robust preference optimisation"))
register(Algorithm("tree-rm", TreeRMRun, setup_tree_rm, "Bradley–Terry reward model on preference-tree leaf pairs",
                   section_defaults=tree_defaults))

__all__ = ["DPOLoss", "DPORun", "IPORun", "RMLoss", "RMRun", "SRPOLoss", "SRPORun", "TreeRMLoss", "TreeRMRun",
           "annotation_tokens", "reference_cache", "reward_model_objective", "setup_dpo", "setup_rm", "setup_srpo",
           "setup_tree_rm", "tree_defaults", "within_budget"]
