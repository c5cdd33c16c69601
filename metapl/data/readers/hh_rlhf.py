"""Anthropic HH-RLHF, https://huggingface.co/datasets/Anthropic/hh-rlhf (also github.com/anthropics/hh-rlhf)

Source format: subset directories `harmless-base/`, `helpful-base/`, `helpful-online/`,
`helpful-rejection-sampled/`, each with `train.jsonl.gz` and `test.jsonl.gz`: gzip-compressed JSON Lines of
{"chosen": dialogue, "rejected": dialogue}, where a dialogue is the whole transcript
"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: ...". (`red-team-attempts/` holds
transcripts, not preferences, and has no train/test files, so it is never read.)

Mapping: prompt = the dialogue up to and including its last "\\n\\nAssistant:", which chosen and rejected
must share; chosen / rejected = the two final assistant turns (verbatim, so they start with the space that
follows "Assistant:"); domain = the subset directory's name. Invalid: a dialogue with no assistant turn,
chosen identical to rejected, dialogues that differ before the final assistant turn, an empty final turn.
The real files contain a few such records (harmless-base/test.jsonl.gz: 9 of 2312), so reading them whole
needs skip_invalid=True.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from metapl.data.readers._common import ImportResult, find_files, mapping, read_json_files, text
from metapl.data.schemas import DataError, PreferencePair, Where

SPLITS = ("train", "test")
SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
ASSISTANT = "\n\nAssistant:"


def read_hh_rlhf(
    path: str | Path,
    *,
    split: str = "train",
    subsets: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> ImportResult:
    """Read HH-RLHF preference pairs from the data set's root directory, a subset directory, or one file.

    split: which `<split>.jsonl.gz` (or `.jsonl`) to read from a directory (ignored when `path` is a file).
    subsets: read only these subset directories (default: every subset found).
    The domain of a pair is the name of the directory its file is in.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = find_files(path, [f"{split}.jsonl"])
    if subsets is not None:
        missing = sorted(set(subsets) - {f.parent.name for f in files})
        if missing:
            raise DataError(f"no {split} file for subset(s) {', '.join(missing)}", source=str(path))
        files = [f for f in files if f.parent.name in subsets]
    return read_json_files(path, files, lambda obj, where, file: to_pair(obj, where, file.parent.name),
                           skip_invalid=skip_invalid)


def to_pair(obj, where: Where, domain: str) -> PreferencePair:
    """One HH-RLHF record {"chosen": dialogue, "rejected": dialogue} -> PreferencePair (see the module doc)."""
    obj = mapping(obj, where, "an HH-RLHF record")
    chosen = text(obj, "chosen", where, allow_empty=True)
    rejected = text(obj, "rejected", where, allow_empty=True)
    if chosen == rejected:
        raise where.error("is the same dialogue as 'rejected' (a pair needs two different responses)", "chosen")
    prompt, chosen_turn = _split_last_turn(chosen, "chosen", where)
    rejected_prompt, rejected_turn = _split_last_turn(rejected, "rejected", where)
    if rejected_prompt != prompt:
        raise where.error(f"does not share the dialogue of 'chosen' up to the last {ASSISTANT!r}", "rejected")
    return PreferencePair.from_dict(
        {"prompt": prompt, "chosen": chosen_turn, "rejected": rejected_turn, "domain": domain}, where)


def _split_last_turn(dialogue: str, field: str, where: Where) -> tuple[str, str]:
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise where.error(f"has no {ASSISTANT!r} turn", field)
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:]
