"""mechanism_domains: knobs off = synthetic_domains; the attribute mechanism's gold reward, descriptors and held-out
kinds; a per-domain oracle beats the pooled one only when the attributes are on; the behaviour policy's words; the
validation split."""

import itertools

import numpy as np
import pytest

from metapl.data import DataError
from metapl.data.benchmarks import DataSpec, load_benchmark, split_pairs
from metapl.data.mechanisms import INNER_VALUES, MechanismConfig, MechanismDomains, attribute_combinations
from metapl.data.synthetic import SyntheticConfig, SyntheticDomains

ON = MechanismConfig(attributes=2, attribute_strength=1.0)


def test_every_knob_off_is_synthetic_domains():
    base, mech = SyntheticDomains(), MechanismDomains()
    for d in base.domains:
        assert mech.pairs(d) == base.pairs(d)
        assert mech.prompts(d, 8) == base.prompts(d, 8)
    # and so the statistics agree: label agreement with the gold reward, mean |margin|, word frequencies
    margins = {name: np.array([p.gold_margin for d in b.domains for p in b.pairs(d)])
               for name, b in (("base", base), ("mech", mech))}
    assert np.mean(margins["mech"] > 0) == np.mean(margins["base"] > 0)
    assert np.mean(np.abs(margins["mech"])) == np.mean(np.abs(margins["base"]))
    a = load_benchmark(DataSpec(benchmark="synthetic_domains"))
    b = load_benchmark(DataSpec(benchmark="mechanism_domains"))
    assert a.train_pairs == b.train_pairs and a.eval_prompts == b.eval_prompts and a.vocab_size == b.vocab_size


def test_attribute_weights_follow_the_definition():
    # shift 0: no domain residual, so w_d - w0 = strength * U a_d exactly; checked through the gold reward of a
    # one-word response that the prompt does not contain (relevance term 0).
    cfg = SyntheticConfig(shift=0.0)
    b = MechanismDomains(cfg, MechanismConfig(attributes=2, attribute_strength=0.7))
    u = b.attribute_axes
    np.testing.assert_allclose(u.T @ u, np.eye(2), atol=1e-12)
    prompt = "w1 w2"
    for d in ("syn000", "syn001", "syn050", "syn063"):
        a = b.domain_attributes(d)
        expected = b.features[7] @ (b.shared_weights + 0.7 * u @ a)
        assert b.gold_reward(d, prompt, "w7") == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # descriptor tokens in a response carry no reward; a response of descriptors alone is an error
    assert b.gold_reward("syn000", prompt, "w7 a0+ a1-") == b.gold_reward("syn000", prompt, "w7")
    with pytest.raises(DataError, match="no words"):
        b.gold_reward("syn000", prompt, "a0+")


def test_descriptors_spell_the_attributes_at_the_start_of_every_prompt():
    b = MechanismDomains(SyntheticConfig(), MechanismConfig(attributes=2, descriptor_slots=8))
    for d in b.domains[::7]:
        a = b.domain_attributes(d)
        for text in [p.prompt for p in b.prompts(d, 3)] + [p.prompt for p in b.pairs(d, 3)]:
            words = text.split()
            for j in range(2):
                spelt = words[8 * j: 8 * (j + 1)]
                assert set(spelt) <= {f"a{j}+", f"a{j}-"}
                assert (spelt.count(f"a{j}+") - spelt.count(f"a{j}-")) / 8 == a[j]
            assert all(w.startswith("w") for w in words[16:])


