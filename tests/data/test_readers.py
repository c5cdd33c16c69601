"""The public data set readers, on hand-written fixtures laid out as the data sets are downloaded
(tests/data/fixtures/README.md), and the generic importer on JSONL and Parquet."""

import contextlib
import gzip
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metapl.data import DataError, PreferencePair, PromptExample, ReadResult, ScoredSample
from metapl.data.readers import (
    ImportResult, import_table, read_amazon_pairs, read_amazon_reviews, read_hh_rlhf, read_shp,
    read_tldr_comparisons, read_tldr_posts, read_xsum, tldr_prompt,
)
from metapl.data.readers.shp import subreddit_of

FIXTURES = Path(__file__).parent / "fixtures"
BAD = FIXTURES / "bad"


@contextlib.contextmanager
def raises_at(file: Path, line: int, field: str | None, match: str):
    """Expect a DataError naming this file, line and field, with `match` in its message."""
    with pytest.raises(DataError) as info:
        yield info
    e = info.value
    assert (e.source, e.line, e.field) == (str(file), line, field), str(e)
    assert match in e.message, str(e)
    assert str(e).startswith(f"{file}:{line}: " + (f"field {field!r}: " if field else "")), str(e)


# --------------------------------------------------------------------------------------------- SHP

def test_shp_train_split_from_the_root_directory():
    result = read_shp(FIXTURES / "shp")
    assert isinstance(result, ReadResult) and isinstance(result, ImportResult)
    assert result.files == [str(FIXTURES / "shp/askculinary/train.json"), str(FIXTURES / "shp/legaladvice/train.json")]
    assert result.skipped == [] and result.filtered == {}
    assert [p.domain for p in result.records] == ["askculinary"] * 3 + ["legaladvice"]
    assert result.records[0] == PreferencePair(
        prompt="What's the best way to separate raspberry seeds? Pulling them apart with tweezers takes forever: "
               "https://i.imgur.com/example.jpg",
        chosen="Try a pectinase enzyme soak overnight; it breaks down the tissue holding the drupelets together.",
        rejected="Freeze them first, then rub them through a fine sieve.",
        domain="askculinary")
    # labels = 0: B is the chosen comment
    assert result.records[1].chosen.startswith("You're probably overcooking it.")
    assert result.records[1].rejected == "Stop stirring so much."


@pytest.mark.parametrize("split, domains", [
    ("validation", ["askculinary", "legaladvice"]), ("test", ["askculinary", "legaladvice"]),
])
def test_shp_other_splits(split, domains):
    result = read_shp(FIXTURES / "shp", split=split)
    assert [p.domain for p in result.records] == domains
    assert all(Path(f).name == f"{split}.json" for f in result.files)


def test_shp_one_subreddit_directory_and_one_file():
    assert len(read_shp(FIXTURES / "shp/legaladvice").records) == 1
    assert len(read_shp(FIXTURES / "shp/askculinary/train.json").records) == 3


def test_shp_score_ratio_filter_is_counted_not_dropped():
    result = read_shp(FIXTURES / "shp", min_score_ratio=2.0)
    assert [p.domain for p in result.records] == ["askculinary", "askculinary", "legaladvice"]
    assert result.filtered == {"score_ratio < 2": 1}  # the risotto pair, ratio 1.25
    assert "filtered: 1x score_ratio < 2" in result.summary()


def test_shp_domain_suffix():
    assert subreddit_of("askculinary_train") == "askculinary"
    assert subreddit_of("asksciencefiction_validation") == "asksciencefiction"
    assert subreddit_of("legaladvice") == "legaladvice"


def test_shp_bad_lines():
    bad = BAD / "shp/askculinary/train.json"
    with raises_at(bad, 2, None, "malformed JSON"):
        read_shp(BAD / "shp")
    result = read_shp(BAD / "shp", skip_invalid=True)
    assert len(result.records) == 2
    assert [line for line, _ in result.skipped] == [2, 3, 4, 5, 6, 7]
    reasons = dict(result.skipped)
    assert "field 'labels': must be 1" in reasons[3]
    assert "field 'human_ref_A': is empty" in reasons[4]
    assert "field 'human_ref_A': is identical to 'human_ref_B'" in reasons[5]
    assert "field 'score_ratio': must be finite" in reasons[6]
    assert "not valid UTF-8" in reasons[7]
    assert all(r.startswith(f"{bad}:") for r in reasons.values())


