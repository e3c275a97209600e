"""Atomic directory writes: build beside the target, then rename, so readers never see half a directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError


def publish_dir(build: Callable[[Path], None], target: Path, overwrite: bool = False) -> Path:
    """Run `build(tmp_dir)` and move the result to `target`; keep an existing target unless `overwrite`."""
    target = Path(target)
    if target.exists() and not overwrite:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the published directory should not be
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


# What a run directory holds that a new run must not silently mix with or destroy.
FINISHED_MARK = "summary.json"
KEEP_ON_OVERWRITE = (".hydra", "train.log")


def claim_output_dir(out: Path, overwrite: bool, resume_from: str | None) -> bool:
    """Refuse an output directory that holds a finished run, or an unfinished one's checkpoints.

    Resuming from a checkpoint inside `out` continues that run in place (returns True). With
    `overwrite`, the old outputs are deleted (Hydra's record and log of this launch stay).
    """
    out = Path(out)
    finished = (out / FINISHED_MARK).exists()
    checkpoints = sorted((out / "checkpoints").glob("*.ckpt"))
    in_place = resume_from is not None and out.resolve() in Path(resume_from).resolve().parents
    if not (finished or checkpoints) or in_place:
        return in_place
    if not overwrite:
        what = "a finished run (summary.json)" if finished else "checkpoints of an unfinished run"
        raise ConfigError(
            f"paths.output_dir={out} already holds {what}; choose another directory, "
            f"resume it with resume={out}, or set overwrite=true to delete it"
        )
    for entry in out.iterdir():
        if entry.name not in KEEP_ON_OVERWRITE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return False
