"""Where a study lives when `hydra.sweeper.storage` is not set (SQLite in the outputs directory), and the
storage the sweeper opens it with: one that notices workers that died mid-trial and retries their trials.

Optuna is imported inside the functions: the UI imports this module for `default_storage` alone.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)


def default_storage(log_dir: str | Path) -> str:
    """The Optuna storage URL the sweeper uses by default, for `paths.log_dir`."""
    return f"sqlite:///{Path(log_dir).resolve() / 'optuna.db'}"


def crash_safe_storage(
    url: str, heartbeat_interval: int, grace_period: int | None, max_retry: int | None
) -> RDBStorage:
    """An RDB storage for `url` whose trials without a heartbeat for `grace_period` s fail and are retried."""
    import optuna
    from optuna.storages import RDBStorage

    try:
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

        callback = "heartbeat_stale_trial_callback"
    except ImportError:  # Optuna < 4.9 (pyproject allows >= 4.0); 4.9 renamed these and deprecated the old
        from optuna.storages import RetryFailedTrialCallback as Retry

        callback = "failed_trial_callback"
    grace = grace_period or 2 * heartbeat_interval  # Optuna's own default

    def fail_and_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Say why a trial failed, then queue its copy (same parameters) unless it ran out of retries."""
        tries = len(trial.system_attrs.get("retry_history", [])) + 1  # as the callback counts them
        again = max_retry is None or tries <= max_retry
        log.warning(
            "trial %d: no heartbeat from its worker for over %d s (killed or lost): FAIL; %s",
            trial.number,
            grace,
            "queued again with the same parameters" if again else f"not retried ({max_retry} retries done)",
        )
        retry(study, trial)

    with warnings.catch_warnings():  # the heartbeat is experimental in Optuna; we opt in knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = Retry(max_retry=max_retry)
        return RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            **{callback: fail_and_retry},
        )
