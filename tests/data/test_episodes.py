"""Episode sampling: shapes, per-domain feedback budgets, determinism and exact resume."""

import pytest

from metapl.data import DataError
from metapl.data.episodes import EpisodeConfig, EpisodeSampler
from metapl.data.synthetic import SyntheticConfig, SyntheticDomains


@pytest.fixture(scope="module")
def bench():
    b = SyntheticDomains(SyntheticConfig(num_domains=8, num_heldout=3, pairs_per_domain=20))
    prompts = [p for d in b.train_domains for p in b.prompts(d, 12)]
    pairs = [p for d in b.train_domains for p in b.pairs(d)]
    return b, prompts, pairs


def test_episode_shapes_and_domains(bench):
    b, prompts, pairs = bench
    sampler = EpisodeSampler(prompts, pairs, EpisodeConfig(domains_per_episode=3, support_prompts=4, query_pairs=5,
                                                           feedback_budget=10))
    assert sampler.domains == b.train_domains
    ep = next(sampler)
    assert len(set(ep.domains)) == 3 and set(ep.domains) <= set(b.train_domains)
    for d, support, query in zip(ep.domains, ep.support, ep.query):
        assert len(support) == 4 and all(p.domain == d for p in support)
        assert len(query) == 5 and len(set(query)) == 5 and all(p.domain == d for p in query)


def test_query_pairs_never_leave_the_feedback_pool(bench):
    _, prompts, pairs = bench
    budget = {d: 6 for d in {p.domain for p in pairs}}
    sampler = EpisodeSampler(prompts, pairs, EpisodeConfig(3, 4, 5, feedback_budget=budget))
    seen = {}
    for _ in range(30):
        ep = next(sampler)
        for d, q in zip(ep.domains, ep.query):
            seen.setdefault(d, set()).update(q)
    for d, used in seen.items():
        assert used <= set(sampler.feedback_pool[d]) and len(sampler.feedback_pool[d]) == 6


def test_deterministic_and_resumable(bench):
    _, prompts, pairs = bench
    config = EpisodeConfig(2, 3, 4, feedback_budget=8, seed=5)
    a = EpisodeSampler(prompts, pairs, config)
    eps = [next(a) for _ in range(4)]
    b = EpisodeSampler(prompts, pairs, config)
    b.load_state_dict({"index": 2, "seed": 5})
    assert next(b) == eps[2] and next(b) == eps[3]
    assert EpisodeSampler(prompts, pairs, EpisodeConfig(2, 3, 4, 8, seed=6)).episode(0) != eps[0]


def test_budget_smaller_than_query_is_an_error(bench):
    _, prompts, pairs = bench
    with pytest.raises(DataError, match="feedback budget of 3; episodes need query_pairs=4"):
        EpisodeSampler(prompts, pairs, EpisodeConfig(2, 3, 4, feedback_budget=3))
