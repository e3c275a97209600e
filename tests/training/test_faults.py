"""Faults made to happen for real: killed and signalled runs, NaN losses, refused writes, reused dirs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, TINY, compose_train, logged_series, start_module
from faults import InjectNaN

from sft.config import ConfigError
from sft.data.formats import read_source
from sft.train import train
from sft.training.resilience import Diverged, Preempted

# Four optimizer steps per epoch (32 training rows, 8 per step in 2 micro-batches), four epochs, a
# checkpoint every step: an interruption lands mid-epoch and mid-accumulation, with LoRA dropout on.
RESUMABLE = [
    *TINY,
    "trainer.effective_batch_size=8",
    "trainer.micro_batch_size=4",
    "trainer.max_steps=16",
    "trainer.save_steps=1",
    "trainer.eval_steps=4",
    "lora.dropout=0.1",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> Path:
    """The reference: the same run, never stopped."""
    root = tmp_path_factory.mktemp("uninterrupted")
    train(compose_train(root / "run", root, cache_dir, *RESUMABLE))
    return root / "run"


def launch(run: Path, overrides: list[str], cache_dir: Path, *extra: str):
    """Start `python -m sft.train` writing to `run`; its output goes to `run`.log beside it."""
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(run.parent)}
    log = run.with_suffix(".log")
    return start_module("sft.train", *overrides, f"paths.output_dir={run}", *extra, log=log, env=env), log


def finish(process, log: Path, timeout: float = 300) -> str:
    """Wait for a launched run and return its output."""
    process.wait(timeout=timeout)
    return log.read_text()


def wait_for(path: Path, process, log: Path, timeout: float = 240) -> None:
    """Block until `path` exists, failing if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {path.name} appeared:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path.name} did not appear in {timeout} s")
        time.sleep(0.02)


def assert_continues_exactly(resumed: Path, reference: Path, first_step: int) -> None:
    """The resumed run trained from `first_step` on with the reference's losses and ended at its val loss."""
    loss, expected = logged_series(resumed, "train/loss"), logged_series(reference, "train/loss")
    assert min(loss) == first_step and max(loss) == max(expected)
    for step in loss:
        assert loss[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    summary = json.loads((resumed / "summary.json").read_text())
    reference_summary = json.loads((reference / "summary.json").read_text())
    assert summary["global_step"] == reference_summary["global_step"]
    assert summary["val_loss"] == pytest.approx(reference_summary["val_loss"], rel=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_preempted_run_resumes_where_it_stopped(signum, uninterrupted, tmp_path, cache_dir):
    killed = tmp_path / "killed"
    process, log = launch(killed, [*RESUMABLE, "trainer.save_total_limit=100"], cache_dir)
    wait_for(killed / "checkpoints" / "step-000006.ckpt", process, log)
    process.send_signal(signum)
    output = finish(process, log)
    assert not (killed / "summary.json").exists()  # it really died mid-training
    if signum == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM
        assert "stopped by SIGTERM at step" in output and "resume=" in output
    else:
        assert process.returncode == -signal.SIGKILL
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    # Checkpoints are only written between optimizer steps, never mid-accumulation.
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] % 2 == 0

    resumed = tmp_path / "resumed"
    train(compose_train(resumed, tmp_path, cache_dir, *RESUMABLE, "resume=last"))
    assert_continues_exactly(resumed, uninterrupted, first_step=saved["global_step"])


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, cache_dir) -> list[str]:
    """RESUMABLE on 200 shared Alpaca rows streamed from a .jsonl file (data.streaming=true)."""
    root = tmp_path_factory.mktemp("streamed")
    rows = [row for _, row in read_source(SHARED_DATA / "alpaca_en_demo.json")][:200]
    path = root / "alpaca.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tiny_file = [o for o in RESUMABLE if not o.startswith("data.datasets.builtin")]
    return [
        *tiny_file,
        "data=mix",
        f"data.datasets=[{path}]",
        "data.streaming=true",
        "data.shuffle_buffer=32",
    ]


@pytest.mark.slow  # three two-process runs: about a minute on 2 cores
def test_a_preempted_streamed_ddp_run_stops_every_rank_at_one_step_and_resumes_exactly(
    streamed, tmp_path, cache_dir
):
    """SIGTERM to the launching process only, as a scheduler's first notice: every rank stops after the
    same step, the checkpoint holds each rank's generators and its own place in the streamed file, and
    the resumed run repeats the uninterrupted one loss for loss. (SIGKILL and SIGTERM of one process: the
    map-style test above; a resume from a named step checkpoint: tests/training/test_fsdp_cpu.py; a
    stream's snapshot alone: tests/data/test_streaming.py.)"""
    ddp = [
        *streamed,
        "trainer.micro_batch_size=2",
        "trainer.devices=2",
        "strategy=ddp",
        "trainer.max_steps=10",
        "trainer.save_total_limit=100",  # step checkpoints stay, so waiting for one cannot miss it
    ]
    reference = tmp_path / "reference"
    process, log = launch(reference, ddp, cache_dir)
    assert finish(process, log) and process.returncode == 0, log.read_text()[-3000:]

    stopped = tmp_path / "stopped"
    process, log = launch(stopped, ddp, cache_dir)
    wait_for(stopped / "checkpoints" / "step-000003.ckpt", process, log)
    process.send_signal(signal.SIGTERM)
    output = finish(process, log)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert output.count("\nstopped by SIGTERM at step") == 1  # printed once, not per rank
    saved = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(saved["rng_states"]) == 2  # each rank's generators
    streams = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["stream"]
    buffers = [{example["location"] for example in stream["buffer"]} for stream in streams]
    assert len(streams) == 2 and buffers[0] and buffers[0] != buffers[1]  # each rank's own stream
    trained = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    for stream in streams:
        assert stream["batches"] == trained and stream["positions"]["alpaca"][1] > 0  # a byte offset mid-file

    resumed = tmp_path / "resumed"
    process, log = launch(resumed, ddp, cache_dir, f"resume={stopped / 'checkpoints' / 'last.ckpt'}")
    assert finish(process, log) and process.returncode == 0, log.read_text()[-3000:]
    assert_continues_exactly(resumed, reference, first_step=saved["global_step"])


