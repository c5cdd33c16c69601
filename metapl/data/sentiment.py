"""`sentiment_domains`: controlled (positive) sentiment generation on real text, with VADER as the gold judge.

Prompts are openings of real texts (`metapl.data.corpora`: health tweets of 16 outlets, news articles,
parliament and convention speeches, Shakespeare, Rotten Tomatoes snippets), one domain per source. The gold
reward of a continuation y of prompt x is the VADER compound score of the text `x + y` (in [-1, 1]; higher is
more positive). Preference pairs: two continuations sampled from the embedded SmolLM2-135M policy
(temperature 1), labelled by a Bradley-Terry draw on the judge's scores, P(a preferred) =
sigmoid((r_a - r_b) / label_noise); gold_margin = r(chosen) - r(rejected). Pairs whose two continuations are
identical are not pairs; they are counted (`SentimentBuild.identical`) and reported, never silently lost.

`sentiment_targets` (`targets=True`) gives each domain a target direction that its prompts state: half the
domains of each split want positive continuations and half negative ones (a seeded, balanced draw), every prompt
starts with the tag of its domain's target (`TARGET_TAGS`), and the gold reward is the target times the VADER
compound of the untagged prompt + response. A reward model can only rank a domain's pairs by reading the tag, so
the benchmark holds domain-conditional preferences a prompt reveals. `min_margin` drops pairs whose gold margin
is below it (the judge sees no preference there; they are counted as `indecisive`), and
`heldout_pairs_per_domain` sets the held-out domains' pairs apart from the meta-train domains'.

Split (fixed): the 12 domains in `TRAIN_DOMAINS` are meta-train domains; every other corpus domain with enough
usable prompts (at least prompts_per_domain + pairs_per_domain) is held out, at least 20 of them. Domains
with too few prompts are excluded and listed in the build's metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from typing import Sequence

import numpy as np

from metapl.data.schemas import PreferencePair, PromptExample

# Twelve meta-train domains spanning the five kinds of text; the other domains are held out.
TRAIN_DOMAINS = (
    "tweets/cnnhealth", "tweets/foxnewshealth", "tweets/nytimeshealth", "tweets/reuters_health",
    "news/bbc", "news/cnn", "speeches/commons_labour", "speeches/convention2012_democratic",
    "shakespeare/comedies", "shakespeare/tragedies", "reviews/rotten_tomatoes_fresh", "reviews/rotten_tomatoes_plots",
)
MIN_HELDOUT = 20
TARGET_TAGS = {1: "[tone: positive]", -1: "[tone: negative]"}


@dataclasses.dataclass(frozen=True)
class SentimentConfig:
    """Knobs of the sentiment benchmark; the defaults build in a few minutes on a 2-core CPU."""

    pairs_per_domain: int = 8
    prompts_per_domain: int = 32
    prompt_words: tuple[int, int] = (8, 16)
    max_new_tokens: int = 24
    temperature: float = 1.0
    label_noise: float = 0.05
    model: str = "smollm2-135m"
    batch_size: int = 32
    seed: int = 0
    targets: bool = False
    heldout_pairs_per_domain: int | None = None  # None: pairs_per_domain
    min_margin: float = 0.0
    positive_fraction: float = 0.5  # sentiment_targets: share of each split's domains whose target is positive
    pairs_per_prompt: int = 1  # pairs sampled from each pair-seeding prompt (2 x this many continuations)

    def __post_init__(self):
        for name in ("pairs_per_domain", "prompts_per_domain", "max_new_tokens", "batch_size", "pairs_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heldout_pairs_per_domain is not None and self.heldout_pairs_per_domain < 1:
            raise ValueError(f"heldout_pairs_per_domain must be >= 1, got {self.heldout_pairs_per_domain}")
        if not np.isfinite(self.min_margin) or self.min_margin < 0:
            raise ValueError(f"min_margin must be finite and >= 0, got {self.min_margin}")
        if not 0.0 <= self.positive_fraction <= 1.0:  # NaN fails too
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction}")

    def pairs_for(self, split: str) -> int:
        """Labelled pairs per domain of a split ("train" or "heldout")."""
        if split == "heldout" and self.heldout_pairs_per_domain is not None:
            return self.heldout_pairs_per_domain
        return self.pairs_per_domain


def domain_targets(train: Sequence[str], heldout: Sequence[str], seed: int,
                   positive_fraction: float = 0.5) -> dict[str, int]:
    """{domain: +1 or -1}: within each split, ceil(positive_fraction x its size) domains positive, chosen by a
    seeded permutation."""
    out = {}
    for i, names in enumerate((train, heldout)):
        order = np.random.default_rng([seed, 11, i]).permutation(len(names))
        positive = math.ceil(round(positive_fraction * len(names), 9))
        for rank, j in enumerate(order):
            out[names[j]] = 1 if rank < positive else -1
    return out


def tag_prompt(text: str, target: int) -> str:
    """The prompt a domain with `target` shows: its tag, a space, the opening."""
    return f"{TARGET_TAGS[target]} {text}"


def untag(prompt: str) -> str:
    """The opening of a tagged prompt (the prompt itself when it has no tag)."""
    for tag in TARGET_TAGS.values():
        if prompt.startswith(tag + " "):
            return prompt[len(tag) + 1:]
    return prompt


def target_gold(judge, target, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """sentiment_targets' gold reward: target (+1 / -1, one for all or one per text) x VADER compound of the
    untagged prompt + response ([n])."""
    return np.asarray(target) * judge.score([untag(x) + y for x, y in zip(prompts, responses)])


def split_domains(domains: Sequence[str]) -> tuple[list[str], list[str]]:
    """(meta-train domains, held-out domains) among `domains`, by the fixed TRAIN_DOMAINS list."""
    train = [d for d in domains if d in TRAIN_DOMAINS]
    missing = sorted(set(TRAIN_DOMAINS) - set(train))
    if missing:
        raise ValueError(f"the corpus registry lacks the meta-train domains {missing}")
    return train, [d for d in domains if d not in TRAIN_DOMAINS]


def _log(msg: str) -> None:
    print(f"[sentiment_domains] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class SentimentBuild:
    """Everything a build produced: prompts and pairs per split, and what was left out."""

    prompts: dict[str, list[PromptExample]]
    pairs: dict[str, list[PreferencePair]]
    train_domains: list[str]
    heldout_domains: list[str]
    excluded: dict[str, int]  # domain -> its number of usable prompts (too few)
    identical: int  # sampled pairs whose two continuations were identical (or empty), not kept
    seconds: float
    indecisive: int = 0  # pairs whose |gold margin| < min_margin, not kept
    targets: dict[str, int] = dataclasses.field(default_factory=dict)  # sentiment_targets: domain -> +1 / -1


def sample_pairs(prompts: Sequence[PromptExample], config: SentimentConfig, judge, *, model=None,
                 gold=None) -> tuple[list[PreferencePair], int, int]:
    """2k sampled continuations per prompt (k = config.pairs_per_prompt), paired in order (1st with 2nd, 3rd
    with 4th, ...), judged and labelled; returns (pairs, number of identical pairs, number of indecisive pairs:
    |gold margin| < config.min_margin). gold(prompts, responses) -> scores [n] (default: VADER of prompt +
    response)."""
    import jax

    from metapl.data.judges import bradley_terry_label
    from metapl.models.pretrained import load_pretrained
    from metapl.models.sampling import SamplingConfig, default_stop_ids, generate_text

    model = model or load_pretrained(config.model)
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              stop_token_ids=default_stop_ids(model.tokenizer))
    each = 2 * config.pairs_per_prompt
    texts = [p.prompt for p in prompts for _ in range(each)]
    outputs: list[str] = []
    key = jax.random.key(config.seed)
    t0 = time.perf_counter()
    for start in range(0, len(texts), config.batch_size):
        chunk = texts[start: start + config.batch_size]
        padded = chunk + [chunk[-1]] * (config.batch_size - len(chunk))  # one compiled batch shape
        outputs += generate_text(model.params, model.config, model.tokenizer, padded,
                                 jax.random.fold_in(key, start), sampling)[: len(chunk)]
        _log(f"sampled {len(outputs)}/{len(texts)} continuations ({time.perf_counter() - t0:.0f}s)")
    scores = gold(texts, outputs) if gold else judge.score([t + y for t, y in zip(texts, outputs)])
    rng = np.random.default_rng([config.seed, 7])
    pairs, identical, indecisive = [], 0, 0
    for i in range(len(texts) // 2):
        p = prompts[i // config.pairs_per_prompt]
        a, b = outputs[2 * i], outputs[2 * i + 1]
        if a.strip() == b.strip() or not a.strip() or not b.strip():
            identical += 1
            continue
        r_a, r_b = float(scores[2 * i]), float(scores[2 * i + 1])
        if abs(r_a - r_b) < config.min_margin:
            indecisive += 1
            continue
        a_wins = bradley_terry_label(r_a, r_b, temperature=config.label_noise, rng=rng)
        chosen, rejected, margin = (a, b, r_a - r_b) if a_wins else (b, a, r_b - r_a)
        pairs.append(PreferencePair(p.prompt, chosen, rejected, p.domain, gold_margin=margin))
    return pairs, identical, indecisive


def build_records(config: SentimentConfig, domains: Sequence[str] | None = None) -> SentimentBuild:
    """Prompts of every domain and sampled, judged pairs (the slow part) for the sentiment benchmark."""
    from metapl.data.corpora import corpus_domains, domain_prompts
    from metapl.data.judges import VaderJudge
    from metapl.models.pretrained import load_pretrained

    t0 = time.perf_counter()
    need = {split: config.prompts_per_domain + config.pairs_for(split) for split in ("train", "heldout")}
    found, excluded = {}, {}
    for name in domains or corpus_domains():
        n = need["train" if name in TRAIN_DOMAINS else "heldout"]
        ps = domain_prompts(name, seed=config.seed, words=config.prompt_words, max_prompts=n)
        if len(ps) < n:
            excluded[name] = len(ps)
        else:
            found[name] = ps
    train, heldout = split_domains(list(found))
    if len(heldout) < MIN_HELDOUT:
        raise ValueError(f"only {len(heldout)} held-out domains have {need} usable prompts (excluded: {excluded}); "
                         f"the benchmark needs {MIN_HELDOUT}")
    if excluded:
        _log(f"excluded (too few usable prompts for {need}): " + ", ".join(f"{d} ({n})" for d, n in excluded.items()))
    judge, model = VaderJudge(), load_pretrained(config.model)
    targets = domain_targets(train, heldout, config.seed, config.positive_fraction) if config.targets else {}
    if targets:  # every prompt of a domain states its target
        found = {d: [PromptExample(tag_prompt(p.prompt, targets[d]), d, p.reference) for p in ps]
                 for d, ps in found.items()}
    prompts, pairs, identical, indecisive = {}, {}, 0, 0
    for split, names in (("train", train), ("heldout", heldout)):
        # The first pairs_for(split) openings of a domain seed its pairs; the rest form its prompt set.
        k = config.pairs_for(split)
        source = [p for d in names for p in found[d][:k]]
        prompts[split] = [p for d in names for p in found[d][k:]]
        _log(f"{split}: {len(names)} domains; sampling pairs for {len(source)} prompts")
        gold = None
        if targets:
            sign = np.repeat([targets[p.domain] for p in source], 2 * config.pairs_per_prompt)
            gold = functools.partial(target_gold, judge, sign)
        pairs[split], n, m = sample_pairs(source, config, judge, model=model, gold=gold)
        identical += n
        indecisive += m
    return SentimentBuild(prompts, pairs, train, heldout, excluded, identical, time.perf_counter() - t0,
                          indecisive, targets)
