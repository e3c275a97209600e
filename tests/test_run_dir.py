"""The run directory: its layout, atomic writes (summary.json above all), claiming, reading back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from conftest import TINY

from sft import atomic
from sft.config import ConfigError
from sft.run_dir import RunDir, series
from sft.train import train

SUMMARY = {"global_step": 3, "val_loss": 1.5}


def test_a_failed_summary_write_does_not_make_the_run_look_finished(tmp_path, monkeypatch):
    run = RunDir(tmp_path)

    def broken(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError, match="disk gone"):
        run.write_summary(SUMMARY, [])
    assert not run.finished and not run.summary.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is gone too
    assert not run.claim(overwrite=False, resume_from=None)  # nothing here to refuse


def test_a_process_killed_while_writing_the_summary_leaves_no_summary(tmp_path):
    """SIGKILL after the bytes are written but before the rename: the run is not finished."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from sft.run_dir import RunDir
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        RunDir({str(tmp_path)!r}).write_summary({SUMMARY!r}, [])
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    run = RunDir(tmp_path)
    assert not run.finished and run.read_summary() is None
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".summary.json-")  # the whole new text
    assert json.loads(leftovers[0].read_text()) == SUMMARY


def test_summary_replaces_the_old_one_whole_and_data_problems_come_first(tmp_path):
    run = RunDir(tmp_path)
    run.write_summary({"global_step": 1}, ["row 3: no text"])
    run.write_summary(SUMMARY, [])
    assert run.finished and run.read_summary() == SUMMARY
    assert run.data_problems.read_text() == "row 3: no text\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_problems.txt", "summary.json"]


def test_claim_refuses_a_finished_run_or_checkpoints_unless_overwrite(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_summary(SUMMARY, [])
    run.hydra.mkdir()
    run.train_log.write_text("launch log\n")
    with pytest.raises(ConfigError, match=r"already holds a finished run \(summary.json\).*overwrite=true"):
        run.claim(overwrite=False, resume_from=None)
    assert not run.claim(overwrite=True, resume_from=None)
    assert sorted(p.name for p in run.path.iterdir()) == [".hydra", "train.log"]  # this launch's own

    run.checkpoints.mkdir()
    run.last_checkpoint.write_bytes(b"x")
    with pytest.raises(ConfigError, match="checkpoints of an unfinished run.*resume="):
        run.claim(overwrite=False, resume_from=None)
    assert run.claim(overwrite=False, resume_from=str(run.last_checkpoint))  # resumed in place


def test_metrics_survive_an_in_place_resume(tmp_path):
    """A resumed run's curve joins the part before the stop; re-trained steps come from the new part."""
    run = RunDir(tmp_path)
    run.metrics_dir.mkdir()
    before = pd.DataFrame({"step": [0, 1, 2, 3], "train/loss": [4.0, 3.5, 3.0, 2.9]})
    before.to_csv(run.metrics_dir / "metrics.csv", index=False)
    assert run.set_aside_metrics() == run.metrics_dir / "metrics.1.csv"
    after = pd.DataFrame({"step": [3, 4], "train/loss": [2.8, 2.6]})
    after.to_csv(run.metrics_dir / "metrics.csv", index=False)
    joined = run.metrics()
    assert joined["step"].tolist() == [0, 1, 2, 3, 4]
    assert joined["train/loss"].tolist() == [4.0, 3.5, 3.0, 2.8, 2.6]
    assert series(joined, "train/loss")["step"].tolist() == [0, 1, 2, 3, 4]
    assert series(joined, "val/loss").empty
    assert RunDir(tmp_path / "nothing").metrics().empty
    assert RunDir(tmp_path / "nothing").set_aside_metrics() is None


def test_hydra_record_and_composed_config_are_read_back(tmp_path):
    run = RunDir(tmp_path)
    assert run.overrides() == [] and run.choices() == {} and run.composed_config() == {}
    run.hydra.mkdir()
    (run.hydra / "overrides.yaml").write_text("- model=tiny\n")
    (run.hydra / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      model: tiny\n")
    (run.hydra / "config.yaml").write_text("trial:\n  number: 4\n")
    assert run.overrides() == ["model=tiny"] and run.choices() == {"model": "tiny"}
    assert run.composed_config() == {"trial": {"number": 4}}  # Hydra's copy until config.yaml exists
    run.write_config({"trial": {"number": 5}})
    assert run.composed_config() == {"trial": {"number": 5}}


def test_a_run_written_by_train_is_read_back_through_run_dir(make_cfg, tmp_path):
    train(make_cfg(*TINY, "trainer.max_steps=2", "trainer.eval_steps=2", run="run"))
    run = RunDir(tmp_path / "run")
    assert run.finished
    summary = run.read_summary()
    assert summary["global_step"] == 2 and summary["saved"] == str(run.adapter)
    assert run.weights == run.adapter and run.weights_dir(is_adapter=True) == run.adapter
    assert run.read_config().trainer.max_steps == 2
    assert run.read_progress()["state"] == "trained"
    assert "sft.train" in json.loads(run.record.read_text())["command"]
    assert run.last_checkpoint.is_file()
    assert series(run.metrics(), "val/loss")["step"].tolist()[-1] == 2
    for path in (run.summary, run.record, run.config, run.progress):
        assert path.stat().st_mode & 0o077 != 0  # not left private like the temp file it was written to
