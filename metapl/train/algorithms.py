"""From a `RunConfig` to what the training loop needs, per algorithm: model, data, objective, evaluation.

Registered: `rm` (Bradley–Terry reward model), `dpo`, `ipo`, and `tree-rm` (Bradley–Terry on leaf pairs of
preference trees grown from the model itself and judged by the benchmark's gold judge). Each runs on the
`synthetic_domains` benchmark (generated in-process from `data.synthetic`) or on a `sentiment_domains` build.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from metapl.config import ConfigError
from metapl.data.batching import PairLoader, SequenceShape, TruncationStats, hf_encoder, prompt_arrays
from metapl.data.schemas import PreferencePair, PromptExample
from metapl.losses import preference
from metapl.losses.policy_gradient import policy_and_values
from metapl.models.logprobs import token_logprobs
from metapl.models import (
    LoraConfig, ModelConfig, SamplingConfig, generate, init_head_params, init_lora, init_params, llama,
)
from metapl.parallel import param_shardings, place, run_mesh
from metapl.train.run import RunConfig, Setup


@dataclasses.dataclass
class Benchmark:
    """Pairs and prompts of a benchmark's meta-train domains, a tokenizer interface and a gold judge."""

    train_pairs: list[PreferencePair]
    eval_pairs: list[PreferencePair]
    eval_prompts: list[PromptExample]
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    vocab_size: int
    pad_id: int
    eos_id: int
    gold: Callable[[str, str, str], float]  # (domain, prompt, response) -> gold reward
    tokenizer: Any = None


def _split(pairs: list[PreferencePair], fraction: float) -> tuple[list, list]:
    by_domain: dict[str, list] = {}
    for p in pairs:
        by_domain.setdefault(p.domain, []).append(p)
    train, held = [], []
    for d in sorted(by_domain):
        n_eval = int(round(len(by_domain[d]) * fraction))
        train += by_domain[d][: len(by_domain[d]) - n_eval]
        held += by_domain[d][len(by_domain[d]) - n_eval:]
    return train, held


