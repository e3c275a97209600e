"""The `report` step's charts: PNG files of a data set's category and difficulty mix, lengths and quality.

Figures are drawn on matplotlib's Agg canvas through `Figure` directly, never pyplot: no display is needed,
no global backend is switched under a caller (a notebook keeps its own), and no figure outlives its file.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

THRESHOLD = 4.0  # the quality score the filter step keeps by default
MAX_BARS = 25  # more labels than this are summed into one "other" bar, so every label stays readable
MAX_LABEL = 40  # characters of a label shown before it is cut with "…"
DPI = 120
NONE = "(none)"  # rows without a label


def share_rows(
    labels: Sequence[str | None], targets: Mapping[str, float], order: str = "count"
) -> list[tuple[str, int, float, float | None]]:
    """(label, rows, share, target share or None) per label seen or targeted, in `order` (count, targets)."""
    # Targets summing to more than 1 are weights (percentages, counts) and are normalised; targets summing
    # to at most 1 are shares as given, so targets for a few labels only keep their meaning. "count" puts
    # the most rows first, then targeted labels without rows; "targets" keeps the targets' own order (easy,
    # medium, hard), then other labels by count. Past MAX_BARS the smallest labels become one "other" row.
    counts = Counter(label if label else NONE for label in labels)
    total = sum(counts.values())
    weight = sum(targets.values())
    scale = weight if weight > 1 + 1e-9 else 1.0
    target = {str(k): v / scale for k, v in targets.items()}
    if order == "targets":
        names = list(target) + sorted((k for k in counts if k not in target), key=lambda k: -counts[k])
    elif order == "count":
        seen = sorted(counts, key=lambda k: (-counts[k], k))
        names = seen + sorted((k for k in target if k not in counts), key=lambda k: -target[k])
    else:
        raise ValueError(f"order={order!r}: choose count or targets")
    rows = [(k, counts[k], counts[k] / total if total else 0.0, target.get(k)) for k in names]
    if len(rows) > MAX_BARS:
        kept = sorted(rows, key=lambda r: -r[1])[: MAX_BARS - 1]
        rest = [r for r in rows if r not in kept]
        rest_target = [r[3] for r in rest if r[3] is not None]
        other = (
            f"other ({len(rest)} labels)",
            sum(r[1] for r in rest),
            sum(r[2] for r in rest),
            sum(rest_target) if rest_target else None,
        )
        rows = [r for r in rows if r in kept] + [other]
    return rows


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _share_chart(
    path: Path, what: str, noun: str, labels: Sequence[str | None], targets: Mapping[str, float], order: str
) -> Path:
    """Horizontal bars of each label's share of rows, with its target as a black tick across the bar."""
    rows = share_rows(labels, targets, order)
    total = sum(r[1] for r in rows)
    fig = Figure(figsize=(9, 1.6 + 0.38 * max(len(rows), 1)), dpi=DPI)
    ax = fig.add_subplot()
    title = f"{what}: {total} rows, {len({label or NONE for label in labels})} {noun}"
    if not rows:
        return _empty(fig, ax, title, path)
    y = np.arange(len(rows))
    shares = np.array([r[2] * 100 for r in rows])
    # Off target: more than a quarter of the target away, and more than 2 points (small targets jitter).
    off_target = [
        t is not None and abs(s - t * 100) > max(2.0, 0.25 * t * 100)
        for s, t in zip(shares, (r[3] for r in rows), strict=True)
    ]
    colours = ["tab:orange" if off else "tab:blue" for off in off_target]
    ax.barh(y, shares, color=colours, height=0.7)
    targeted = [(i, r[3] * 100) for i, r in enumerate(rows) if r[3] is not None]
    if targeted:
        ty, tx = zip(*targeted, strict=True)
        ax.scatter(tx, ty, marker="|", s=900, linewidths=2.5, color="black", zorder=3)
    right = max([*shares, *(t for _, t in targeted), 1.0])
    for i, (_, count, share, tgt) in enumerate(rows):
        note = f"{count} ({share * 100:.1f}%)" + (f"  target {tgt * 100:.1f}%" if tgt is not None else "")
        ax.text(
            max(shares[i], tgt * 100 if tgt is not None else 0) + right * 0.01,
            i,
            note,
            va="center",
            fontsize=9,
        )
    ax.set_yticks(y, [_short(r[0]) for r in rows], fontsize=10)
    ax.invert_yaxis()  # the first row on top
    ax.set_xlim(0, right * 1.35)  # room for the notes
    ax.set_xlabel("share of rows (%)" + ("   black tick: target share" if targeted else ""))
    off = "   (orange: off its target)" if any(off_target) else ""
    ax.set_title(title + off, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _length_panel(ax: Axes, words: Sequence[int], what: str) -> None:
    """A log-x histogram of word counts with the median and 95th percentile marked."""
    ax.set_title(f"{what} words ({len(words)} rows)", fontsize=11)
    if not words:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    values = np.clip(np.asarray(words, dtype=float), 1, None)  # 0 words sits at 1 on the log axis
    top = max(values.max(), 10.0)
    ax.hist(
        values,
        bins=np.logspace(0, math.log10(top) + 0.01, 40),
        color="tab:blue",
        edgecolor="white",
        linewidth=0.5,
    )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))  # "100", not mathtext "10²"
    median, p95 = np.median(words), np.percentile(words, 95)
    ax.axvline(max(median, 1), color="tab:red", linestyle="--", label=f"median {median:.0f}")
    ax.axvline(max(p95, 1), color="tab:gray", linestyle=":", label=f"95th percentile {p95:.0f}")
    ax.set_xlabel("words (log scale)")
    ax.set_ylabel("rows")
    ax.legend(fontsize=9, frameon=False)
    ax.grid(alpha=0.3)


