"""The small OmegaConf resolvers the YAML files use (`${sft.mul:...}`, `${sft.run_name:...}`, ...)."""

from __future__ import annotations

import functools
import os
from datetime import datetime
from typing import Any

from omegaconf import OmegaConf

from ..data.kinds import STAGE_KIND
from ..locations import default_data_dir


@functools.cache
def run_name(pattern: str) -> str:
    """The run directory's name: SFT_RUN_NAME when set, a job id every rank shares, or the time now.

    torchrun and srun start all ranks at once and each composes the config itself: their clocks
    could name two directories. (Lightning's own launcher passes rank 0's directory to the others.)
    SFT_RUN_NAME lets a launcher (the web UI) know the directory before the run starts.
    """
    env = os.environ
    if env.get("SFT_RUN_NAME"):
        return env["SFT_RUN_NAME"]
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if int(env.get("WORLD_SIZE", "1")) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return datetime.now().strftime(pattern)


def on_rank_zero(value: Any) -> Any:
    """`value` on the first process of a torchrun/srun launch (and alone), None on the others."""
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0
    return value if int(rank) == 0 else None


def sweep_batch(sweeper: Any) -> int:
    """Jobs a sweeper launches together: the Optuna sweeper's n_jobs trials x seeds, else -1 (unknown)."""
    if "n_jobs" not in sweeper:  # Hydra's basic sweeper launches a whole grid (or max_batch_size) at once
        return sweeper.get("max_batch_size") or -1
    return sweeper.n_jobs * len(sweeper.get("seeds") or [None])


def cpu_share(jobs: int) -> int:
    """This machine's cores divided among `jobs` jobs running at once (at least 1; -1: one per core)."""
    cores = os.cpu_count() or 1
    return max(1, cores // jobs) if jobs > 0 else 1


def register_resolvers() -> None:
    """Register the resolvers (idempotent)."""
    resolvers = {
        "sft.mul": lambda a, b: a * b,
        "sft.stage_kind": lambda stage: STAGE_KIND.get(stage, stage),  # an unknown stage is named later
        "sft.env_unset": lambda name: not os.environ.get(name),
        "sft.run_name": run_name,
        "sft.data_dir": default_data_dir,
        "sft.on_rank_zero": on_rank_zero,
        "sft.sweep_batch": sweep_batch,
        "sft.cpu_share": cpu_share,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
