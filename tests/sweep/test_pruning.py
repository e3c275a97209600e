"""Pruning from inside a run and the sweeper's record of each trial's outcome, on in-process studies."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sft.config import TrialConfig
from sft.sweep.pruning import TrialPruning
from sft.sweep.sweeper import StudySweeper

optuna.logging.set_verbosity(optuna.logging.WARNING)
THRESHOLD = {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0}


def study_with(tmp_path, pruner=THRESHOLD, directions=("minimize",)):
    """A stored study whose pruner config sits on it, as the sweeper leaves it; and its first trial."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # A second study in the storage: the callback must open its own by name.
    optuna.create_study(study_name="other", storage=storage)
    study = optuna.create_study(study_name="s", storage=storage, directions=list(directions))
    study.set_user_attr("pruner", pruner)
    trial = study.ask()
    return study, TrialConfig(study_name="s", storage=storage, id=trial._trial_id, number=trial.number)


def trainer(value=None, *, rank0=True, sanity=False, fn="fit", broadcast=None):
    """A stand-in trainer at step 7 whose broadcast is rank 0's answer (`broadcast` overrides it)."""
    return SimpleNamespace(
        is_global_zero=rank0,
        sanity_checking=sanity,
        state=SimpleNamespace(fn=fn),
        callback_metrics={} if value is None else {"val/loss": value},
        global_step=7,
        strategy=SimpleNamespace(
            broadcast=lambda x, src: (x if broadcast is None else broadcast) if src == 0 else None
        ),
    )


def attached(cfg, t):
    callback = TrialPruning(cfg, "val/loss")
    callback.on_fit_start(t, None)
    return callback


def test_a_trial_worse_than_the_pruner_allows_is_reported_and_stopped(tmp_path, caplog):
    study, cfg = study_with(tmp_path)
    t = trainer(2.0)
    with caplog.at_level(logging.INFO), pytest.raises(optuna.TrialPruned) as pruned:
        attached(cfg, t).on_validation_end(t, None)
    assert str(pruned.value) == "trial 0 pruned at step 7 (val/loss=2.0000)"
    assert "trial 0 pruned at step 7 (val/loss=2.0000)" in caplog.messages
    assert study.trials[0].intermediate_values == {7: 2.0}


def test_a_good_trial_is_reported_and_runs_on(tmp_path):
    study, cfg = study_with(tmp_path)
    t = trainer(0.5)
    attached(cfg, t).on_validation_end(t, None)
    assert study.trials[0].intermediate_values == {7: 0.5}


@pytest.mark.parametrize("when", [{"sanity": True}, {"fn": "validate"}])
def test_sanity_checks_and_plain_validation_report_nothing(tmp_path, when):
    study, cfg = study_with(tmp_path)
    t = trainer(2.0, **when)
    attached(cfg, t).on_validation_end(t, None)
    assert study.trials[0].intermediate_values == {}


def test_without_a_pruner_or_with_several_objectives_nothing_is_reported(tmp_path):
    for i, (pruner, directions) in enumerate([(None, ("minimize",)), (THRESHOLD, ("minimize", "maximize"))]):
        (tmp_path / str(i)).mkdir()
        study, cfg = study_with(tmp_path / str(i), pruner, directions)
        t = trainer(2.0)
        attached(cfg, t).on_validation_end(t, None)
        assert study.trials[0].intermediate_values == {}


def test_a_missing_metric_is_not_reported(tmp_path):
    study, cfg = study_with(tmp_path)
    t = trainer(None)
    attached(cfg, t).on_validation_end(t, None)
    assert study.trials[0].intermediate_values == {}


def test_other_ranks_never_touch_the_study_and_stop_when_rank_zero_says_so(tmp_path):
    study, cfg = study_with(tmp_path)
    callback = attached(cfg, trainer(2.0, rank0=False, broadcast=False))
    assert callback._trial is None
    callback.on_validation_end(trainer(2.0, rank0=False, broadcast=False), None)
    with pytest.raises(optuna.TrialPruned, match=r"^trial 0 pruned at step 7 \(val/loss=2\.0000\)$"):
        callback.on_validation_end(trainer(2.0, rank0=False, broadcast=True), None)
    assert study.trials[0].intermediate_values == {}


# --- the sweeper's record --------------------------------------------------------------------------


def sweeper(**kw):
    return StudySweeper(study_name="s", storage=None, n_trials=1, n_jobs=1, sampler=None, pruner=None, **kw)


