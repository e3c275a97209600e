"""Checkpoint writes survive real faults, bad checkpoints are named before resume, loads never run code."""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import get_scheduler

from sft.config import ConfigError
from sft.training import checkpoint as ckpt
from sft.training.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    resolve_resume,
    verify_checkpoint,
)


def _state(seed: int = 0) -> dict:
    """A checkpoint-shaped dict: tensors inside the plain containers Lightning uses."""
    g = torch.Generator().manual_seed(seed)
    return {
        "state_dict": OrderedDict(w=torch.randn(64, 64, generator=g), b=torch.zeros(64)),
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]}],
        "loops": {"fit_loop": {"epoch": 1, "done": False, "name": "fit", "extra": None}},
        "global_step": 7,
    }


def _assert_same(a, b) -> None:
    """Nested equality where tensors must match bit for bit."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


def test_save_load_round_trip(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "nested" / "checkpoints" / "last.ckpt"
    state = _state()
    io.save_checkpoint(state, path)
    _assert_same(io.load_checkpoint(path), state)
    assert _temp_files(path.parent) == []


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_state(0), path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="no space left") as info:
        io.save_checkpoint(_state(1), path)
    monkeypatch.undo()

    message = str(info.value)
    assert str(path) in message and "previous last.ckpt is untouched" in message and "MB" in message
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__, OSError)
    assert path.read_bytes() == before
    _assert_same(io.load_checkpoint(path), _state(0))
    assert _temp_files(tmp_path) == []


class _FillingFile:
    """A file on a disk that fills after `room` bytes: every later write fails with ENOSPC."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_filling_mid_write_is_named(tmp_path, monkeypatch):
    # The real torch.save: it reports the failed write as a RuntimeError, with the OSError as its context.
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_state(0), path)
    before = path.read_bytes()
    fdopen = os.fdopen
    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: _FillingFile(fdopen(fd, mode), room=4096))
    with pytest.raises(CheckpointWriteError, match="no space left on device while writing") as info:
        io.save_checkpoint({"w": torch.ones(1_000_000)}, path)
    monkeypatch.undo()
    assert "(about 4 MB)" in str(info.value)
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint(_state(0), path)
    before = path.read_bytes()
    path.parent.chmod(0o555)
    try:
        with pytest.raises(CheckpointWriteError, match="not writable") as info:
            io.save_checkpoint(_state(1), path)
        assert f"cannot write {path.parent}" in str(info.value)
        assert path.read_bytes() == before
    finally:
        path.parent.chmod(0o755)


def test_truncated_checkpoint_is_refused(tmp_path):
    io = AtomicCheckpointIO()
    directory = tmp_path / "run" / "checkpoints"
    for mtime, name in enumerate(("step-000002.ckpt", "step-000004.ckpt", "last.ckpt")):
        io.save_checkpoint(_state(), directory / name)
        os.utime(directory / name, (1_000 + mtime, 1_000 + mtime))
    path = directory / "last.ckpt"
    os.truncate(path, path.stat().st_size // 2)

    others = f"Other checkpoints in {directory}: step-000004.ckpt, step-000002.ckpt"
    for call in (lambda: verify_checkpoint(path), lambda: io.load_checkpoint(path)):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            call()
        assert others in str(info.value)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        resolve_resume(str(path), str(tmp_path), str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        resolve_resume("last", str(tmp_path), str(tmp_path / "run"))


def test_flipped_byte_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        verify_checkpoint(path)


class Payload:
    """Anything that is not a tensor or plain container; unpickling it could run code."""

    def __init__(self):
        self.value = 1


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": Payload()}, path)
    verify_checkpoint(path)  # a well-formed archive: refused only when read
    with pytest.raises(CheckpointError, match="objects other than tensors") as info:
        AtomicCheckpointIO().load_checkpoint(path)
    assert str(path) in str(info.value) and "Payload" in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_deepspeed_directory(tmp_path):
    shards = tmp_path / "last.ckpt"
    shards.mkdir()
    with pytest.raises(CheckpointError, match="empty directory"):
        verify_checkpoint(shards)
    (shards / "checkpoint").mkdir()
    (shards / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    verify_checkpoint(shards)


class Tiny(L.LightningModule):
    """A Linear layer trained with AdamW and a transformers LambdaLR schedule, as the real module is."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("step", float(self.global_step))
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=10)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(
            torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
        )
        return torch.utils.data.DataLoader(data, batch_size=4)


def _trainer(tmp_path, max_steps: int) -> tuple[L.Trainer, ModelCheckpoint]:
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="step", mode="max", save_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=[last],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return trainer, last


def test_lightning_checkpoint_resumes_with_weights_only(tmp_path):
    trainer, _ = _trainer(tmp_path, max_steps=2)
    trainer.fit(Tiny())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 2

    resumed, _ = _trainer(tmp_path, max_steps=4)
    resumed.fit(Tiny(), ckpt_path=str(last))
    assert resumed.global_step == 4
    assert resumed.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert _temp_files(last.parent) == []

    # The plugin is on Lightning's resume path: an unsafe checkpoint is refused there too.
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({**torch.load(last, weights_only=True), "extra": Payload()}, unsafe)
    refused, _ = _trainer(tmp_path, max_steps=6)
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        refused.fit(Tiny(), ckpt_path=str(unsafe))


def _write(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint(_state(), path)
    os.utime(path, (mtime, mtime))
    return path


def test_resolve_resume(tmp_path):
    old = _write(tmp_path / "2024-01-01" / "checkpoints" / "last.ckpt", 1_000)
    new = _write(tmp_path / "2024-02-01" / "checkpoints" / "last.ckpt", 2_000)
    here = str(tmp_path / "now")
    # A killed writer's temp file, newer than every checkpoint and named alike, must never be picked.
    stray = new.parent.parent.parent / "2024-03-01" / "checkpoints" / ".last.ckpt.tmp-xyz"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"PK half")

    assert resolve_resume(None, str(tmp_path), here) is None
    assert resolve_resume("last", str(tmp_path), here) == str(new)
    assert resolve_resume(str(old.parent.parent), str(tmp_path), here) == str(old)
    assert resolve_resume(str(old), str(tmp_path), here) == str(old)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_resume(str(stray.parent.parent), str(tmp_path), here)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_resume(str(tmp_path / "missing.ckpt"), str(tmp_path), here)
    with pytest.raises(CheckpointError, match="no checkpoints/last.ckpt"):
        resolve_resume("last", str(tmp_path / "empty"), here)
