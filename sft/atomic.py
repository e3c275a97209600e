"""Atomic writes: readers see the old file (or directory) or the whole new one, never a partial one."""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_text(text: str, path: str | os.PathLike, durable: bool = True) -> None:
    """Write `text` to a temp file beside `path`, fsync it, then rename it onto `path`.

    `durable=False` skips the fsync: for a file rewritten every step, where the next write replaces it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the file it replaces was not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(data: Any, path: str | os.PathLike, durable: bool = True) -> None:
    """Write `data` as indented JSON with `write_text`; values JSON cannot hold are written as strings."""
    write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", path, durable)


def publish_dir(build: Callable[[Path], None], target: Path, overwrite: bool = False) -> Path:
    """Run `build(tmp_dir)` and move the result to `target`; keep an existing target unless `overwrite`."""
    target = Path(target)
    if target.exists() and not overwrite:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the published directory should not be
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


@functools.cache
def _umask() -> int:
    """The process umask, read once: reading it means setting it, which races with other threads."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
