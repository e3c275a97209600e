"""Read each configured dataset into canonical records, then split and mix them.

A record (a conversation, or the text, pair or feedback record of the run's `data.kind`) travels as
one JSON string column `conversation` so that rows of every format and kind share one Arrow schema;
`source`, `location` and `category` ride beside it for reports and statistics, and `complexity`
for curriculum ordering (0 when no curriculum is configured).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from datasets import Dataset, Features, Value, concatenate_datasets, interleave_datasets

from ..config import DataConfig, DatasetConfig
from ..errors import DataError, DataFileError, MalformedRow
from .builtin import builtin_conversations
from .complexity import complexity
from .formats import read_hub, read_source, source_files
from .kinds import as_conversation, normaliser
from .stats import DataStats

# One schema for every dataset, so rows of different formats (and all-null categories) concatenate.
FEATURES = Features(
    {
        **{k: Value("string") for k in ("conversation", "source", "location", "category")},
        "complexity": Value("float32"),
    }
)


def with_problems(message: str, problems: list[str], limit: int = 5) -> str:
    """An error message followed by the first few row problems that explain it."""
    shown = "".join(f"\n  {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return message + shown + more


def fill_text(text: str | None, values: dict[str, str]) -> str | None:
    """Replace each configured `{{key}}` (spaces inside the braces allowed); other braces stay as they are."""
    if not text or not values:
        return text
    pattern = re.compile(r"\{\{\s*(" + "|".join(re.escape(k) for k in values) + r")\s*\}\}")
    return pattern.sub(lambda m: str(values[m.group(1)]), text)


def fill_placeholders(conversation: dict, values: dict[str, str]) -> dict:
    """Fill placeholders in the system prompt and every message (and both sides of a pair); raw text stays."""
    if "text" in conversation:  # web text may hold braces of its own; pre-training takes it verbatim
        return conversation
    filled = {
        **conversation,
        "system": fill_text(conversation.get("system"), values),
        "messages": [_filled(m, values) for m in conversation["messages"]],
    }
    for side in ("chosen", "rejected"):
        if side in conversation:
            filled[side] = _filled(conversation[side], values)
    return filled


def _filled(message: dict, values: dict[str, str]) -> dict:
    """One message with placeholders filled in its content and its reasoning trace."""
    filled = {**message, "content": fill_text(message.get("content"), values)}
    if message.get("reasoning_content") is not None:
        filled["reasoning_content"] = fill_text(message["reasoning_content"], values)
    return filled


def apply_reasoning(record: dict, policy: str) -> dict:
    """The record under `data.reasoning`: train keeps every reasoning trace, drop removes them all."""
    if policy == "train" or "messages" not in record:
        return record
    strip = lambda m: {k: v for k, v in m.items() if k != "reasoning_content"}  # noqa: E731
    dropped = {**record, "messages": [strip(m) for m in record["messages"]]}
    for side in ("chosen", "rejected"):
        if side in record:
            dropped[side] = strip(record[side])
    return dropped


def check_bad_rows(name: str, bad: int, rows: int, limit: float, problems: list[str], what: str) -> None:
    """Stop when more than `limit` of a dataset's rows are bad: a wrong file or format, not a few bad rows."""
    if bad > limit * rows:
        raise DataError(
            with_problems(
                f"dataset {name!r}: {bad} of {rows} rows ({bad / rows:.1%}) {what}, more than "
                f"data.max_bad_fraction={limit}; is the file or its format wrong? Fix the rows, or raise "
                "data.max_bad_fraction to train on the rest. The first problems:",
                problems,
            )
        )


def system_prompt(cfg: DataConfig) -> str | None:
    """The configured system prompt with its placeholders filled."""
    return fill_text(cfg.system, cfg.placeholders)


def _rows(name: str, spec: DatasetConfig, kind: str) -> Iterator[tuple[str, object]]:
    """(location, raw row) pairs of one dataset."""
    if spec.source == "file" and kind != "text":
        # A .txt file holds raw documents, not rows of the other kinds: say so instead of failing every line.
        if texts := [str(f) for f in source_files(spec.path) if f.suffix.lower() == ".txt"]:
            raise DataError(
                f"data.datasets.{name}: {texts[0]} is raw text (.txt), read only by stage=pt "
                f"(data.kind=text); data.kind={kind} needs .json, .jsonl, .parquet or .csv rows"
            )
    if spec.source == "builtin":
        for row in builtin_conversations(spec.num_rows):
            yield f"builtin:{row['id']}", row
    elif spec.source == "hub":
        yield from read_hub(spec.path, spec.subset, spec.split, entry=name)
    else:
        yield from read_source(spec.path)


