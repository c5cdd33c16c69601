"""Plumbing shared by the dataset readers: gzip-transparent JSON Lines, Parquet rows, file discovery, the
result type with filter counts, and the convert-every-record loop with skip_invalid accounting."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from metapl.data.records import ReadResult, iter_json_lines
from metapl.data.schemas import DataError, Where
from metapl.data.schemas import _integer as integer  # noqa: F401  (re-exported for the readers)
from metapl.data.schemas import _mapping as mapping  # noqa: F401
from metapl.data.schemas import _number as number  # noqa: F401
from metapl.data.schemas import _text as text  # noqa: F401

_GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass
class ImportResult(ReadResult):
    """A `ReadResult` that also says which files were read and how many records a reader option left out.

    filtered: {reason: count} for valid records excluded on purpose (a score-ratio threshold, another split,
    out-of-scope rows); `skipped` stays the list of invalid records (only with skip_invalid); ignored: {column:
    rows holding it} for the input's columns that no record field was read from (the generic importer).
    """

    filtered: dict[str, int] = dataclasses.field(default_factory=dict)
    files: list[str] = dataclasses.field(default_factory=list)
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        line = super().summary()
        if self.filtered:
            ranked = sorted(self.filtered.items(), key=lambda kv: (-kv[1], kv[0]))
            line += ", filtered: " + "; ".join(f"{n}x {r}" for r, n in ranked)
        if self.ignored:
            line += ", ignored (not mapped to a field): " + ", ".join(
                f"column {c!r} in {n} row(s)" for c, n in self.ignored.items())
        return line

    def count_filtered(self, reason: str, n: int = 1) -> None:
        self.filtered[reason] = self.filtered.get(reason, 0) + n


@dataclasses.dataclass(frozen=True)
class Filtered:
    """Returned by a record converter for a valid record that a reader option excludes."""

    reason: str


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def iter_json_records(path: str | Path) -> Iterator[tuple[int, Any, DataError | None]]:
    """`records.iter_json_lines`: plain or gzip-compressed JSON Lines."""
    return iter_json_lines(path)


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow ships with the project's environment
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from e
    return pq


def parquet_columns(path: Path) -> list[str]:
    """Top-level column names of a Parquet file (DataError if it is not one)."""
    pq = _parquet()
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a non-Parquet file
        raise DataError(f"not a readable Parquet file ({e})", source=str(path)) from None


def iter_parquet_rows(path: str | Path, columns: Sequence[str] | None = None
                      ) -> Iterator[tuple[int, Any, DataError | None]]:
    """(1-based row number, row as a dict, None) for each row of a Parquet file, read in batches.

    columns: the top-level columns to read (all if None); struct columns come back as dicts, lists as lists.
    """
    path = Path(path)
    present = parquet_columns(path)  # also a clear DataError for a file that is not Parquet
    if columns is not None:  # an absent column is reported row by row, as a missing field
        columns = [c for c in columns if c in present]
    row = 0
    for batch in _parquet().ParquetFile(path).iter_batches(columns=columns):
        for record in batch.to_pylist():
            row += 1
            yield row, record, None


def parquet_rows(path: Path) -> int:
    """The number of rows of a Parquet file (from its footer)."""
    return _parquet().ParquetFile(path).metadata.num_rows


def is_parquet(path: Path) -> bool:
    return path.name.endswith(".parquet")


def find_files(path: str | Path, patterns: Sequence[str], *, exclude: Sequence[str] = ()) -> list[Path]:
    """`path` itself if it is a file, else every file under it (recursively, sorted) whose name matches one of
    the glob `patterns` (or a pattern plus ".gz") and none of `exclude`. DataError if nothing matches."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError("no such file or directory", source=str(path))

    def wanted(name: str) -> bool:
        match = any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name, p + ".gz") for p in patterns)
        return match and not any(fnmatch.fnmatch(name, p) for p in exclude)

    files = sorted(p for p in path.rglob("*") if p.is_file() and wanted(p.name))
    if not files:
        raise DataError(f"no files named {' or '.join(patterns)} under this directory", source=str(path))
    return files


def in_split(path: Path, root: Path, split: str) -> bool:
    """Whether a data file belongs to `split`, judged by its path below `root`: a directory named after the split
    (`default/test/0000.parquet`) or a file name with the split as a word (`test-00000-of-00001.parquet`,
    `xsum-test.parquet`, `test.jsonl`)."""
    rel = path.relative_to(root) if path != root else Path(path.name)
    return split in rel.parts[:-1] or re.search(rf"(^|[-_.]){re.escape(split)}([-_.]|$)", rel.name) is not None


def strip_suffixes(name: str, suffixes: Sequence[str]) -> str:
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sub_object(obj: Mapping, name: str, where: Where) -> Mapping:
    """obj[name], which must be a JSON object."""
    if name not in obj or obj[name] is None:
        raise where.error("missing (expected a JSON object)", name)
    if not isinstance(obj[name], Mapping):
        raise where.error(f"expected a JSON object, got {type(obj[name]).__name__}", name)
    return obj[name]


@contextlib.contextmanager
def field_prefix(prefix: str):
    """Re-raise a DataError about field 'x' as one about field '<prefix>.x' (for nested objects)."""
    try:
        yield
    except DataError as e:
        field = f"{prefix}.{e.field}" if e.field else prefix
        raise DataError(e.message, source=e.source, line=e.line, field=field) from None


def collect(
    result: ImportResult,
    path: Path,
    rows: Iterable[tuple[int, Any, DataError | None]],
    convert: Callable[[Any, Where], Any],
    *,
    skip_invalid: bool,
) -> ImportResult:
    """Convert each (line, value, error) of one file, appending records to `result`.

    A converter returns a record, or `Filtered(reason)` for a valid record a reader option excludes, or raises
    DataError. Without skip_invalid the first DataError propagates; with it, it is recorded in `skipped`.
    """
    result.files.append(str(path))
    for line, value, error in rows:
        try:
            if error is not None:
                raise error
            out = convert(value, Where(str(path), line))
        except DataError as e:
            if not skip_invalid:
                raise
            result.skipped.append((line, str(e)))
            continue
        if isinstance(out, Filtered):
            result.count_filtered(out.reason)
        else:
            result.records.append(out)
    return result


def read_json_files(
    source: str | Path,
    files: Sequence[Path],
    convert: Callable[[Any, Where, Path], Any],
    *,
    skip_invalid: bool,
) -> ImportResult:
    """Run `convert(value, where, file)` over every JSON line of `files` (plain or gzip) into one ImportResult."""
    result = ImportResult(records=[], source=str(source))
    for path in files:
        collect(result, path, iter_json_records(path), lambda v, w, p=path: convert(v, w, p),
                skip_invalid=skip_invalid)
    return result
