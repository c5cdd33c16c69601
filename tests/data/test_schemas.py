"""Record schemas and the JSONL reader: valid records round-trip, every kind of bad input is named."""

import json

import pytest

from metapl.data import (
    DataError, PreferencePair, PreferenceTree, PromptExample, ScoredSample, Where, read_jsonl, write_jsonl,
)

PAIR = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "domain": "chat"}
TREE = {
    "prompt": "Tell a story", "domain": "stories",
    "nodes": [{"parent": -1, "text": "Once"}, {"parent": 0, "text": " upon a time"},
              {"parent": 0, "text": " there was"}, {"parent": -1, "text": "A long"}],
    "comparisons": [{"chosen": 1, "rejected": 2, "shared_prefix": 1}, {"chosen": 3, "rejected": 1, "shared_prefix": 0,
                                                                        "gold_margin": 0.5}],
}


@pytest.mark.parametrize("cls, obj", [
    (PreferencePair, dict(PAIR, gold_margin=1.5)),
    (PreferencePair, PAIR),
    (PromptExample, {"prompt": "Say hi", "domain": "chat", "reference": "Hi"}),
    (ScoredSample, {"prompt": "p", "response": "r", "reward": -0.25, "domain": "d", "policy": "smollm2-135m"}),
    (PreferenceTree, TREE),
])
def test_records_round_trip(cls, obj):
    record = cls.from_dict(obj)
    assert record.to_dict() == obj
    assert cls.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_tree_paths_and_responses():
    tree = PreferenceTree.from_dict(TREE)
    assert tree.leaves() == [1, 2, 3]
    assert tree.response(1) == "Once upon a time" and tree.response(2) == "Once there was"
    assert tree.path(2) == [0, 2]


@pytest.mark.parametrize("obj, field, words", [
    ({k: v for k, v in PAIR.items() if k != "rejected"}, "rejected", "missing"),
    (dict(PAIR, prompt=3), "prompt", "expected a string, got int"),
    (dict(PAIR, prompt="   "), "prompt", "is empty"),
    (dict(PAIR, rejected="Hi!"), "chosen", "identical"),
    (dict(PAIR, gold_margin=float("nan")), "gold_margin", "finite"),
    (dict(PAIR, gold_margin=float("inf")), "gold_margin", "finite"),
    (dict(PAIR, gold_margin="1"), "gold_margin", "expected a number"),
    (dict(PAIR, extra=1), None, "unknown field(s) 'extra'"),
])
def test_bad_pairs_name_file_line_and_field(obj, field, words):
    with pytest.raises(DataError) as e:
        PreferencePair.from_dict(obj, Where("pairs.jsonl", 7))
    assert str(e.value).startswith("pairs.jsonl:7: ")
    assert e.value.field == field and words in str(e.value)


@pytest.mark.parametrize("change, words", [
    ({"nodes": [{"parent": 1, "text": "x"}, {"parent": -1, "text": "y"}]}, "parent must be -1 or an earlier node"),
    ({"comparisons": [{"chosen": 0, "rejected": 1, "shared_prefix": 0}]}, "chosen=0 is not a leaf"),
    ({"comparisons": [{"chosen": 1, "rejected": 2, "shared_prefix": 0}]}, "the leaves share 1 segments"),
    ({"nodes": []}, "non-empty list"),
])
def test_bad_trees(change, words):
    with pytest.raises(DataError, match="field 'nodes'|field 'comparisons'") as e:
        PreferenceTree.from_dict(dict(TREE, **change), Where("trees.jsonl", 2))
    assert words in str(e.value)


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_reader_reports_each_bad_line(tmp_path):
    good = json.dumps(PAIR).encode()
    cases = {
        b'{"prompt": "x", ': "malformed JSON",
        b"[1, 2]": "expected a JSON object",
        json.dumps(dict(PAIR, chosen="")).encode(): "field 'chosen': is empty",
        b'{"prompt": "caf\xe9"}': "not valid UTF-8",
        json.dumps(dict(PAIR, domain="elsewhere")).encode(): "unknown domain 'elsewhere'",
    }
    for i, (bad, words) in enumerate(cases.items()):
        path = _write(tmp_path / f"bad{i}.jsonl", [good, b"", bad, good])
        with pytest.raises(DataError) as e:
            read_jsonl(path, PreferencePair, domains=["chat"])
        assert str(e.value).startswith(f"{path}:3: ") and words in str(e.value), str(e.value)
        result = read_jsonl(path, PreferencePair, skip_invalid=True, domains=["chat"])
        assert len(result.records) == 2 and [line for line, _ in result.skipped] == [3]
        assert "2 records, 1 skipped" in result.summary()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl", PreferencePair)


def test_write_then_read(tmp_path):
    pairs = [PreferencePair.from_dict(PAIR), PreferencePair("ü", "a", "b", "x", gold_margin=0.0)]
    assert write_jsonl(tmp_path / "out" / "p.jsonl", pairs) == 2
    assert read_jsonl(tmp_path / "out" / "p.jsonl", PreferencePair).records == pairs
