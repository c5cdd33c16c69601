"""Preference data: record schemas, readers, batching, episodes and the embedded benchmarks."""

from metapl.data.records import ReadResult, check_domain, read_jsonl, write_jsonl
from metapl.data.schemas import (
    DataError,
    LeafComparison,
    PreferencePair,
    PreferenceTree,
    PromptExample,
    ScoredSample,
    TreeNode,
    Where,
)

__all__ = [
    "DataError", "LeafComparison", "PreferencePair", "PreferenceTree", "PromptExample", "ReadResult",
    "ScoredSample", "TreeNode", "Where", "check_domain", "read_jsonl", "write_jsonl",
]
