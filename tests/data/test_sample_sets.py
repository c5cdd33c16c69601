"""Sample sets for offline RLHF: n samples per prompt, determinism, scorers against their references, the
best-of-n / z-score helpers on a hand-computed example."""

import jax
import numpy as np
import pytest

from metapl.data import DataError, PromptExample, ScoredSample
from metapl.data.batching import SequenceShape
from metapl.data.sample_sets import (
    GoldJudgeScorer,
    RewardModelScorer,
    SampleSetConfig,
    SampleSetReport,
    best_of_n,
    build_sample_set,
    filter_by_zscore,
    read_sample_set,
    sample_responses,
    write_sample_set,
    zscore_by_prompt,
)
from metapl.data.synthetic import SyntheticConfig, SyntheticDomains, WordTokenizer
from metapl.models import init_head_params, init_params, reward, tiny

EOS = WordTokenizer.eos_token_id
STOPS = tuple(range(1, 33))  # eos and w0..w30: a quarter of the vocabulary, so responses stop early or are empty
N, MAX_NEW = 3, 8
CFG = SampleSetConfig(samples_per_prompt=N, max_new_tokens=MAX_NEW, batch_size=8, max_prompt_tokens=6, seed=3,
                      policy="tiny-random")


@pytest.fixture(scope="module")
def setup():
    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    bench = SyntheticDomains(SyntheticConfig(num_domains=4, num_heldout=1, vocab_words=126))
    prompts = bench.prompts("syn000", 3) + bench.prompts("syn002", 2)  # 5 prompts x 3 = 15 rows: 2 batches
    return config, params, bench, prompts


@pytest.fixture(scope="module")
def built(setup):
    config, params, bench, prompts = setup
    tok = bench.tokenizer
    seen_ids = []

    def decode(ids):
        seen_ids.append(list(ids))
        return tok.decode(ids)

    samples, report = build_sample_set(params, config, prompts, tok.encode, decode, GoldJudgeScorer.synthetic(bench),
                                       CFG, stop_token_ids=STOPS, pad_id=tok.pad_token_id)
    return samples, report, seen_ids


def test_counts_order_and_report(setup, built, capsys):
    _, _, _, prompts = setup
    samples, report, seen_ids = built
    assert (report.prompts, report.samples_per_prompt, report.sampled) == (5, N, 15)
    assert (report.batches, report.padding_rows) == (2, 1)  # padding row sampled, then discarded
    assert len(seen_ids) == 15
    assert report.empty == sum(1 for ids in seen_ids if not any(i >= 2 for i in ids))
    assert report.scored == len(samples) == 15 - report.empty
    # Stop tokens end a response and are stripped; a response without one ran to max_new_tokens.
    assert all(not set(ids) & set(STOPS) and len(ids) <= MAX_NEW for ids in seen_ids)
    assert report.unfinished == sum(len(ids) == MAX_NEW for ids in seen_ids)
    assert 0 < report.unfinished < 15 and 0 < report.empty < 15  # both paths taken with this seed
    long = [len(p.prompt.split()) for p in prompts if len(p.prompt.split()) > 6]
    assert report.prompt_truncation.prompts_truncated == len(long) > 0
    assert report.prompt_truncation.prompt_tokens_dropped == sum(n - 6 for n in long)
    # Samples come grouped by prompt in prompt order, carrying domain and policy.
    expected_prompts = [p for p in prompts for _ in range(N)]
    kept = [p for p, ids in zip(expected_prompts, seen_ids) if any(i >= 2 for i in ids)]
    assert [(s.prompt, s.domain) for s in samples] == [(p.prompt, p.domain) for p in kept]
    assert {s.policy for s in samples} == {"tiny-random"}
    assert "15 responses" in report.summary()


def test_same_seed_same_samples_other_seed_other_samples(setup, built, capsys):
    config, params, bench, prompts = setup
    tok = bench.tokenizer
    _, _, seen_ids = built
    report = SampleSetReport()
    again = sample_responses(params, config, prompts, tok.encode, tok.decode, CFG, stop_token_ids=STOPS,
                             report=report)
    assert [len(r) for r in again] == [N] * len(prompts)
    assert [r for rs in again for r in rs] == [tok.decode(ids) for ids in seen_ids]
    assert report.padding_rows == 1
    err = capsys.readouterr().err
    assert "sampled batch 1/2" in err and "sampled batch 2/2" in err
    other = sample_responses(params, config, prompts, tok.encode, tok.decode,
                             SampleSetConfig(**{**CFG.__dict__, "seed": 4}), stop_token_ids=STOPS, progress=False)
    assert other != again


def test_jsonl_round_trip(built, tmp_path):
    samples, _, _ = built
    path = tmp_path / "set.jsonl"
    assert write_sample_set(path, samples) == len(samples)
    result = read_sample_set(path)
    assert result.records == samples and result.skipped == []


