"""Optuna pruning from inside a training run: report at every evaluation, stop when the pruner says so."""

from __future__ import annotations

import logging

import optuna
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from ..config import TrialConfig

log = logging.getLogger(__name__)


class TrialPruning(Callback):
    """Reports `metric` to the run's Optuna trial after each evaluation and raises `TrialPruned` when told.

    The trial is reached through the study's storage (the sweeper passes its id), so this works
    whether the launcher runs jobs in the sweeper's process or elsewhere. Rank 0 reports and asks;
    every rank then stops together. Multi-objective studies cannot prune (Optuna does not support it).

    When the sweeper runs each trial over several seeds (`hydra.sweeper.seeds`, kept on the study), only
    the job of the first seed reports: its curve stands for the trial, so the pruner compares trials on
    the same seed, and the other seeds (running at the same time) never mix their steps into it.
    """

    def __init__(self, trial: TrialConfig, metric: str, seed: int | None = None):
        self.cfg, self.metric, self.seed = trial, metric, seed
        self._trial: optuna.Trial | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        """Attach to the trial (rank 0 only: one writer to the study)."""
        if not trainer.is_global_zero:
            return
        study = optuna.load_study(study_name=self.cfg.study_name, storage=self.cfg.storage)
        # The storage keeps no pruner; the sweeper left its config on the study (none: never prune).
        pruner = study.user_attrs.get("pruner")
        seeds = study.user_attrs.get("seeds")
        if len(study.directions) == 1 and pruner and (not seeds or self.seed == seeds[0]):
            study = optuna.load_study(
                study_name=self.cfg.study_name, storage=self.cfg.storage, pruner=instantiate(pruner)
            )
            self._trial = optuna.Trial(study, self.cfg.id)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Report this evaluation; stop the run if the pruner finds it worse than its peers."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        prune = False
        value = trainer.callback_metrics.get(self.metric)
        if self._trial is not None and value is not None:
            self._trial.report(float(value), step=trainer.global_step)
            prune = self._trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            where = f"step {trainer.global_step} ({self.metric}={float(value):.4f})"
            log.info("trial %d pruned at %s", self.cfg.number, where)
            raise optuna.TrialPruned(f"trial {self.cfg.number} pruned at {where}")
