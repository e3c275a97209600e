"""Atomic directory writes: build beside the target, then rename, so readers never see half a directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def publish_dir(build: Callable[[Path], None], target: Path, overwrite: bool = False) -> Path:
    """Run `build(tmp_dir)` and move the result to `target`; keep an existing target unless `overwrite`."""
    target = Path(target)
    if target.exists() and not overwrite:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        build(tmp)
        if target.exists():  # overwrite: the old copy survives until the new one is in place
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():  # another process may have won a race to create it
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target