def told(result, directions=("minimize",)):
    """(state, values, error attribute) of a fresh trial once the sweeper has told the study `result`."""
    study = optuna.create_study(directions=list(directions))
    trial = study.ask()
    sweeper()._tell(study, trial, result)
    frozen = study.trials[0]
    return frozen.state, frozen.values, frozen.user_attrs.get("error")


def done(value):
    return JobReturn(status=JobStatus.COMPLETED, _return_value=value)


def failed(err):
    return JobReturn(status=JobStatus.FAILED, _return_value=err)


def test_a_finished_job_records_its_values():
    assert told(done(0.25)) == (TrialState.COMPLETE, [0.25], None)
    assert told(done((0.25, 3)), ("minimize", "maximize")) == (TrialState.COMPLETE, [0.25, 3.0], None)
    assert told(done([2]), ("maximize",)) == (TrialState.COMPLETE, [2.0], None)


def test_a_pruned_job_is_pruned_not_failed():
    assert told(failed(optuna.TrialPruned("at step 7"))) == (TrialState.PRUNED, None, None)


def test_a_crashed_job_fails_its_trial_with_the_error_kept():
    assert told(failed(RuntimeError("out of memory"))) == (
        TrialState.FAIL,
        None,
        "RuntimeError: out of memory",
    )
    state, _, error = told(failed(ValueError("x" * 3000)))
    assert state == TrialState.FAIL and error == "ValueError: " + "x" * 1988


@pytest.mark.parametrize(
    ("value", "directions", "error"),
    [
        ((1.0, 2.0), ("minimize",), "the run returned [1.0, 2.0], expected 1 value(s)"),
        (0.5, ("minimize", "minimize"), "the run returned [0.5], expected 2 value(s)"),
        (float("nan"), ("minimize",), "the objective was not finite: [nan]"),
        ((1.0, float("inf")), ("minimize", "minimize"), "the objective was not finite: [1.0, inf]"),
        (None, ("minimize",), "the objective was not finite: [None]"),
        ("0.5", ("minimize",), "the objective was not finite: ['0.5']"),
    ],
)
def test_a_wrong_or_non_finite_objective_fails_the_trial(value, directions, error):
    assert told(done(value), directions) == (TrialState.FAIL, None, error)


class Launcher:
    """Runs no job: each trial's objective is its number, or its job fails with `error`."""

    def __init__(self, error=None):
        self.batches, self.error = [], error

    def launch(self, batch, initial_job_idx):
        self.batches.append((batch, initial_job_idx))
        if self.error:
            return [failed(self.error) for _ in batch]
        return [done(float(o.split("=")[1])) for o in (b[-1] for b in batch)]


def swept(tmp_path, launcher, n_trials=3, n_jobs=2, pruner=THRESHOLD, sweep_dir=None, **kw):
    s = StudySweeper(
        study_name="s", storage=None, n_trials=n_trials, n_jobs=n_jobs, sampler=None, pruner=None, **kw
    )
    sweep_dir = sweep_dir or tmp_path / "sweep"
    s.config = OmegaConf.create(
        {
            "objective": {"directions": ["minimize"]},
            "paths": {"log_dir": str(tmp_path)},
            "upper": 1.0,
            "hydra": {"sweeper": {"pruner": pruner}, "sweep": {"dir": str(sweep_dir)}},
        }
    )
    s.launcher = launcher
    s.validate_batch_is_legal = lambda batch: None
    return s


def test_the_sweep_runs_its_trials_in_batches_and_keeps_failures_in_the_study(tmp_path):
    launcher = Launcher(RuntimeError("boom"))
    s = swept(tmp_path, launcher, params={"optimizer.lr": "choice(0.1,0.2)"})
    returns = s.sweep([])
    assert len(returns) == 3
    assert [(len(b), at) for b, at in launcher.batches] == [(2, 0), (1, 2)]
    study = optuna.load_study(study_name="s", storage=s.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert {t.user_attrs["error"] for t in study.trials} == {"RuntimeError: boom"}
    assert study.user_attrs["pruner"] == THRESHOLD
    assert s.storage == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"


def test_an_illegal_batch_fails_its_trials_before_raising(tmp_path):
    s = swept(tmp_path, Launcher(), params={"optimizer.lr": "choice(0.1,0.2)"})

    def illegal(batch):
        raise ValueError("no such key")

    s.validate_batch_is_legal = illegal
    with pytest.raises(ValueError, match="no such key"):
        s.sweep([])
    study = optuna.load_study(study_name="s", storage=s.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2


def test_each_outcome_is_logged_with_its_trial(caplog):
    with caplog.at_level(logging.INFO, logger="sft.sweep.sweeper"):
        told(done((0.25, 3)), ("minimize", "maximize"))
        told(failed(optuna.TrialPruned("at step 7")))
        told(failed(RuntimeError("out of memory")))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "trial 0: 0.2500, 3.0000"),
        ("INFO", "trial 0: pruned (at step 7)"),
        ("WARNING", "trial 0 failed: RuntimeError: out of memory"),
    ]


