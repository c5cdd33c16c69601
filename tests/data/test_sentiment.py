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


def _scripted_policy(monkeypatch, replies: list[str]):
    """A stand-in model whose sampled continuations are `replies`, in order; three prompts for it."""
    replies = iter(replies)
    monkeypatch.setattr("metapl.models.sampling.generate_text",
                        lambda *a, **k: [next(replies) for _ in a[3]])
    monkeypatch.setattr("metapl.models.sampling.default_stop_ids", lambda tok: ())
    model = type("M", (), {"params": None, "config": None, "tokenizer": None})()
    return model, [PromptExample(f"prompt {i}", "d") for i in range(3)]


def test_pairs_follow_the_judge_without_label_noise(monkeypatch):
    model, prompts = _scripted_policy(monkeypatch, [" good", " much better", " same", " same", " a", " bb"])
    config = sentiment.SentimentConfig(label_noise=0.0, batch_size=6)
    pairs, identical, indecisive = sentiment.sample_pairs(prompts, config, _Scripted(), model=model)
    assert identical == 1 and indecisive == 0  # " same" twice is not a pair, and is counted
    assert [(p.chosen, p.rejected) for p in pairs] == [(" much better", " good"), (" bb", " a")]
    assert pairs[0].gold_margin == pytest.approx((len("prompt 0 much better") - len("prompt 0 good")) / 100)


def test_several_pairs_per_prompt_pair_consecutive_continuations(monkeypatch):
    model, prompts = _scripted_policy(monkeypatch, [" a", " bbb", " cc", " c", " x", " x", " dd", " d", " e", " ee",
                                                    " f", " fff"])
    config = sentiment.SentimentConfig(label_noise=0.0, batch_size=4, pairs_per_prompt=2)
    pairs, identical, indecisive = sentiment.sample_pairs(prompts, config, _Scripted(), model=model)
    assert (identical, indecisive) == (1, 0)  # " x" twice
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("prompt 0", " bbb", " a"), ("prompt 0", " cc", " c"), ("prompt 1", " dd", " d"),
        ("prompt 2", " ee", " e"), ("prompt 2", " fff", " f")]


def test_targets_are_balanced_stated_in_the_prompt_and_sign_the_gold_reward():
    from metapl.data.judges import VaderJudge

    train, heldout = [f"t{i}" for i in range(12)], [f"h{i}" for i in range(29)]
    targets = sentiment.domain_targets(train, heldout, seed=0)
    assert sum(targets[d] == 1 for d in train) == 6 and sum(targets[d] == 1 for d in heldout) == 15
    assert targets != sentiment.domain_targets(train, heldout, seed=1)  # the draw follows the seed
    skewed = sentiment.domain_targets(train, heldout, seed=0, positive_fraction=0.75)
    assert sum(skewed[d] == 1 for d in train) == 9 and sum(skewed[d] == 1 for d in heldout) == 22  # ceil(21.75)
    assert {d for d in targets if targets[d] == 1} <= {d for d in skewed if skewed[d] == 1}  # same order, cut later
    assert all(v == -1 for v in sentiment.domain_targets(train, heldout, 0, positive_fraction=0.0).values())
    with pytest.raises(ValueError, match="positive_fraction"):
        sentiment.SentimentConfig(positive_fraction=float("nan"))
    tagged = sentiment.tag_prompt("The weather today", -1)
    assert tagged == "[tone: negative] The weather today" and sentiment.untag(tagged) == "The weather today"
    assert sentiment.untag("no tag here") == "no tag here"
    judge = VaderJudge()
    good, bad = " is wonderful and lovely.", " is horrible and sad."
    plus = sentiment.target_gold(judge, 1, [tagged, tagged], [good, bad])
    minus = sentiment.target_gold(judge, -1, [tagged, tagged], [good, bad])
    # the tag is not judged: the score is VADER of the opening + response, signed by the target
    assert plus[0] == pytest.approx(judge.score(["The weather today" + good])[0])
    np.testing.assert_allclose(minus, -plus)
    per_text = sentiment.target_gold(judge, np.array([1, -1]), [tagged, tagged], [good, bad])  # one target each
    np.testing.assert_allclose(per_text, [plus[0], minus[1]])
    assert plus[0] > 0 > plus[1]


def test_pairs_below_the_minimum_margin_are_dropped_and_counted(monkeypatch):
    model, prompts = _scripted_policy(monkeypatch, [" good", " much better", " aaaa", " aaab", " a", " bbbbbbbbbbbb"])
    config = sentiment.SentimentConfig(label_noise=0.0, batch_size=6, min_margin=0.05)
    negated = lambda texts, outputs: -np.asarray([len(y) / 100 for y in outputs])  # noqa: E731
    pairs, identical, indecisive = sentiment.sample_pairs(prompts, config, _Scripted(), model=model, gold=negated)
    assert (identical, indecisive) == (0, 1)  # " aaaa" vs " aaab": margin 0 < 0.05
    assert [(p.chosen, p.rejected) for p in pairs] == [(" good", " much better"), (" a", " bbbbbbbbbbbb")]
    assert pairs[1].gold_margin == pytest.approx(0.11)
    with pytest.raises(ValueError, match="min_margin"):
        sentiment.SentimentConfig(min_margin=-0.1)