def load_benchmark(cfg: RunConfig, tokenizer=None) -> Benchmark:
    data = cfg.data
    if data.benchmark == "synthetic_domains":
        from metapl.data.synthetic import SyntheticDomains

        bench = SyntheticDomains(data.synthetic)
        pairs = [p for d in bench.train_domains for p in bench.pairs(d)]
        train, held = _split(pairs, data.eval_fraction)
        per_domain = max(1, data.eval_prompts // len(bench.train_domains))
        prompts = [p for d in bench.train_domains for p in bench.prompts(d, per_domain)]
        tok = bench.tokenizer
        return Benchmark(train, held, prompts, tok.encode, tok.decode, tok.vocab_size, tok.pad_token_id,
                         tok.eos_token_id, bench.gold_reward, tok)
    if data.benchmark == "sentiment_domains":
        from metapl.data.commands import default_data_dir
        from metapl.data.judges import VaderJudge
        from metapl.data.tfds_builders import VERSION, load_records

        if tokenizer is None:
            raise ConfigError("sentiment_domains needs a pretrained model (model.pretrained) for its tokenizer")
        root = Path(data.data_dir) if data.data_dir else default_data_dir()
        pairs_dir = root / "sentiment_domains" / "pairs" / VERSION
        if not pairs_dir.exists():
            raise ConfigError(f"{pairs_dir} does not exist; run `metapl data build sentiment_domains` first")
        train, held = _split(load_records(pairs_dir, "train"), data.eval_fraction)
        prompts = load_records(root / "sentiment_domains" / "prompts" / VERSION, "train")[: data.eval_prompts]
        judge = VaderJudge()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return Benchmark(train, held, prompts, hf_encoder(tokenizer),
                         lambda ids: tokenizer.decode(ids, skip_special_tokens=True), len(tokenizer), pad,
                         tokenizer.eos_token_id, lambda d, x, y: float(judge.score([x + y])[0]), tokenizer)
    raise ConfigError(f"data.benchmark: unknown benchmark {data.benchmark!r} (synthetic_domains, sentiment_domains)")


def domain_split(cfg: RunConfig, split: str, prompts_per_domain: int) -> dict[str, tuple[list, list]]:
    """{domain: (its first `prompts_per_domain` prompts, its labelled pairs)} for the benchmark's meta-train
    ("train") or held-out ("heldout") domains, in the benchmark's domain order."""
    if split not in ("train", "heldout"):
        raise ConfigError(f"split must be train or heldout, got {split!r}")
    if cfg.data.benchmark == "synthetic_domains":
        from metapl.data.synthetic import SyntheticDomains

        synth = SyntheticDomains(cfg.data.synthetic)
        domains = synth.train_domains if split == "train" else synth.heldout_domains
        return {d: (synth.prompts(d, prompts_per_domain), synth.pairs(d)) for d in domains}
    if cfg.data.benchmark != "sentiment_domains":
        raise ConfigError(f"data.benchmark: unknown benchmark {cfg.data.benchmark!r}")
    from metapl.data.commands import default_data_dir
    from metapl.data.tfds_builders import VERSION, load_records

    root = (Path(cfg.data.data_dir) if cfg.data.data_dir else default_data_dir()) / "sentiment_domains"
    prompts_dir, pairs_dir = root / "prompts" / VERSION, root / "pairs" / VERSION
    if not prompts_dir.exists():
        raise ConfigError(f"{prompts_dir} does not exist; run `metapl data build sentiment_domains` first")
    out: dict[str, tuple[list, list]] = {}
    for p in load_records(prompts_dir, split):
        out.setdefault(p.domain, ([], []))[0].append(p)
    for p in load_records(pairs_dir, split):
        if p.domain in out:
            out[p.domain][1].append(p)
    short = {d: len(v[0]) for d, v in out.items() if len(v[0]) < prompts_per_domain}
    if short:
        raise ConfigError(f"{prompts_dir} ({split}): {len(short)} domain(s) have fewer than {prompts_per_domain} "
                          f"prompts (e.g. {dict(list(short.items())[:3])}); rebuild with a larger "
                          "--prompts-per-domain or ask for fewer prompts")
    return {d: (v[0][:prompts_per_domain], v[1]) for d, v in out.items()}


def load_model(cfg: RunConfig, vocab_size: int | None) -> tuple[ModelConfig, Any, Any]:
    """(config, params, tokenizer or None) with LoRA configured when model.lora_rank > 0."""
    spec = cfg.model
    lora = LoraConfig(rank=spec.lora_rank, alpha=spec.lora_alpha, targets=tuple(spec.lora_targets)) \
        if spec.lora_rank else None
    if spec.pretrained:
        from metapl.models import load_pretrained

        m = load_pretrained(spec.pretrained, dtype=spec.dtype)
        return m.config.replace(lora=lora, remat=spec.remat), m.params, m.tokenizer
    config = llama(vocab_size=vocab_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                   num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, intermediate_size=spec.intermediate_size,
                   max_position_embeddings=512, dtype=spec.dtype, param_dtype=spec.dtype, lora=lora,
                   remat=spec.remat)
    return config, init_params(config, jax.random.PRNGKey(cfg.seed)), None


class DictBatches:
    """A PairLoader yielding the flat jnp dicts the pair losses take, with per-pair extras (e.g. cached
    reference log-probs, arrays indexed like the loader's pairs) added by index."""

    def __init__(self, loader: PairLoader, extras: dict[str, np.ndarray] | None = None):
        self.loader, self.extras = loader, extras or {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = next(self.loader.order)
        arrays = self.loader.batch_at(idx).arrays()
        out = {k: jnp.asarray(v) for k, v in arrays.items() if k not in ("domain", "gold_margin")}
        out.update({k: jnp.asarray(v[idx]) for k, v in self.extras.items()})
        return out

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def _objective_kwargs(fn: Callable, loss: dict, fixed: set[str]) -> dict:
    allowed = {p for p in inspect.signature(fn).parameters if p not in fixed | {"params", "batch", "config", "lora"}}
    unknown = sorted(set(loss) - allowed)
    if unknown:
        raise ConfigError(f"loss: unknown option(s) {unknown} for {fn.__name__}; allowed: {sorted(allowed)}")
    return dict(loss)


def _pair_batches(pairs, bench: Benchmark, cfg: RunConfig, batch_size: int, seed: int) -> PairLoader:
    shape = SequenceShape(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                          buckets=(cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 1,))
    return PairLoader(pairs, bench.encode, batch_size=batch_size, shape=shape, pad_id=bench.pad_id,
                      eos_id=bench.eos_id, seed=seed)


def _eval_batches(pairs, bench, cfg):
    """Every eval pair once, in fixed-size batches (the last one padded with weight-0 rows)."""
    b = cfg.data.batch_size
    n = len(pairs)
    padded = pairs + pairs[: (-n) % b]
    loader = _pair_batches(padded, bench, cfg, b, seed=0)
    out = []
    for start in range(0, len(padded), b):
        arrays = {k: jnp.asarray(v) for k, v in loader.batch_at(range(start, start + b)).arrays().items()
                  if k not in ("domain", "gold_margin")}
        arrays["weights"] = jnp.asarray([1.0 if start + i < n else 0.0 for i in range(b)])
        out.append(arrays)
    return out


def _weighted_mean(rows: list[dict], weights: list[float]) -> dict:
    total = sum(weights)
    return {k: sum(float(r[k]) * w for r, w in zip(rows, weights)) / total for k in rows[0]}


def placed_on_run_mesh(frozen, cfg: RunConfig):
    """Frozen weights laid out on the run's mesh now (unchanged for a one-device run), so that a sampler holding
    them and the training step share one copy (the run loop's own placement of them is then a no-op)."""
    mesh = run_mesh(cfg.mesh)
    return frozen if mesh is None else place(frozen, param_shardings(frozen, mesh))


def gold_scores(bench: Benchmark, prompts: list[PromptExample], tokens, mask) -> list[float]:
    """The gold judge's score of each sampled response (tokens, mask [B, N] as in GenerationOutput; one row per
    prompt). An empty response (the policy stopped at once) scores 0 on either benchmark."""
    scores = []
    for prompt, row, keep in zip(prompts, np.asarray(tokens), np.asarray(mask)):
        response = bench.decode([int(t) for t, k in zip(row, keep) if k and int(t) != bench.eos_id])
        scores.append(bench.gold(prompt.domain, prompt.prompt, response) if response.strip() else 0.0)
    return scores


def gold_reward_of_samples(params, config, bench: Benchmark, cfg: RunConfig, *, lora=None, seed: int = 0,
                           render: Callable[[str], str] | None = None) -> float:
    """Mean gold reward of responses sampled (temperature 1) from the policy for the eval prompts.

    render: what the policy is shown for a prompt (e.g. the prompt with a target-reward token); the judge
    always scores the response against the original prompt.
    """
    stats = TruncationStats()
    shape = SequenceShape(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)
    shown = [dataclasses.replace(p, prompt=render(p.prompt)) for p in bench.eval_prompts] if render else \
        bench.eval_prompts
    tokens, mask = prompt_arrays(shown, bench.encode, shape, bench.pad_id, stats, length=cfg.data.max_prompt_tokens)
    out = generate(params, config, tokens, mask, jax.random.PRNGKey(seed),
                   SamplingConfig(max_new_tokens=cfg.data.max_response_tokens, temperature=1.0,
                                  stop_token_ids=(bench.eos_id,)), pad_id=bench.pad_id, lora=lora,
                   mesh=run_mesh(cfg.mesh))
    return float(np.mean(gold_scores(bench, bench.eval_prompts, out.tokens, out.mask)))


def _model_and_benchmark(cfg: RunConfig, reward_bins: int = 0) -> tuple[ModelConfig, Any, Benchmark]:
    """The model and the benchmark; reward_bins > 0 adds reward tokens to the synthetic vocabulary (dt)."""
    if cfg.model.pretrained:
        config, params, tokenizer = load_model(cfg, None)
        return config, params, load_benchmark(cfg, tokenizer)
    bench = load_benchmark(cfg)
    if reward_bins:
        from metapl.data.synthetic import WordTokenizer
        from metapl.losses.offline import DEFAULT_REWARD_TOKEN

        tok = WordTokenizer(cfg.data.synthetic.vocab_words,
                            [DEFAULT_REWARD_TOKEN.format(bin=b) for b in range(reward_bins)])
        words_end = len(tok.SPECIALS) + cfg.data.synthetic.vocab_words  # reward tokens are not response text
        bench = dataclasses.replace(bench, encode=tok.encode, vocab_size=tok.vocab_size, tokenizer=tok,
                                    decode=lambda ids: tok.decode([i for i in ids if i < words_end]))
    config, params, _ = load_model(cfg, bench.vocab_size)
    return config, params, bench


def reward_model_parameters(config: ModelConfig, backbone: Any, seed: int) -> tuple[Any, Any]:
    """(trainable φ, frozen head model or None): the reward-model layout of `rm` and `meta` runs (so meta-test
    reads either). All weights: φ = a head model on `backbone`. LoRA: φ = {"lora", "head"} over the frozen
    head model."""
    head_model = init_head_params(config, jax.random.PRNGKey(seed + 1), backbone=backbone)
    if config.lora is None:
        return head_model, None
    return {"lora": init_lora(config, jax.random.PRNGKey(seed + 2)), "head": head_model["head"]}, head_model


def setup_rm(cfg: RunConfig) -> Setup:
    config, backbone, bench = _model_and_benchmark(cfg)
    trainable, frozen = reward_model_parameters(config, backbone, cfg.seed)
    kwargs = _objective_kwargs(preference.rm_objective, cfg.loss, set())
    if config.lora is not None:

        def objective(t, f, batch):
            return preference.rm_objective(dict(f, head=t["head"]), batch, config=config, lora=t["lora"], **kwargs)
    else:

        def objective(t, f, batch):
            return preference.rm_objective(t, batch, config=config, **kwargs)

    eval_sets = _eval_batches(bench.eval_pairs, bench, cfg)
    eval_fn = jax.jit(objective)

    def evaluate(t, f):
        rows = [jax.device_get(eval_fn(t, f, b)[1]) for b in eval_sets]
        m = _weighted_mean(rows, [float(b["weights"].sum()) for b in eval_sets])
        return {"pair_accuracy": m["accuracy"], "loss": m["loss"], "reward_margin": m["reward_margin"]}

    loader = _pair_batches(bench.train_pairs, bench, cfg, cfg.data.batch_size * cfg.accumulation_steps, cfg.seed)
    return Setup(trainable, frozen, objective, DictBatches(loader), evaluate,
                 f"{len(bench.train_pairs)} train pairs, {len(bench.eval_pairs)} eval pairs, "
                 f"{'LoRA + head' if config.lora else 'all weights'}")


def setup_dpo(cfg: RunConfig, kind: str = "dpo") -> Setup:
    config, params, bench = _model_and_benchmark(cfg)
    kwargs = _objective_kwargs(preference.dpo_objective, cfg.loss, {"ref_params", "kind"})
    if config.lora is not None:  # the reference is the base model: the same params without adapters
        trainable, frozen = init_lora(config, jax.random.PRNGKey(cfg.seed + 2)), params

        def objective(t, f, batch):
            return preference.dpo_objective(f, batch, config=config, kind=kind, lora=t, **kwargs)

        def policy(t, f):
            return f, t
    else:  # full fine-tuning: the frozen tree is the reference (the initial weights)
        trainable, frozen = params, jax.tree.map(jnp.copy, params)

        def objective(t, f, batch):
            return preference.dpo_objective(t, batch, config=config, kind=kind, ref_params=f, **kwargs)

        def policy(t, f):
            return t, None

    eval_sets = _eval_batches(bench.eval_pairs, bench, cfg)
    eval_fn = jax.jit(objective)

    def evaluate(t, f):
        rows = [jax.device_get(eval_fn(t, f, b)[1]) for b in eval_sets]
        m = _weighted_mean(rows, [float(b["weights"].sum()) for b in eval_sets])
        p, lora = policy(t, f)
        gold = gold_reward_of_samples(p, config, bench, cfg, lora=lora, seed=cfg.seed)
        return {"pair_accuracy": m["accuracy"], "loss": m["loss"], "gold_reward": gold}

    loader = _pair_batches(bench.train_pairs, bench, cfg, cfg.data.batch_size * cfg.accumulation_steps, cfg.seed)
    extras = _reference_cache(params, config, loader) if cfg.precompute_reference else None
    return Setup(trainable, frozen, objective, DictBatches(loader, extras), evaluate,
                 f"{kind}: {len(bench.train_pairs)} train pairs, {len(bench.eval_pairs)} eval pairs, "
                 f"{'cached' if extras else 'on-the-fly'} reference log-probs, "
                 f"{len(bench.eval_prompts)} eval prompts, {'LoRA' if config.lora else 'all weights'}")


def _reference_cache(ref_params, config: ModelConfig, loader: PairLoader) -> dict[str, np.ndarray]:
    """Reference log-probs of every pair of the loader (the base model: no LoRA), computed once."""
    n, b = len(loader.pairs), loader.order.batch_size
    fn = jax.jit(lambda p, batch: preference.reference_logprobs(p, config.replace(lora=None), batch))
    out: dict[str, list] = {"ref_chosen_logps": [], "ref_rejected_logps": []}
    for start in range(0, n, b):
        idx = [min(i, n - 1) for i in range(start, start + b)]  # the last batch repeats the last pair
        arrays = {k: jnp.asarray(v) for k, v in loader.batch_at(idx).arrays().items()
                  if k not in ("domain", "gold_margin")}
        for k, v in jax.device_get(fn(ref_params, arrays)).items():
            out[k].append(np.asarray(v)[: min(b, n - start)])
    return {k: np.concatenate(v) for k, v in out.items()}


class TreeBatches:
    """Shuffled batches of preference trees as fixed-shape tree reward-model arrays."""

    def __init__(self, trees, bench: Benchmark, cfg: RunConfig, max_leaves: int, pairs_per_tree: int):
        from metapl.data.batching import ShuffledBatches

        self.trees, self.bench, self.cfg = trees, bench, cfg
        self.shape = SequenceShape(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                                   buckets=(cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 1,))
        self.sizes = (cfg.data.batch_size * max_leaves, cfg.data.batch_size * pairs_per_tree)
        self.order = ShuffledBatches(len(trees), cfg.data.batch_size, cfg.seed)
        self.truncation = TruncationStats()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        from metapl.data.batching import tree_arrays

        arrays = tree_arrays([self.trees[i] for i in next(self.order)], self.bench.encode, self.shape,
                             eos_id=self.bench.eos_id, pad_id=self.bench.pad_id, stats=self.truncation,
                             num_sequences=self.sizes[0], num_pairs=self.sizes[1], length=self.shape.buckets[0])
        return {k: jnp.asarray(v) for k, v in arrays.items()}

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


def setup_tree_rm(cfg: RunConfig) -> Setup:
    from metapl.data.trees import TreeConfig, generate_trees

    config, backbone, bench = _model_and_benchmark(cfg)
    defaults = {"depth": 2, "branching": 2, "segment_tokens": max(1, cfg.data.max_response_tokens // 2),
                "pairs_per_tree": 4, "seed": cfg.seed, "batch_size": 16}
    if bench.tokenizer is not None and not hasattr(bench.tokenizer, "apply_chat_template"):
        defaults["separators"] = ()  # the synthetic vocabulary has no sentence ends: segments cut by length
    try:
        tree_cfg = TreeConfig(**{**defaults, **cfg.data.tree})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.tree: {e}") from None
    if bench.tokenizer is None:
        raise ConfigError("tree-rm needs the benchmark's tokenizer")
    per_domain = max(1, cfg.data.tree_prompts // len({p.domain for p in bench.train_pairs}))
    prompts = _tree_prompts(cfg, bench, per_domain)
    grown = generate_trees(backbone, config.replace(lora=None), bench.tokenizer, prompts, bench.gold, tree_cfg,
                           mesh=run_mesh(cfg.mesh))
    trees = grown.trees
    if not trees:
        raise ConfigError("no tree produced a comparison (all leaves identical?); raise data.tree.segment_tokens")
    max_leaves = int(np.prod(tree_cfg.branchings))
    params = init_head_params(config, jax.random.PRNGKey(cfg.seed + 1), backbone=backbone)
    kwargs = _objective_kwargs(preference.tree_rm_objective, cfg.loss, set())

    def objective(t, f, batch):
        return preference.tree_rm_objective(t, batch, config=config, **kwargs)

    eval_sets = _eval_batches(bench.eval_pairs, bench, cfg)
    eval_fn = jax.jit(lambda t, b: preference.rm_objective(t, b, config=config))

    def evaluate(t, f):
        rows = [jax.device_get(eval_fn(t, b)[1]) for b in eval_sets]
        m = _weighted_mean(rows, [float(b["weights"].sum()) for b in eval_sets])
        return {"pair_accuracy": m["accuracy"], "loss": m["loss"], "reward_margin": m["reward_margin"]}

    comparisons = sum(len(t.comparisons) for t in trees)
    return Setup(params, None, objective, TreeBatches(trees, bench, cfg, max_leaves, tree_cfg.pairs_per_tree or
                                                      max_leaves * (max_leaves - 1) // 2), evaluate,
                 f"{len(trees)} trees, {comparisons} comparisons ({grown.stats.summary()}), "
                 f"{len(bench.eval_pairs)} eval pairs", info={"trees": len(trees), "comparisons": comparisons})


class ArrayBatches:
    """Shuffled fixed-size batches of the rows of a dict of equal-length arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int):
        from metapl.data.batching import ShuffledBatches

        self.arrays = arrays
        self.order = ShuffledBatches(len(next(iter(arrays.values()))), batch_size, seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = next(self.order)
        return {k: jnp.asarray(v[idx]) for k, v in self.arrays.items()}

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


OFFLINE_DEFAULTS = {"filter": "best_of_n", "threshold": 0.5, "tau": 1.0, "bins": 4}


def setup_offline(cfg: RunConfig, method: str) -> Setup:
    """mle-filter / rwr / dt: sample from the reference policy, score with the gold judge, then weighted SFT.

    offline options: filter ("best_of_n" or "zscore") and threshold (mle-filter); tau (rwr: weights
    softmax(r̃/τ) over the batch, r̃ = rewards z-scored within their prompt); bins (dt: reward bins).
    """
    from metapl.data.sample_sets import (
        GoldJudgeScorer, SampleSetConfig, best_of_n, build_sample_set, filter_by_zscore, zscore_by_prompt,
    )
    from metapl.losses import offline

    unknown = sorted(set(cfg.offline) - set(OFFLINE_DEFAULTS))
    if unknown:
        raise ConfigError(f"offline: unknown option(s) {unknown}; allowed: {sorted(OFFLINE_DEFAULTS)}")
    opts = {**OFFLINE_DEFAULTS, **cfg.offline}
    config, params, bench = _model_and_benchmark(cfg, reward_bins=opts["bins"] if method == "dt" else 0)
    _objective_kwargs(offline.sft_objective, cfg.loss, set())
    per_domain = max(1, cfg.data.sample_prompts // len({p.domain for p in bench.train_pairs}))
    prompts = _tree_prompts(cfg, bench, per_domain)
    sample_cfg = SampleSetConfig(samples_per_prompt=cfg.data.samples_per_prompt,
                                 max_new_tokens=cfg.data.max_response_tokens, batch_size=32,
                                 max_prompt_tokens=cfg.data.max_prompt_tokens, seed=cfg.seed, policy="reference")
    samples, report = build_sample_set(params, config.replace(lora=None), prompts, bench.encode, bench.decode,
                                       GoldJudgeScorer(bench.gold, "gold"), sample_cfg,
                                       stop_token_ids=(bench.eos_id,), pad_id=bench.pad_id, progress=False,
                                       mesh=run_mesh(cfg.mesh))
    shape = SequenceShape(cfg.data.max_prompt_tokens + (4 if method == "dt" else 0), cfg.data.max_response_tokens)
    length = shape.max_length
    stats = TruncationStats()
    info = {"samples": len(samples), "sample_report": report.summary()}
    render = None
    if method == "mle-filter":
        if opts["filter"] == "best_of_n":
            kept = best_of_n(samples)
        elif opts["filter"] == "zscore":
            kept, freport = filter_by_zscore(samples, opts["threshold"])
            info["filter_report"] = freport.summary()
        else:
            raise ConfigError(f"offline.filter must be best_of_n or zscore, got {opts['filter']!r}")
        arrays = offline.sample_arrays(kept, bench.encode, shape, eos_id=bench.eos_id, pad_id=bench.pad_id,
                                       stats=stats, length=length)
        info["kept"] = len(kept)
    elif method == "rwr":
        z = zscore_by_prompt(samples)
        arrays = offline.sample_arrays(z, bench.encode, shape, eos_id=bench.eos_id, pad_id=bench.pad_id,
                                       stats=stats, length=length)
    else:  # dt
        arrays = offline.reward_conditioned_arrays(samples, bench.encode, shape, eos_id=bench.eos_id,
                                                   pad_id=bench.pad_id, bins=opts["bins"], stats=stats, length=length)
        top = int(opts["bins"]) - 1
        render = lambda x: offline.render_reward_prompt(x, top, offline.DEFAULT_REWARD_TEMPLATE,  # noqa: E731
                                                        bins=opts["bins"])
    arrays = {k: v for k, v in arrays.items() if k in ("tokens", "attention_mask", "response_mask", "weights",
                                                       "rewards")}
    tau = float(opts["tau"])

    def sft(t, f, batch):
        p, lora = (f, t) if config.lora is not None else (t, None)
        if method == "rwr":
            batch = dict(batch, weights=offline.rwr_weights(batch["rewards"], tau, normalize="none"))
        return offline.sft_objective(p, batch, config=config, lora=lora)

    trainable, frozen = ((init_lora(config, jax.random.PRNGKey(cfg.seed + 2)), params) if config.lora is not None
                         else (params, None))

    def evaluate(t, f):
        p, lora = (f, t) if config.lora is not None else (t, None)
        return {"gold_reward": gold_reward_of_samples(p, config, bench, cfg, lora=lora, seed=cfg.seed, render=render)}

    info["truncation"] = stats.summary()
    return Setup(trainable, frozen, sft, ArrayBatches(arrays, cfg.data.batch_size * cfg.accumulation_steps, cfg.seed),
                 evaluate, f"{method}: {len(samples)} scored samples from {len(prompts)} prompts; "
                 f"{len(arrays['tokens'])} training sequences", info=info)


def setup_srpo(cfg: RunConfig) -> Setup:
    """SRPO on the benchmark's pairs: the six log-probs per pair, reference = initial weights (or LoRA base)."""
    from metapl.losses import srpo

    config, params, bench = _model_and_benchmark(cfg)
    kwargs = _objective_kwargs(srpo.srpo_objective, cfg.loss, {"ref_params", "ref_logps"})
    shape = SequenceShape(2 * cfg.data.max_prompt_tokens + cfg.data.max_response_tokens, cfg.data.max_response_tokens)
    # The synthetic vocabulary has no English words for the revision instruction: its context is x ⊕ y.
    template = "{prompt} {response}" if cfg.data.benchmark == "synthetic_domains" else srpo.DEFAULT_REVISION_TEMPLATE

    def arrays_of(pairs):
        batch = srpo.srpo_sequences(pairs, bench.encode, shape, eos_id=bench.eos_id, pad_id=bench.pad_id,
                                    template=template, stats=TruncationStats(), length=shape.max_length)
        return batch.arrays()

    train = arrays_of(bench.train_pairs)
    if config.lora is not None:
        trainable, frozen = init_lora(config, jax.random.PRNGKey(cfg.seed + 2)), params

        def objective(t, f, batch):
            return srpo.srpo_objective(f, batch, config=config, lora=t, **kwargs)
    else:
        trainable, frozen = params, jax.tree.map(jnp.copy, params)

        def objective(t, f, batch):
            return srpo.srpo_objective(t, batch, config=config, ref_params=f, **kwargs)

    def evaluate(t, f):
        p, lora = (f, t) if config.lora is not None else (t, None)
        return {"gold_reward": gold_reward_of_samples(p, config, bench, cfg, lora=lora, seed=cfg.seed)}

    return Setup(trainable, frozen, objective, ArrayBatches(train, cfg.data.batch_size * cfg.accumulation_steps,
                                                            cfg.seed), evaluate,
                 f"srpo: {len(bench.train_pairs)} train pairs (six sequences each)")


class Rollouts:
    """On-policy batches for RLOO: each step samples k responses for each of `batch_size` prompts from the
    current policy (the loop hands it the latest trainable params), scores them with the gold judge and adds
    the reference log-probs. Its position (prompt order) is checkpointed; step t samples with key fold_in(seed, t).
    """

    def __init__(self, prompts, bench: Benchmark, cfg: RunConfig, config: ModelConfig, frozen, policy, k: int):
        from metapl.data.batching import ShuffledBatches

        self.prompts, self.bench, self.cfg, self.config, self.frozen, self.policy, self.k = \
            prompts, bench, cfg, config, frozen, policy, k
        self.order = ShuffledBatches(len(prompts), cfg.data.batch_size, cfg.seed)
        self.params = None
        self.mesh = run_mesh(cfg.mesh)  # sample sharded when the run is
        base = config.replace(lora=None)
        self._ref = jax.jit(lambda p, b: token_logprobs(p, base, b["tokens"], attention_mask=b["attention_mask"]))

    def set_params(self, trainable) -> None:
        self.params = trainable

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        step = self.order.step
        chosen = [self.prompts[i] for i in next(self.order) for _ in range(self.k)]
        shape = SequenceShape(self.cfg.data.max_prompt_tokens, self.cfg.data.max_response_tokens)
        tokens, mask = prompt_arrays(chosen, self.bench.encode, shape, self.bench.pad_id, TruncationStats(),
                                     length=self.cfg.data.max_prompt_tokens)
        p, lora = self.policy(self.params, self.frozen)
        out = generate(p, self.config, tokens, mask, jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), step),
                       SamplingConfig(max_new_tokens=self.cfg.data.max_response_tokens, temperature=1.0,
                                      stop_token_ids=(self.bench.eos_id,)), pad_id=self.bench.pad_id, lora=lora,
                       mesh=self.mesh)
        rewards = gold_scores(self.bench, chosen, out.tokens, out.mask)
        batch = dict(out.sequences(), rewards=jnp.asarray(rewards, jnp.float32))
        ref_params = self.frozen if self.frozen is not None else p
        batch["ref_logps"] = self._ref(ref_params, batch)
        return batch

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


def setup_rloo(cfg: RunConfig) -> Setup:
    """RLOO with a KL penalty against the reference (the initial weights, or the LoRA base), rewarded by the
    benchmark's gold judge (the reward model of a full pipeline plugs in the same place). loss options: k,
    beta, estimator ("k1" or "k3")."""
    from metapl.losses.policy_gradient import rloo_objective

    config, params, bench = _model_and_benchmark(cfg)
    kwargs = {"k": 4, **_objective_kwargs(rloo_objective, cfg.loss, set())}
    if config.lora is not None:
        trainable, frozen = init_lora(config, jax.random.PRNGKey(cfg.seed + 2)), params

        def policy(t, f):
            return f, t

        def objective(t, f, batch):
            return rloo_objective(f, batch, config=config, lora=t, **kwargs)
    else:
        trainable, frozen = params, jax.tree.map(jnp.copy, params)

        def policy(t, f):
            return t, None

        def objective(t, f, batch):
            return rloo_objective(t, batch, config=config, **kwargs)

    per_domain = max(1, cfg.data.sample_prompts // len({p.domain for p in bench.train_pairs}))
    prompts = _tree_prompts(cfg, bench, per_domain)

    def evaluate(t, f):
        p, lora = policy(t, f)
        return {"gold_reward": gold_reward_of_samples(p, config, bench, cfg, lora=lora, seed=cfg.seed)}

    frozen = placed_on_run_mesh(frozen, cfg)
    return Setup(trainable, frozen, objective, Rollouts(prompts, bench, cfg, config, frozen, policy, kwargs["k"]),
                 evaluate, f"rloo: {len(prompts)} prompts, {kwargs['k']} samples each per step, "
                 f"{cfg.data.batch_size} prompts per step")


PPO_DEFAULTS = {"beta": 0.05, "gamma": 1.0, "lam": 0.95, "epochs": 2, "kl_target": None, "kl_horizon": 10000.0}


class PPORollouts(Rollouts):
    """Rollouts for PPO: one sample per prompt; old log-probs, values, the KL-shaped token rewards and GAE
    advantages are fixed at rollout time, and each rollout is trained on for `epochs` steps. With kl_target,
    β follows the adaptive KL controller (its value is part of the checkpointed position)."""

    def __init__(self, *args, opts: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.opts, self.beta, self.current, self.left = opts, float(opts["beta"]), None, 0
        config = self.config
        self._policy_and_values = jax.jit(
            lambda p, lora, b: policy_and_values(p, config, b["tokens"], b["attention_mask"], lora=lora))

    def _lm(self, t, f):
        if self.config.lora is not None:
            return {"lm": f, "value_head": t["value_head"]}, t["lora"]
        return t, None

    def __next__(self) -> dict:
        if self.left == 0:
            self.current, self.left = self._rollout(), int(self.opts["epochs"])
        self.left -= 1
        return self.current

    def _rollout(self) -> dict:
        from metapl.losses.policy_gradient import adaptive_kl_update, gae, kl_penalty, token_rewards

        batch = super().__next__()  # samples from the current policy, gold rewards, ref log-probs
        params, lora = self._lm(self.params, self.frozen)
        logp, values = self._policy_and_values(params, lora, batch)
        kl = kl_penalty(logp, batch["ref_logps"], batch["response_mask"], "k1")
        rewards_t = token_rewards(batch["rewards"], kl, batch["response_mask"], self.beta)
        adv, ret = gae(rewards_t, values, batch["response_mask"], gamma=self.opts["gamma"], lam=self.opts["lam"])
        if self.opts["kl_target"]:
            observed = float(jnp.mean(kl.sum(axis=1)))
            self.beta = float(adaptive_kl_update(jnp.float32(self.beta), observed, self.cfg.data.batch_size,
                                                 target=float(self.opts["kl_target"]),
                                                 horizon=float(self.opts["kl_horizon"])))
        return {"tokens": batch["tokens"], "attention_mask": batch["attention_mask"],
                "response_mask": batch["response_mask"], "old_logps": logp, "old_values": values,
                "advantages": adv, "returns": ret}

    def state_dict(self) -> dict:
        return {**self.order.state_dict(), "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.beta = float(state.pop("beta", self.beta))
        self.order.load_state_dict(state)
        self.left = 0  # a resumed run starts a fresh rollout


def setup_ppo(cfg: RunConfig) -> Setup:
    """PPO with a value head on the policy's backbone, KL-shaped token rewards and GAE (see PPO_DEFAULTS)."""
    from metapl.losses.policy_gradient import ppo_objective

    unknown = sorted(set(cfg.ppo) - set(PPO_DEFAULTS))
    if unknown:
        raise ConfigError(f"ppo: unknown option(s) {unknown}; allowed: {sorted(PPO_DEFAULTS)}")
    opts = {**PPO_DEFAULTS, **cfg.ppo}
    config, params, bench = _model_and_benchmark(cfg)
    kwargs = _objective_kwargs(ppo_objective, cfg.loss, set())
    head = init_head_params(config, jax.random.PRNGKey(cfg.seed + 3), backbone={})["head"]
    if config.lora is not None:
        trainable = {"lora": init_lora(config, jax.random.PRNGKey(cfg.seed + 2)), "value_head": head}
        frozen = params

        def objective(t, f, batch):
            return ppo_objective({"lm": f, "value_head": t["value_head"]}, batch, config=config, lora=t["lora"],
                                 **kwargs)

        def policy(t, f):
            return f, t["lora"]
    else:
        trainable, frozen = {"lm": params, "value_head": head}, jax.tree.map(jnp.copy, params)

        def objective(t, f, batch):
            return ppo_objective(t, batch, config=config, **kwargs)

        def policy(t, f):
            return t["lm"], None

    per_domain = max(1, cfg.data.sample_prompts // len({p.domain for p in bench.train_pairs}))
    prompts = _tree_prompts(cfg, bench, per_domain)

    def evaluate(t, f):
        p, lora = policy(t, f)
        return {"gold_reward": gold_reward_of_samples(p, config, bench, cfg, lora=lora, seed=cfg.seed)}

    frozen = placed_on_run_mesh(frozen, cfg)
    rollouts = PPORollouts(prompts, bench, cfg, config, frozen, policy, 1, opts=opts)
    return Setup(trainable, frozen, objective, rollouts, evaluate,
                 f"ppo: {len(prompts)} prompts, {cfg.data.batch_size} per rollout, {opts['epochs']} steps per rollout")


def _tree_prompts(cfg: RunConfig, bench: Benchmark, per_domain: int) -> list[PromptExample]:
    if cfg.data.benchmark == "synthetic_domains":
        from metapl.data.synthetic import SyntheticDomains

        synth = SyntheticDomains(cfg.data.synthetic)
        return [p for d in synth.train_domains for p in synth.prompts(d, per_domain)]
    return bench.eval_prompts[: cfg.data.tree_prompts]


ALGORITHMS: dict[str, Callable[[RunConfig], Setup]] = {
    "rm": setup_rm,
    "dpo": lambda cfg: setup_dpo(cfg, "dpo"),
    "ipo": lambda cfg: setup_dpo(cfg, "ipo"),
    "tree-rm": setup_tree_rm,
    "mle-filter": lambda cfg: setup_offline(cfg, "mle-filter"),
    "rwr": lambda cfg: setup_offline(cfg, "rwr"),
    "dt": lambda cfg: setup_offline(cfg, "dt"),
    "srpo": setup_srpo,
    "rloo": setup_rloo,
    "ppo": setup_ppo,
    "meta": lambda cfg: __import__("metapl.meta.train", fromlist=["setup_meta"]).setup_meta(cfg),
}


def setup_algorithm(cfg: RunConfig) -> Setup:
    if cfg.algo not in ALGORITHMS:
        raise ConfigError(f"algo: unknown algorithm {cfg.algo!r}; available: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[cfg.algo](cfg)
