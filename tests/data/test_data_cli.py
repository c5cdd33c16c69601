"""`metapl data build/show` on synthetic_domains: runs in seconds, and bad requests exit with status 2."""

import json

import numpy as np
import pytest

from metapl.cli import main
from metapl.data.tfds_builders import load_records, read_metadata, synthetic_from_metadata


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("datasets")
    args = ["data", "build", "synthetic_domains", "--data-dir", str(data_dir), "--num-domains", "26",
            "--num-heldout", "20", "--pairs-per-domain", "6", "--prompts-per-domain", "3"]
    assert main(args) == 0
    return data_dir


def test_build_writes_both_configs_with_the_fixed_split(built, capsys):
    pairs = built / "synthetic_domains" / "pairs" / "1.0.0"
    meta = read_metadata(pairs)
    assert meta["train_domains"] == [f"syn{i:03d}" for i in range(6)]
    assert meta["heldout_domains"] == [f"syn{i:03d}" for i in range(6, 26)]
    train, heldout = load_records(pairs, "train"), load_records(pairs, "heldout")
    assert len(train) == 36 and len(heldout) == 120
    assert {p.domain for p in heldout} == set(meta["heldout_domains"])
    bench = synthetic_from_metadata(meta)  # the stored records are the benchmark's (margins stored in float32)
    key = lambda p: (p.domain, p.prompt, p.chosen, p.rejected)  # noqa: E731
    want = sorted([p for d in bench.train_domains for p in bench.pairs(d)], key=key)
    assert [key(p) for p in sorted(train, key=key)] == [key(p) for p in want]
    np.testing.assert_allclose([p.gold_margin for p in sorted(train, key=key)], [p.gold_margin for p in want],
                               rtol=1e-6)
    prompts = load_records(built / "synthetic_domains" / "prompts" / "1.0.0", "heldout")
    assert len(prompts) == 60 and all(p.reference is None for p in prompts)


def test_show_prints_counts_examples_and_gold_rewards(built, capsys):
    assert main(["data", "show", "synthetic_domains", "--data-dir", str(built), "--split", "heldout",
                 "--domain", "syn010", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "120 records in 20 domains" in out and "syn010: 6" in out
    assert out.count("domain: syn010") == 2 and out.count("gold reward") == 4


@pytest.mark.parametrize("args, words", [
    (["show", "synthetic_domains", "--domain", "syn999"], "unknown domain 'syn999'"),
    (["build", "synthetic_domains", "--num-domains", "5", "--num-heldout", "5"], "num_heldout must be in"),
    (["build", "synthetic_domains", "--num-domains", "26", "--num-heldout", "20", "--pairs-per-domain", "6",
      "--prompts-per-domain", "3", "--shift", "0.9"], "holds a build with other settings (shift: 0.5 -> 0.9)"),
])
def test_bad_requests_exit_2_with_one_line(built, capsys, args, words):
    assert main(["data", *args[:2], "--data-dir", str(built), *args[2:]]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_show_before_build(tmp_path, capsys):
    assert main(["data", "show", "synthetic_domains", "--data-dir", str(tmp_path)]) == 2
    assert "run `metapl data build synthetic_domains` first" in capsys.readouterr().err



GOOD = '{"q": "Say hi", "good": "Hi!", "bad": "No.", "cat": "chat", "gm": 0.5}'
MAPS = ["--map", "prompt=q", "--map", "chosen=good", "--map", "rejected=bad", "--map", "domain=cat",
        "--map", "gold_margin=gm"]


@pytest.mark.parametrize("line, words", [
    (b'{"q": "Say hi", "good": "Hi!", ', "malformed JSON"),
    (b'{"q": "Say hi", "good": "Hi!", "bad": "Hi!", "cat": "chat", "gm": 0}', "field 'good': is identical"),
    (b'{"q": " ", "good": "Hi!", "bad": "No.", "cat": "chat", "gm": 0}', "field 'q': is empty (mapped to 'prompt')"),
    (b'{"q": "Say hi", "good": "Hi!", "cat": "chat", "gm": 0}', "field 'bad': column missing (mapped to 'rejected')"),
    (b'{"q": "Say hi", "good": 3, "bad": "No.", "cat": "chat", "gm": 0}', "field 'good': expected a string, got int"),
    (b'{"q": "Say hi", "good": "Hi!", "bad": "No.", "cat": "chat", "gm": NaN}', "field 'gm': must be finite"),
    (b'{"q": "caf\xe9", "good": "Hi!", "bad": "No.", "cat": "chat", "gm": 0}', "not valid UTF-8"),
])
def test_import_names_file_line_and_field_and_exits_2(tmp_path, capsys, line, words):
    path = tmp_path / "mine.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + line + b"\n" + GOOD.encode() + b"\n")
    args = ["data", "import", str(path), *MAPS, "--out", str(tmp_path / "out.jsonl")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: " in err and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.jsonl").exists()
    # With --skip-invalid the good lines are written and the bad one is counted and stored with its reason.
    assert main(args + ["--skip-invalid"]) == 0
    assert "2 records, 1 skipped" in capsys.readouterr().out
    report = json.loads((tmp_path / "out.jsonl.skipped.json").read_text())
    assert report["skipped"] == 1 and report["reasons"][0]["line"] == 2 and words in report["reasons"][0]["reason"]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_import_with_a_constant_domain_round_trips(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "Once upon a time"}\n')
    assert main(["data", "import", str(path), "--kind", "prompts", "--map", "prompt=text", "--domain", "stories",
                 "--out", str(tmp_path / "o.jsonl")]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text()) == {"prompt": "Once upon a time", "domain": "stories"}


def test_import_says_what_it_leaves_out_and_refuses_an_empty_input(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"q": "Say hi", "good": "Hi!", "bad": "No.", "cat": "chat", "gm": 0.5, "margin": NaN}\n')
    out = tmp_path / "out.jsonl"
    assert main(["data", "import", str(path), *MAPS[:-2], "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "column 'gm' in 1 row(s), column 'margin' in 1 row(s)" in captured.out
    assert "column(s) gm, margin were not read" in captured.err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["data", "import", str(empty), *MAPS, "--out", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no records: the input is empty" in err and err.count("\n") == 1, err
    assert not (tmp_path / "none.jsonl").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": " ", "good": "Hi!", "bad": "No.", "cat": "chat", "gm": 0}\n')
    assert main(["data", "import", str(bad), *MAPS, "--skip-invalid", "--out", str(tmp_path / "none.jsonl")]) == 2
    assert "no valid records (1 skipped; first:" in capsys.readouterr().err
    assert not (tmp_path / "none.jsonl").exists()


def test_build_fingerprint_names_the_records(built, tmp_path):
    from metapl.data import DataError
    from metapl.data.tfds_builders import build_fingerprint

    args = ["data", "build", "synthetic_domains", "--num-domains", "26", "--num-heldout", "20",
            "--pairs-per-domain", "6", "--prompts-per-domain", "3"]
    assert main(args + ["--data-dir", str(tmp_path / "again")]) == 0
    assert main(args + ["--data-dir", str(tmp_path / "other"), "--seed", "1"]) == 0
    first = build_fingerprint(built, "synthetic_domains")
    assert len(first) == 64 and first == build_fingerprint(tmp_path / "again", "synthetic_domains")
    assert first != build_fingerprint(tmp_path / "other", "synthetic_domains")
    with pytest.raises(DataError, match="no synthetic_domains build"):
        build_fingerprint(tmp_path / "none", "synthetic_domains")
