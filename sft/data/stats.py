"""What happened to the rows on their way to the batches: counts per dataset, lengths, problems."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Encoder statuses that keep a row; every other status skips it and is reported. "split": a chunk of a
# raw-text document longer than cutoff_len (continued pre-training), kept like any other row.
KEPT = ("ok", "truncated", "split")


@dataclass
class DatasetStats:
    """Counts for one dataset: rows read, malformed, kept after tokenization and why others were not.

    `split` counts the chunks cut from raw-text documents longer than cutoff_len (each a training row).
    """

    rows: int = 0
    malformed: int = 0
    used: int = 0
    train: int = 0
    val: int = 0
    truncated: int = 0
    split: int = 0
    too_long: int = 0
    no_trained_token: int = 0
    invalid: int = 0


@dataclass
class DataStats:
    """Counts for the whole run plus token-length percentiles and the category mix."""

    datasets: dict[str, DatasetStats] = field(default_factory=dict)
    train: int = 0
    val: int = 0
    train_tokens: int = 0
    train_trained_tokens: int = 0
    length_percentiles: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    packed_rows: int | None = None
    packing_efficiency: float | None = None
    cache: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def dataset(self, name: str) -> DatasetStats:
        """The counters of one dataset (created on first use)."""
        return self.datasets.setdefault(name, DatasetStats())

    def total(self, counter: str) -> int:
        """A counter summed over all datasets."""
        return sum(getattr(d, counter) for d in self.datasets.values())

    def count_status(self, name: str, status: str) -> None:
        """Count one encoder status for dataset `name`."""
        d = self.dataset(name)
        if status == "truncated":
            d.truncated += 1
        elif status == "split":
            d.split += 1
        elif status.startswith("invalid"):
            d.invalid += 1
        elif status in ("too_long", "no_trained_token"):
            setattr(d, status, getattr(d, status) + 1)

    def describe_lengths(self, lengths: list[int], trained: list[int], categories: list[str | None]) -> None:
        """Fill token totals, length percentiles and the category mix from the training rows."""
        self.train_tokens, self.train_trained_tokens = sum(lengths), sum(trained)
        ordered = sorted(lengths)
        if ordered:
            pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
            self.length_percentiles = {
                "min": ordered[0],
                "p50": pick(0.5),
                "p90": pick(0.9),
                "p99": pick(0.99),
                "max": ordered[-1],
            }
        self.categories = dict(Counter(c for c in categories if c).most_common())

    def check_long_rows(self, name: str, full_lengths: list[int], cutoff_len: int, limit: float) -> None:
        """Warn when more than `limit` of a dataset's rows were truncated or dropped for length.

        `full_lengths` are the untruncated token counts of the rows the template rendered; the warning
        names the cutoff that would keep 99% of them whole (their 99th percentile, nearest rank).
        """
        d = self.dataset(name)
        long_rows = d.truncated + d.too_long
        if not full_lengths or long_rows <= limit * len(full_lengths):
            return
        ordered = sorted(full_lengths)
        p99 = ordered[math.ceil(0.99 * len(ordered)) - 1]
        self.warnings.append(
            f"dataset {name!r}: {long_rows} of {len(ordered)} rows ({long_rows / len(ordered):.1%}) are "
            f"longer than data.cutoff_len={cutoff_len} ({d.truncated} truncated, {d.too_long} dropped), "
            f"more than data.long_rows_warning={limit}; data.cutoff_len={p99} would keep 99% of them whole "
            "(the 99th percentile of their token lengths)"
        )

    def log(self, cutoff_len: int) -> None:
        """One line per dataset and one for the total, plus the first problems."""
        for name, d in self.datasets.items():
            log.info(
                "data %s: %d rows, %d malformed, %d used -> %d train / %d val; %d truncated, "
                "%d too long for cutoff_len=%d, %d with no trained token, %d the template cannot render",
                name,
                d.rows,
                d.malformed,
                d.used,
                d.train,
                d.val,
                d.truncated,
                d.too_long,
                cutoff_len,
                d.no_trained_token,
                d.invalid,
            )
        log.info(
            "data: %d train / %d val examples; %d train tokens, %d of them trained; lengths %s",
            self.train,
            self.val,
            self.train_tokens,
            self.train_trained_tokens,
            self.length_percentiles,
        )
        for warning in self.warnings:
            log.warning("data: %s", warning)
        for problem in self.problems[:20]:
            log.warning("skipped %s", problem)
        if len(self.problems) > 20:
            log.warning(
                "... and %d more skipped rows (all listed in data_problems.txt)", len(self.problems) - 20
            )
