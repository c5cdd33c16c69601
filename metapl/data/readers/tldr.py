"""Reddit TL;DR summarisation: OpenAI's human comparisons and filtered posts, and XSum as the OOD test set.

Sources (https://github.com/openai/summarize-from-feedback, README "Human feedback data"):

- comparisons: `comparisons/*.json` (`batch3.json` ... `batch22.json`, `batch0_cnndm.json`, `cnndm0.json`,
  `cnndm2.json`, `edit_b2_eval_test.json`), JSON Lines of {"info": {"id", "post", "title", "subreddit"},
  "summaries": [{"text", "policy", "note"}, {...}], "choice": 0 or 1 (the preferred summary), "worker",
  "batch", "split": "train" | "valid1" | "valid2", "extra": {"confidence"}}. CNN/DM records have
  info {"id", "article", "title", "site"} instead: they are not Reddit posts and are counted as filtered.
- posts: `tldr_3_filtered/{train,valid,test}.jsonl`, JSON Lines of {"id", "subreddit", "title", "post",
  "summary"}.
- XSum, https://huggingface.co/datasets/EdinburghNLP/xsum: {"document", "summary", "id"} rows, as the Hub's
  Parquet files (`default/test/0000.parquet`, `data/test-00000-of-00001.parquet`, ...) or JSON Lines exports.

Prompts use the template of the paper's code (`tldr_task` in summarize_from_feedback/utils/experiment_helpers.py):

    SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:

with the SUBREDDIT / TITLE lines left out when there are none (XSum: "POST: {document}\\n\\nTL;DR:"). Texts are
kept verbatim: comparison summaries start with a space, tldr_3_filtered summaries do not.
Domains: the subreddit for TL;DR, "xsum" for XSum.
"""

from __future__ import annotations

from pathlib import Path

from metapl.data.readers._common import (
    Filtered, ImportResult, collect, field_prefix, find_files, in_split, integer, is_parquet, iter_json_records,
    iter_parquet_rows, mapping, read_json_files, sub_object, text,
)
from metapl.data.schemas import DataError, PreferencePair, PromptExample, Where

COMPARISON_SPLITS = ("train", "valid1", "valid2")
POST_SPLITS = ("train", "valid", "test")
XSUM_SPLITS = ("train", "validation", "test")
XSUM_DOMAIN = "xsum"


def tldr_prompt(post: str, title: str | None = None, subreddit: str | None = None) -> str:
    """The TL;DR prompt (module doc); the SUBREDDIT and TITLE lines are left out when None (an empty title
    still gets its line, as in the paper's format string)."""
    head = (f"SUBREDDIT: r/{subreddit}\n\n" if subreddit is not None else "") + (
        f"TITLE: {title}\n\n" if title is not None else "")
    return f"{head}POST: {post}\n\nTL;DR:"


def read_tldr_comparisons(
    path: str | Path,
    *,
    split: str | None = None,
    skip_invalid: bool = False,
) -> ImportResult:
    """Read the human comparisons as PreferencePairs (chosen = summaries[choice]).

    path: the downloaded data set directory (containing `comparisons/`), the `comparisons/` directory itself,
        or one batch file.
    split: keep only records whose `split` is this ("train", "valid1" or "valid2"); the rest are counted in
        `result.filtered`. None keeps every split.
    """
    if split is not None and split not in COMPARISON_SPLITS:
        raise ValueError(f"split must be None or one of {COMPARISON_SPLITS}, got {split!r}")
    path = Path(path)
    root = path / "comparisons" if (path / "comparisons").is_dir() else path
    files = find_files(root, ["*.json"])

    def convert(obj, where: Where, _file: Path):
        out = _comparison(obj, where)
        if isinstance(out, Filtered):
            return out
        pair, record_split = out
        return pair if split in (None, record_split) else Filtered(f"split is not {split!r}")

    return read_json_files(path, files, convert, skip_invalid=skip_invalid)


def _comparison(obj, where: Where):
    obj = mapping(obj, where, "a comparison")
    info = sub_object(obj, "info", where)
    if "post" not in info and "article" in info:
        return Filtered("CNN/DM article, not a Reddit post")
    with field_prefix("info"):
        subreddit, post = text(info, "subreddit", where), text(info, "post", where)
        title = text(info, "title", where, allow_empty=True)
    summaries = obj.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        got = f"a list of {len(summaries)}" if isinstance(summaries, list) else type(summaries).__name__
        raise where.error(f"expected a list of 2 summaries, got {got}", "summaries")
    texts = []
    for i, summary in enumerate(summaries):
        with field_prefix(f"summaries[{i}]"):
            texts.append(text(mapping(summary, where, "a summary"), "text", where))
    if texts[0] == texts[1]:
        raise where.error("summaries[0].text and summaries[1].text are identical", "summaries")
    choice = integer(obj, "choice", where)
    if choice not in (0, 1):
        raise where.error(f"must be 0 or 1 (the preferred summary), got {choice}", "choice")
    record_split = text(obj, "split", where)
    pair = PreferencePair.from_dict({"prompt": tldr_prompt(post, title, subreddit), "chosen": texts[choice],
                                     "rejected": texts[1 - choice], "domain": subreddit}, where)
    return pair, record_split


def read_tldr_posts(
    path: str | Path,
    *,
    split: str = "train",
    skip_invalid: bool = False,
) -> ImportResult:
    """Read filtered TL;DR posts as PromptExamples (reference = the author's TL;DR summary).

    path: the `tldr_3_filtered/` directory (or a directory above it) or one `<split>.jsonl` file.
    split: which `<split>.jsonl` to read from a directory: "train", "valid" or "test".
    """
    if split not in POST_SPLITS:
        raise ValueError(f"split must be one of {POST_SPLITS}, got {split!r}")
    files = find_files(path, [f"{split}.jsonl"])

    def convert(obj, where: Where, _file: Path) -> PromptExample:
        obj = mapping(obj, where, "a TL;DR post")
        subreddit, post = text(obj, "subreddit", where), text(obj, "post", where)
        title = text(obj, "title", where, allow_empty=True)
        return PromptExample(tldr_prompt(post, title, subreddit), subreddit, text(obj, "summary", where))

    return read_json_files(path, files, convert, skip_invalid=skip_invalid)


def read_xsum(
    path: str | Path,
    *,
    split: str = "test",
    skip_invalid: bool = False,
) -> ImportResult:
    """Read XSum articles as PromptExamples (prompt = `tldr_prompt(document)`, reference = summary, domain "xsum").

    path: one Parquet or JSON Lines file, or a directory (e.g. a Hub download) whose files are chosen by `split`:
        a directory named after the split or a file name containing it as a word. Parquet rows are numbered
        from 1 in error messages, like lines.
    """
    if split not in XSUM_SPLITS:
        raise ValueError(f"split must be one of {XSUM_SPLITS}, got {split!r}")
    path = Path(path)
    files = find_files(path, ["*.parquet", "*.jsonl", "*.json"])
    if path.is_dir():
        files = [f for f in files if in_split(f, path, split)]
        if not files:
            raise DataError(f"no {split} files under this directory", source=str(path))

    def convert(obj, where: Where) -> PromptExample:
        obj = mapping(obj, where, "an XSum article")
        document, summary = text(obj, "document", where), text(obj, "summary", where)
        return PromptExample(tldr_prompt(document), XSUM_DOMAIN, summary)

    result = ImportResult(records=[], source=str(path))
    for file in files:
        rows = iter_parquet_rows(file, ["document", "summary"]) if is_parquet(file) else iter_json_records(file)
        collect(result, file, rows, convert, skip_invalid=skip_invalid)
    return result