def test_gold_judge_scores_equal_the_judge(setup, built):
    _, _, bench, _ = setup
    samples, _, _ = built
    for s in samples:
        assert s.reward == bench.gold_reward(s.domain, s.prompt, s.response)


def test_text_judge_scores_prompt_plus_response():
    calls = []

    class Judge:
        name = "fake"

        def score(self, texts):
            calls.extend(texts)
            return np.asarray([float(len(t)) for t in texts])

    scorer = GoldJudgeScorer.text(Judge())
    out = scorer.score(["d", "d"], ["Hello", "Hi"], [" there", "!"])
    np.testing.assert_array_equal(out, [11.0, 3.0])
    assert calls == ["Hello there", "Hi!"] and scorer.name == "fake"
    vader = pytest.importorskip("metapl.data.judges").VaderJudge()
    texts = ["What a", "This is"], [" wonderful day!", " awful."]
    np.testing.assert_array_equal(GoldJudgeScorer.text(vader).score(["d", "d"], *texts),
                                  vader.score([p + r for p, r in zip(*texts)]))


def test_reward_model_scorer_equals_heads_reward_on_a_hand_built_batch(setup):
    config, _, bench, _ = setup
    tok = bench.tokenizer
    rm = init_head_params(config, jax.random.key(7))
    prompts = ["w1 w2 w3", "w5", "w9 w8 w7 w6 w5 w4 w3 w2 w1 w0", "w100 w3", "w7 w7"]  # the third is cut to 8
    responses = ["w4 w5", "w6 w7 w8 w9", "w11", "w125 w0 w1", "w2"]
    shape = SequenceShape(max_prompt_tokens=8, max_response_tokens=8, buckets=(32,))
    scorer = RewardModelScorer(rm, config, tok.encode, shape=shape, eos_id=EOS, batch_size=4, name="rm")
    got = scorer.score(["syn000"] * 5, prompts, responses)  # 2 batches of 4 at length 32, the last padded
    assert scorer.truncation.prompts_truncated == 1 and scorer.truncation.prompt_tokens_dropped == 2

    rows = [tok.encode(p)[-8:] + tok.encode(r) + [EOS] for p, r in zip(prompts, responses)]
    length = max(map(len, rows))  # not the scorer's bucket: padding must not matter
    tokens = np.zeros((5, length), np.int32)
    mask = np.zeros((5, length), bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)], mask[i, : len(row)] = row, True
    want = np.asarray(reward(rm, config, tokens, mask))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _s(prompt, response, r, domain="d"):
    return ScoredSample(prompt, response, r, domain, "p")


def test_best_of_n_and_zscores_on_a_hand_computed_example():
    samples = [
        _s("A", "a1", 1.0), _s("B", "b2", 0.5), _s("A", "a2", 3.0), _s("C", "z", 2.0), _s("A", "a3", 2.0),
        _s("B", "b1", 0.5), _s("C", "y", 2.0), _s("A", "e1", 5.0, domain="e"), _s("C", "x", -1.0),
    ]
    best = best_of_n(samples)
    assert [(s.domain, s.prompt, s.response) for s in best] == [
        ("d", "A", "a2"), ("d", "B", "b1"), ("d", "C", "y"), ("e", "A", "e1")]  # ties: smallest response
    assert set(best_of_n(samples[::-1])) == set(best)  # the choice does not depend on the order

    z = [s.reward for s in zscore_by_prompt(samples)]
    a, c = np.sqrt(1.5), 1 / np.sqrt(2)  # A: (r - 2) / sqrt(2/3); C: (r - 1) / sqrt(2)
    np.testing.assert_allclose(z, [-a, 0.0, a, c, 0.0, 0.0, c, 0.0, -2 * c], atol=1e-12)
    assert [s.response for s in zscore_by_prompt(samples)] == [s.response for s in samples]

    kept, report = filter_by_zscore(samples, 0.5)
    assert [s.response for s in kept] == ["a2", "z", "y"] and kept[0].reward == 3.0  # original rewards
    assert (report.kept, report.dropped, report.prompts) == (3, 6, 4)
    assert (report.prompts_with_none_kept, report.zero_variance_prompts) == (2, 2)  # B (tied) and e/A (1 sample)
    kept, report = filter_by_zscore(samples, 0.0)
    assert [s.response for s in kept] == ["b2", "a2", "z", "a3", "b1", "y", "e1"] and report.dropped == 2


def test_bad_inputs_are_errors(setup):
    config, params, bench, _ = setup
    with pytest.raises(ValueError, match="samples_per_prompt"):
        SampleSetConfig(samples_per_prompt=0)
    with pytest.raises(ValueError, match="temperature"):
        SampleSetConfig(temperature=-1)
    tok = bench.tokenizer
    with pytest.raises(DataError, match="tokenised to nothing"):
        sample_responses(params, config, [PromptExample(" ", "syn000")], tok.encode, tok.decode, CFG)
    with pytest.raises(DataError, match="no prompts"):
        sample_responses(params, config, [], tok.encode, tok.decode, CFG)