def test_heldout_domains_interpolate_and_extrapolate():
    b = MechanismDomains(SyntheticConfig(), ON)
    train = {tuple(b.domain_attributes(d)) for d in b.train_domains}
    seen, excluded = attribute_combinations(2)
    assert train == set(seen) and len(seen) + len(excluded) == 9
    train_values = [{a[j] for a in train} for j in range(2)]
    assert all(v == set(INNER_VALUES) for v in train_values)  # every single value is seen
    kinds = {d: b.heldout_kind(d) for d in b.heldout_domains}
    assert sorted(set(kinds.values())) == ["extrapolation", "interpolation"]
    assert all(b.heldout_kind(d) == "train" for d in b.train_domains)
    for d, kind in kinds.items():
        a = tuple(b.domain_attributes(d))
        assert a not in train
        if kind == "interpolation":
            assert all(a[j] in train_values[j] for j in range(2))
        else:
            assert any(abs(v) == 1.0 for v in a)  # a value no training prompt shows
    assert MechanismDomains().heldout_kind("syn050") is None


def _regularised_value(w_guide: np.ndarray, w_true: np.ndarray, features: np.ndarray, beta: float) -> float:
    """E_p[q_true] - beta KL(p || uniform) for p ∝ exp(q_guide / beta) over single words: the KL-regularised
    objective the meta-test solver optimises, at its exact optimum when the guide is the truth."""
    q_guide, q_true = features @ w_guide, features @ w_true
    p = np.exp((q_guide - q_guide.max()) / beta)
    p /= p.sum()
    return float(p @ q_true - beta * np.sum(p * np.log(p * len(p))))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_per_domain_oracle_beats_the_pooled_oracle_only_with_attributes(beta):
    def gap(bench):
        pooled = np.mean([bench.domain_weights(d) for d in bench.train_domains], axis=0)
        return np.mean([_regularised_value(bench.domain_weights(d), bench.domain_weights(d), bench.features, beta)
                        - _regularised_value(pooled, bench.domain_weights(d), bench.features, beta)
                        for d in bench.heldout_domains])

    off = gap(MechanismDomains(SyntheticConfig(shift=0.0)))
    on = gap(MechanismDomains(SyntheticConfig(shift=0.0), ON))
    assert off == pytest.approx(0.0, abs=1e-12)  # every domain has w0: pooling loses nothing
    assert on > 0.03  # the domain structure is worth a margin to a reward that reads it
    on_with_residual = gap(MechanismDomains(SyntheticConfig(), ON))
    off_with_residual = gap(MechanismDomains(SyntheticConfig()))
    assert on_with_residual > off_with_residual + 0.03


def test_behaviour_shift_draws_pair_responses_from_the_behaviour_policy():
    b = MechanismDomains(SyntheticConfig(pairs_per_domain=400), MechanismConfig(behaviour_shift=2.0))
    counts = np.zeros(b.config.vocab_words)
    for d in b.domains[:6]:
        for p in b.pairs(d):
            for w in (p.chosen + " " + p.rejected).split():
                counts[int(w[1:])] += 1
    freq = counts / counts.sum()
    assert 0.5 * np.abs(freq - b.behaviour_distribution).sum() < 0.03  # total variation
    assert 0.5 * np.abs(b.behaviour_distribution - 1 / len(freq)).sum() > 0.4  # far from the uniform policy
    assert MechanismDomains().behaviour_distribution is None


def test_benchmark_vocabulary_and_prompt_length():
    spec = DataSpec(benchmark="mechanism_domains", mechanisms=ON)
    bench = load_benchmark(spec)
    assert bench.vocab_size == 2 + 32 + 4  # specials, words, descriptors a0+ a0- a1+ a1-
    ids = bench.encode("a0+ w3 a1-")
    assert bench.decode(ids) == "w3"  # descriptors are control tokens: response text drops them
    dt = bench.with_reward_tokens(["<r0>", "<r1>"])
    assert dt.vocab_size == bench.vocab_size + 2 and dt.encode("a1- <r1>") == [bench.vocab_size - 1,
                                                                                bench.vocab_size + 1]
    with pytest.raises(DataError, match="max_prompt_tokens = 12"):
        load_benchmark(DataSpec(benchmark="mechanism_domains", mechanisms=ON, max_prompt_tokens=12))


