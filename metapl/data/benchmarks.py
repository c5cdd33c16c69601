"""Benchmarks as runs see them: one `Benchmark` interface, one class per embedded benchmark, chosen by name.

    spec = DataSpec(benchmark="synthetic_domains")
    bench = load_benchmark(spec)                 # sentiment_domains also needs the pretrained model's tokenizer
    bench.train_pairs, bench.eval_pairs, bench.eval_prompts     # the meta-train domains' data for training runs
    bench.domain_split("heldout", prompts_per_domain=16)        # {domain: (prompts, pairs)} for meta-test
    bench.domain_split("validation", prompts_per_domain=16)     # meta-train domains, prompts training never reads
    bench.gold(domain, prompt, response)                        # the gold judge

Each benchmark has meta-train ("train") and held-out ("heldout") domains. A training run sees only the meta-train
domains: their pairs, split per domain into training and evaluation pairs (`DataSpec.eval_fraction`), and some of
their prompts. The "validation" split is for tuning: the meta-train domains with prompts no training run reads and
only their evaluation pairs, so that settings are chosen without looking at a held-out domain. Everything that
differs between benchmarks lives in its class; nothing else asks for a benchmark's name. A new benchmark
subclasses `Benchmark` and registers with `@register_benchmark`.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from metapl.config import number
from metapl.data.mechanisms import MechanismConfig
from metapl.data.schemas import DataError, PreferencePair, PromptExample
from metapl.data.synthetic import SyntheticConfig


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where pairs and prompts come from, and how they are cut into batches."""

    benchmark: str = "synthetic_domains"  # or "mechanism_domains", "sentiment_domains" (`metapl data build`)
    data_dir: str | None = None
    synthetic: SyntheticConfig = SyntheticConfig()  # synthetic_domains' and mechanism_domains' knobs
    mechanisms: MechanismConfig = MechanismConfig()  # mechanism_domains' mechanism knobs
    batch_size: int = number(8, ge=1)
    max_prompt_tokens: int = number(16, ge=1)
    max_response_tokens: int = number(16, ge=1)
    eval_fraction: float = number(0.25, ge=0, lt=1)  # of each training domain's pairs, held out for evaluation
    eval_prompts: int = number(64, ge=1)
    tree_prompts: int = number(64, ge=1)  # tree-rm: prompts (over the training domains) to grow preference trees from
    sample_prompts: int = number(64, ge=1)  # offline methods, RLOO, PPO: training-domain prompts to sample from
    samples_per_prompt: int = number(4, ge=1)  # offline methods: responses sampled per prompt from the reference policy


SPLITS = ("train", "validation", "heldout")


def split_pairs(pairs: Sequence[PreferencePair], fraction: float) -> tuple[list, list]:
    """(training, evaluation) pairs: the last round(fraction · n) pairs of each domain, domains in sorted order,
    are held out for evaluation."""
    by_domain: dict[str, list] = {}
    for p in pairs:
        by_domain.setdefault(p.domain, []).append(p)
    train, held = [], []
    for d in sorted(by_domain):
        n_eval = int(round(len(by_domain[d]) * fraction))
        train += by_domain[d][: len(by_domain[d]) - n_eval]
        held += by_domain[d][len(by_domain[d]) - n_eval:]
    return train, held


