"""Tokenisation, truncation, bucketing, packing, shuffling and exact iterator resume."""

import numpy as np
import pytest

from metapl.data import DataError, PreferencePair, PromptExample
from metapl.data.batching import (
    PairLoader, SequenceShape, ShuffledBatches, TruncationStats, collate, encode_sequence, pack, power_of_two_buckets,
    prompt_arrays,
)
from metapl.data.synthetic import WordTokenizer

TOK = WordTokenizer(10)  # w0..w9 -> ids 2..11; pad 0, eos 1


def test_truncation_keeps_prompt_end_and_response_start_and_counts():
    stats = TruncationStats()
    shape = SequenceShape(max_prompt_tokens=3, max_response_tokens=2)
    enc = encode_sequence([10, 11, 12, 13, 14], [20, 21, 22], shape, eos_id=1, stats=stats)
    assert enc.ids == [12, 13, 14, 20, 21, 1] and enc.prompt_length == 3
    encode_sequence([5], [6], shape, eos_id=1, stats=stats)
    assert (stats.sequences, stats.prompts_truncated, stats.prompt_tokens_dropped) == (2, 1, 2)
    assert (stats.responses_truncated, stats.response_tokens_dropped) == (1, 1)
    assert "prompts truncated: 1 (2 tokens, from the left)" in stats.summary()


