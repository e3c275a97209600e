"""`python -m sft.train`: check the config, then run the steps of a run (`sft.training.run`).

`train(cfg)` returns the objective named in `cfg.objective` so Hydra sweepers can optimise it.
torch, Lightning and transformers load only once a valid config starts a run, so `--help`, `--cfg job`
and a mistyped key answer at once. Expected ways of stopping exit with a message and a code, not a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import TRAIN_GROUPS, TrainConfig, checked_cli, validate
from .errors import CheckpointWriteError, ConfigError, DataError, Diverged, Preempted
from .locations import CONF_DIR

log = logging.getLogger(__name__)

# How each expected way of stopping early is reported: its exit code.
EXIT_CODES = {ConfigError: 2, DataError: 2, Diverged: 3, CheckpointWriteError: 4}


def train(cfg: DictConfig) -> float | tuple[float, ...]:
    """Run one fine-tuning job and return its objective metric; loggers are closed even on failure."""
    from .training.lineage import check_handoff, inherit  # loads no weights: torch stays unimported

    inherit(cfg)  # an init_from run's model config replaces the composed one, before it is checked
    typed = validate(cfg)
    check_handoff(typed)
    from .training.run import run  # here, not at the top: the heavy stack loads only for a valid run

    try:
        return run(cfg, typed)
    finally:
        if "wandb" in sys.modules:  # a sweep runs many jobs in one process: never leave a W&B run open
            sys.modules["wandb"].finish()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """Hydra entry point; a user mistake or an expected stop exits with a message, not a traceback.

    In a multirun the error is raised instead, so the sweeper records that job as failed and goes on.
    """
    try:
        return train(cfg)
    except Preempted as stop:  # the conventional 128 + signal number tells schedulers it was a signal
        _report(stop)
        sys.exit(128 + stop.signum)
    except tuple(EXIT_CODES) as err:
        _report(err)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(next(code for kind, code in EXIT_CODES.items() if isinstance(err, kind)))


def _rank() -> int:
    """This process's rank: Lightning's once a run has set it, else the launcher's environment."""
    lightning_utilities = sys.modules.get("lightning.pytorch.utilities")
    if lightning_utilities is not None:
        return lightning_utilities.rank_zero_only.rank
    names = ("RANK", "LOCAL_RANK", "SLURM_PROCID")  # Lightning's own order
    return next((int(os.environ[name]) for name in names if name in os.environ), 0)


def _report(err: Exception) -> None:
    """Log and print why the run stopped, once (every rank of a multi-process run stops alike)."""
    if _rank() == 0:
        log.error("%s", err)
        print(err, file=sys.stderr)


cli = checked_cli(main, TrainConfig, TRAIN_GROUPS)


if __name__ == "__main__":
    cli()
