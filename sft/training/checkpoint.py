"""How checkpoints are written, checked and read.

Writes are atomic on the checkpoint's own filesystem, reads never unpickle arbitrary objects, and a
truncated or corrupt checkpoint is named before Lightning tries to resume from it.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import CheckpointError, CheckpointWriteError
from ..run_dir import CHECKPOINTS, LAST_CHECKPOINT, RunDir

log = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that writes atomically in place and loads with `weights_only=True`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write `checkpoint` to a temp file beside `path`, fsync it, then rename it onto `path`."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | str | torch.device | None = None, weights_only: Any = None
    ) -> dict[str, Any]:
        """Verify `path`, then load it with `weights_only=True` (onto the CPU unless told otherwise)."""
        # `weights_only` from the caller is ignored on purpose: nothing we load needs arbitrary unpickling.
        # CPU by default, as Lightning's own default: each DDP rank would otherwise load onto the saving GPU.
        return load_checkpoint(path, map_location="cpu" if map_location is None else map_location)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` so that a crash or a full disk leaves either the old file or the new one."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as `path`, so the rename below stays on one filesystem and is atomic.
        # Lightning's own `_atomic_save` stages in /tmp and moves, which is a copy across filesystems.
        tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, Exception):
            raise _write_error(err, path, obj) from err
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify a checkpoint file and load it with `weights_only=True`."""
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message names the offending global; keep that line, drop its advice to unpickle anyway.
        found = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it will not be unpickled"
            f" (weights_only=True){'; ' + found if found else ''}"
        ) from err


def resumed_micro_batch(path: str | os.PathLike) -> int | None:
    """Rows per micro-batch of the training loader saved in checkpoint `path` (verified already, by
    `resolve_resume`); None when it has none (a DeepSpeed directory, a streamed run, a checkpoint from before
    the loader saved it)."""
    if Path(path).is_dir():
        return None
    # Memory-mapped: the loop states are read, the tensors (all the weights, for a full fine-tune) are not.
    loops = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("loops") or {}
    loaders = loops.get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
    saved = loaders[0].get("micro_batch_size") if isinstance(loaders[0], dict) else None
    return saved if isinstance(saved, int) else None


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise `CheckpointError` unless `path` is a complete torch zip archive or a non-empty DeepSpeed dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        # DeepSpeed's engine saves a directory of shards named like a checkpoint file.
        if path.suffix == ".ckpt" and any(p.is_file() for p in path.rglob("*")):
            return
        reason = "an empty directory" if path.suffix == ".ckpt" else "a directory, not a .ckpt"
        raise CheckpointError(f"{path} is {reason}; it cannot be resumed from.{_others(path)}")
    try:
        # The central directory sits at the end, so a truncated file fails to open; testzip checks each CRC.
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        reason = f"bad CRC in {bad}" if bad else None
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        reason = str(err) or type(err).__name__
    if reason:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({reason}); it cannot be resumed from.{_others(path)}"
        )


def resolve_resume(resume: str | None, log_dir: str, output_dir: str) -> str | None:
    """Turn `resume` (null, `last`, a run directory or a .ckpt path) into a verified checkpoint path.

    A checkpoint is a file, or a directory named *.ckpt under DeepSpeed (its engine saves shards).
    """
    if not resume:
        return None
    if resume == "last":
        # Only `last.ckpt` matches, so a killed writer's `.last.ckpt.tmp-*` is never picked.
        last = f"{CHECKPOINTS}/{LAST_CHECKPOINT}"
        candidates = [*Path(output_dir).glob(last), *Path(log_dir).glob(f"**/{last}")]
        if not candidates:
            raise CheckpointError(f"resume=last: no {last} under {log_dir}")
        path = max(candidates, key=lambda p: p.stat().st_mtime)
    else:
        path = Path(resume)
        if path.is_dir() and path.suffix != ".ckpt":
            path = RunDir(path).last_checkpoint
    if not path.exists():
        raise CheckpointError(f"resume={resume}: no checkpoint at {path}")
    verify_checkpoint(path)
    log.info("resuming from %s", path)
    return str(path)


def _write_error(err: Exception, path: Path, obj: Any) -> CheckpointWriteError:
    """A `CheckpointWriteError` whose message says what failed and what to do about it."""
    code = _errno(err)
    if path.exists():
        kept = f"the previous {path.name} is untouched"
    else:
        kept = f"no partial file was left and the other checkpoints in {path.parent} are untouched"
    if code in _NO_SPACE:
        size = _tensor_bytes(obj) / 2**20
        message = (
            f"no space left on device while writing {path} (about {max(size, 1):.0f} MB); {kept};"
            " free space or set paths.log_dir elsewhere"
        )
    elif code in _NOT_WRITABLE:
        # The first existing directory up the path is the one refusing writes (mkdir may be what failed).
        where = next((d for d in path.parents if d.exists()), path.parent)
        message = (
            f"cannot write {where}: not writable ({os.strerror(code)}); {kept};"
            " fix its permissions or set paths.log_dir elsewhere"
        )
    else:
        message = f"could not write checkpoint {path}: {type(err).__name__}: {err}; {kept}"
    # Built from the message alone so str() has no "[Errno N]" prefix; errno still tells callers the cause.
    error = CheckpointWriteError(message)
    error.errno = code
    return error


def _errno(err: BaseException) -> int | None:
    """The errno behind `err`, looking down its chain: torch reports a failed write as a RuntimeError."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def _tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in a nested checkpoint, to say how much space a write needs."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best-effort, since some filesystems cannot open or fsync a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _others(path: Path) -> str:
    """Sibling checkpoints of `path`, newest first, so the user can pick one to resume from."""
    siblings = []
    for p in path.parent.glob("*.ckpt"):
        try:
            if p != path:
                siblings.append((p.stat().st_mtime, p.name))
        except OSError:
            continue
    names = ", ".join(name for _, name in sorted(siblings, reverse=True)) or "none"
    return f" Other checkpoints in {path.parent}: {names}"