def test_a_suffix_oracle_reads_only_the_last_words_of_a_response():
    b, full = MechanismDomains(mechanisms=MechanismConfig(suffix_words=2)), MechanismDomains()
    w = b.domain_weights("syn003")
    # by hand: the mean quality of the last two words plus relevance x their overlap with the prompt ("w5" in it)
    expected = np.mean(b.features[[5, 9]] @ w) + b.config.relevance * 0.5
    assert b.gold_reward("syn003", "w5 w6", "w1 w2 w3 w5 w9") == pytest.approx(expected, rel=1e-12)
    # the prefix carries no reward; without the knob it does
    for bench, same in ((b, True), (full, False)):
        a, c = (bench.gold_reward("syn003", "w5 w6", y) for y in ("w0 w0 w0 w5 w9", "w1 w2 w3 w5 w9"))
        assert (a == c) is same
    assert b.gold_reward("syn003", "w5 w6", "w9") == full.gold_reward("syn003", "w5 w6", "w9")  # shorter: all read


def test_bad_knobs():
    for bad in ({"attributes": -1}, {"attributes": 1}, {"descriptor_slots": 6}, {"behaviour_shift": float("nan")},
                {"attribute_strength": -1.0}, {"suffix_words": -1}):
        with pytest.raises(ValueError):
            MechanismConfig(**bad)
    with pytest.raises(ValueError, match="feature_dim"):
        MechanismDomains(SyntheticConfig(feature_dim=2), MechanismConfig(attributes=3))


@pytest.mark.parametrize("benchmark", ["synthetic_domains", "mechanism_domains"])
def test_validation_split_is_meta_train_domains_on_prompts_training_never_reads(benchmark):
    spec = DataSpec(benchmark=benchmark, mechanisms=ON if benchmark == "mechanism_domains" else MechanismConfig())
    bench = load_benchmark(spec)
    val = bench.domain_split("validation", 16)
    train = bench.domain_split("train", 64)
    assert list(val) == list(train) == sorted({p.domain for p in bench.train_pairs})
    read_by_training = {(p.domain, p.prompt) for p in bench.training_prompts(64)} | \
        {(p.domain, p.prompt) for p in bench.train_pairs} | {(p.domain, p.prompt) for p in bench.eval_prompts}
    for d, (prompts, pairs) in val.items():
        assert len(prompts) == 16 and all(p.domain == d for p in prompts)
        # a prompt may repeat by chance (short prompts over 32 words), but the streams differ
        assert [p.prompt for p in prompts] != [p.prompt for p in train[d][0][:16]]
        assert sum((d, p.prompt) in read_by_training for p in prompts) <= 2
        assert pairs == split_pairs(train[d][1], spec.eval_fraction)[1]  # evaluation pairs only
        assert not set(map(id, pairs)) & set(map(id, bench.train_pairs))
        assert all(p not in bench.train_pairs for p in pairs)
    assert not set(val) & set(bench.domain_split("heldout", 1))


def test_interpolation_combinations_cover_every_value():
    for m in (2, 3):
        seen, excluded = attribute_combinations(m)
        assert len(seen) + len(excluded) == 3 ** m and set(seen).isdisjoint(excluded)
        for j in range(m):
            assert {a[j] for a in seen} == set(INNER_VALUES)
        assert set(itertools.chain(seen, excluded)) == set(itertools.product(INNER_VALUES, repeat=m))


def test_decode_responses_keeps_masked_tokens_and_drops_eos():
    bench = load_benchmark(DataSpec(benchmark="synthetic_domains"))
    w = bench.encode("w1 w2 w3")
    pad, eos = bench.pad_id, bench.eos_id
    tokens = np.array([[w[0], w[1], eos, pad], [w[2], pad, pad, pad], [eos, pad, pad, pad]])
    mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])  # row 1: its token is not part of the response
    assert bench.decode_responses(tokens, mask) == ["w1 w2", "", ""]
    prompts = bench.eval_prompts[:3]
    scores = bench.gold_scores(prompts, tokens, mask)
    assert scores[1:] == [0.0, 0.0]  # empty responses score 0
    assert scores[0] == bench.gold(prompts[0].domain, prompts[0].prompt, "w1 w2")
