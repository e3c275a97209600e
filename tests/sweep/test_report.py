"""sft.sweep.report on a real tiny grid multirun, on Optuna studies, and the sweep_report notebook."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import optuna
import pandas as pd
import pytest
import yaml
from conftest import ROOT, TINY, run_module
from nbclient import NotebookClient

from sft.sweep.report import collect, load_study, main, write_report

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory, cache_dir) -> Path:
    """A real two-job grid multirun (lora.r=4,8) of the tiny model, two steps each."""
    root = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(root)}
    args = ["-m", *TINY, "trainer.max_steps=2", "trainer.eval_steps=2", "lora.r=4,8"]
    done = run_module("sft.train", *args, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = (root / "outputs" / "train" / "multiruns").iterdir()
    return sweep_dir


def _copy(sweep_dir: Path, to: Path) -> Path:
    """A copy of a sweep dir without the weights, which the report never reads."""
    return Path(shutil.copytree(sweep_dir, to, ignore=shutil.ignore_patterns("checkpoints", "adapter")))


def test_collect_grid(multirun):
    df = collect(multirun)
    assert len(df) == 2
    assert sorted(df["lora.r"]) == [4, 8]
    assert (df["status"] == "finished").all()
    assert df["val_loss"].notna().all()
    assert df["val_loss"].is_monotonic_increasing  # best first
    assert df.attrs["params"] == ["lora.r"]  # fixed overrides (model=tiny, ...) are not swept
    assert "data" not in df and "output_dir" not in df  # nested dicts and paths are not metrics
    # Every final validation metric of the stage is a column (val/rewards/accuracy for dpo, ...).
    assert df["val/loss"].tolist() == df["val_loss"].tolist() and "val" not in df


def test_cli_writes_report(multirun, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(multirun), "--out", str(out)])
    names = {"runs.csv", "runs.md", "loss_curves.png", "val_loss_vs_lora.r.png"}
    assert names == {p.name for p in out.iterdir()}
    printed = capsys.readouterr().out
    assert "lora.r" in printed and all(str(out / name) in printed for name in names)
    table = (out / "runs.md").read_text().splitlines()
    assert table[0].startswith("| run | status | lora.r |")
    assert len(table) == 2 + 2  # header, separator, one row per run
    assert len(pd.read_csv(out / "runs.csv")) == 2


def test_missing_summary_is_failed(multirun, tmp_path):
    sweep_dir = _copy(multirun, tmp_path / "sweep")
    (sweep_dir / "1" / "summary.json").unlink()
    df = collect(sweep_dir)
    assert list(df["run"]) == ["0", "1"]  # finished before failed
    assert list(df["status"]) == ["finished", "failed"]
    assert pd.isna(df.loc[1, "val_loss"])
    written = write_report(df, sweep_dir, tmp_path / "out")
    assert {p.name for p in written} >= {"loss_curves.png", "val_loss_vs_lora.r.png"}


def test_not_a_sweep_dir_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
    assert "no numbered job dirs" in capsys.readouterr().err


def _study(path: Path, name: str, n_trials: int) -> optuna.Study:
    """A SQLite study of a cheap objective: trial 2 is pruned and trial 3 fails, the rest complete."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("optimizer.lr", 1e-5, 1e-2, log=True)
        rank = trial.suggest_categorical("lora.r", [4, 8, 16])
        if trial.number == 2:
            raise optuna.TrialPruned()
        if trial.number == 3:
            trial.set_user_attr("error", "CUDA out of memory")
            raise RuntimeError("CUDA out of memory")
        return lr * 100 + 1 / rank

    storage = f"sqlite:///{path / 'studies.db'}"
    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective, n_trials=n_trials, catch=(RuntimeError,))
    (path / "study.json").write_text(json.dumps({"study_name": name, "storage": storage}))
    return study


def test_study_without_job_dirs(tmp_path, capsys):
    _study(tmp_path, "lr", n_trials=6)
    df = collect(tmp_path)
    assert sorted(df["trial"]) == list(range(6))
    assert sorted(df.attrs["params"]) == ["lora.r", "optimizer.lr"]
    by_trial = df.set_index("trial")
    assert by_trial.loc[2, "state"] == "PRUNED" and by_trial.loc[2, "status"] == "pruned"
    assert by_trial.loc[3, "status"] == "failed" and by_trial.loc[3, "error"] == "CUDA out of memory"
    assert list(df["status"][:4]) == ["finished"] * 4 and df["value"][:4].is_monotonic_increasing
    names = {p.name for p in write_report(df, tmp_path, tmp_path / "report", study=load_study(tmp_path))}
    assert {"runs.csv", "optimization_history.png", "param_importances.png", "value_vs_lora.r.png"} <= names
    assert "loss_curves.png" in capsys.readouterr().out  # said why it was skipped


def test_param_importances_skipped_when_not_computable(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="one", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # a single completed trial
    (tmp_path / "study.json").write_text(json.dumps({"study_name": "one", "storage": storage}))
    main([str(tmp_path)])
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert "optimization_history.png" in names and "param_importances.png" not in names
    assert "skipped param_importances.png: it needs at least 2 completed trials" in capsys.readouterr().out


def test_study_joined_to_job_dirs(multirun, tmp_path):
    sweep_dir = _copy(multirun, tmp_path / "sweep")
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="r", storage=storage)
    for number, (rank, state) in enumerate([(4, "COMPLETE"), (8, "PRUNED"), (16, "COMPLETE")]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lora.r": rank},
                distributions={"lora.r": optuna.distributions.CategoricalDistribution([4, 8, 16])},
                value=1.0 / rank if state == "COMPLETE" else None,
                state=optuna.trial.TrialState[state],
            )
        )
        if number < 2:  # what our sweeper adds to the overrides, and so the config, of a trial's job
            job = sweep_dir / str(number)
            identity = {"study_name": "r", "storage": storage, "id": number + 1, "number": number}
            record = yaml.safe_load((job / "config.yaml").read_text())
            (job / "config.yaml").write_text(yaml.safe_dump({**record, "trial": identity}))
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            override = f"trial={{study_name:'r',storage:'{storage}',id:{number + 1},number:{number}}}"
            (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, override]))
    (sweep_dir / "study.json").write_text(json.dumps({"study_name": "r", "storage": storage}))

    df = collect(sweep_dir).set_index("trial")
    assert list(df.loc[[0, 1, 2], "run"].fillna("-")) == ["0", "1", "-"]  # trial 2 ran in another sweep dir
    assert list(df.loc[[0, 1, 2], "status"]) == ["finished", "pruned", "finished"]  # the study decides
    assert list(df.loc[[0, 1, 2], "lora.r"]) == [4, 8, 16]
    assert df.loc[0, "val_loss"] > 0 and pd.isna(df.loc[2, "val_loss"])
    assert list(df.columns[:4]) == ["run", "status", "state", "lora.r"]  # trial (the index) is no parameter


def test_notebook_runs(multirun, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "sweep_report.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # saved clean
    monkeypatch.setenv("SFT_SWEEP_DIR", str(multirun))  # the kernel inherits this process's environment
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable, len(df))"))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 2  # loss curves, val_loss vs lora.r
    assert outputs[-1]["text"].split() == [sys.executable, "2"]  # the venv's python, the fixture's two runs
