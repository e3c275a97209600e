"""Rows in and out of the preparation steps, with the counts and problems each step reports.

Input is any file, directory or glob the data pipeline reads (Alpaca, ShareGPT, OpenAI messages; JSON,
JSONL, Parquet, CSV). A row that cannot become a conversation is reported with its file and line,
counted, and left out of the output: a preparation step never passes on a row training would reject.
Output is JSON lines: each input row as it was read, with the step's fields added beside it, so the
output feeds the next step or `data.datasets.<name>.path` unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_json
from ..data.formats import read_source, to_conversation
from ..errors import DataFileError, MalformedRow, PrepareError


@dataclass
class Row:
    """One usable input row: where it came from, the row as read, and its canonical conversation."""

    location: str
    data: dict
    conversation: dict

    @property
    def instruction(self) -> str:
        """The first user turn (an Alpaca row's instruction and input, joined as training sees them)."""
        return next(m["content"] for m in self.conversation["messages"] if m["role"] == "user")

    @property
    def response(self) -> str:
        """The last assistant reply."""
        messages = self.conversation["messages"]
        return next(m.get("content") or "" for m in reversed(messages) if m["role"] == "assistant")

    def with_fields(self, **fields) -> dict:
        """The row as read with `fields` added (or replaced) beside its own keys."""
        return {**self.data, **fields}


@dataclass
class Tally:
    """What a step did: named counts, and each problem with the row's location."""

    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to the count named `key`."""
        self.counts[key] += n

    def problem(self, location: str, message: str, key: str = "malformed") -> None:
        """Count a row under `key` and keep its location and message for the report."""
        self.counts[key] += 1
        self.problems.append(f"{location}: {message}")

    def summary(self, shown: int = 10) -> str:
        """Counts on one line, then the first problems."""
        line = ", ".join(f"{key} {value}" for key, value in self.counts.items())
        extra = "".join(f"\n  {p}" for p in self.problems[:shown])
        more = f"\n  ... and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        return line + extra + more

    def write(self, path: Path, **extra) -> None:
        """Counts, every problem and any `extra` facts as JSON."""
        write_json({"counts": dict(self.counts), **extra, "problems": self.problems}, path)


def read_rows(
    path: str | Path,
    tally: Tally,
    fmt: str = "auto",
    columns: Mapping | None = None,
    tags: Mapping | None = None,
) -> Iterator[Row]:
    """Every usable row of `path`; malformed rows are reported (file:line) and counted, not yielded."""
    try:
        for location, raw in read_source(path):
            try:
                conversation = to_conversation(raw, fmt, columns, tags)
            except MalformedRow as err:
                tally.problem(location, str(err))
                continue
            tally.count("read")
            yield Row(location, dict(raw), conversation)
    except (DataFileError, FileNotFoundError) as err:
        raise PrepareError(str(err)) from None


def load_rows(path: str | Path, tally: Tally, **options) -> list[Row]:
    """All usable rows of `path` (see `read_rows`); an input without any is an error."""
    rows = list(read_rows(path, tally, **options))
    if not rows:
        raise PrepareError(
            f"input={path}: no usable rows" + (f"\n  {tally.problems[0]}" if tally.problems else "")
        )
    return rows


def intact_lines(path: Path) -> list[dict]:
    """The complete JSON rows of an output a crash may have cut mid-line; a torn last line is removed."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, offset = [], 0
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                if data[offset + len(line) :].strip():  # not a torn tail: someone edited the file
                    raise PrepareError(f"{path}: line {number} is not JSON ({err.msg})") from None
                # Appends are whole flushed lines, so only the last one can be torn: cut it off.
                with path.open("r+b") as f:
                    f.truncate(offset)
                break
        offset += len(line) + 1
    return rows


class Appender:
    """Appends rows to a JSONL file one whole line at a time, flushed, so an interrupted run resumes."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.file = path, path.open("a", encoding="utf-8")

    def write(self, row: dict) -> None:
        """Append one row and push it to the OS."""
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        os.fsync(self.file.fileno())
        self.file.close()

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_rows(rows: Iterable[dict], path: Path) -> int:
    """Write a whole output at once: a temporary file renamed into place, so a crash leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


def stats_path(output: Path) -> Path:
    """Where a step writes its counts and problems: beside its output."""
    return output.with_name(output.name + ".stats.json")


def finish(step: str, tally: Tally, output: Path, **extra) -> None:
    """Print the step's counts and problems and write them beside the output."""
    tally.write(stats_path(output), step=step, output=str(output), **extra)
    print(f"{step}: {tally.summary()}", file=sys.stderr)
    print(f"written: {output} (counts: {stats_path(output)})", file=sys.stderr)
