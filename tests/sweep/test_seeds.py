"""Several seeds per Optuna trial (`hydra.sweeper.seeds`): every seed a job of the same launch, the study
told their mean; on stand-in jobs, then on a real 2-trial x 2-seed sweep through the joblib launcher."""

from __future__ import annotations

import json
import os
import statistics
from types import SimpleNamespace

import optuna
import pytest
from conftest import TINY, logged_series, run_module
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sft.config import TrialConfig
from sft.run_dir import RunDir
from sft.sweep.pruning import TrialPruning
from sft.sweep.report import collect, seed_summary
from sft.sweep.sweeper import StudySweeper

optuna.logging.set_verbosity(optuna.logging.WARNING)
THRESHOLD = {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0}


def done(value):
    return JobReturn(status=JobStatus.COMPLETED, _return_value=value)


def failed(err):
    return JobReturn(status=JobStatus.FAILED, _return_value=err)


def override(job: list[str], key: str) -> str:
    return next(o.split("=", 1)[1] for o in job if o.startswith(f"{key}="))


class Launcher:
    """Runs no job: a job's objective is 10 x its learning rate + its seed (`fail`: that seed's jobs fail)."""

    def __init__(self, fail: int | None = None):
        self.batches, self.fail = [], fail

    def launch(self, batch, initial_job_idx):
        self.batches.append((batch, initial_job_idx))
        return [
            failed(RuntimeError("out of memory"))
            if int(override(job, "seed")) == self.fail
            else done(10 * float(override(job, "optimizer.lr")) + int(override(job, "seed")))
            for job in batch
        ]


def swept(tmp_path, launcher, n_trials=2, n_jobs=1, seeds=(1, 2), study_name="s", **kw):
    s = StudySweeper(
        study_name=study_name,
        storage=None,
        n_trials=n_trials,
        n_jobs=n_jobs,
        sampler=None,
        pruner=None,
        seeds=None if seeds is None else list(seeds),
        **kw,
    )
    s.config = OmegaConf.create(
        {
            "objective": {"directions": ["minimize"]},
            "paths": {"log_dir": str(tmp_path)},
            "hydra": {"sweeper": {"pruner": None}, "sweep": {"dir": str(tmp_path / "sweep")}},
        }
    )
    s.launcher = launcher
    s.validate_batch_is_legal = lambda batch: None
    return s


def test_every_seed_of_every_trial_is_one_job_of_the_same_launch_and_the_study_gets_their_mean(tmp_path):
    launcher = Launcher()
    s = swept(tmp_path, launcher, n_trials=3, n_jobs=2, seeds=(5, 7), params={"optimizer.lr": "choice(0.1)"})
    s.sweep(["trainer.max_steps=3"])
    # Two trials (4 jobs), then one (2 jobs); the seeds of a trial side by side, numbered after it.
    assert [(len(batch), at) for batch, at in launcher.batches] == [(4, 0), (2, 4)]
    first = launcher.batches[0][0]
    assert [override(job, "seed") for job in first] == ["5", "7", "5", "7"]
    assert [override(job, "hydra.sweep.subdir") for job in first] == ["0", "1", "2", "3"]
    assert [override(job, "trial")[-9:] for job in first] == ["number:0}", "number:0}", *["number:1}"] * 2]
    assert all(job[0] == "trainer.max_steps=3" for job in first)
    study = optuna.load_study(study_name="s", storage=s.storage)
    assert study.user_attrs["seeds"] == [5, 7]
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.value == pytest.approx(1.0 + 6.0)  # mean of 1 + 5 and 1 + 7
        assert trial.user_attrs["seed_values"] == {"5": pytest.approx(6.0), "7": pytest.approx(8.0)}
        assert trial.user_attrs["seed_std"] == pytest.approx(statistics.stdev([6.0, 8.0]))
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.seeds == [5, 7] and set(results.best[0].seed_values) == {"5", "7"}


