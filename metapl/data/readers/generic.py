"""Import a user's own JSON Lines (optionally gzip-compressed) or Parquet files through a column mapping.

    import_table("prefs.parquet", {"prompt": "question", "chosen": "good", "rejected": "bad", "domain": "category"})
    import_table("prompts.jsonl", {"prompt": "text", "reference": "answer"}, record_type=PromptExample,
                 domain="my_forum")

`columns` maps record fields to the file's columns; a dotted name ("info.post") reaches into nested objects
(JSON) or struct columns (Parquet) when no column has that exact name. `domain` is a constant domain for
files without a domain column. Every mapped column must be present in every row (null is allowed for the
optional fields gold_margin / reference); errors name the file, the line (the 1-based row for Parquet) and
the file's column. An optional field left unmapped is read from a column of its own name where a row has one.
Columns that feed no field are counted in `ImportResult.ignored` (and named by its summary); an input without
a single row is a DataError naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from metapl.data.readers._common import (
    ImportResult, collect, find_files, is_parquet, iter_json_records, iter_parquet_rows, mapping, parquet_columns,
    parquet_rows,
)
from metapl.data.schemas import DataError, PreferencePair, PromptExample, ScoredSample, Where

_OPTIONAL = ("gold_margin", "reference")
RECORD_TYPES = (PreferencePair, PromptExample, ScoredSample)


def import_table(
    path: str | Path,
    columns: Mapping[str, str],
    *,
    record_type: type = PreferencePair,
    domain: str | None = None,
    skip_invalid: bool = False,
    optional_by_name: bool = True,
) -> ImportResult:
    """Read `record_type` records (PreferencePair, PromptExample or ScoredSample) from a file or a directory
    of `*.jsonl[.gz]`, `*.json[.gz]` (JSON Lines) and `*.parquet` files, mapping fields to columns by `columns`;
    `optional_by_name`: unmapped optional fields come from same-named columns where present.
    """
    if record_type not in RECORD_TYPES:
        raise ValueError(f"record_type must be one of {', '.join(t.__name__ for t in RECORD_TYPES)}")
    unknown = sorted(set(columns) - set(record_type.FIELDS))
    if unknown:
        raise ValueError(f"unknown {record_type.__name__} field(s) {unknown}; fields: {record_type.FIELDS}")
    if (domain is None) == ("domain" not in columns):
        raise ValueError("give the domain either as a column (columns['domain']) or as a constant (domain=...)")
    constant = {} if domain is None else {"domain": domain}
    missing = [f for f in record_type.FIELDS if f not in _OPTIONAL and f not in columns and f not in constant]
    if missing:
        raise ValueError(f"no column mapped to required field(s) {missing}")

    by_name = [f for f in record_type.FIELDS if f in _OPTIONAL and f not in columns] if optional_by_name else []
    used = {c.split(".")[0] for c in columns.values()} | set(columns.values()) | set(by_name)
    ignored: dict[str, int] = {}

    def convert(row: Any, where: Where):
        row = mapping(row, where, "a row")
        for column in row:
            if column not in used:
                ignored[column] = ignored.get(column, 0) + 1
        obj = dict(constant)
        for field, column in columns.items():
            found, obj[field] = _lookup(row, column)
            if not found:
                raise where.error(f"column missing (mapped to {field!r})", column)
        obj.update({field: row[field] for field in by_name if field in row})
        try:
            return record_type.from_dict(obj, where)
        except DataError as e:
            if e.field not in columns:
                raise
            raise DataError(f"{e.message} (mapped to {e.field!r})", source=e.source, line=e.line,
                            field=columns[e.field]) from None

    path = Path(path)
    result = ImportResult(records=[], source=str(path))
    for file in find_files(path, ["*.jsonl", "*.json", "*.parquet"]):
        if is_parquet(file):  # only the used columns are read; the others are counted from the file's schema
            for column in sorted(set(parquet_columns(file)) - used):
                ignored[column] = ignored.get(column, 0) + parquet_rows(file)
            rows = iter_parquet_rows(file, sorted(used))
        else:
            rows = iter_json_records(file)
        collect(result, file, rows, convert, skip_invalid=skip_invalid)
    result.ignored = dict(sorted(ignored.items()))
    if not (result.records or result.skipped or result.filtered):
        raise DataError("no records: the input is empty", source=str(path))
    return result


def _lookup(row: Mapping, column: str) -> tuple[bool, Any]:
    if column in row:
        return True, row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value