def test_ctrl_c_checkpoints_after_the_current_step(make_cfg, tmp_path):
    cfg = make_cfg(*RESUMABLE, "+callbacks.ctrl_c._target_=faults.SendSignal", "+callbacks.ctrl_c.step=3")
    # Whatever handled SIGINT before (Python's default, or SIG_IGN under a backgrounded shell) comes back.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Preempted, match="stopped by SIGINT at step 4") as stop:
        train(cfg)
    assert torch.load(stop.value.checkpoint, weights_only=True)["global_step"] == 4
    assert signal.getsignal(signal.SIGINT) is before  # handed back


def test_same_seed_gives_the_same_loss_curve(make_cfg, tmp_path):
    overrides = [*TINY, "lora.dropout=0.1", "trainer.max_steps=4"]
    train(make_cfg(*overrides, run="a"))
    train(make_cfg(*overrides, run="b"))
    assert logged_series(tmp_path / "a", "train/loss") == logged_series(tmp_path / "b", "train/loss")
    assert logged_series(tmp_path / "a", "val/loss") == logged_series(tmp_path / "b", "val/loss")
    train(make_cfg(*overrides, "seed=7", run="c"))
    assert logged_series(tmp_path / "a", "train/loss") != logged_series(tmp_path / "c", "train/loss")


def test_a_nan_step_is_skipped_and_counted(make_cfg, tmp_path):
    train(make_cfg(*TINY, "+callbacks.nan._target_=faults.InjectNaN", "+callbacks.nan.steps=[2]", run="nan"))
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["global_step"] == 6
    assert summary["val_loss"] == pytest.approx(summary["val_loss"])  # finite
    before, after = InjectNaN.weights[2], InjectNaN.weights[3]
    assert all(torch.equal(before[n], after[n]) for n in before)  # the poisoned step changed nothing
    assert any(not torch.equal(InjectNaN.weights[3][n], InjectNaN.weights[4][n]) for n in before)


def test_a_diverged_run_stops_with_advice(make_cfg, tmp_path):
    cfg = make_cfg(
        *TINY,
        "trainer.max_nonfinite_steps=3",
        "+callbacks.nan._target_=faults.InjectNaN",
        "+callbacks.nan.steps=[1,2,3,4,5]",
    )
    with pytest.raises(Diverged, match="3 optimizer steps in a row") as err:
        train(cfg)
    assert "optimizer.lr" in str(err.value) and "precision" in str(err.value)


def test_a_refused_checkpoint_write_stops_the_run_and_keeps_the_last_one(make_cfg, tmp_path):
    # From step 3 on the kernel refuses to grow any file past 64 KB; checkpoints are ~380 KB.
    cfg = make_cfg(
        *RESUMABLE,
        "+callbacks.disk._target_=faults.LimitFileSize",
        "+callbacks.disk.step=3",
        "+callbacks.disk.max_bytes=65536",
        run="full_disk",
    )
    from sft.training.checkpoint import CheckpointWriteError

    with pytest.raises(CheckpointWriteError, match="step-000004.ckpt.*File too large"):
        train(cfg)
    checkpoints = tmp_path / "full_disk" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last.ckpt",
        "step-000002.ckpt",
        "step-000003.ckpt",
    ]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3
    train(make_cfg(*RESUMABLE, "trainer.max_steps=4", f"resume={checkpoints / 'last.ckpt'}", run="after"))
    assert json.loads((tmp_path / "after" / "summary.json").read_text())["global_step"] == 4


def test_an_output_dir_holding_a_run_is_refused_unless_overwrite(make_cfg, tmp_path):
    short = [*TINY, "trainer.max_steps=2", "trainer.eval_steps=2"]
    train(make_cfg(*short, run="taken"))
    with pytest.raises(ConfigError, match="already holds a finished run.*overwrite=true"):
        train(make_cfg(*short, run="taken"))
    train(make_cfg(*short, "overwrite=true", run="taken"))
    assert json.loads((tmp_path / "taken" / "summary.json").read_text())["global_step"] == 2

    (tmp_path / "taken" / "summary.json").unlink()  # now it looks like a crashed run
    with pytest.raises(ConfigError, match="checkpoints of an unfinished run.*resume="):
        train(make_cfg(*short, run="taken"))


def test_secrets_stay_out_of_everything_the_run_writes(make_cfg, tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(
        make_cfg(
            *TINY,
            "logger=all",
            "trainer.max_steps=2",
            "trainer.eval_steps=2",
            "probe.prompts=[${oc.env:WANDB_API_KEY}]",  # a secret reached under an innocent name
            run="secret",
        )
    )
    run = tmp_path / "secret"
    written = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in written) and any("wandb" in p.parts for p in written)
    assert not [p for p in written if secret.encode() in p.read_bytes()]


def test_a_secret_typed_into_the_config_is_refused(make_cfg):
    from sft.config import validate

    with pytest.raises(ConfigError, match="logger.wandb.api_key: a secret typed into the config"):
        validate(make_cfg(*TINY, "logger=wandb", "+logger.wandb.api_key=abc123"))