def test_collate_masks():
    seqs = [encode_sequence([5, 6], [7], SequenceShape(), 1, TruncationStats()),
            encode_sequence([5], [7, 8, 9], SequenceShape(), 1, TruncationStats())]
    batch = collate(seqs, 8, pad_id=0)
    np.testing.assert_array_equal(batch.tokens, [[5, 6, 7, 1, 0, 0, 0, 0], [5, 7, 8, 9, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch.attention_mask.sum(1), [4, 5])
    np.testing.assert_array_equal(batch.response_mask.astype(int), [[0, 0, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0]])


def test_buckets():
    assert power_of_two_buckets(100) == (16, 32, 64, 100)
    shape = SequenceShape(max_prompt_tokens=40, max_response_tokens=40)
    assert [shape.bucket(n) for n in (1, 16, 17, 81)] == [16, 16, 32, 81]
    with pytest.raises(DataError, match="exceeds the largest bucket"):
        shape.bucket(82)


def test_prompt_arrays_left_pad():
    tokens, mask = prompt_arrays([PromptExample("w1 w2 w3", "d"), PromptExample("w4", "d")], TOK.encode,
                                 SequenceShape(max_prompt_tokens=2), 0, TruncationStats(), length=4)
    np.testing.assert_array_equal(tokens, [[0, 0, 4, 5], [0, 0, 0, 6]])  # "w1" truncated from the left
    np.testing.assert_array_equal(mask, tokens > 0)


def test_packing_segments_positions_and_masks():
    shape = SequenceShape()
    seqs = [encode_sequence([2] * a, [3] * b, shape, 1, TruncationStats()) for a, b in [(2, 2), (1, 1), (3, 2), (1, 0)]]
    packed = pack(seqs, row_length=8, pad_id=0)
    # lengths 5, 3 | 6, 2 -> two rows
    np.testing.assert_array_equal(packed.segment_ids, [[1] * 5 + [2] * 3, [1] * 6 + [2] * 2])
    np.testing.assert_array_equal(packed.positions, [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1]])
    assert packed.response_mask.sum() == sum(len(s.ids) - s.prompt_length for s in seqs)
    assert sorted(np.concatenate([r[s > 0] for r, s in zip(packed.tokens, packed.segment_ids)]).tolist()) == \
        sorted(t for s in seqs for t in s.ids)
    with pytest.raises(DataError, match="cannot be packed"):
        pack(seqs, row_length=4, pad_id=0)


def test_shuffled_batches_cover_each_epoch_and_resume_exactly():
    it = ShuffledBatches(10, 4, seed=3)
    first = [next(it) for _ in range(5)]  # 20 items = 2 epochs, batches straddle the boundary
    stream = np.concatenate(first)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # reshuffled
    state = it.state_dict()
    rest = [next(it) for _ in range(3)]
    again = ShuffledBatches(10, 4, seed=3)
    again.load_state_dict(state)
    for a, b in zip(rest, [next(again) for _ in range(3)]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(10, 5, seed=3).load_state_dict(state)


def test_pair_loader_shapes_domains_and_resume():
    pairs = [PreferencePair(f"w{i % 10}", "w1 w2", f"w{(i + 3) % 10}", domain=f"d{i % 3}",
                            gold_margin=None if i % 2 else 0.5) for i in range(7)]
    pairs = [p for p in pairs if p.chosen != p.rejected]
    loader = PairLoader(pairs, TOK.encode, batch_size=4, eos_id=TOK.eos_token_id, seed=1)
    idx = loader.order.batch(0)
    batch = next(loader)
    assert batch.chosen.tokens.shape == batch.rejected.tokens.shape == (4, 16)
    assert loader.domains == ["d0", "d1", "d2"]
    np.testing.assert_array_equal(batch.domain, [int(pairs[i].domain[1]) for i in idx])
    want_margin = [np.nan if pairs[i].gold_margin is None else pairs[i].gold_margin for i in idx]
    np.testing.assert_array_equal(batch.gold_margin, np.asarray(want_margin, np.float32))
    for row, i in zip(batch.chosen.tokens, idx):
        assert TOK.decode(row[batch.chosen.response_mask[list(idx).index(i)]]) == pairs[i].chosen
    state = loader.state_dict()
    want = next(loader)
    loader2 = PairLoader(pairs, TOK.encode, batch_size=4, eos_id=TOK.eos_token_id, seed=1)
    loader2.load_state_dict(state)
    got = next(loader2)
    np.testing.assert_array_equal(got.chosen.tokens, want.chosen.tokens)
    np.testing.assert_array_equal(got.domain, want.domain)
    with pytest.raises(DataError, match="not in the domain list: d2"):
        PairLoader(pairs, TOK.encode, batch_size=2, domains=["d0", "d1"])


def test_shared_prefix_pair_arrays():
    """Each pair's prompt once (left-padded), its chosen and rejected responses (with EOS) in two right-padded
    slots; written by hand from the word tokenizer's ids (w_i -> i + 2, EOS 1)."""
    pairs = [PreferencePair("w1 w2 w3", "w4", "w5 w6", domain="a"), PreferencePair("w7", "w8 w9", "w0", domain="b")]
    shape = SequenceShape(max_prompt_tokens=4, max_response_tokens=3)
    loader = PairLoader(pairs, TOK.encode, batch_size=2, shape=shape, eos_id=TOK.eos_token_id, shared_prefix=True)
    got = loader.arrays_at([0, 1])
    np.testing.assert_array_equal(got["prompt_tokens"], [[0, 3, 4, 5], [0, 0, 0, 9]])
    np.testing.assert_array_equal(got["prompt_mask"], [[0, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(got["response_tokens"], [[[6, 1, 0, 0], [7, 8, 1, 0]],
                                                           [[10, 11, 1, 0], [2, 1, 0, 0]]])
    np.testing.assert_array_equal(got["response_mask"], np.asarray(got["response_tokens"]) > 0)
    np.testing.assert_array_equal(got["domain"], [0, 1])
    assert "chosen_tokens" in PairLoader(pairs, TOK.encode, batch_size=2, shape=shape).arrays_at([0, 1])
    batch = loader.batch_at([0, 1])
    batch.rejected.tokens[0, 0] = 9  # the rejected row's prompt no longer matches the chosen row's
    with pytest.raises(DataError, match="row 0: the sequences of group 0 do not share their prompt"):
        batch.shared_prefix_arrays(4, 4, 0)
    with pytest.raises(DataError, match="row 0: a prompt of 3 tokens exceeds the 2 slots"):
        loader.batch_at([0, 1]).shared_prefix_arrays(2, 4, 0)
