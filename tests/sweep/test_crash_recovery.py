"""A sweep worker SIGKILLed mid-trial: its trial becomes FAIL through the heartbeat and is run again."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import CONF, ROOT, TINY
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from sft.sweep.storage import crash_safe_storage
from sft.sweep.sweeper import StudySweeper

HEARTBEAT, GRACE = 1, 2  # seconds: Optuna's heartbeat counts whole seconds (SQLite's clock does too)


def start_worker(*args: str, log: Path, env: dict) -> subprocess.Popen:
    """Start a sweep worker in a process group of its own, so the test can kill it and all it started."""
    command = [sys.executable, "-m", "sft.train", *args]
    with open(log, "w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def heartbeat_study(storage: str) -> optuna.Study:
    """The study through a storage that knows the test's heartbeat, as a worker's sweeper opens it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    return optuna.load_study(study_name="crash", storage=rdb)


def wait_for(condition, worker: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll `condition` until it holds; fail early if the worker exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_a_killed_workers_trial_fails_and_its_retry_completes_with_the_same_params(tmp_path, cache_dir):
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(tmp_path)}
    storage = f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}"
    args = [
        "-m",
        "hydra/sweeper=optuna",
        *TINY,
        "optimizer.lr=tag(log,interval(1e-6,1e-2))",
        "hydra.sweeper.study_name=crash",
        f"hydra.sweeper.heartbeat_interval={HEARTBEAT}",
        f"hydra.sweeper.grace_period={GRACE}",
        "hydra.sweeper.max_retry=1",
    ]
    # The first worker's trial would train for minutes: it is certainly mid-run when it is killed.
    # Each worker's sampler has its own seed, so only a retry can repeat the killed trial's parameters.
    first_log = tmp_path / "worker1.log"
    first = start_worker(
        *args,
        "trainer.max_steps=2000",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.sampler.seed=1",
        log=first_log,
        env=env,
    )
    runs = tmp_path / "outputs" / "train" / "multiruns"
    try:
        wait_for(lambda: any(runs.glob("*/0")), first, first_log)  # trial 0's job has started
        study = heartbeat_study(storage)
        # Past the grace period, a living worker's trial is not stale: its heartbeat keeps being recorded.
        time.sleep(GRACE + 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        assert first.poll() is None, first_log.read_text()[-3000:]
        assert [t.state for t in study.trials] == [TrialState.RUNNING]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    (killed,) = study.trials
    assert killed.state == TrialState.RUNNING  # nobody could tell the study: only the heartbeat shows it
    time.sleep(GRACE + 1.5)  # so the second worker finds it stale as it starts, before its first ask

    second_log = tmp_path / "worker2.log"
    second = start_worker(
        *args,
        "trainer.max_steps=3",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=2",
        log=second_log,
        env=env,
    )
    assert second.wait(timeout=300) == 0, second_log.read_text()[-3000:]

    trials = optuna.load_study(study_name="crash", storage=storage).trials
    # The killed trial, its retry (the first of the second worker's n_trials=2), then a new trial.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    killed, retry, fresh = trials
    assert retry.params == killed.params and fresh.params != killed.params
    assert retry.system_attrs["retry_history"] == [0] and "retry_history" not in fresh.system_attrs
    assert retry.system_attrs["failed_trial"] == 0  # RetryHeartbeatStaleTrialCallback.retried_trial_number
    # The retry's job really ran with those parameters (the second worker's own fixed overrides).
    (sweep,) = (p for p in runs.iterdir() if (p / "1").is_dir())
    job = OmegaConf.load(sweep / "1" / "config.yaml")
    assert job.optimizer.lr == pytest.approx(killed.params["optimizer.lr"]) and job.trainer.max_steps == 3
    assert (sweep / "1" / "summary.json").is_file()
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert OmegaConf.to_container(results.retries) == [{"number": 1, "retry_of": [0], "state": "complete"}]
    log = second_log.read_text()
    assert "trial 0: no heartbeat from its worker" in log and "trial 1: retry of trial 0" in log


def test_heartbeat_settings_default_and_are_checked():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweeper = compose("train", overrides=["hydra/sweeper=optuna"], return_hydra_config=True).hydra.sweeper
    GlobalHydra.instance().clear()
    assert (sweeper.heartbeat_interval, sweeper.grace_period, sweeper.max_retry) == (60, 120, 2)
    settings = {
        "study_name": "s",
        "storage": None,
        "n_trials": 1,
        "n_jobs": 1,
        "sampler": None,
        "pruner": None,
    }
    with pytest.raises(ValueError, match="grace_period"):
        StudySweeper(**settings, heartbeat_interval=60, grace_period=60)  # would fail living trials
    with pytest.raises(ValueError, match="heartbeat_interval"):
        StudySweeper(**settings, heartbeat_interval=0)
    StudySweeper(**settings, heartbeat_interval=None, grace_period=0)  # off: the rest is not used


class Launcher:
    """Runs no job; the second batch's trial is failed meanwhile, as another worker would a stale one."""

    def __init__(self, storage):
        self.storage, self.batches = storage, []

    def launch(self, batch, initial_job_idx):
        self.batches.append(batch)
        if len(self.batches) == 2:
            trial_id = int(batch[0][-2].split("id:")[1].split(",")[0])
            self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=0.5) for _ in batch]


def test_a_stale_trial_is_retried_first_with_its_params_and_a_late_result_is_dropped(tmp_path, caplog):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # A worker that asked trial 0, sent one heartbeat and died.
    dead = crash_safe_storage(storage, HEARTBEAT, GRACE, max_retry=1)
    study = optuna.create_study(study_name="s", storage=dead)
    study.enqueue_trial({"optimizer.lr": 0.1})  # the seeded sampler draws 0.2, 0.3 first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lost = study.ask({"optimizer.lr": CategoricalDistribution([0.1, 0.2, 0.3])})
    dead.record_heartbeat(lost._trial_id)
    time.sleep(GRACE + 1.5)

    s = StudySweeper(
        study_name="s",
        storage=storage,
        n_trials=2,
        n_jobs=1,
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=None,
        params={"optimizer.lr": "choice(0.1,0.2,0.3)"},
        heartbeat_interval=HEARTBEAT,
        grace_period=GRACE,
        max_retry=1,
    )
    s.config = OmegaConf.create(
        {
            "objective": {"directions": ["minimize"]},
            "paths": {"log_dir": str(tmp_path)},
            "hydra": {"sweeper": {"pruner": None}, "sweep": {"dir": str(tmp_path / "sweep")}},
        }
    )
    s.launcher = Launcher(dead)
    s.validate_batch_is_legal = lambda batch: None
    with caplog.at_level(logging.INFO):
        s.sweep([])
    retry_job = s.launcher.batches[0][0]
    assert "optimizer.lr=0.1" in retry_job and retry_job[-1] == "hydra.sweep.subdir=1"
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [(t.state, t.values) for t in trials] == [
        (TrialState.FAIL, None),
        (TrialState.COMPLETE, [0.5]),  # the retry, run first
        (TrialState.FAIL, None),  # its result came after another worker had failed it
    ]
    assert trials[1].system_attrs["retry_history"] == [0]
    assert (
        "trial 2: failed meanwhile as stale by another worker; its result is not recorded" in caplog.messages
    )
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert OmegaConf.to_container(results.retries) == [{"number": 1, "retry_of": [0], "state": "complete"}]
