"""Readers for public preference data sets, as downloaded, into metapl records.

    read_shp(root, split="train", min_score_ratio=2)       # Stanford Human Preferences -> PreferencePair
    read_hh_rlhf(root, split="train")                       # Anthropic HH-RLHF -> PreferencePair
    read_tldr_comparisons(root, split="train")              # OpenAI summarize-from-feedback -> PreferencePair
    read_tldr_posts(root, split="train")                    # filtered Reddit TL;DR -> PromptExample
    read_xsum(root, split="test")                           # XSum (OOD summarisation) -> PromptExample
    read_amazon_reviews(root, prompt_words=8)               # Amazon Reviews 2023 -> PromptExample
    read_amazon_pairs(root, seed=0)                         # ... -> derived PreferencePair
    import_table(path, {"prompt": "q", "chosen": "a", "rejected": "b", "domain": "cat"})  # your own files

Every reader takes a file or the data set's directory as downloaded (gzip is detected and decompressed) and
returns an `ImportResult`: a `ReadResult` (records, skipped, source) plus `filtered` ({reason: count} for valid
records a reader option left out) and `files`. By default the first invalid record raises `DataError` naming the
file, line and field; with `skip_invalid=True` it is listed in `skipped` as (line, reason) instead.
"""

from metapl.data.readers._common import ImportResult
from metapl.data.readers.amazon import read_amazon_pairs, read_amazon_reviews
from metapl.data.readers.generic import import_table
from metapl.data.readers.hh_rlhf import read_hh_rlhf
from metapl.data.readers.shp import read_shp
from metapl.data.readers.tldr import read_tldr_comparisons, read_tldr_posts, read_xsum, tldr_prompt

__all__ = [
    "ImportResult", "import_table", "read_amazon_pairs", "read_amazon_reviews", "read_hh_rlhf", "read_shp",
    "read_tldr_comparisons", "read_tldr_posts", "read_xsum", "tldr_prompt",
]
