"""Read each configured dataset into canonical conversations, then split and mix them.

A conversation travels as one JSON string column so that rows of every format share one
Arrow schema; `source`, `location` and `category` ride beside it for reports and statistics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from datasets import Dataset, Features, Value, concatenate_datasets, interleave_datasets

from ..config import DataConfig, DatasetConfig
from .builtin import builtin_conversations
from .formats import DataFileError, MalformedRow, read_hub, read_source, to_conversation
from .stats import DataStats

# One schema for every dataset, so rows of different formats (and all-null categories) concatenate.
FEATURES = Features({k: Value("string") for k in ("conversation", "source", "location", "category")})
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class DataError(ValueError):
    """Data the run must not train on: strict-mode problems, too-long rows under truncation=error."""


def fill_placeholders(conversation: dict, values: dict[str, str]) -> dict:
    """Replace `{{key}}` in the system prompt and every message; a placeholder left unfilled is an error."""

    def fill(text: str | None) -> str | None:
        if not text:
            return text
        text = _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)
        if left := _PLACEHOLDER.search(text):
            raise MalformedRow(
                f"placeholder {left.group(0)} has no value; set data.placeholders.{left.group(1)}"
            )
        return text

    return {
        **conversation,
        "system": fill(conversation.get("system")),
        "messages": [{**m, "content": fill(m.get("content"))} for m in conversation["messages"]],
    }


def _rows(spec: DatasetConfig) -> Iterator[tuple[str, object]]:
    """(location, raw row) pairs of one dataset."""
    if spec.source == "builtin":
        for row in builtin_conversations(spec.num_rows):
            yield f"builtin:{row['id']}", row
    elif spec.source == "hub":
        yield from read_hub(spec.path, spec.subset, spec.split)
    else:
        yield from read_source(spec.path)


def read_dataset(name: str, spec: DatasetConfig, cfg: DataConfig, stats: DataStats) -> list[dict]:
    """Canonical conversations of one dataset (its first `max_samples` usable rows); bad rows are reported."""
    counts = stats.dataset(name)
    placeholders = {**cfg.placeholders, **spec.placeholders}
    limit = spec.max_samples or cfg.max_samples
    records: list[dict] = []
    try:
        for location, row in _rows(spec):
            if limit and len(records) >= limit:
                break
            counts.rows += 1
            try:
                conversation = to_conversation(row, spec.format, spec.columns, spec.tags)
                conversation = fill_placeholders(conversation, placeholders)
            except MalformedRow as err:
                counts.malformed += 1
                stats.problems.append(f"{location}: {err}")
                if cfg.strict:
                    raise DataError(
                        f"{location}: {err} (data.strict=true stops at the first bad row)"
                    ) from None
                continue
            records.append(
                {
                    "conversation": json.dumps(conversation, ensure_ascii=False),
                    "source": name,
                    "location": location,
                    "category": conversation.get("category"),
                }
            )
    except DataFileError as err:  # the rest of the file cannot be read: never train on a silent prefix
        raise DataError(str(err)) from None
    counts.used = len(records)
    return records


def _val_counts(sizes: dict[str, int], val_size: float) -> dict[str, int]:
    """Validation rows per dataset: the same fraction of each, or a total count spread by size."""
    total = sum(sizes.values())
    counts = {}
    for name, n in sizes.items():
        want = round(n * val_size) if val_size < 1 else round(val_size * n / max(total, 1))
        counts[name] = min(want, n - 1) if n > 1 else 0
    return counts


def _weighted(ds: Dataset, weight: float, seed: int) -> Dataset:
    """Repeat a dataset `int(weight)` times plus a seeded random share of the fractional part."""
    whole, frac = int(weight), weight - int(weight)
    parts = [ds] * whole
    extra = round(frac * len(ds))
    if extra:
        parts.append(ds.shuffle(seed=seed).select(range(extra)))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def split_and_mix(
    records: dict[str, list[dict]], weights: dict[str, float], cfg: DataConfig, seed: int, stats: DataStats
) -> tuple[Dataset, Dataset]:
    """Seeded per-dataset train/validation split, then the training parts mixed by `data.mix`."""
    present = {name: rows for name, rows in records.items() if rows}
    if not present:
        raise DataError(
            f"no usable rows in any dataset ({stats.total('malformed')} malformed); see the problems above"
        )
    n_val = _val_counts({n: len(r) for n, r in present.items()}, cfg.val_size)
    train_parts, val_parts, probs = [], [], []
    for name, rows in present.items():
        ds = Dataset.from_list(rows, features=FEATURES)
        if n_val[name]:
            parts = ds.train_test_split(test_size=n_val[name], seed=seed)
            ds, val = parts["train"], parts["test"]
            val_parts.append(val)
        stats.dataset(name).val = n_val[name]
        if cfg.mix == "concat":
            ds = _weighted(ds, weights[name], seed)
        train_parts.append(ds)
        probs.append(weights[name])
    if cfg.mix == "concat" or len(train_parts) == 1:
        train = concatenate_datasets(train_parts)
    else:
        strategy = "first_exhausted" if cfg.mix == "interleave_under" else "all_exhausted"
        total = sum(probs)
        train = interleave_datasets(
            train_parts, probabilities=[p / total for p in probs], seed=seed, stopping_strategy=strategy
        )
    val = (
        concatenate_datasets(val_parts)
        if val_parts
        else Dataset.from_dict({k: [] for k in FEATURES}, FEATURES)
    )
    return train, val