def test_shp_label_contradicting_the_scores(tmp_path):
    record = json.loads((FIXTURES / "shp/askculinary/test.json").read_text())
    record["labels"] = 1  # A preferred, but score_A=8 < score_B=20
    (tmp_path / "test.json").write_text(json.dumps(record) + "\n")
    with raises_at(tmp_path / "test.json", 1, "labels", "says A is preferred"):
        read_shp(tmp_path, split="test")


def test_bad_split_names():
    with pytest.raises(ValueError, match="split"):
        read_shp(FIXTURES / "shp", split="dev")
    with pytest.raises(ValueError, match="split"):
        read_hh_rlhf(FIXTURES / "hh-rlhf", split="validation")
    with pytest.raises(ValueError, match="split"):
        read_tldr_comparisons(FIXTURES / "summarize_from_feedback", split="valid")
    with pytest.raises(ValueError, match="split"):
        read_tldr_posts(FIXTURES / "summarize_from_feedback", split="validation")


def test_missing_path_and_no_matching_files(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        read_shp(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no files named train.json"):
        read_shp(tmp_path)


# ------------------------------------------------------------------------------------------ HH-RLHF

def test_hh_rlhf_train_split_all_subsets():
    result = read_hh_rlhf(FIXTURES / "hh-rlhf")
    assert [p.domain for p in result.records] == [
        "harmless-base", "helpful-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"]
    basil = result.records[1]
    assert basil.prompt == (
        "\n\nHuman: How do I keep basil alive indoors?\n\nAssistant: Give it a sunny windowsill with at least six "
        "hours of light, and water when the top of the soil is dry.\n\nHuman: It keeps wilting anyway."
        "\n\nAssistant:")
    assert basil.chosen == (" Wilting in bright light usually means the roots are cramped or waterlogged. Repot it "
                            "into a bigger container with drainage holes.")
    assert basil.rejected == " Basil is an annual, so it dies eventually."
    assert result.records[2] == PreferencePair(
        "\n\nHuman: What’s a good name for a grey cat?\n\nAssistant:",
        " Some popular choices are Smokey, Ash, Pebble or Earl Grey.", " Cat.", "helpful-base")


def test_hh_rlhf_test_split_subsets_and_single_file():
    result = read_hh_rlhf(FIXTURES / "hh-rlhf", split="test", subsets=["helpful-base", "harmless-base"])
    assert [p.domain for p in result.records] == ["harmless-base", "helpful-base"]
    assert all(f.endswith("test.jsonl.gz") for f in result.files)
    single = read_hh_rlhf(FIXTURES / "hh-rlhf/helpful-online/test.jsonl.gz")
    assert single.records == [PreferencePair(
        "\n\nHuman: How many minutes should I boil an egg for a runny yolk?\n\nAssistant:",
        " About six minutes in boiling water, then straight into cold water to stop the cooking.",
        " Boil it for twenty minutes.", "helpful-online")]
    with pytest.raises(DataError, match="no test file for subset"):
        read_hh_rlhf(FIXTURES / "hh-rlhf", split="test", subsets=["red-team-attempts"])


def test_hh_rlhf_bad_lines():
    bad = BAD / "hh-rlhf/helpful-base/train.jsonl.gz"
    with raises_at(bad, 2, "rejected", "does not share the dialogue of 'chosen'"):
        read_hh_rlhf(BAD / "hh-rlhf")
    result = read_hh_rlhf(BAD / "hh-rlhf", skip_invalid=True)
    assert len(result.records) == 2 and result.filtered == {}
    reasons = dict(result.skipped)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert "field 'chosen': is the same dialogue as 'rejected'" in reasons[3]
    assert "field 'chosen': is empty" in reasons[4]
    assert "field 'rejected': missing" in reasons[5]
    assert "not valid UTF-8" in reasons[6]
    assert "malformed JSON" in reasons[7]
    assert "field 'chosen': has no '\\n\\nAssistant:' turn" in reasons[8]
    assert "7 skipped" in result.summary()


def test_corrupt_gzip_names_the_file(tmp_path):
    good = gzip.decompress((FIXTURES / "hh-rlhf/helpful-base/train.jsonl.gz").read_bytes())
    (tmp_path / "helpful-base").mkdir()
    truncated = tmp_path / "helpful-base/train.jsonl.gz"
    truncated.write_bytes(gzip.compress(good * 50, mtime=0)[:-40])
    with pytest.raises(DataError, match="corrupt gzip stream") as info:
        read_hh_rlhf(tmp_path, skip_invalid=True)
    assert info.value.source == str(truncated)


def test_gzip_is_transparent_for_every_reader(tmp_path):
    # SHP files as users may store them: gzip-compressed, keeping the name the reader looks for.
    (tmp_path / "askculinary").mkdir()
    raw = (FIXTURES / "shp/askculinary/train.json").read_bytes()
    (tmp_path / "askculinary/train.json.gz").write_bytes(gzip.compress(raw))
    assert read_shp(tmp_path).records == read_shp(FIXTURES / "shp/askculinary").records
    # ... and HH-RLHF files decompressed.
    (tmp_path / "helpful-base").mkdir()
    plain = gzip.decompress((FIXTURES / "hh-rlhf/helpful-base/test.jsonl.gz").read_bytes())
    (tmp_path / "helpful-base/test.jsonl").write_bytes(plain)
    assert read_hh_rlhf(tmp_path, split="test").records == read_hh_rlhf(
        FIXTURES / "hh-rlhf/helpful-base", split="test").records


# ------------------------------------------------------------------------------------------- TL;DR

def test_tldr_prompt_template():
    assert tldr_prompt("body", "a title", "cats") == "SUBREDDIT: r/cats\n\nTITLE: a title\n\nPOST: body\n\nTL;DR:"
    assert tldr_prompt("an article") == "POST: an article\n\nTL;DR:"
    assert tldr_prompt("body", "", "cats") == "SUBREDDIT: r/cats\n\nTITLE: \n\nPOST: body\n\nTL;DR:"


def test_tldr_comparisons():
    result = read_tldr_comparisons(FIXTURES / "summarize_from_feedback")
    assert [Path(f).name for f in result.files] == ["batch0_cnndm.json", "batch10.json", "batch3.json"]
    assert result.filtered == {"CNN/DM article, not a Reddit post": 1}
    assert [p.domain for p in result.records] == ["running", "legaladvice", "legaladvice", "relationships"]
    accident = result.records[2]
    assert accident == PreferencePair(
        prompt="SUBREDDIT: r/legaladvice\n\nTITLE: Car accident questions, other party denies speeding\n\nPOST: I had "
               "a minor car accident on Friday. The other driver was speeding and hit my rear door, but he denies "
               "it.\n\nCan I get an investigation going to show how fast he was driving?\n\nTL;DR:",
        chosen=" car accident, other driver hit me and denies speeding. how do I prove it?",
        rejected=" we crashed my car and I am sad.",
        domain="legaladvice")
    assert result.records[3].chosen.startswith(" Friends keep making plans")  # choice = 1


@pytest.mark.parametrize("split, n, other", [("train", 2, 2), ("valid1", 1, 3), ("valid2", 1, 3)])
def test_tldr_comparisons_split(split, n, other):
    result = read_tldr_comparisons(FIXTURES / "summarize_from_feedback/comparisons", split=split)
    assert len(result.records) == n
    assert result.filtered == {f"split is not {split!r}": other, "CNN/DM article, not a Reddit post": 1}


def test_tldr_comparisons_bad_lines():
    bad = BAD / "summarize_from_feedback/comparisons/batch3.json"
    with raises_at(bad, 2, "choice", "must be 0 or 1"):
        read_tldr_comparisons(BAD / "summarize_from_feedback")
    result = read_tldr_comparisons(BAD / "summarize_from_feedback", skip_invalid=True)
    assert [p.chosen for p in result.records] == [" cat knocks things off desk at 5am to wake me. how to stop it?",
                                                  " cats."]
    reasons = dict(result.skipped)
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "field 'summaries': expected a list of 2 summaries, got a list of 1" in reasons[3]
    assert "field 'summaries': summaries[0].text and summaries[1].text are identical" in reasons[4]
    assert "field 'info.post': missing" in reasons[5]
    assert "field 'info': expected a JSON object, got str" in reasons[6]


def test_tldr_posts():
    root = FIXTURES / "summarize_from_feedback"
    train = read_tldr_posts(root)
    assert train.files == [str(root / "tldr_3_filtered/train.jsonl")]
    assert train.records[1] == PromptExample(
        prompt="SUBREDDIT: r/personalfinance\n\nTITLE: Should I pay off my car loan early?\n\nPOST: I have $8k left "
               "on a car loan at 3.9% and $10k in savings. I have no other debt.\n\nWould it be smarter to pay the "
               "loan off now or keep the cash?\n\nTL;DR:",
        domain="personalfinance",
        reference="$8k car loan at 3.9%, $10k savings, no other debt. Pay off the loan or keep the cash?")
    assert [r.domain for r in read_tldr_posts(root, split="valid").records] == ["running"]
    test = read_tldr_posts(root / "tldr_3_filtered/test.jsonl").records
    assert test[0].prompt.startswith("SUBREDDIT: r/AskReddit\n\nTITLE: \n\nPOST: What is a skill")


def test_tldr_posts_bad_lines():
    bad = BAD / "summarize_from_feedback/tldr_3_filtered/train.jsonl"
    with raises_at(bad, 2, "summary", "is empty"):
        read_tldr_posts(bad)
    result = read_tldr_posts(bad, skip_invalid=True)
    assert len(result.records) == 1 and [line for line, _ in result.skipped] == [2, 3]
    assert "field 'subreddit': missing" in result.skipped[1][1]


# -------------------------------------------------------------------------------------------- XSum

XSUM_ROWS = {
    "train": [{"document": "The match ended in a draw.", "summary": "A draw.", "id": "1"}],
    "validation": [{"document": "Prices rose again in May.", "summary": "Inflation rose.", "id": "2"}],
    "test": [{"document": "A new bridge opened on Monday.\nIt cost 12m.", "summary": "A bridge opened.", "id": "3"},
             {"document": "Rain is forecast all week.", "summary": "A wet week ahead.", "id": "4"}],
}


def _write_xsum_parquet(root: Path, layout: str) -> None:
    for split, rows in XSUM_ROWS.items():
        path = root / layout.format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)


def test_xsum_jsonl():
    result = read_xsum(FIXTURES / "xsum")
    assert result.files == [str(FIXTURES / "xsum/test.jsonl")]
    assert [r.domain for r in result.records] == ["xsum", "xsum"]
    assert result.records[1] == PromptExample(
        "POST: Firefighters were called to the depot at about 03:00 on Sunday and found two coaches alight.\nPolice "
        "said they were treating the fire as deliberate and appealed for witnesses.\n\nTL;DR:", "xsum",
        "Two coaches have been destroyed in a suspected arson attack at a bus depot.")
    assert len(read_xsum(FIXTURES / "xsum", split="train").records) == 1


@pytest.mark.parametrize("layout", [
    "default/{split}/0000.parquet",               # the Hub's refs/convert/parquet branch
    "default/xsum-{split}.parquet",               # its older naming
    "data/{split}-00000-of-00001.parquet",        # push_to_hub naming
])
def test_xsum_parquet_layouts(tmp_path, layout):
    _write_xsum_parquet(tmp_path, layout)
    result = read_xsum(tmp_path)
    assert result.records == [PromptExample(tldr_prompt(r["document"]), "xsum", r["summary"])
                              for r in XSUM_ROWS["test"]]
    assert [r.reference for r in read_xsum(tmp_path, split="validation").records] == ["Inflation rose."]


def test_xsum_parquet_bad_rows(tmp_path):
    rows = XSUM_ROWS["test"] + [{"document": "  ", "summary": "Empty.", "id": "5"},
                                {"document": "Fine.", "summary": None, "id": "6"}]
    path = tmp_path / "xsum-test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with raises_at(path, 3, "document", "is empty"):
        read_xsum(path)
    result = read_xsum(path, skip_invalid=True)
    assert len(result.records) == 2 and [row for row, _ in result.skipped] == [3, 4]
    assert "field 'summary': missing" in result.skipped[1][1]


def test_xsum_no_file_for_split(tmp_path):
    _write_xsum_parquet(tmp_path, "data/{split}-00000-of-00001.parquet")
    (tmp_path / "data/validation-00000-of-00001.parquet").unlink()
    with pytest.raises(DataError, match="no validation files"):
        read_xsum(tmp_path, split="validation")


# ------------------------------------------------------------------------------------------ Amazon

AMAZON = FIXTURES / "amazon_reviews_2023"


def test_amazon_prompts():
    result = read_amazon_reviews(AMAZON)
    assert [Path(f).name for f in result.files] == ["All_Beauty.jsonl", "Video_Games.jsonl"]  # meta_ not read
    assert result.filtered == {"review of at most 8 words": 1}  # "Too small."
    assert [r.domain for r in result.records] == ["All_Beauty"] * 5 + ["Video_Games"] * 2
    assert result.records[0] == PromptExample(
        "This moisturizer absorbs quickly and leaves my skin", "All_Beauty",
        "This moisturizer absorbs quickly and leaves my skin soft without any greasy feel. Will buy again.")
    # the prompt is a verbatim prefix of the review
    assert result.records[3].prompt == "Nice nail tips, easy to trim and file,"  # "<br />" is a space
    assert all(r.reference.startswith(r.prompt) and r.reference != r.prompt for r in result.records)
    three = read_amazon_reviews(AMAZON, prompt_words=3, categories=["Video_Games"])
    assert [r.prompt for r in three.records] == ["Great controller, the", "The left stick"]


def test_amazon_pairs_are_derived_deterministically():
    result = read_amazon_pairs(AMAZON)
    ratings = {}
    for f in (AMAZON / "raw/review_categories").glob("*.jsonl"):
        ratings.update({r["text"]: r["rating"] for r in map(json.loads, f.read_text().splitlines())})
    assert [p.domain for p in result.records] == ["All_Beauty", "Video_Games"]
    assert all(ratings[p.chosen] - ratings[p.rejected] >= 1 for p in result.records)
    assert result.records[1] == PreferencePair(
        'Write a customer review of a product from the Amazon category "Video Games".\n\nReview:',
        "Great controller, the battery lasts for days and the buttons feel solid under heavy use.",
        "The left stick started drifting after a month, which makes shooters nearly unplayable.", "Video_Games")
    # the two 4.0 reviews, the lone review and one of the three moisturizer reviews have no partner
    assert result.filtered == {"review without a partner rated >= 1 apart": 4}
    assert read_amazon_pairs(AMAZON).records == result.records  # deterministic
    by_seed = {tuple(read_amazon_pairs(AMAZON, seed=s).records) for s in range(8)}
    assert len(by_seed) > 1  # the seed chooses which moisturizer reviews are paired
    wide = read_amazon_pairs(AMAZON, min_rating_gap=4, pair_prompt="{parent_asin}:")
    assert [(p.prompt, ratings[p.chosen], ratings[p.rejected]) for p in wide.records] == [("B08BBQ29N5:", 5.0, 1.0)]


def test_amazon_bad_lines():
    bad = BAD / "amazon_reviews_2023/raw/review_categories/All_Beauty.jsonl"
    with raises_at(bad, 2, "rating", "must be between 1 and 5"):
        read_amazon_reviews(BAD / "amazon_reviews_2023")
    result = read_amazon_reviews(BAD / "amazon_reviews_2023", skip_invalid=True)
    reasons = dict(result.skipped)
    assert len(result.records) == 2 and sorted(reasons) == [2, 3, 4, 5, 6]
    assert "field 'rating': must be finite, got nan" in reasons[3]
    assert "field 'text': missing" in reasons[4]
    assert "field 'text': expected a string, got int" in reasons[5]
    assert "field 'rating': must be finite, got inf" in reasons[6]
    pairs = read_amazon_pairs(BAD / "amazon_reviews_2023", skip_invalid=True)
    assert len(pairs.records) == 1 and len(pairs.skipped) == 5
    with pytest.raises(DataError, match="no review file for category"):
        read_amazon_reviews(AMAZON, categories=["Books"])


# ----------------------------------------------------------------------------------------- generic

PAIR_COLUMNS = {"prompt": "question", "chosen": "good", "rejected": "bad", "domain": "category"}
ROWS = [
    {"question": "2+2?", "good": "4", "bad": "5", "category": "math", "extra": 1},
    {"question": "Capital of France?", "good": "Paris", "bad": "Lyon", "category": "geo", "extra": 2},
]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generic_jsonl_and_parquet_give_the_same_records(tmp_path):
    expected = [PreferencePair("2+2?", "4", "5", "math"), PreferencePair("Capital of France?", "Paris", "Lyon", "geo")]
    assert import_table(_jsonl(tmp_path / "prefs.jsonl", ROWS), PAIR_COLUMNS).records == expected
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "prefs.parquet")
    result = import_table(tmp_path / "prefs.parquet", PAIR_COLUMNS)
    assert result.records == expected and result.skipped == []
    both = import_table(tmp_path, PAIR_COLUMNS)  # a directory: every JSONL and Parquet file in it
    assert both.records == expected * 2 and len(both.files) == 2


