"""The embedded default instruction set: project-authored rows shipped with the package as builtin.jsonl.

`scripts/make_builtin_data.py` writes the file from templates, word lists and computed tasks: five task
categories in the SFT guide's balance plus self-cognition rows, multi-turn rows, system prompts,
`{{name}}` / `{{author}}` persona placeholders (filled by the loader) and exact `answer`s where the
result is computed. `builtin_conversations(num_rows)` takes the first `category_counts(num_rows)` rows
of each category in file order (the `SELF_COGNITION_PROBE` row first), so every size keeps the exact
category shares and the probe; the first `DEFAULT_ROWS` rows of the file are the whole default set.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

DATA_FILE = Path(__file__).with_name("builtin.jsonl")
DEFAULT_ROWS = 480  # the default config's data.datasets.builtin.num_rows
MAX_ROWS = 1000

CATEGORIES = (
    "creative_writing",
    "question_answering",
    "code",
    "analysis_reasoning",
    "conversational",
    "self_cognition",
)
SELF_COGNITION_PROBE = "Who are you?"

# Shares in units of 1/10000 so the split is exact integer arithmetic: self-cognition takes 15% and
# the guide's 20/25/15/20/20 balance is applied to the remaining 85%.
_WEIGHTS = {
    "creative_writing": 1700,
    "question_answering": 2125,
    "code": 1275,
    "analysis_reasoning": 1700,
    "conversational": 1700,
    "self_cognition": 1500,
}


def category_counts(num_rows: int) -> dict[str, int]:
    """Rows per category for `num_rows`: floor of each share, then largest remainders, summing exactly."""
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    counts = {c: num_rows * _WEIGHTS[c] // 10000 for c in CATEGORIES}
    by_remainder = sorted(CATEGORIES, key=lambda c: (-(num_rows * _WEIGHTS[c] % 10000), CATEGORIES.index(c)))
    for c in by_remainder[: num_rows - sum(counts.values())]:
        counts[c] += 1
    return counts


@functools.cache
def _file_rows() -> tuple[dict, ...]:
    """The rows of the data file, read once per process."""
    with open(DATA_FILE, encoding="utf-8") as file:
        return tuple(json.loads(line) for line in file)


def builtin_conversations(num_rows: int) -> list[dict]:
    """The first `category_counts(num_rows)` rows of each category (the probe row first), in file order."""
    counts = category_counts(num_rows)
    rows = _file_rows()
    if num_rows > len(rows):
        raise ValueError(f"num_rows must be at most {len(rows)} (rows in {DATA_FILE.name}), got {num_rows}")
    # The demo asks SELF_COGNITION_PROBE, so its row is taken whenever self-cognition gets a row at all.
    is_probe = [row["messages"][0]["content"] == SELF_COGNITION_PROBE for row in rows]
    probe_first = sorted(range(len(rows)), key=lambda i: not is_probe[i])
    picked = []
    for index in probe_first:
        if counts[rows[index]["category"]]:
            counts[rows[index]["category"]] -= 1
            picked.append(index)
    # Copies: callers fill placeholders in place, and the cached rows must stay as read.
    return [copy.deepcopy(rows[i]) for i in sorted(picked)]
