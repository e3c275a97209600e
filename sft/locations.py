"""Where the package keeps its configs, and where data and sources are looked for by default."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Shipped inside the package, so every command composes the same configs from any working directory.
CONF_DIR = PACKAGE_DIR / "conf"
# The checkout for an editable install (its git commit goes into run_record.json); site-packages otherwise.
SOURCE_DIR = PACKAGE_DIR.parent


def default_data_dir() -> str:
    """SFT_DATA_DIR, else the `shared/data` folder beside the checkout: where named data configs look."""
    return os.environ.get("SFT_DATA_DIR") or str(SOURCE_DIR.parent / "shared" / "data")


def find_deepspeed_config(value: str) -> Path | None:
    """A DeepSpeed JSON given as a path, or as a name (with or without .json) in conf/deepspeed/."""
    for candidate in (
        Path(value).expanduser(),
        CONF_DIR / "deepspeed" / value,
        CONF_DIR / "deepspeed" / f"{value}.json",
    ):
        if candidate.is_file():
            return candidate
    return None
