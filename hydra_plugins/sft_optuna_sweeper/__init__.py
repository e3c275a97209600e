"""sft's Optuna sweeper for Hydra (select it with hydra/sweeper=optuna; settings in conf/hydra/sweeper/).

Hydra imports every module under hydra_plugins/ for every command it starts, so this registration
imports only Hydra's base class; the study logic lives in `sft.sweep.sweeper`.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    """Optuna study as a Hydra sweeper: TPE by default (seeded), optional pruner, persistent storage."""

    def __init__(self, **settings: Any):
        self.settings = settings
        self.study_sweeper: Any = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        """Build the study sweeper (and import optuna) now that a sweep is actually starting."""
        # Imported here, not at the top: Hydra's plugin scan would otherwise load optuna for every command.
        from sft.sweep.sweeper import StudySweeper

        self.study_sweeper = StudySweeper(**self.settings)
        self.study_sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Run the study's trials as Hydra jobs."""
        return self.study_sweeper.sweep(arguments)
