"""sentiment_domains: the fixed split is valid for the installed corpora, and pairs are labelled by the judge."""

import numpy as np
import pytest

from metapl.data import sentiment
from metapl.data.corpora import corpus_domains, domain_prompts
from metapl.data.schemas import PromptExample


def test_the_fixed_split_leaves_at_least_20_usable_heldout_domains():
    config = sentiment.SentimentConfig()
    need = config.prompts_per_domain + config.pairs_per_domain
    usable = [d for d in corpus_domains() if len(domain_prompts(d, seed=0, max_prompts=need)) >= need]
    train, heldout = sentiment.split_domains(usable)
    assert sorted(train) == sorted(sentiment.TRAIN_DOMAINS)
    assert len(heldout) >= sentiment.MIN_HELDOUT and not set(train) & set(heldout)
    assert {d.split("/")[0] for d in train} == {d.split("/")[0] for d in heldout}  # every kind of text on both sides


class _Scripted:
    """A stand-in policy + judge: continuation i of the batch is `replies[i]`; the judge scores by length."""

    name = "length"

    def score(self, texts):
        return np.asarray([len(t) / 100 for t in texts])


def test_pairs_follow_the_judge_without_label_noise(monkeypatch):
    replies = iter([" good", " much better", " same", " same", " a", " bb"])
    monkeypatch.setattr("metapl.models.sampling.generate_text",
                        lambda *a, **k: [next(replies) for _ in a[3]])
    monkeypatch.setattr("metapl.models.sampling.default_stop_ids", lambda tok: ())
    model = type("M", (), {"params": None, "config": None, "tokenizer": None})()
    prompts = [PromptExample(f"prompt {i}", "d") for i in range(3)]
    config = sentiment.SentimentConfig(label_noise=0.0, batch_size=6)
    pairs, identical = sentiment.sample_pairs(prompts, config, _Scripted(), model=model)
    assert identical == 1  # " same" twice is not a pair, and is counted
    assert [(p.chosen, p.rejected) for p in pairs] == [(" much better", " good"), (" bb", " a")]
    assert pairs[0].gold_margin == pytest.approx((len("prompt 0 much better") - len("prompt 0 good")) / 100)