def test_the_sweep_hands_each_job_its_parameters_and_trial_and_records_the_study(tmp_path, caplog):
    launcher = Launcher()
    enqueue = [{"optimizer.lr": 0.2}, {"optimizer.lr": 0.1}]
    s = swept(tmp_path, launcher, n_trials=2, params={"optimizer.lr": "choice(0.1,0.2)"}, enqueue=enqueue)
    with caplog.at_level(logging.INFO, logger="sft.sweep.sweeper"):
        s.sweep(["trainer.max_steps=3"])
    study = optuna.load_study(study_name="s", storage=s.storage)
    ids = [t._trial_id for t in study.trials]
    assert launcher.batches == [
        (
            [
                [
                    "trainer.max_steps=3",
                    f"optimizer.lr={lr}",
                    f"trial={{study_name:'s',storage:'{s.storage}',id:{ids[n]},number:{n}}}",
                    f"hydra.sweep.subdir={n}",
                ]
                for n, lr in enumerate([0.2, 0.1])
            ],
            0,
        )
    ]
    assert [(t.state, t.values) for t in study.trials] == [
        (TrialState.COMPLETE, [0.0]),
        (TrialState.COMPLETE, [1.0]),
    ]
    assert json.loads((tmp_path / "sweep" / "study.json").read_text()) == {
        "study_name": "s",
        "storage": s.storage,
    }
    assert OmegaConf.load(tmp_path / "sweep" / "multirun.yaml") == s.config
    assert f"study s in {s.storage}: 2 trials so far; running 2 more over optimizer.lr" in caplog.messages


def test_a_sweep_without_a_search_space_is_refused(tmp_path):
    with pytest.raises(ValueError, match="^hydra.sweeper: no search space"):
        swept(tmp_path, Launcher()).sweep(["trainer.max_steps=3"])


def test_a_second_sweep_into_new_nested_folders_continues_the_study_without_enqueuing_again(tmp_path):
    """Running the same command again: the study continues, the enqueued rows are not tried twice."""
    enqueue = [{"optimizer.lr": 0.2}]
    space = {"optimizer.lr": "choice(0.1,0.2,0.3)"}
    for sweep_dir in (tmp_path / "runs" / "first" / "sweep", tmp_path / "runs" / "first" / "sweep"):
        s = swept(tmp_path, Launcher(), n_trials=2, params=space, enqueue=enqueue, sweep_dir=sweep_dir)
        s.sweep([])
        assert (sweep_dir / "study.json").is_file()
    study = optuna.load_study(study_name="s", storage=s.storage)
    fixed = [t.number for t in study.trials if "fixed_params" in t.system_attrs]
    assert len(study.trials) == 4 and fixed == [0]


def test_the_pruner_config_is_stored_resolved_and_none_without_one(tmp_path):
    """Jobs rebuild the pruner from the study: its config must be plain values, not interpolations."""
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "upper": "${upper}"}
    s = swept(tmp_path, Launcher(), n_trials=1, pruner=pruner, params={"optimizer.lr": "choice(0.1,0.2)"})
    s.sweep([])
    assert optuna.load_study(study_name="s", storage=s.storage).user_attrs["pruner"] == THRESHOLD
    s = swept(tmp_path / "none", Launcher(), n_trials=1, pruner=None, params={"optimizer.lr": "choice(0.1)"})
    s.sweep([])
    assert optuna.load_study(study_name="s", storage=s.storage).user_attrs["pruner"] is None


def test_the_start_of_a_sweep_names_every_searched_key(tmp_path, caplog):
    params = {"optimizer.lr": "choice(0.1,0.2)", "lora.r": "choice(8,16)"}
    s = swept(tmp_path, Launcher(), n_trials=1, params=params)
    with caplog.at_level(logging.INFO, logger="sft.sweep.sweeper"):
        s.sweep([])
    started = f"study s in {s.storage}: 0 trials so far; running 1 more over optimizer.lr, lora.r"
    assert started in caplog.messages
