"""Optuna sweeps through parallel Hydra launchers: our presets over Hydra's joblib launcher
(`hydra/launcher=parallel`) and submitit's local executor (`hydra/launcher=submitit_local_cpu`), with real
training jobs in worker processes. Ray's launcher is tested where its extra is installed (`.[ray]`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from conftest import CONF, TINY, start_module
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from optuna.trial import TrialState

from sft.config.resolvers import cpu_share
from sft.run_dir import RunDir

# Each worker process takes its share of the cores: the variables that would fix the share from outside.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def sweep_env(tmp_path: Path, cache_dir: Path) -> dict:
    """The environment of a sweep command with outputs under `tmp_path`, threads left to the launcher."""
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(tmp_path)}
    for name in THREAD_VARS:
        env.pop(name, None)
    return env


def span(job: Path) -> tuple[float, float]:
    """When a job ran: Hydra saved its config (before the run starts) to its summary (the run's end)."""
    return (job / ".hydra" / "config.yaml").stat().st_mtime, (job / "summary.json").stat().st_mtime


def at_once(jobs: list[Path]) -> bool:
    """Whether every pair of these jobs ran at overlapping times."""
    spans = [span(job) for job in jobs]
    return all(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


def check_jobs_match_trials(study: optuna.Study, jobs: list[Path]) -> None:
    """Each job dir is its trial's: the trial's parameters went in, and its result is the trial's value."""
    trials = {t.number: t for t in study.trials}
    for job in jobs:
        config = RunDir(job).composed_config()
        trial = trials[config["trial"]["number"]]
        assert job.name == str(trial.number)  # named by trial number
        assert config["optimizer"]["lr"] == trial.params["optimizer.lr"]
        assert json.loads((job / "summary.json").read_text())["val_loss"] == trial.value


def test_a_joblib_and_a_submitit_sweeper_share_a_study_each_running_its_batch_at_once(tmp_path, cache_dir):
    """Two sweeper processes started together on one study, one launching through each parallel launcher:
    each runs its two trials at once, and the study holds all four, each in a job dir of its own."""
    args = [
        "-m",
        "hydra/sweeper=optuna",
        *TINY,
        "trainer.max_steps=1",
        "trainer.eval_steps=1",
        "optimizer.lr=tag(log,interval(1e-4,1e-2))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.study_name=shared",
    ]
    env = sweep_env(tmp_path, cache_dir)
    launchers = ["parallel", "submitit_local_cpu"]  # Hydra's joblib launcher; submitit's local executor
    # A sweep dir each (two sweepers started in the same second would share the default one), so every
    # job dir tells which sweeper launched it.
    workers = [
        start_module(
            "sft.train",
            *args,
            f"hydra/launcher={name}",
            f"hydra.sweep.dir={tmp_path / name}",
            log=tmp_path / f"{name}.log",
            env=env,
        )
        for name in launchers
    ]
    for name, worker in zip(launchers, workers, strict=True):
        assert worker.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    batches = {name: sorted((tmp_path / name).glob("[0-9]*")) for name in launchers}
    assert [len(jobs) for jobs in batches.values()] == [2, 2]
    assert sorted(job.name for jobs in batches.values() for job in jobs) == ["0", "1", "2", "3"]
    for jobs in batches.values():
        check_jobs_match_trials(study, jobs)
        assert at_once(jobs), [span(job) for job in jobs]
        for job in jobs:  # two jobs at once share the cores rather than each taking them all
            record = json.loads((job / "run_record.json").read_text())
            assert record["hardware"]["torch_threads"] == cpu_share(2)
    assert list((tmp_path / "submitit_local_cpu" / ".submitit").iterdir())  # submitit ran those


def compose_launcher(name: str, *overrides: str):
    """The hydra node of train.yaml with the Optuna sweeper and the launcher preset `name`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=["hydra/sweeper=optuna", f"hydra/launcher={name}", *overrides],
            return_hydra_config=True,
        ).hydra


def test_the_presets_size_a_launch_to_the_sweepers_batch_and_share_the_cores():
    """A launch is n_jobs trials x seeds; each job of it gets that share of the cores as torch threads."""
    hydra = compose_launcher("parallel", "hydra.sweeper.n_jobs=3", "hydra.sweeper.seeds=[1,2]")
    assert hydra.launcher.n_jobs == 6  # joblib then sets OMP_NUM_THREADS=cores//6 in its workers
    hydra = compose_launcher("submitit_local_cpu", "hydra.sweeper.n_jobs=2")
    assert hydra.launcher.cpus_per_task == cpu_share(2)
    assert hydra.job.env_set.OMP_NUM_THREADS == str(cpu_share(2))
    hydra = compose_launcher("slurm", "hydra.launcher.cpus_per_task=16")
    assert hydra.launcher._target_.endswith("SlurmLauncher")
    assert hydra.job.env_set.OMP_NUM_THREADS == "16"
    # Hydra's basic sweeper (a grid multirun) launches everything at once: one thread per core.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        grid = compose("train", overrides=["hydra/launcher=parallel"], return_hydra_config=True).hydra
    assert grid.launcher.n_jobs == -1
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("name", "kind"),
    [("parallel", "JoblibLauncher"), ("submitit_local_cpu", "LocalLauncher"), ("slurm", "SlurmLauncher")],
)
def test_each_preset_builds_its_launcher(name, kind):
    launcher = instantiate(compose_launcher(name).launcher)
    GlobalHydra.instance().clear()
    assert type(launcher).__name__ == kind


def test_ray_launches_a_batch_at_once(tmp_path, cache_dir):
    """Hydra's Ray launcher in local mode, where the `ray` extra is installed (it is not in `dev`)."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    args = [
        "-m",
        "hydra/sweeper=optuna",
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        *TINY,
        "trainer.max_steps=1",
        "trainer.eval_steps=1",
        "optimizer.lr=tag(log,interval(1e-4,1e-2))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.study_name=ray",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    worker = start_module("sft.train", *args, log=tmp_path / "ray.log", env=sweep_env(tmp_path, cache_dir))
    assert worker.wait(timeout=600) == 0, (tmp_path / "ray.log").read_text()[-3000:]
    study = optuna.load_study(study_name="ray", storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    check_jobs_match_trials(study, jobs)
    assert at_once(jobs)