def test_generic_constant_domain_nested_columns_and_other_record_types(tmp_path):
    rows = [{"info": {"q": "Why is the sky blue?"}, "answer": "Rayleigh scattering.", "margin": 1.5}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nested.parquet")
    prompts = import_table(tmp_path / "nested.parquet", {"prompt": "info.q", "reference": "answer"},
                           record_type=PromptExample, domain="science")
    assert prompts.records == [PromptExample("Why is the sky blue?", "science", "Rayleigh scattering.")]
    samples = import_table(_jsonl(tmp_path / "s.jsonl", [{"p": "hi", "r": "hello", "score": 0.5, "m": "sft"}]),
                           {"prompt": "p", "response": "r", "reward": "score", "policy": "m"},
                           record_type=ScoredSample, domain="chat")
    assert samples.records == [ScoredSample("hi", "hello", 0.5, "chat", "sft")]


def test_generic_mapping_mistakes_are_value_errors(tmp_path):
    path = _jsonl(tmp_path / "prefs.jsonl", ROWS)
    with pytest.raises(ValueError, match="unknown PreferencePair field"):
        import_table(path, {**PAIR_COLUMNS, "answer": "good"})
    with pytest.raises(ValueError, match="either as a column"):
        import_table(path, PAIR_COLUMNS, domain="math")
    with pytest.raises(ValueError, match="either as a column"):
        import_table(path, {k: v for k, v in PAIR_COLUMNS.items() if k != "domain"})
    with pytest.raises(ValueError, match=r"required field\(s\) \['rejected'\]"):
        import_table(path, {"prompt": "question", "chosen": "good"}, domain="d")


def test_generic_missing_column_names_file_row_and_column(tmp_path):
    columns = {**PAIR_COLUMNS, "rejected": "worse"}
    jsonl = _jsonl(tmp_path / "prefs.jsonl", ROWS)
    with raises_at(jsonl, 1, "worse", "column missing (mapped to 'rejected')"):
        import_table(jsonl, columns)
    parquet = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    with raises_at(parquet, 1, "worse", "column missing (mapped to 'rejected')"):
        import_table(parquet, columns)
    result = import_table(parquet, columns, skip_invalid=True)
    assert result.records == [] and [row for row, _ in result.skipped] == [1, 2]


BAD_ROWS = [
    ({"question": "  ", "good": "a", "bad": "b", "category": "c"}, "question", "is empty (mapped to 'prompt')"),
    ({"question": "q", "good": "same", "bad": "same", "category": "c"}, "good", "is identical to 'rejected'"),
    ({"question": "q", "good": 3, "bad": "b", "category": "c"}, "good", "expected a string, got int"),
    ({"question": "q", "good": "a", "bad": None, "category": "c"}, "bad", "missing (expected a string)"),
    ({"question": "q", "good": "a", "bad": "b", "category": "c", "margin": math.nan}, "margin", "must be finite"),
    ({"question": "q", "good": "a", "bad": "b", "category": "c", "margin": math.inf}, "margin", "must be finite"),
]


@pytest.mark.parametrize("fmt, row, column, message", [
    (fmt, *case) for fmt in ("jsonl", "parquet") for case in BAD_ROWS
    if fmt == "jsonl" or isinstance(case[0]["good"], str)  # a Parquet column has one type
])
def test_generic_bad_values(tmp_path, fmt, row, column, message):
    rows = [dict(ROWS[0], margin=0.5), dict(row, **({} if "margin" in row else {"margin": 0.5}))]
    path = tmp_path / f"prefs.{fmt}"
    if fmt == "jsonl":
        _jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    columns = {**PAIR_COLUMNS, "gold_margin": "margin"}
    with raises_at(path, 2, column, message):
        import_table(path, columns)
    result = import_table(path, columns, skip_invalid=True)
    assert result.records == [PreferencePair("2+2?", "4", "5", "math", 0.5)] and len(result.skipped) == 1


def test_generic_malformed_and_non_utf8_lines(tmp_path):
    path = tmp_path / "prefs.jsonl.gz"
    lines = [json.dumps(ROWS[0]).encode(), b'{"question": "q", "good": ', json.dumps(ROWS[1]).encode()[:-2] + b'\xff"}']
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    with raises_at(path, 2, None, "malformed JSON"):
        import_table(path, PAIR_COLUMNS)
    result = import_table(path, PAIR_COLUMNS, skip_invalid=True)
    assert len(result.records) == 1 and [line for line, _ in result.skipped] == [2, 3]
    assert "not valid UTF-8" in result.skipped[1][1]


def test_generic_not_a_parquet_file(tmp_path):
    path = tmp_path / "broken.parquet"
    shutil.copy(FIXTURES / "xsum/test.jsonl", path)
    with pytest.raises(DataError, match="not a readable Parquet file") as info:
        import_table(path, PAIR_COLUMNS)
    assert info.value.source == str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_generic_names_the_columns_it_does_not_read(tmp_path, fmt):
    rows = [dict(r, margin=math.nan) for r in ROWS]  # a column the mapping leaves out
    path = tmp_path / f"prefs.{fmt}"
    _jsonl(path, rows) if fmt == "jsonl" else pq.write_table(pa.Table.from_pylist(rows), path)
    result = import_table(path, PAIR_COLUMNS)
    assert result.ignored == {"extra": 2, "margin": 2}
    assert "ignored (not mapped to a field): column 'extra' in 2 row(s), column 'margin' in 2 row(s)" in \
        result.summary()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_generic_reads_an_unmapped_optional_field_from_its_own_column(tmp_path, fmt):
    rows = [dict(ROWS[0], gold_margin=0.5), dict(ROWS[1], gold_margin=None)]
    path = tmp_path / f"prefs.{fmt}"
    _jsonl(path, rows) if fmt == "jsonl" else pq.write_table(pa.Table.from_pylist(rows), path)
    result = import_table(path, PAIR_COLUMNS)
    assert [r.gold_margin for r in result.records] == [0.5, None] and "gold_margin" not in result.ignored
    assert [r.gold_margin for r in import_table(path, PAIR_COLUMNS, optional_by_name=False).records] == [None, None]
    rows[1]["gold_margin"] = math.nan  # read by default, so checked like a mapped one
    _jsonl(path, rows) if fmt == "jsonl" else pq.write_table(pa.Table.from_pylist(rows), path)
    with raises_at(path, 2, "gold_margin", "must be finite"):
        import_table(path, PAIR_COLUMNS)


def test_generic_an_empty_input_is_an_error_naming_it(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="no records: the input is empty") as info:
        import_table(path, PAIR_COLUMNS)
    assert info.value.source == str(path)
    pq.write_table(pa.Table.from_pylist(ROWS).slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no records: the input is empty"):
        import_table(tmp_path / "empty.parquet", PAIR_COLUMNS)
