"""Which checkpoint `resume` picks: newest by time not by name, the run's own output, DeepSpeed dirs."""

from __future__ import annotations

import datetime
import errno
import logging
import os
from pathlib import Path

import pytest
import torch

from sft.training.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    atomic_save,
    load_checkpoint,
    resolve_resume,
    verify_checkpoint,
)


def written(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_last_is_the_newest_by_time_even_when_its_name_sorts_first(tmp_path):
    newer = written(tmp_path / "a-run" / "checkpoints" / "last.ckpt", 2_000)
    written(tmp_path / "b-run" / "checkpoints" / "last.ckpt", 1_000)
    assert resolve_resume("last", str(tmp_path), str(tmp_path / "now")) == str(newer)


def test_last_finds_the_output_directorys_own_checkpoint_outside_the_log_dir(tmp_path):
    own = written(tmp_path / "out" / "checkpoints" / "last.ckpt", 1_000)
    (tmp_path / "logs").mkdir()
    assert resolve_resume("last", str(tmp_path / "logs"), str(tmp_path / "out")) == str(own)


def test_a_checkpoint_is_taken_as_given_whatever_its_name_or_form(tmp_path):
    plain = written(tmp_path / "weights.pt", 1_000)
    assert resolve_resume(str(plain), str(tmp_path), str(tmp_path)) == str(plain)
    shards = tmp_path / "epoch=1.ckpt"  # DeepSpeed saves a directory of shards named like a file
    (shards / "checkpoint").mkdir(parents=True)
    (shards / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert resolve_resume(str(shards), str(tmp_path), str(tmp_path)) == str(shards)


def test_what_cannot_be_resumed_from_is_named_with_the_other_checkpoints(tmp_path):
    with pytest.raises(CheckpointError) as missing:
        verify_checkpoint(tmp_path / "gone.ckpt")
    assert str(missing.value) == f"no checkpoint at {tmp_path / 'gone.ckpt'}"
    written(tmp_path / "epoch=0.ckpt", 1_000)
    (tmp_path / "last.ckpt").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "cut.ckpt").write_bytes(b"PK not a zip")
    for name, reason in [
        ("last.ckpt", "an empty directory"),
        ("run", "a directory, not a .ckpt"),
        ("cut.ckpt", "truncated or corrupt (File is not a zip file)"),
    ]:
        with pytest.raises(CheckpointError) as refused:
            verify_checkpoint(tmp_path / name)
        others = ", ".join(n for n in ("epoch=0.ckpt", "last.ckpt", "cut.ckpt") if n != name)
        assert str(refused.value).startswith(f"{tmp_path / name} is {reason}; it cannot be resumed from.")
        assert set(str(refused.value).split(": ")[-1].split(", ")) == set(others.split(", "))


def test_an_unpicklable_checkpoint_names_the_offending_global(tmp_path):
    path = tmp_path / "unsafe.ckpt"
    torch.save({"when": datetime.date(2026, 1, 1)}, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value).startswith(
        f"{path} holds objects other than tensors and plain containers, so it will not be unpickled"
        " (weights_only=True); WeightsUnpickler error: Unsupported global: GLOBAL datetime.date"
    )


def test_a_checkpoint_whose_directory_cannot_be_made_is_a_write_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointWriteError, match="could not write checkpoint"):
        atomic_save({"step": 1}, tmp_path / "file" / "last.ckpt")


def test_the_resumed_checkpoint_is_logged(tmp_path, caplog):
    plain = written(tmp_path / "weights.pt", 1_000)
    with caplog.at_level(logging.INFO, logger="sft.training.checkpoint"):
        resolve_resume(str(plain), str(tmp_path), str(tmp_path))
    assert caplog.messages == [f"resuming from {plain}"]


def test_a_checkpoint_gets_the_usual_file_mode(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    assert written(tmp_path / "last.ckpt", 1_000).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_temp_file_that_was_never_created_leaves_the_write_error_intact(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(CheckpointWriteError, match="no space left on device"):
        atomic_save({"step": 1}, tmp_path / "last.ckpt")


def test_a_checkpoint_loads_onto_the_cpu_by_default(tmp_path):
    path = written(tmp_path / "last.ckpt", 1_000)
    atomic_save({"w": torch.arange(3)}, path)
    loaded = load_checkpoint(path)
    assert list(loaded) == ["w"] and loaded["w"].tolist() == [0, 1, 2] and loaded["w"].device.type == "cpu"