class Benchmark(abc.ABC):
    """A benchmark of many domains: its text interface (encode, decode, vocabulary, pad and EOS ids), its gold
    judge, the meta-train domains' pairs and prompts for training runs, and per-domain splits for meta-test.

    Class attributes a benchmark may set: `revision_template` (the SRPO revision context, None: the library
    default) and `tree_separators` (where preference-tree segments end, None: the tree default).
    """

    name: ClassVar[str]
    revision_template: ClassVar[str | None] = None
    tree_separators: ClassVar[tuple | None] = None

    spec: DataSpec
    tokenizer: Any
    vocab_size: int
    pad_id: int
    eos_id: int
    train_pairs: list[PreferencePair]
    eval_pairs: list[PreferencePair]
    eval_prompts: list[PromptExample]

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The response text of token ids (special and control tokens dropped)."""

    @abc.abstractmethod
    def gold(self, domain: str, prompt: str, response: str) -> float:
        """The gold judge's reward of `response` to `prompt` in `domain`."""

    @abc.abstractmethod
    def domain_split(self, split: str, prompts_per_domain: int) -> dict[str, tuple[list, list]]:
        """{domain: (its first `prompts_per_domain` prompts, its labelled pairs)} for the meta-train ("train") or
        held-out ("heldout") domains, in the benchmark's domain order; "validation": the meta-train domains with
        prompts training never reads and their evaluation pairs only."""

    @abc.abstractmethod
    def training_prompts(self, per_domain: int) -> list[PromptExample]:
        """Prompts of the meta-train domains to sample from (offline sample sets, rollouts, preference trees)."""

    def with_reward_tokens(self, tokens: Sequence[str]) -> "Benchmark":
        """This benchmark with control tokens added to its vocabulary (reward-conditioned SFT). A pretrained
        tokenizer reads them as text, so by default nothing changes."""
        return self

    cross_judge: str | None = None  # the name of a second, independent judge, when the benchmark has one

    def cross_gold(self, domain: str, prompt: str, response: str) -> float:
        """The second judge's reward (benchmarks with `cross_judge` only): a cross-check, never trained on."""
        raise NotImplementedError(f"{self.name} has no second judge")

    def gold_scores(self, prompts: Sequence[PromptExample], tokens, mask, *, cross: bool = False) -> list[float]:
        """The gold judge's score (the second judge's when `cross`) of each sampled response (tokens, mask [B, N]
        as in GenerationOutput; one row per prompt). An empty response (the policy stopped at once) scores 0."""
        judge = self.cross_gold if cross else self.gold
        return [judge(prompt.domain, prompt.prompt, response) if response.strip() else 0.0
                for prompt, response in zip(prompts, self.decode_responses(tokens, mask))]

    def decode_responses(self, tokens, mask) -> list[str]:
        """The text of each sampled response (tokens, mask [B, N] as in GenerationOutput): the kept tokens, eos
        dropped, decoded."""
        return [self.decode([int(t) for t, k in zip(row, keep) if k and int(t) != self.eos_id])
                for row, keep in zip(np.asarray(tokens), np.asarray(mask))]

    @staticmethod
    def _check_split(split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


BENCHMARKS: dict[str, type[Benchmark]] = {}


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make `cls` loadable as `DataSpec(benchmark=cls.name)`."""
    BENCHMARKS[cls.name] = cls
    return cls


def load_benchmark(spec: DataSpec, tokenizer: Any = None) -> Benchmark:
    """The benchmark `spec.benchmark`; `tokenizer` is the pretrained model's (benchmarks of real text need it)."""
    if spec.benchmark not in BENCHMARKS:
        raise DataError(f"data.benchmark: unknown benchmark {spec.benchmark!r} ({', '.join(sorted(BENCHMARKS))})")
    return BENCHMARKS[spec.benchmark](spec, tokenizer)


@register_benchmark
class SyntheticBenchmark(Benchmark):
    """`synthetic_domains`, generated in-process from `spec.synthetic`: a word vocabulary of its own (a pretrained
    tokenizer is not used), the analytic gold reward. Its vocabulary has no English words, so the SRPO revision
    context is the prompt and the response side by side, and preference-tree segments are cut by length."""

    name = "synthetic_domains"
    revision_template = "{prompt} {response}"
    tree_separators = ()

    def __init__(self, spec: DataSpec, tokenizer: Any = None):
        self.spec = spec
        self.domains = self._make_domains(spec)
        self._set_tokenizer(self.domains.tokenizer, len(self.domains.tokenizer.SPECIALS) + spec.synthetic.vocab_words)
        pairs = [p for d in self.domains.train_domains for p in self.domains.pairs(d)]
        self.train_pairs, self.eval_pairs = split_pairs(pairs, spec.eval_fraction)
        per_domain = max(1, spec.eval_prompts // len(self.domains.train_domains))
        self.eval_prompts = [p for d in self.domains.train_domains for p in self.domains.prompts(d, per_domain)]

    @staticmethod
    def _make_domains(spec: DataSpec):
        from metapl.data.synthetic import SyntheticDomains

        return SyntheticDomains(spec.synthetic)

    def _set_tokenizer(self, tokenizer, words_end: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, tokenizer.vocab_size
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self._words_end = words_end  # ids at or above it are control tokens, not response text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self._words_end])

    def gold(self, domain: str, prompt: str, response: str) -> float:
        return self.domains.gold_reward(domain, prompt, response)

    def domain_split(self, split: str, prompts_per_domain: int) -> dict[str, tuple[list, list]]:
        self._check_split(split)
        if split == "validation":
            return {d: (self.domains.prompts(d, prompts_per_domain, validation=True),
                        split_pairs(self.domains.pairs(d), self.spec.eval_fraction)[1])
                    for d in self.domains.train_domains}
        names = self.domains.train_domains if split == "train" else self.domains.heldout_domains
        return {d: (self.domains.prompts(d, prompts_per_domain), self.domains.pairs(d)) for d in names}

    def training_prompts(self, per_domain: int) -> list[PromptExample]:
        return [p for d in self.domains.train_domains for p in self.domains.prompts(d, per_domain)]

    def with_reward_tokens(self, tokens: Sequence[str]) -> "SyntheticBenchmark":
        from metapl.data.synthetic import WordTokenizer

        out = copy.copy(self)
        controls = list(getattr(self.domains, "descriptor_tokens", ())) + list(tokens)
        out._set_tokenizer(WordTokenizer(self.spec.synthetic.vocab_words, controls), self._words_end)
        return out


@register_benchmark
class MechanismBenchmark(SyntheticBenchmark):
    """`mechanism_domains` (`metapl.data.mechanisms`): `synthetic_domains` (knobs in `spec.synthetic`) with the
    mechanisms of `spec.mechanisms`. Descriptor tokens are control tokens: prompts carry them, response text
    drops them."""

    name = "mechanism_domains"

    @staticmethod
    def _make_domains(spec: DataSpec):
        from metapl.data.mechanisms import MechanismDomains

        domains = MechanismDomains(spec.synthetic, spec.mechanisms)
        domains.check_prompt_length(spec.max_prompt_tokens)
        return domains


@register_benchmark
class SentimentBenchmark(Benchmark):
    """`sentiment_domains`: a TFDS build under `spec.data_dir` (`metapl data build sentiment_domains`), tokenised
    by the pretrained model's tokenizer, judged by VADER on prompt + response. Training reads the front half of
    each meta-train domain's prompts (build order), validation the back half, so tuning never sees a prompt any
    training run read: training-time evaluation reads each domain's first `data.eval_prompts` share (at most the
    front half), the samplers (offline sample sets, rollouts, preference trees) the next `data.sample_prompts` or
    `data.tree_prompts` share (an error past the front half), validation each domain's last prompts (an error past
    the back half). A meta run's support pool is its first `meta.support_pool` prompts per domain."""

    name = "sentiment_domains"

    def __init__(self, spec: DataSpec, tokenizer: Any = None):
        from metapl.data.batching import hf_encoder
        from metapl.data.judges import VaderJudge
        from metapl.data.tfds_builders import load_records

        if tokenizer is None:
            raise DataError("sentiment_domains needs a pretrained model (model.pretrained) for its tokenizer")
        self.spec, self.tokenizer = spec, tokenizer
        self._encode = hf_encoder(tokenizer)
        self.vocab_size = len(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_id = tokenizer.eos_token_id
        self._judge = VaderJudge()
        pairs_dir, prompts_dir = self._built("pairs"), self._built("prompts")
        self.train_pairs, self.eval_pairs = split_pairs(load_records(pairs_dir, "train"), spec.eval_fraction)
        self._prompts_by_domain: dict[str, list[PromptExample]] = {}
        for x in load_records(prompts_dir, "train"):
            self._prompts_by_domain.setdefault(x.domain, []).append(x)
        self._evaluated = {d: min(self._per_domain(spec.eval_prompts), self._front(d))
                           for d in self._prompts_by_domain}
        self.eval_prompts = [p for d, ps in self._prompts_by_domain.items() for p in ps[: self._evaluated[d]]]

    def _built(self, kind: str) -> Path:
        from metapl.data.commands import default_data_dir
        from metapl.data.tfds_builders import VERSION

        root = Path(self.spec.data_dir) if self.spec.data_dir else default_data_dir()
        path = root / self.name / kind / VERSION
        if not path.exists():
            raise DataError(f"{path} does not exist; run `metapl data build {self.name}` first")
        return path

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def gold(self, domain: str, prompt: str, response: str) -> float:
        return float(self._judge.score([prompt + response])[0])

    @property
    def cross_judge(self) -> str:
        return self._cross.name

    @functools.cached_property
    def _cross(self):
        from metapl.data.judges import PatternJudge

        return PatternJudge()

    def cross_gold(self, domain: str, prompt: str, response: str) -> float:
        return float(self._cross.score([prompt + response])[0])

    def domain_split(self, split: str, prompts_per_domain: int) -> dict[str, tuple[list, list]]:
        from metapl.data.tfds_builders import load_records

        self._check_split(split)
        prompts_dir = self._built("prompts")
        if split == "validation":  # the last prompts of each meta-train domain, its evaluation pairs
            out: dict[str, tuple[list, list]] = {}
            for d, prompts in self._prompts_by_domain.items():
                back = len(prompts) - self._front(d)
                if not 0 < prompts_per_domain <= back:
                    raise DataError(f"{prompts_dir}: meta-train domain {d} has {len(prompts)} prompts; validation "
                                    f"asks for its last {prompts_per_domain}, but only the back half ({back}) is "
                                    "unread by training; ask for fewer or rebuild with more prompts per domain")
                out[d] = (prompts[len(prompts) - prompts_per_domain:], [p for p in self.eval_pairs if p.domain == d])
            return out
        out = {}
        for p in load_records(prompts_dir, split):
            out.setdefault(p.domain, ([], []))[0].append(p)
        for p in load_records(self._built("pairs"), split):
            if p.domain in out:
                out[p.domain][1].append(p)
        short = {d: len(v[0]) for d, v in out.items() if len(v[0]) < prompts_per_domain}
        if short:
            raise DataError(f"{prompts_dir} ({split}): {len(short)} domain(s) have fewer than {prompts_per_domain} "
                            f"prompts (e.g. {dict(list(short.items())[:3])}); rebuild with a larger "
                            "--prompts-per-domain or ask for fewer prompts")
        return {d: (v[0][:prompts_per_domain], v[1]) for d, v in out.items()}

    def training_prompts(self, per_domain: int) -> list[PromptExample]:
        out = []
        for d, prompts in self._prompts_by_domain.items():
            start, front = self._evaluated[d], self._front(d)
            if start + per_domain > front:
                raise DataError(f"{self._built('prompts')}: meta-train domain {d} has {len(prompts)} prompts; "
                                f"training reads the front half ({front}): {start} for evaluation (data.eval_prompts "
                                f"= {self.spec.eval_prompts}), so the samplers cannot have {per_domain} more "
                                "(data.sample_prompts or data.tree_prompts over the domains); ask for fewer or "
                                "rebuild with more prompts per domain")
            out += prompts[start: start + per_domain]
        return out

    def _per_domain(self, total: int) -> int:
        return max(1, total // len(self._prompts_by_domain))

    def _front(self, domain: str) -> int:
        """How many of the domain's prompts (the first ones) training may read."""
        return (len(self._prompts_by_domain.get(domain, ())) + 1) // 2


@register_benchmark
class SentimentTargetsBenchmark(SentimentBenchmark):
    """`sentiment_targets`: a TFDS build (`metapl data build sentiment_targets`) whose domains each want positive
    or negative continuations, as every prompt's tag states; gold = target x VADER of the untagged prompt +
    response (`metapl.data.sentiment`)."""

    name = "sentiment_targets"

    def __init__(self, spec: DataSpec, tokenizer: Any = None):
        from metapl.data.tfds_builders import read_metadata

        super().__init__(spec, tokenizer)
        self.targets = {d: int(t) for d, t in read_metadata(self._built("pairs"))["domain_targets"].items()}

    def _target(self, domain: str) -> int:
        if domain not in self.targets:
            raise DataError(f"unknown domain {domain!r} of sentiment_targets", field="domain")
        return self.targets[domain]

    def gold(self, domain: str, prompt: str, response: str) -> float:
        from metapl.data.sentiment import target_gold

        return float(target_gold(self._judge, self._target(domain), [prompt], [response])[0])

    def cross_gold(self, domain: str, prompt: str, response: str) -> float:
        from metapl.data.sentiment import target_gold

        return float(target_gold(self._cross, self._target(domain), [prompt], [response])[0])


__all__ = ["BENCHMARKS", "Benchmark", "DataSpec", "MechanismBenchmark", "SPLITS", "SentimentBenchmark",
           "SentimentTargetsBenchmark", "SyntheticBenchmark", "load_benchmark", "register_benchmark", "split_pairs"]
