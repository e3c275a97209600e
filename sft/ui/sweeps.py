"""Sweeps for the page: the search spaces in sweeps/ (the `sweep` config group) and the studies in storage.

A sweep is started as `python -m sft.train -m hydra/sweeper=optuna +sweep=<space> ...`, so it is exactly
the command-line sweep; its trials are read back from the Optuna storage, which is the source of truth.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd
from hydra import compose
from omegaconf import OmegaConf

from ..sweep.report import trial_rows
from .configs import ENTRY, hydra_conf

SWEEPER = "hydra/sweeper=optuna"


def space(name: str) -> dict:
    """A search space's study name, trial budget, parameters and enqueued points, as Hydra composes it."""
    with hydra_conf():
        cfg = compose(ENTRY, overrides=[SWEEPER, f"+sweep={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    return {
        "study_name": sweeper.study_name,
        "n_trials": sweeper.n_trials,
        "params": OmegaConf.to_container(sweeper.params),
        "enqueue": OmegaConf.to_container(sweeper.enqueue),
    }


def sweep_overrides(name: str, n_trials: int, study_name: str, train_overrides: list[str]) -> list[str]:
    """The multirun's overrides: the space, its budget and study, then the composed training settings."""
    return [
        SWEEPER,
        f"+sweep={name}",
        f"hydra.sweeper.n_trials={int(n_trials)}",
        f"hydra.sweeper.study_name={study_name}",
        *train_overrides,
    ]


def studies(storage: str) -> list[str]:
    """Names of the studies in a storage (none when it does not exist yet)."""
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API warnings are noise on the page
        return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))


def trials(study_name: str, storage: str) -> tuple[pd.DataFrame, str]:
    """(the study's trials: number, state, parameters, objective; a line naming the best trial)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    rows, params = trial_rows(study)
    return rows, best_line(study, params)


def best_line(study: optuna.Study, params: list[str]) -> str:
    """The best trial's number, objective and parameters (the Pareto front's size when multi-objective)."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return f"{study.study_name}: no finished trial yet ({len(study.trials)} in the study)"
    if len(study.directions) > 1:
        return (
            f"{study.study_name}: {len(study.best_trials)} trials on the Pareto front of {len(done)} finished"
        )
    best = study.best_trial
    shown = ", ".join(f"{p}={best.params[p]}" for p in params if p in best.params)
    return f"{study.study_name}: best trial {best.number}, objective {best.value:.4f} ({shown})"