class RecordMaker:
    """Raw rows of one dataset → the records the encoder takes; a bad row is counted and reported."""

    def __init__(self, name: str, spec: DatasetConfig, cfg: DataConfig, stats: DataStats):
        self.name, self.spec, self.cfg, self.stats = name, spec, cfg, stats
        self.counts = stats.dataset(name)
        self.placeholders = {**cfg.placeholders, **spec.placeholders}
        self.normalise = normaliser(cfg.kind)
        self.seen: set[str] = set()  # every column name met, to check the configured columns against

    def __call__(self, location: str, row: object) -> dict | None:
        """The record of one row, or None when the row is malformed (counted; data.strict stops the run)."""
        self.counts.rows += 1
        if isinstance(row, dict):
            self.seen.update(row)
        spec, cfg = self.spec, self.cfg
        try:
            conversation = self.normalise(row, spec.format, spec.columns, spec.tags)
            conversation = apply_reasoning(fill_placeholders(conversation, self.placeholders), cfg.reasoning)
        except MalformedRow as err:
            self.counts.malformed += 1
            self.stats.problems.append(f"{location}: {err}")
            if cfg.strict:
                raise DataError(f"{location}: {err} (data.strict=true stops at the first bad row)") from None
            return None
        return {
            "conversation": json.dumps(conversation, ensure_ascii=False),
            "source": self.name,
            "location": location,
            "category": conversation.get("category"),
            # Only a curriculum orders by it; the option is in the cache key: turning it on rebuilds.
            "complexity": _complexity(row, conversation) if cfg.curriculum != "none" else 0.0,
        }

    def check_columns(self) -> None:
        """Stop when a configured column name is in no row read: a typo would silently read nothing."""
        unused = {k: v for k, v in self.spec.columns.items() if v and v not in self.seen}
        if unused and self.counts.rows:
            raise DataError(
                f"data.datasets.{self.name}.columns: {unused} name columns no row has "
                f"(columns seen: {sorted(self.seen)})"
            )


def read_dataset(name: str, spec: DatasetConfig, cfg: DataConfig, stats: DataStats) -> list[dict]:
    """Canonical conversations of one dataset (its first `max_samples` usable rows); bad rows are reported."""
    counts = stats.dataset(name)
    limit = spec.max_samples or cfg.max_samples
    records: list[dict] = []
    first_problem = len(stats.problems)
    make = RecordMaker(name, spec, cfg, stats)
    try:
        for location, row in _rows(name, spec, cfg.kind):
            if limit and len(records) >= limit:
                break
            if (record := make(location, row)) is not None:
                records.append(record)
    except DataFileError as err:  # the rest of the file cannot be read: never train on a silent prefix
        raise DataError(str(err)) from None
    counts.used = len(records)
    make.check_columns()
    problems = stats.problems[first_problem:]
    if not records:
        raise DataError(
            with_problems(f"dataset {name!r}: none of its {counts.rows} rows is usable", problems)
        )
    check_bad_rows(name, counts.malformed, counts.rows, cfg.max_bad_fraction, problems, "are malformed")
    return records


def _complexity(row: object, conversation: dict) -> float:
    """A row's own `complexity` (`sft.prepare balance` writes one), else the estimate for its conversation."""
    given = row.get("complexity") if isinstance(row, dict) else None
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return float(given)
    return complexity(as_conversation(conversation))


def val_counts(sizes: dict[str, int], val_size: float) -> dict[str, int]:
    """Validation rows per dataset: the same fraction of each, or a total count spread by size.

    A count is apportioned by largest remainder, so the parts add up to it exactly; every dataset
    keeps at least one training row.
    """
    total = sum(sizes.values())
    if val_size < 1:
        return {name: min(round(n * val_size), max(n - 1, 0)) for name, n in sizes.items()}
    want = min(int(val_size), max(total - len(sizes), 0))
    shares = {name: want * n / max(total, 1) for name, n in sizes.items()}
    counts = {name: int(share) for name, share in shares.items()}
    for name in sorted(shares, key=lambda k: counts[k] - shares[k])[: want - sum(counts.values())]:
        counts[name] += 1
    return {name: min(c, max(sizes[name] - 1, 0)) for name, c in counts.items()}


def split(rows: list[dict], n_val: int, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split of one dataset's records."""
    ds = Dataset.from_list(rows, features=FEATURES)
    if not n_val:
        return ds, ds.select([])
    parts = ds.train_test_split(test_size=n_val, seed=seed)
    return parts["train"], parts["test"]


def _weighted(ds: Dataset, weight: float, seed: int) -> Dataset:
    """Repeat a dataset `int(weight)` times plus a seeded random share (at least a row) of the fraction."""
    whole, frac = int(weight), weight - int(weight)
    parts = [ds] * whole
    if frac:
        extra = max(round(frac * len(ds)), 0 if whole else 1)
        parts.append(ds.shuffle(seed=seed).select(range(extra)))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def mix(parts: dict[str, Dataset], weights: dict[str, float], strategy: str, seed: int) -> Dataset:
    """Combine the (tokenized) training parts: weighted concatenation or weighted interleaving."""
    names = [n for n in parts if len(parts[n])]
    if not names:  # nothing survived tokenization; the caller reports why
        return next(iter(parts.values()))
    if strategy == "concat":
        return concatenate_datasets([_weighted(parts[n], weights[n], seed) for n in names])
    if len(names) == 1:
        return parts[names[0]]
    total = sum(weights[n] for n in names)
    return interleave_datasets(
        [parts[n] for n in names],
        probabilities=[weights[n] / total for n in names],
        seed=seed,
        stopping_strategy="first_exhausted" if strategy == "interleave_under" else "all_exhausted",
    )