def told(results, directions=("minimize",), seeds=(1, 2, 3)):
    """The frozen trial once a sweeper with `seeds` has told a fresh study the jobs' `results`."""
    study = optuna.create_study(directions=list(directions))
    trial = study.ask()
    s = StudySweeper(
        study_name="s", storage=None, n_trials=1, n_jobs=1, sampler=None, pruner=None, seeds=list(seeds)
    )
    s._tell_seeds(study, trial, dict(zip(seeds, results, strict=True)))
    return study.trials[0]


def test_the_mean_and_spread_of_each_objective_over_the_seeds():
    trial = told([done(1.0), done(2.0), done(4.0)])
    assert trial.value == pytest.approx(7 / 3)
    assert trial.user_attrs["seed_values"] == {"1": 1.0, "2": 2.0, "3": 4.0}
    assert trial.user_attrs["seed_std"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    trial = told([done((1.0, 10)), done((3.0, 20))], ("minimize", "maximize"), seeds=(1, 2))
    assert trial.values == pytest.approx([2.0, 15.0])
    assert trial.user_attrs["seed_values"] == {"1": [1.0, 10.0], "2": [3.0, 20.0]}
    assert trial.user_attrs["seed_std"] == pytest.approx(
        [statistics.stdev([1, 3]), statistics.stdev([10, 20])]
    )


def test_one_failed_seed_fails_the_trial_and_the_others_values_are_kept():
    trial = told([done(1.0), failed(RuntimeError("out of memory")), done(float("nan"))])
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"] == (
        "seed 2: RuntimeError: out of memory; seed 3: the objective was not finite: [nan]"
    )
    assert trial.user_attrs["seed_values"] == {"1": 1.0}


def test_a_pruned_first_seed_prunes_the_trial():
    trial = told([failed(optuna.TrialPruned("at step 7")), done(1.0), done(2.0)])
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["seed_values"] == {"2": 1.0, "3": 2.0}


def test_a_study_keeps_its_seeds_and_seed_is_not_also_an_override(tmp_path):
    space = {"optimizer.lr": "choice(0.1)"}
    swept(tmp_path, Launcher(), n_trials=1, params=space).sweep([])
    with pytest.raises(
        ValueError, match=r"was run with hydra.sweeper.seeds=\[1, 2\], this sweep has \[1, 3\]"
    ):
        swept(tmp_path, Launcher(), n_trials=1, seeds=(1, 3), params=space).sweep([])
    with pytest.raises(ValueError, match=r"this sweep has None"):
        swept(tmp_path, Launcher(), n_trials=1, seeds=None, params=space).sweep([])
    with pytest.raises(ValueError, match="do not also give seed="):
        swept(tmp_path, Launcher(), n_trials=1, params=space).sweep(["seed=3"])
    for seeds in ([], [1, 1], [1.5]):
        with pytest.raises(ValueError, match="must be null or a list of distinct integers"):
            swept(tmp_path, Launcher(), seeds=seeds)


def test_a_sweep_without_seeds_runs_one_job_per_trial_as_before(tmp_path):
    batches = []
    launcher = SimpleNamespace(launch=lambda batch, initial_job_idx: batches.append(batch) or [done(0.5)] * 2)
    s = swept(tmp_path, launcher, n_trials=2, n_jobs=2, seeds=None, params={"optimizer.lr": "choice(0.1)"})
    s.sweep([])
    (batch,) = batches
    assert [override(job, "hydra.sweep.subdir") for job in batch] == ["0", "1"]
    assert not any(o.startswith("seed=") for job in batch for o in job)
    study = optuna.load_study(study_name="s", storage=s.storage)
    assert study.user_attrs["seeds"] is None and "seed_values" not in study.trials[0].user_attrs


