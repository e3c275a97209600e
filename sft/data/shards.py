"""Rows of one dataset read in order from a saved position, for streaming (`data.streaming=true`).

A `Position` names where the next row starts: a file of the dataset and an offset in it (bytes for
.jsonl, so a resumed stream seeks straight there; rows for .parquet, a hub dataset and the builtin
rows). Readers yield each row with the position after it, never holding a file in memory. A .jsonl
row is yielded as its raw bytes and parsed by `parse_row` only by the rank that trains on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, DataFileError, MalformedRow
from .formats import parse_json_line, source_files
from .hub import load_split

STREAM_SUFFIXES = (".jsonl", ".parquet")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Position:
    """Where the next row of a dataset starts: file index, offset (bytes or rows) and rows read in it."""

    file: int = 0
    offset: int = 0
    line: int = 0


def stream_files(name: str, path: str) -> list[Path]:
    """The dataset's files, all of a type that can be read from an offset."""
    files = source_files(path)
    if other := [f for f in files if f.suffix.lower() not in STREAM_SUFFIXES]:
        raise DataError(
            f"data.datasets.{name}: {other[0]} cannot be streamed; data.streaming=true reads "
            f"{' and '.join(STREAM_SUFFIXES)} shards (convert it, or set data.streaming=false)"
        )
    return files


def read_files(files: list[Path], start: Position) -> Iterator[tuple[str, object, Position]]:
    """(location, raw row, position after it) for every row from `start` to the end of the last file."""
    for index in range(start.file, len(files)):
        first = (start.offset, start.line) if index == start.file else (0, 0)
        file = files[index]
        reader = _jsonl if file.suffix.lower() == ".jsonl" else _parquet
        for location, row, offset, line in reader(file, *first):
            yield location, row, Position(index, offset, line)


def _jsonl(path: Path, offset: int, line: int) -> Iterator[tuple[str, object, int, int]]:
    """Raw lines of a .jsonl file from a byte offset (blank lines skipped, line numbers kept)."""
    with open(path, "rb") as file:
        file.seek(offset)
        for raw in file:
            offset, line = offset + len(raw), line + 1
            if line == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.strip():
                yield f"{path}:{line}", raw, offset, line


def _parquet(path: Path, offset: int, line: int) -> Iterator[tuple[str, object, int, int]]:
    """Rows of a .parquet file from a row offset, reading only the row groups from there on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        group, first = 0, 0
        while group < len(sizes) and first + sizes[group] <= offset:
            first += sizes[group]
            group += 1
        batches = parquet.iter_batches(batch_size=1024, row_groups=range(group, len(sizes)))
        row = first
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                if row > offset:
                    yield f"{path}:row {row}", record, row, row
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{path}: cannot read parquet ({err})") from None


def read_hub_stream(
    name: str, subset: str | None, split: str, start: Position, entry: str | None = None
) -> Iterator[tuple[str, object, Position]]:
    """Rows of a hub dataset streamed by `datasets` (nothing downloaded whole), from a row offset."""
    where = f"hub:{name}{f':{subset}' if subset else ''}[{split}]"
    rows = load_split(name, subset, split, entry, streaming=True)
    for index, row in enumerate(rows.skip(start.offset) if start.offset else rows, start.offset + 1):
        yield f"{where}#{index}", row, Position(0, index, index)


def read_list(rows: list[dict], label: str, start: Position) -> Iterator[tuple[str, object, Position]]:
    """Rows held in memory (the builtin set), from a row offset."""
    for index in range(start.offset, len(rows)):
        yield f"{label}:{rows[index].get('id', index)}", rows[index], Position(0, index + 1, index + 1)


def parse_row(raw: object) -> object:
    """A row as the format readers give it: a .jsonl line is parsed here, a bad one becomes a MalformedRow."""
    if not isinstance(raw, bytes):
        return raw
    try:
        return parse_json_line(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return MalformedRow(f"invalid UTF-8 ({err.reason} at byte {err.start})")
