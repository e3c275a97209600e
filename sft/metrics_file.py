"""A run's `csv/metrics.csv`, kept whole across in-place resumes.

Lightning's CSV logger deletes an existing metrics.csv when it starts, so a run resumed in its own
directory would lose the curve before the stop. The old file is set aside as `metrics.<n>.csv` first, and
readers join the parts back, the resumed part winning from the step it restarted at.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

CSV_DIR, NAME = "csv", "metrics.csv"


def set_aside(run: Path) -> Path | None:
    """Rename the run's metrics.csv to the next free `metrics.<n>.csv`; None when there is none."""
    current = Path(run) / CSV_DIR / NAME
    if not current.is_file():
        return None
    n = len(_parts(run)) + 1
    target = current.with_name(f"metrics.{n}.csv")
    current.rename(target)
    return target


def _parts(run: Path) -> list[Path]:
    """The set-aside parts in the order they were written."""
    parts = Path(run).joinpath(CSV_DIR).glob("metrics.*.csv")
    return sorted(parts, key=lambda p: int(p.suffixes[0][1:]) if p.suffixes[0][1:].isdigit() else 0)


def read(run: Path) -> pd.DataFrame:
    """Every logged row of the run, oldest part first; empty when nothing was logged yet."""
    frames = []
    for path in [*_parts(run), Path(run) / CSV_DIR / NAME]:
        try:
            frame = pd.read_csv(path, on_bad_lines="skip")  # a row being written is skipped
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if frames and "step" in frame and len(frame):
            restart = frame["step"].min()  # steps after the checkpoint were trained again
            frames = [f[f["step"] < restart] for f in frames]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def series(logged: pd.DataFrame, column: str) -> pd.DataFrame:
    """One column's logged points (step, value), one per step.

    Lightning logs the final validation again after restoring the best weights, at the last step.
    """
    if column not in logged:
        return pd.DataFrame(columns=["step", column])
    return logged[["step", column]].dropna().drop_duplicates("step", keep="last")
