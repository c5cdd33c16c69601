"""Meta-learning episodes: a few domains, each with support prompts (inner policy optimisation) and query
preference pairs (outer loss), drawn under a per-domain feedback budget.

The budget models scarce feedback: of each domain's pairs only the first `budget` of a seeded permutation are
ever shown to the outer loss (`EpisodeSampler.feedback_pool`). Episode i is a pure function of (seed, i),
so the sampler's position is one integer and resumes exactly.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from metapl.config import number
from metapl.data.schemas import DataError, PreferencePair, PromptExample


@dataclasses.dataclass(frozen=True)
class EpisodeShape:
    """domains_per_episode domains per episode; per domain `support_prompts` prompts and `query_pairs` pairs,
    the pairs drawn from a pool of `feedback_budget` pairs per domain (an int, or a per-domain mapping)."""

    domains_per_episode: int = number(4, ge=1)
    support_prompts: int = number(8, ge=1)
    query_pairs: int = number(8, ge=1)
    feedback_budget: int | Mapping[str, int] = number(32, ge=1)


@dataclasses.dataclass(frozen=True)
class EpisodeConfig(EpisodeShape):
    """An `EpisodeShape` and the seed of the episode draws."""

    seed: int = number(0, ge=0)


class Episode(NamedTuple):
    """index; domains [E]; support[e]: the e-th domain's prompts; query[e]: its preference pairs."""

    index: int
    domains: list[str]
    support: list[list[PromptExample]]
    query: list[list[PreferencePair]]


class EpisodeSampler:
    """Episodes over the domains that have both prompts and pairs (or the `domains` given)."""

    def __init__(self, prompts: Sequence[PromptExample], pairs: Sequence[PreferencePair], config: EpisodeConfig,
                 domains: Sequence[str] | None = None):
        self.config = config
        by_prompt, by_pair = defaultdict(list), defaultdict(list)
        for p in prompts:
            by_prompt[p.domain].append(p)
        for p in pairs:
            by_pair[p.domain].append(p)
        self.domains = list(domains) if domains is not None else sorted(set(by_prompt) & set(by_pair))
        if len(self.domains) < config.domains_per_episode:
            raise DataError(f"{len(self.domains)} domains available, but an episode needs "
                            f"{config.domains_per_episode}")
        self.prompts: dict[str, list[PromptExample]] = {}
        self.feedback_pool: dict[str, list[PreferencePair]] = {}
        for i, d in enumerate(self.domains):
            budget = (config.feedback_budget.get(d, 0) if isinstance(config.feedback_budget, Mapping)
                      else config.feedback_budget)
            if len(by_prompt[d]) < config.support_prompts:
                raise DataError(f"domain {d!r} has {len(by_prompt[d])} prompts; episodes need "
                                f"support_prompts={config.support_prompts}", field="domain")
            if min(budget, len(by_pair[d])) < config.query_pairs:
                raise DataError(f"domain {d!r} has {len(by_pair[d])} pairs and a feedback budget of {budget}; "
                                f"episodes need query_pairs={config.query_pairs}", field="domain")
            order = np.random.default_rng([config.seed, 1, i]).permutation(len(by_pair[d]))
            self.feedback_pool[d] = [by_pair[d][j] for j in order[:budget]]
            self.prompts[d] = by_prompt[d]
        self.index = 0

    def episode(self, index: int) -> Episode:
        """The index-th episode (deterministic in seed and index)."""
        c = self.config
        rng = np.random.default_rng([c.seed, 0, index])
        chosen = [self.domains[i] for i in rng.choice(len(self.domains), c.domains_per_episode, replace=False)]
        support, query = [], []
        for d in chosen:
            support.append([self.prompts[d][j] for j in rng.choice(len(self.prompts[d]), c.support_prompts,
                                                                     replace=False)])
            pool = self.feedback_pool[d]
            query.append([pool[j] for j in rng.choice(len(pool), c.query_pairs, replace=False)])
        return Episode(index, chosen, support, query)

    def __iter__(self):
        return self

    def __next__(self) -> Episode:
        out = self.episode(self.index)
        self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.config.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.config.seed:
            raise ValueError(f"cannot restore: saved seed {state['seed']}, this sampler's {self.config.seed}")
        self.index = int(state["index"])
