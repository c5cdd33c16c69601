"""synthetic_domains: the gold reward equals its definition; labels follow the Bradley-Terry noise model."""

import numpy as np
import pytest

from metapl.data import DataError
from metapl.data.synthetic import SyntheticConfig, SyntheticDomains, WordTokenizer


def test_gold_reward_matches_the_definition_computed_by_hand():
    b = SyntheticDomains(SyntheticConfig(relevance=0.7))
    w = b.domain_weights("syn005")
    prompt, response = "w3 w9 w3", "w9 w1 w30 w3"
    words = [9, 1, 30, 3]
    quality = sum(float(np.dot(b.features[i], w)) for i in words) / 4
    overlap = 2 / 4  # w9 and w3 occur in the prompt
    assert b.gold_reward("syn005", prompt, response) == pytest.approx(quality + 0.7 * overlap, rel=1e-12)


def test_domains_share_a_direction_and_differ_by_shift():
    b = SyntheticDomains(SyntheticConfig(shift=0.3, feature_dim=16))
    ws = np.stack([b.domain_weights(d) for d in b.domains])
    np.testing.assert_allclose(ws.mean(0), b.shared_weights, atol=4 * 0.3 / np.sqrt(16 * len(ws)))  # 4 sigma
    assert np.std(ws - b.shared_weights) == pytest.approx(0.3 / 4, rel=0.15)
    same = SyntheticDomains(SyntheticConfig(shift=0.0))
    np.testing.assert_array_equal(same.domain_weights("syn001"), same.domain_weights("syn040"))


def test_split_and_stable_streams():
    small = SyntheticDomains(SyntheticConfig(num_domains=30, num_heldout=20, pairs_per_domain=5))
    big = SyntheticDomains(SyntheticConfig(num_domains=40, num_heldout=20, pairs_per_domain=9))
    assert len(small.heldout_domains) == 20 and small.train_domains == [f"syn{i:03d}" for i in range(10)]
    assert big.pairs("syn003")[:5] == small.pairs("syn003")  # other knobs do not disturb a domain's stream
    with pytest.raises(DataError, match="unknown domain 'syn999'"):
        small.pairs("syn999")


def test_noiseless_labels_follow_the_gold_reward_and_noisy_ones_follow_bradley_terry():
    exact = SyntheticDomains(SyntheticConfig(label_noise=0.0, pairs_per_domain=200))
    for p in exact.pairs("syn002"):
        assert p.gold_margin == pytest.approx(exact.gold_reward("syn002", p.prompt, p.chosen)
                                              - exact.gold_reward("syn002", p.prompt, p.rejected))
        assert p.gold_margin >= 0
    noise = 0.2
    noisy = SyntheticDomains(SyntheticConfig(label_noise=noise, pairs_per_domain=3000))
    m = np.array([p.gold_margin for p in noisy.pairs("syn002")])
    # Under BT, P(label agrees with the gold reward | |margin|) = sigmoid(|margin| / noise).
    expected = np.mean(1 / (1 + np.exp(-np.abs(m) / noise)))
    assert np.mean(m > 0) == pytest.approx(expected, abs=0.03)


def test_word_tokenizer():
    tok = WordTokenizer(5)
    assert tok.encode("w0 w4") == [2, 6] and tok.decode([0, 2, 6, 1]) == "w0 w4" and tok.vocab_size == 7
    with pytest.raises(DataError, match="'w5' is not in the synthetic vocabulary"):
        tok.encode("w5")


def test_bad_config():
    with pytest.raises(ValueError, match="num_heldout"):
        SyntheticConfig(num_domains=10, num_heldout=10)
