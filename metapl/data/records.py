"""Reading and writing record files (JSON Lines), with validation and an account of anything skipped.

    result = read_jsonl("pairs.jsonl", PreferencePair)                     # raises DataError on a bad line
    result = read_jsonl("pairs.jsonl", PreferencePair, skip_invalid=True)  # keeps going, counts the skips
    result.records, result.skipped                                         # skipped: [(line, reason), ...]

Errors name the file, the 1-based line and the field. Blank lines are not records and are passed over.
Gzip-compressed files are read transparently.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from metapl.data.schemas import DataError, Where

T = TypeVar("T")


@dataclasses.dataclass
class ReadResult:
    """Records read from one source, and the lines skipped (only with skip_invalid) with their reasons."""

    records: list
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        """One line: how many records were read and skipped, with the most common reasons."""
        text = f"{self.source}: {len(self.records)} records"
        if self.skipped:
            reasons = Counter(_reason_kind(r) for _, r in self.skipped).most_common(3)
            text += f", {len(self.skipped)} skipped (" + "; ".join(f"{n}x {r}" for r, n in reasons) + ")"
        return text


def _reason_kind(reason: str) -> str:
    # "file:12: field 'prompt': is empty" -> "field 'prompt': is empty"
    parts = reason.split(": ", 1)
    return parts[1] if len(parts) == 2 and ":" in parts[0] else reason


def check_domain(domain: str, known: Sequence[str] | None, where: Where) -> None:
    """Raise DataError if `known` is given and `domain` is not in it."""
    if known is not None and domain not in known:
        preview = ", ".join(sorted(known)[:8]) + (" ..." if len(known) > 8 else "")
        raise where.error(f"unknown domain {domain!r}; known domains: {preview}", "domain")


def iter_json_lines(path: str | Path) -> Iterable[tuple[int, Any, DataError | None]]:
    """(line number, parsed JSON value or None, error or None) for each non-blank line of a JSONL file.

    Gzip-compressed files (recognised by their magic bytes) are read transparently; a corrupt gzip stream
    raises DataError naming the file (it is not one bad record).
    """
    path = Path(path)
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    number = 0
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            for number, raw in enumerate(f, start=1):
                where = Where(str(path), number)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield number, None, where.error(f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})")
                    continue
                if not text.strip():
                    continue
                try:
                    yield number, json.loads(text), None
                except json.JSONDecodeError as e:
                    yield number, None, where.error(f"malformed JSON: {e.msg} at column {e.colno}")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"corrupt gzip stream after line {number}: {e}", source=str(path)) from None


def read_jsonl(
    path: str | Path,
    record_type: type[T],
    *,
    skip_invalid: bool = False,
    domains: Sequence[str] | None = None,
    convert: Callable[[Any, Where], T] | None = None,
) -> ReadResult:
    """Read and validate every line of a JSONL file as `record_type` (via its `from_dict`, or `convert`).

    domains: if given, a record whose domain is not listed is invalid. With skip_invalid, invalid lines are
    recorded in `skipped` instead of raising.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", source=str(path))
    convert = convert or record_type.from_dict
    result = ReadResult(records=[], source=str(path))
    for number, value, error in iter_json_lines(path):
        try:
            if error is not None:
                raise error
            where = Where(str(path), number)
            record = convert(value, where)
            if hasattr(record, "domain"):
                check_domain(record.domain, domains, where)
            result.records.append(record)
        except DataError as e:
            if not skip_invalid:
                raise
            result.skipped.append((number, str(e)))
    return result


def write_jsonl(path: str | Path, records: Iterable) -> int:
    """Write records (anything with `to_dict`, or dicts) one JSON object per line; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict() if hasattr(r, "to_dict") else r, ensure_ascii=False) + "\n")
            n += 1
    return n