def test_sentiment_targets_benchmark_reads_its_build_and_judges_by_the_domain_target(tmp_path):
    from metapl.data import DataError
    from metapl.data.benchmarks import DataSpec, load_benchmark
    from metapl.data.judges import PatternJudge, VaderJudge
    from metapl.data.schemas import PreferencePair
    from metapl.data.tfds_builders import build, load_records
    from tests.gguf_fixture import tiny_tokenizer

    targets = {"t/a": 1, "t/b": -1, "h/c": -1}
    tag = {d: sentiment.TARGET_TAGS[t] for d, t in targets.items()}
    records = {
        "pairs": {"train": [PreferencePair(f"{tag[d]} It was", " great", " bad", d, 0.5) for d in ("t/a", "t/b")],
                  "heldout": [PreferencePair(f"{tag['h/c']} It was", " bad", " great", "h/c", 0.5)]},
        "prompts": {"train": [PromptExample(f"{tag[d]} {x}", d) for d in ("t/a", "t/b")
                              for x in ("We saw", "They said", "He wrote", "She sang")],
                    "heldout": [PromptExample(f"{tag['h/c']} We saw", "h/c")] * 2},
    }
    settings = {"targets": True, "seed": 0}  # as build_sentiment stores them; the report adds the drawn targets
    facts = {"domain_targets": targets, "train_domains": ["t/a", "t/b"], "heldout_domains": ["h/c"]}
    build("sentiment_targets", "test build", tmp_path, lambda kind: records[kind], settings, report=lambda: facts)
    # The same settings again reuse the build (CI once failed here: a stored fact had replaced a setting).
    build("sentiment_targets", "test build", tmp_path, lambda kind: pytest.fail("rebuilt"), settings,
          report=lambda: facts)
    with pytest.raises(ValueError, match=r"repeats the settings \['targets'\]"):
        build("sentiment_targets", "test build", tmp_path / "clash", lambda kind: records[kind], settings,
              report=lambda: {"targets": targets})
    bench = load_benchmark(DataSpec(benchmark="sentiment_targets", data_dir=str(tmp_path), eval_fraction=0.0),
                           tiny_tokenizer())
    assert bench.targets == targets and len(bench.train_pairs) == 2
    vader = VaderJudge()
    pattern = PatternJudge()
    for d, t in targets.items():
        assert bench.gold(d, f"{tag[d]} It was", " great") == pytest.approx(t * vader.score(["It was great"])[0])
        assert bench.cross_gold(d, f"{tag[d]} It was", " great") == pytest.approx(
            t * pattern.score(["It was great"])[0])
    assert bench.cross_judge == pattern.name
    split = bench.domain_split("heldout", 2)
    assert list(split) == ["h/c"] and len(split["h/c"][0]) == 2 and split["h/c"][1][0].chosen == " bad"
    # Training reads the front half of each meta-train domain's prompts in build order (evaluation first, then the
    # samplers), validation the back half.
    by_domain = {d: [p for p in load_records(tmp_path / "sentiment_targets" / "prompts" / "1.0.0", "train")
                     if p.domain == d] for d in ("t/a", "t/b")}
    def grouped(prompts):
        return {d: [p for p in prompts if p.domain == d] for d in by_domain}

    assert grouped(bench.eval_prompts) == {d: ps[:2] for d, ps in by_domain.items()}  # 64 asked: the front half
    with pytest.raises(DataError, match=r"validation asks for its last 3, but only the back half \(2\)"):
        bench.domain_split("validation", 3)
    narrow = load_benchmark(DataSpec(benchmark="sentiment_targets", data_dir=str(tmp_path), eval_fraction=0.0,
                                     eval_prompts=2), tiny_tokenizer())
    assert grouped(narrow.eval_prompts) == {d: ps[:1] for d, ps in by_domain.items()}
    assert grouped(narrow.training_prompts(1)) == {d: ps[1:2] for d, ps in by_domain.items()}
    with pytest.raises(DataError, match="1 for evaluation .* cannot have 2 more"):
        narrow.training_prompts(2)
    val = narrow.domain_split("validation", 2)
    assert {d: v[0] for d, v in val.items()} == {d: ps[2:] for d, ps in by_domain.items()}
    with pytest.raises(DataError, match="unknown domain"):
        bench.gold("x/y", "p", "r")
    with pytest.raises(DataError, match="unknown domain"):
        bench.cross_gold("x/y", "p", "r")
