"""Which checkpoint `resume` picks: newest by time not by name, the run's own output, DeepSpeed dirs."""

from __future__ import annotations

import os
from pathlib import Path

from sft.training.checkpoint import AtomicCheckpointIO, resolve_resume


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