def pruning_callback(tmp_path, seed):
    """A run's pruning callback, for its `seed`, on the trial of a study run over seeds 1 and 2."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    study.set_user_attr("pruner", THRESHOLD)
    study.set_user_attr("seeds", [1, 2])
    trial = study.ask()
    cfg = TrialConfig(study_name="s", storage=storage, id=trial._trial_id, number=trial.number)
    trainer = SimpleNamespace(
        is_global_zero=True,
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        callback_metrics={"val/loss": 2.0},
        global_step=7,
        strategy=SimpleNamespace(broadcast=lambda x, src: x),
    )
    callback = TrialPruning(cfg, "val/loss", seed)
    callback.on_fit_start(trainer, None)
    return study, trial, callback, trainer


def test_only_the_first_seed_reports_to_the_pruner(tmp_path):
    study, trial, callback, trainer = pruning_callback(tmp_path, seed=2)
    callback.on_validation_end(trainer, None)  # worse than the threshold, yet not this seed's to say
    assert study.trials[trial.number].intermediate_values == {}
    study, trial, callback, trainer = pruning_callback(tmp_path, seed=1)
    with pytest.raises(optuna.TrialPruned):
        callback.on_validation_end(trainer, None)
    assert study.trials[trial.number].intermediate_values == {7: 2.0}


def test_a_real_sweep_runs_each_seed_at_once_and_tells_their_mean(tmp_path, cache_dir):
    """2 trials x 2 seeds through the joblib launcher: really different runs per seed, read by the report."""
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(tmp_path)}
    result = run_module(
        "sft.train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra/launcher=parallel",
        "hydra/sweeper/pruner=median",  # prunes nothing within its 3 startup trials, but hears reports
        *TINY,
        "trainer.max_steps=2",
        "trainer.eval_steps=1",
        "optimizer.lr=tag(log,interval(1e-3,1e-2))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.seeds=[1,2]",
        "hydra.sweeper.study_name=seeds",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "evaluation.parity.prompts=2",  # asked for, but sweep trials never record it
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="seeds", storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"), key=lambda p: int(p.name))
    assert [job.name for job in jobs] == ["0", "1", "2", "3"]
    assert not any(RunDir(job).parity_reference.exists() for job in jobs)
    by_trial: dict[int, dict[int, float]] = {}
    for job in jobs:
        config = RunDir(job).composed_config()
        seed = json.loads((job / "run_record.json").read_text())["seed"]
        assert seed == config["seed"] == [1, 2][int(job.name) % 2]  # the job ran with its own seed
        trial = study.trials[config["trial"]["number"]]
        assert config["optimizer"]["lr"] == trial.params["optimizer.lr"]
        summary = json.loads((job / "summary.json").read_text())
        by_trial.setdefault(trial.number, {})[seed] = summary["val_loss"]
        # The pruner hears the first seed's evaluations, never the other seed's.
        curve = set(logged_series(job, "val/loss").values())
        heard = set(trial.intermediate_values.values())
        assert len(heard) == 2 and (heard <= curve) == (seed == 1), (heard, curve)
    for trial in study.trials:
        values = by_trial[trial.number]
        assert values[1] != values[2]  # the seeds really differ: not one run told twice
        assert trial.value == pytest.approx(statistics.fmean(values.values()), rel=1e-12)
        assert trial.user_attrs["seed_values"] == {str(s): pytest.approx(v) for s, v in values.items()}
    # Both seeds of a trial ran at once (one launch, a parallel launcher).
    starts_ends = [
        ((job / ".hydra" / "config.yaml").stat().st_mtime, (job / "summary.json").stat().st_mtime)
        for job in jobs[:2]
    ]
    assert starts_ends[0][0] < starts_ends[1][1] and starts_ends[1][0] < starts_ends[0][1]
    # sft.report groups the seeds of each trial's parameters: its mean is the study's value.
    summary = seed_summary(collect(tmp_path / "sweep"), ["val_loss"]).set_index("optimizer.lr")
    for trial in study.trials:
        row = summary.loc[trial.params["optimizer.lr"]]
        assert row["n"] == 2 and row["val_loss_mean"] == pytest.approx(trial.value, rel=1e-12)
