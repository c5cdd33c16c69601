"""Amazon Reviews 2023 (McAuley Lab), https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023
(documentation: https://amazon-reviews-2023.github.io/)

Source format: one JSON Lines file of user reviews per category, `raw/review_categories/<Category>.jsonl` on the
Hub (`<Category>.jsonl.gz` from the lab's server), e.g. `All_Beauty.jsonl`, with records {"rating": 1.0-5.0,
"title", "text", "images": [{"small_image_url", ...}], "asin", "parent_asin", "user_id", "timestamp" (ms),
"helpful_vote", "verified_purchase"}. Item metadata files (`meta_<Category>.jsonl`) are not read.

Mappings (domain = the category, from the file name; texts verbatim, HTML such as "<br />" included):

- `read_amazon_reviews` -> PromptExample for controlled generation: prompt = the review text up to the end of
  its `prompt_words`-th word ("<br />" counts as a space), reference = the whole text. Reviews of at most
  `prompt_words` words have nothing to continue and are counted as filtered.
- `read_amazon_pairs` -> PreferencePair, a *derived* preference (no human compared the two texts): two reviews
  of the same product (`parent_asin`) whose ratings differ by at least `min_rating_gap`; chosen = the
  higher-rated review's text, rejected = the lower-rated one's; prompt = `pair_prompt` with {category} (spaces
  for underscores) and {parent_asin} filled in. Each review is used at most once. Pairing is deterministic:
  a product's reviews are shuffled by a generator seeded with (seed, category, parent_asin), then each review,
  in that order, is paired with the first later unpaired review whose rating differs enough. Reviews left
  without a partner are counted as filtered.
"""

from __future__ import annotations

import dataclasses
import random
import re
from itertools import islice
from pathlib import Path
from typing import Sequence

from metapl.data.readers._common import (
    Filtered, ImportResult, find_files, mapping, number, read_json_files, strip_suffixes, text,
)
from metapl.data.schemas import DataError, PreferencePair, PromptExample, Where

_WORD = re.compile(r"(?:(?!<br\s*/?>)\S)+", re.IGNORECASE)  # a run of non-space, "<br />" counting as a space
PAIR_PROMPT = 'Write a customer review of a product from the Amazon category "{category}".\n\nReview:'


@dataclasses.dataclass(frozen=True)
class _Review:
    rating: float
    text: str
    parent_asin: str


def category_of(file: Path) -> str:
    """"raw/review_categories/All_Beauty.jsonl" -> "All_Beauty"."""
    return strip_suffixes(file.name, (".jsonl.gz", ".jsonl"))


def read_amazon_reviews(
    path: str | Path,
    *,
    prompt_words: int = 8,
    categories: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> ImportResult:
    """Read reviews as PromptExamples (opening words -> whole review), from a category file or a directory.

    categories: read only these categories' files (default: every `<Category>.jsonl[.gz]` found).
    """
    if prompt_words < 1:
        raise ValueError(f"prompt_words must be >= 1, got {prompt_words}")

    def convert(obj, where: Where, file: Path):
        review = _review(obj, where)
        word_ends = [m.end() for m in islice(_WORD.finditer(review.text), prompt_words + 1)]
        if len(word_ends) <= prompt_words:
            return Filtered(f"review of at most {prompt_words} words")
        return PromptExample(review.text[:word_ends[prompt_words - 1]], category_of(file), review.text)

    return read_json_files(path, _review_files(path, categories), convert, skip_invalid=skip_invalid)


def read_amazon_pairs(
    path: str | Path,
    *,
    seed: int = 0,
    min_rating_gap: float = 1.0,
    pair_prompt: str = PAIR_PROMPT,
    categories: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> ImportResult:
    """Derive PreferencePairs from pairs of reviews of the same product with different ratings (module doc)."""
    if not min_rating_gap > 0:
        raise ValueError(f"min_rating_gap must be > 0, got {min_rating_gap}")
    result = read_json_files(path, _review_files(path, categories),
                             lambda obj, where, file: (category_of(file), _review(obj, where)),
                             skip_invalid=skip_invalid)
    products: dict[tuple[str, str], list[_Review]] = {}
    for category, review in result.records:
        products.setdefault((category, review.parent_asin), []).append(review)
    result.records = []
    for (category, asin), reviews in products.items():
        random.Random(f"{seed}:{category}:{asin}").shuffle(reviews)
        prompt = pair_prompt.format(category=category.replace("_", " "), parent_asin=asin)
        while reviews:
            first = reviews.pop(0)
            j = next((j for j, r in enumerate(reviews) if abs(first.rating - r.rating) >= min_rating_gap), None)
            if j is None:
                result.count_filtered(f"review without a partner rated >= {min_rating_gap:g} apart")
                continue
            second = reviews.pop(j)
            high, low = (first, second) if first.rating > second.rating else (second, first)
            if high.text == low.text:
                result.count_filtered("identical review texts", 2)
                continue
            result.records.append(PreferencePair(prompt, high.text, low.text, category))
    return result


def _review_files(path: str | Path, categories: Sequence[str] | None) -> list[Path]:
    files = find_files(path, ["*.jsonl"], exclude=["meta_*"])
    if categories is None:
        return files
    missing = sorted(set(categories) - {category_of(f) for f in files})
    if missing:
        raise DataError(f"no review file for category(ies) {', '.join(missing)}", source=str(path))
    return [f for f in files if category_of(f) in categories]


def _review(obj, where: Where) -> _Review:
    obj = mapping(obj, where, "an Amazon review")
    rating = number(obj, "rating", where)
    if not 1 <= rating <= 5:
        raise where.error(f"must be between 1 and 5, got {rating:g}", "rating")
    return _Review(rating, text(obj, "text", where), text(obj, "parent_asin", where))