def _quality_chart(path: Path, scores: Sequence[float]) -> Path:
    """A histogram of quality scores with the keep threshold marked."""
    values = np.asarray([s for s in scores if s is not None and not math.isnan(s)], dtype=float)
    kept = int((values >= THRESHOLD).sum())
    share = f" ({kept / len(values) * 100:.0f}%)" if len(values) else ""
    fig = Figure(figsize=(8, 4.5), dpi=DPI)
    ax = fig.add_subplot()
    title = f"Quality scores: {len(values)} rows, {kept}{share} at or above {THRESHOLD:.1f}"
    if not len(values):
        return _empty(fig, ax, title, path)
    low, high = math.floor(min(values.min(), 1.0)), math.ceil(max(values.max(), 5.0))
    ax.hist(values, bins=np.arange(low, high + 0.25, 0.25), color="tab:blue", edgecolor="white")
    ax.axvline(THRESHOLD, color="tab:red", linestyle="--", linewidth=2, label=f"threshold {THRESHOLD:.1f}")
    ax.set_xlabel("score")
    ax.set_ylabel("rows")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=9, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _empty(fig: Figure, ax: Axes, title: str, path: Path) -> Path:
    ax.set_title(title, fontsize=11)
    ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def draw_report(
    out_dir: Path,
    categories: list[str],
    difficulties: list[str],
    prompt_words: list[int],
    response_words: list[int],
    category_targets: dict,
    difficulty_targets: dict,
    scores: list[float] | None = None,
) -> list[Path]:
    """Write categories.png, difficulty.png, lengths.png and (with scores) quality.png; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _share_chart(
            out_dir / "categories.png", "Categories", "categories", categories, category_targets, "count"
        ),
        _share_chart(
            out_dir / "difficulty.png", "Difficulty", "levels", difficulties, difficulty_targets, "targets"
        ),
    ]
    fig = Figure(figsize=(11, 4.5), dpi=DPI)
    left, right = fig.subplots(1, 2)
    _length_panel(left, prompt_words, "Prompt")
    _length_panel(right, response_words, "Response")
    written.append(_save(fig, out_dir / "lengths.png"))
    if scores is not None:
        written.append(_quality_chart(out_dir / "quality.png", scores))
    return written
