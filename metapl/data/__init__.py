"""Preference data: record schemas, readers, batching, episodes and the embedded benchmarks.

  records     PreferencePair, PromptExample, ScoredSample, PreferenceTree; read_jsonl, write_jsonl, DataError
  batching    metapl.data.batching: SequenceShape, PairLoader, ShuffledBatches, pack, prompt_arrays
  episodes    metapl.data.episodes: EpisodeConfig, EpisodeSampler (support prompts + query pairs per domain)
  benchmarks  metapl.data.benchmarks: DataSpec and the Benchmark interface runs use, one class per benchmark;
              metapl.data.synthetic (analytic gold reward), metapl.data.sentiment (real text, VADER judge);
              TFDS builds in metapl.data.tfds_builders; CLI `metapl data build|show`
  readers     metapl.data.readers: SHP, HH-RLHF, TL;DR comparisons/posts, XSum, Amazon reviews, your own tables
  corpora     metapl.data.corpora (real texts from installed packages), metapl.data.judges (VADER)
  sampling    metapl.data.sample_sets (scored samples for offline RLHF), metapl.data.trees (preference trees)
  offline     metapl.data.sft_arrays (SFT batches of scored samples), metapl.data.reward_tokens (reward-token
              templates and bins of reward-conditioned SFT)
  srpo        metapl.data.srpo: the six sequences of a pair, the revision prompt, `revise` (generate, then
              revise n times)
"""

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
