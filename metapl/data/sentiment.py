"""`sentiment_domains`: controlled (positive) sentiment generation on real text, with VADER as the gold judge.

Prompts are openings of real texts (`metapl.data.corpora`: health tweets of 16 outlets, news articles,
parliament and convention speeches, Shakespeare, Rotten Tomatoes snippets), one domain per source. The gold
reward of a continuation y of prompt x is the VADER compound score of the text `x + y` (in [-1, 1]; higher is
more positive). Preference pairs: two continuations sampled from the embedded SmolLM2-135M policy
(temperature 1), labelled by a Bradley-Terry draw on the judge's scores, P(a preferred) =
sigmoid((r_a - r_b) / label_noise); gold_margin = r(chosen) - r(rejected). Pairs whose two continuations are
identical are not pairs; they are counted (`SentimentBuild.identical`) and reported, never silently lost.

Split (fixed): the 12 domains in `TRAIN_DOMAINS` are meta-train domains; every other corpus domain with enough
usable prompts (at least prompts_per_domain + pairs_per_domain) is held out, at least 20 of them. Domains
with too few prompts are excluded and listed in the build's metadata.
"""

from __future__ import annotations

import dataclasses
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


def sample_pairs(prompts: Sequence[PromptExample], config: SentimentConfig, judge, *, model=None
                 ) -> tuple[list[PreferencePair], int]:
    """Two sampled continuations per prompt, judged and labelled; returns (pairs, number of identical pairs)."""
    import jax

    from metapl.data.judges import bradley_terry_label
    from metapl.models.pretrained import load_pretrained
    from metapl.models.sampling import SamplingConfig, default_stop_ids, generate_text

    model = model or load_pretrained(config.model)
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              stop_token_ids=default_stop_ids(model.tokenizer))
    texts = [p.prompt for p in prompts for _ in range(2)]
    outputs: list[str] = []
    key = jax.random.key(config.seed)
    t0 = time.perf_counter()
    for start in range(0, len(texts), config.batch_size):
        chunk = texts[start: start + config.batch_size]
        padded = chunk + [chunk[-1]] * (config.batch_size - len(chunk))  # one compiled batch shape
        outputs += generate_text(model.params, model.config, model.tokenizer, padded,
                                 jax.random.fold_in(key, start), sampling)[: len(chunk)]
        _log(f"sampled {len(outputs)}/{len(texts)} continuations ({time.perf_counter() - t0:.0f}s)")
    scores = judge.score([t + y for t, y in zip(texts, outputs)])
    rng = np.random.default_rng([config.seed, 7])
    pairs, identical = [], 0
    for i, p in enumerate(prompts):
        a, b = outputs[2 * i], outputs[2 * i + 1]
        if a.strip() == b.strip() or not a.strip() or not b.strip():
            identical += 1
            continue
        r_a, r_b = float(scores[2 * i]), float(scores[2 * i + 1])
        a_wins = bradley_terry_label(r_a, r_b, temperature=config.label_noise, rng=rng)
        chosen, rejected, margin = (a, b, r_a - r_b) if a_wins else (b, a, r_b - r_a)
        pairs.append(PreferencePair(p.prompt, chosen, rejected, p.domain, gold_margin=margin))
    return pairs, identical


def build_records(config: SentimentConfig, domains: Sequence[str] | None = None) -> SentimentBuild:
    """Prompts of every domain and sampled, judged pairs (the slow part) for the sentiment benchmark."""
    from metapl.data.corpora import corpus_domains, domain_prompts
    from metapl.data.judges import VaderJudge
    from metapl.models.pretrained import load_pretrained

    t0 = time.perf_counter()
    need = config.prompts_per_domain + config.pairs_per_domain
    found, excluded = {}, {}
    for name in domains or corpus_domains():
        ps = domain_prompts(name, seed=config.seed, words=config.prompt_words, max_prompts=need)
        if len(ps) < need:
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
    prompts, pairs, identical = {}, {}, 0
    for split, names in (("train", train), ("heldout", heldout)):
        # The first pairs_per_domain openings of a domain seed its pairs; the rest form its prompt set.
        source = [p for d in names for p in found[d][: config.pairs_per_domain]]
        prompts[split] = [p for d in names for p in found[d][config.pairs_per_domain:]]
        _log(f"{split}: {len(names)} domains; sampling pairs for {len(source)} prompts")
        pairs[split], n = sample_pairs(source, config, judge, model=model)
        identical += n
    return SentimentBuild(prompts, pairs, train, heldout, excluded, identical, time.perf_counter() - t0)
