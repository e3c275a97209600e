"""Where a study lives when `hydra.sweeper.storage` is not set: SQLite in the outputs directory."""

from __future__ import annotations

from pathlib import Path


def default_storage(log_dir: str | Path) -> str:
    """The Optuna storage URL the sweeper uses by default, for `paths.log_dir`."""
    return f"sqlite:///{Path(log_dir).resolve() / 'optuna.db'}"
