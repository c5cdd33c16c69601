"""Stanford Human Preferences (SHP), https://huggingface.co/datasets/stanfordnlp/SHP

Source format: one directory per subreddit (`askculinary/`, `legaladvice/`, ...), each with `train.json`,
`validation.json` and `test.json` -- JSON Lines despite the name -- whose records have the fields post_id,
domain ("<subreddit>_<split>", e.g. "askculinary_train"), upvote_ratio, history (post title + body),
c_root_id_A/B, created_at_utc_A/B, score_A/B, human_ref_A/B (the two comments), labels (1 if A is preferred,
0 if B is), seconds_difference and score_ratio (preferred score / other score, >= 1).

Mapping: prompt = history; chosen / rejected = human_ref_A / human_ref_B ordered by `labels`;
domain = the subreddit (the `domain` field without its "_<split>" suffix). Nothing else is altered.
"""

from __future__ import annotations

from pathlib import Path

from metapl.data.readers._common import (
    Filtered, ImportResult, find_files, integer, mapping, number, read_json_files, text,
)
from metapl.data.schemas import PreferencePair, Where

SPLITS = ("train", "validation", "test")
_SPLIT_SUFFIXES = ("train", "validation", "valid", "val", "dev", "test")


def read_shp(
    path: str | Path,
    *,
    split: str = "train",
    min_score_ratio: float | None = None,
    skip_invalid: bool = False,
) -> ImportResult:
    """Read SHP preference pairs from the data set's root directory, one subreddit's directory, or one file.

    split: which `<split>.json` to read from a directory (ignored when `path` is a file).
    min_score_ratio: keep only pairs whose `score_ratio` is at least this (the SHP authors suggest 2 for
        training); the others are counted in `result.filtered`, not dropped silently.
    skip_invalid: record invalid lines in `result.skipped` instead of raising DataError at the first.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = find_files(path, [f"{split}.json"])

    def convert(obj, where: Where, _file: Path):
        pair, ratio = _pair(obj, where)
        if min_score_ratio is not None and ratio < min_score_ratio:
            return Filtered(f"score_ratio < {min_score_ratio:g}")
        return pair

    return read_json_files(path, files, convert, skip_invalid=skip_invalid)


def subreddit_of(domain: str) -> str:
    """"askculinary_train" -> "askculinary" (a domain without a split suffix is returned as it is)."""
    head, _, tail = domain.rpartition("_")
    return head if head and tail in _SPLIT_SUFFIXES else domain


def _pair(obj, where: Where) -> tuple[PreferencePair, float]:
    obj = mapping(obj, where, "an SHP record")
    label = integer(obj, "labels", where)
    if label not in (0, 1):
        raise where.error(f"must be 1 (A preferred) or 0 (B preferred), got {label}", "labels")
    ref_a, ref_b = text(obj, "human_ref_A", where), text(obj, "human_ref_B", where)
    if ref_a == ref_b:
        raise where.error("is identical to 'human_ref_B' (a pair needs two different comments)", "human_ref_A")
    score_a, score_b = integer(obj, "score_A", where), integer(obj, "score_B", where)
    if (score_a - score_b) * (1 if label == 1 else -1) < 0:
        raise where.error(f"says {'A' if label == 1 else 'B'} is preferred, but score_A={score_a} and "
                          f"score_B={score_b}", "labels")
    ratio = number(obj, "score_ratio", where)
    chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
    pair = PreferencePair.from_dict({
        "prompt": text(obj, "history", where),
        "chosen": chosen,
        "rejected": rejected,
        "domain": subreddit_of(text(obj, "domain", where)),
    }, where)
    return pair, ratio
