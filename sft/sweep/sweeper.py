"""The Optuna study behind our Hydra sweeper, with the current Optuna API (ask and tell).

Hydra registers `hydra_plugins.sft_optuna_sweeper.OptunaSweeper`, which builds this class only when a
sweep runs, so that no other command imports optuna and sqlalchemy.

`python -m sft.train -m hydra/sweeper=optuna +sweep=hparam_table` asks the study for trials,
launches each as a Hydra job (the job's overrides are the trial's parameters), and tells the study
what the job returned. Studies live in an Optuna storage (SQLite under paths.log_dir by default),
so running the same command again continues the study, and several workers may share it.

A worker killed mid-trial (SIGKILL, a lost machine) cannot tell the study, so its trial would stay
RUNNING forever. With `hydra.sweeper.heartbeat_interval` set (the default), each worker records a
heartbeat for its running trials; the next worker to start or to ask for a trial marks those silent for
`grace_period` seconds FAIL and queues a copy with the same parameters (up to `max_retry` times), which
the next `ask` hands out like any enqueued trial.

With `hydra.sweeper.seeds` each trial runs once per seed (`seed=<s>`), all in the same launch, and the
study is told the mean over the seeds; see `_tell_seeds` for failures and `sft.sweep.pruning` for pruning.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from sft.sweep.space import as_overrides, parse
from sft.sweep.storage import crash_safe_storage, default_storage

STORAGE_ATTEMPTS = 5

log = logging.getLogger(__name__)


class StudySweeper(Sweeper):
    """Optuna study as a Hydra sweeper: TPE by default (seeded), optional pruner, persistent storage."""

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: optuna.samplers.BaseSampler | None,
        pruner: optuna.pruners.BasePruner | None,
        params: dict[str, str] | None = None,
        enqueue: list[dict[str, Any]] | None = None,
        heartbeat_interval: int | None = 60,
        grace_period: int | None = 120,
        max_retry: int | None = 2,
        seeds: list[int] | None = None,
    ):
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials={n_trials} and n_jobs={n_jobs} must both be >= 1")
        seeds = None if seeds is None else list(seeds)
        if seeds is not None and (
            not seeds
            or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        ):
            raise ValueError(f"hydra.sweeper: seeds={seeds} must be null or a list of distinct integers")
        self.seeds = seeds
        if heartbeat_interval is not None and (
            heartbeat_interval < 1
            or (grace_period is not None and grace_period <= heartbeat_interval)
            or (max_retry is not None and max_retry < 0)
        ):
            # A grace period within one interval would fail the trials of living workers between beats.
            raise ValueError(
                f"hydra.sweeper: heartbeat_interval={heartbeat_interval} must be >= 1 s, grace_period="
                f"{grace_period} longer than it (or null: twice it), max_retry={max_retry} >= 0 (or null)"
            )
        self.heartbeat_interval = heartbeat_interval
        self.grace_period, self.max_retry = grace_period, max_retry
        # The heartbeat storage when heartbeats are on (set by _study); None: trials are never found stale.
        self.heartbeats: optuna.storages.RDBStorage | None = None
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        # Hydra instantiates nested `_target_` nodes (conf/hydra/sweeper/sampler, pruner) before we get them.
        self.sampler, self.pruner = sampler, pruner
        self.params = dict(params or {})
        self.enqueue = [dict(e) for e in enqueue or []]
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the launcher that runs each trial's job."""
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _study(self) -> optuna.Study:
        """Create the study, or load it when it already exists in the storage."""
        objective = self.config.objective
        storage = self.storage or default_storage(self.config.paths.log_dir)
        if storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                if self.heartbeat_interval is not None:  # the storage creates its tables, so it can race too
                    self.heartbeats = crash_safe_storage(
                        storage, self.heartbeat_interval, self.grace_period, self.max_retry
                    )
                return optuna.create_study(
                    study_name=self.study_name,
                    storage=storage if self.heartbeats is None else self.heartbeats,
                    sampler=self.sampler,
                    pruner=self.pruner,
                    directions=list(objective.directions),
                    load_if_exists=True,
                )
            except (IntegrityError, OperationalError):
                # Workers starting together race to create the storage's tables and version stamp;
                # the loser finds them made when it tries again.
                if attempt == STORAGE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        """Run `n_trials` more trials of the study, `n_jobs` at a time; failures are recorded, not raised."""
        space, fixed = parse([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if not space:
            raise ValueError("hydra.sweeper: no search space; give hydra.sweeper.params or sweep overrides")
        if self.seeds is not None and "seed" in {*space, *(o.split("=")[0].lstrip("+~") for o in fixed)}:
            raise ValueError(
                "hydra.sweeper.seeds sets each job's seed: do not also give seed= as an override or parameter"
            )
        study = self._study()
        self._check_seeds(study)
        # Jobs reach the study through its storage, which does not keep the pruner: they rebuild it from this.
        pruner = self.config.hydra.sweeper.get("pruner")
        study.set_user_attr("pruner", OmegaConf.to_container(pruner, resolve=True) if pruner else None)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        record = {"study_name": self.study_name, "storage": self.storage}
        (sweep_dir / "study.json").write_text(json.dumps(record))  # what `python -m sft.report` opens
        for params in self.enqueue:  # e.g. the preset rows, tried first; once per study
            study.enqueue_trial(params, skip_if_exists=True)
        log.info(
            "study %s in %s: %d trials so far; running %d more over %s",
            self.study_name,
            self.storage,
            len(study.trials),
            self.n_trials,
            ", ".join(space),
        )
        returns: list[JobReturn] = []
        done = launched = 0
        seeds = self.seeds or [None]
        while done < self.n_trials:
            size = min(self.n_jobs, self.n_trials - done)
            # Here, before each ask (the first: as the worker starts), so the retries of trials whose
            # workers died are queued first and this ask hands them out.
            self._fail_stale_trials(study)
            trials = [self._ask(study, space) for _ in range(size)]
            # One launch holds every seed of every trial, so a parallel launcher runs them all at once.
            batch = [self._job(fixed, t, i, seed) for t in trials for i, seed in enumerate(seeds)]
            try:
                self.validate_batch_is_legal(batch)
            except Exception:
                for trial in trials:  # never leave trials RUNNING in the storage
                    study.tell(trial, state=TrialState.FAIL)
                raise
            with self._heartbeat(trials):
                results = self.launcher.launch(batch, initial_job_idx=launched)
            for k, trial in enumerate(trials):
                own = results[k * len(seeds) : (k + 1) * len(seeds)]
                if self.seeds is None:
                    self._tell(study, trial, own[0])
                else:
                    self._tell_seeds(study, trial, dict(zip(self.seeds, own, strict=True)))
            returns += results
            done += len(trials)
            launched += len(batch)
        self._report(study, sweep_dir)
        return returns

    def _job(self, fixed: list[str], trial: optuna.Trial, index: int, seed: int | None) -> list[str]:
        """The overrides of one job: a trial's parameters (and its `index`-th seed, if seeds are set)."""
        # Directories are numbered by trial (its seeds next to each other): workers sharing a study never
        # share one, and `sft.report` reads them as the numbered job dirs of a multirun.
        number = trial.number * len(self.seeds or [None]) + index
        seeded = [] if seed is None else [f"seed={seed}"]
        where = f"hydra.sweep.subdir={number}"
        return [*fixed, *as_overrides(trial.params), *seeded, self._identity(trial), where]

    def _check_seeds(self, study: optuna.Study) -> None:
        """Record the study's seeds; a study run with other seeds cannot go on (its means do not compare)."""
        if "seeds" in study.user_attrs or study.get_trials(deepcopy=False):
            before = study.user_attrs.get("seeds")
            if before != self.seeds:
                raise ValueError(
                    f"study {self.study_name} was run with hydra.sweeper.seeds={before}, this sweep has "
                    f"{self.seeds}: its values are means over other seeds; use another study_name"
                )
        # The runs read this too: only the first seed reports to the pruner (sft.sweep.pruning).
        study.set_user_attr("seeds", self.seeds)

    def _fail_stale_trials(self, study: optuna.Study) -> None:
        """Fail the trials whose workers stopped beating; the storage's callback queues their retries."""
        if self.heartbeats is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    def _ask(self, study: optuna.Study, space: dict) -> optuna.Trial:
        """A new trial, or a queued one (an enqueued row, a retry) with its parameters already set."""
        with warnings.catch_warnings():
            # Optuna expects heartbeats only under optimize(); _heartbeat() records them for ask/tell.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask(fixed_distributions=space)
        if self.heartbeats is not None:
            history = self.heartbeats.get_trial(trial._trial_id).system_attrs.get("retry_history")
            if history:
                log.info(
                    "trial %d: retry of trial %d, lost with its worker (tries so far: %s)",
                    trial.number,
                    history[0],
                    history,
                )
        return trial

    @contextmanager
    def _heartbeat(self, trials: list[optuna.Trial]) -> Iterator[None]:
        """Record the trials' heartbeats every `heartbeat_interval` s while their jobs run."""
        storage = self.heartbeats
        if storage is None:
            yield
            return
        ids = [t._trial_id for t in trials]
        for trial_id in ids:  # before the jobs start: a worker killed from now on leaves a trial to retry
            storage.record_heartbeat(trial_id)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval):
                for trial_id in ids:
                    try:
                        storage.record_heartbeat(trial_id)
                    except Exception as err:  # e.g. SQLite locked a moment: the next beat may get through
                        log.warning("heartbeat of trial %d not recorded: %s", trial_id, err)

        # A daemon: a job that never returns must not also keep the process from exiting.
        thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _identity(self, trial: optuna.Trial) -> str:
        """The override that tells a job which trial it is (for pruning and the record)."""
        return (
            f"trial={{study_name:'{self.study_name}',storage:'{self.storage}',"
            f"id:{trial._trial_id},number:{trial.number}}}"
        )

    def _stale(self, trial: optuna.Trial) -> bool:
        """Whether another worker has already failed this trial as stale (its result must not be told)."""
        if self.heartbeats is None or not self.heartbeats.get_trial(trial._trial_id).state.is_finished():
            return False
        # Another worker found it silent (this process stalled past the grace period) and failed it;
        # Optuna cannot take that back, and its retry is queued, so this result goes to the log only.
        log.warning(
            "trial %d: failed meanwhile as stale by another worker; its result is not recorded", trial.number
        )
        return True

    @staticmethod
    def _outcome(result: JobReturn, objectives: int) -> tuple[TrialState, list[float] | None, str]:
        """(COMPLETE, values, "") or (PRUNED, None, why) or (FAIL, None, error) for one job's result."""
        try:
            value = result.return_value  # re-raises the job's exception
        except optuna.TrialPruned as pruned:
            return TrialState.PRUNED, None, str(pruned)
        except Exception as err:  # one bad trial (a config error, out of memory, divergence) is not the study
            return TrialState.FAIL, None, f"{type(err).__name__}: {err}"
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) != objectives:
            return TrialState.FAIL, None, f"the run returned {values}, expected {objectives} value(s)"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return TrialState.FAIL, None, f"the objective was not finite: {values}"
        return TrialState.COMPLETE, [float(v) for v in values], ""

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> None:
        """Record a job's outcome: its objective values, PRUNED, or FAIL with the error kept on the trial."""
        if self._stale(trial):
            return
        state, values, why = self._outcome(result, len(study.directions))
        if state == TrialState.PRUNED:
            log.info("trial %d: pruned (%s)", trial.number, why)
            study.tell(trial, state=TrialState.PRUNED)
        elif state == TrialState.FAIL:
            self._fail(study, trial, why)
        else:
            study.tell(trial, values)
            log.info("trial %d: %s", trial.number, ", ".join(f"{v:.4f}" for v in values))

    def _tell_seeds(self, study: optuna.Study, trial: optuna.Trial, results: dict[int, JobReturn]) -> None:
        """Tell the mean over a trial's seeds; each seed's value (and their spread) stays on the trial.

        Any failed seed fails the trial: a mean over fewer seeds would not compare with the other
        trials' means. Otherwise a pruned seed (only the first one reports) prunes the trial.
        """
        if self._stale(trial):
            return
        objectives = len(study.directions)
        outcomes = {seed: self._outcome(result, objectives) for seed, result in results.items()}
        done = {seed: values for seed, (state, values, _) in outcomes.items() if state == TrialState.COMPLETE}
        one = objectives == 1  # single-objective values are kept as numbers, like Optuna's trial.value
        if done:
            trial.set_user_attr("seed_values", {str(s): v[0] if one else v for s, v in done.items()})
        failed = [f"seed {s}: {why}" for s, (state, _, why) in outcomes.items() if state == TrialState.FAIL]
        pruned = [f"seed {s}: {why}" for s, (state, _, why) in outcomes.items() if state == TrialState.PRUNED]
        if failed:
            self._fail(study, trial, "; ".join(failed))
            return
        if pruned:
            log.info("trial %d: pruned (%s)", trial.number, "; ".join(pruned))
            study.tell(trial, state=TrialState.PRUNED)
            return
        columns = list(zip(*done.values(), strict=True))  # one tuple of per-seed values per objective
        means = [statistics.fmean(column) for column in columns]
        if len(done) > 1:
            spread = [statistics.stdev(column) for column in columns]
            trial.set_user_attr("seed_std", spread[0] if one else spread)
        study.tell(trial, means)
        log.info(
            "trial %d: %s (mean of seeds %s)",
            trial.number,
            ", ".join(f"{v:.4f}" for v in means),
            ", ".join(map(str, done)),
        )

    @staticmethod
    def _fail(study: optuna.Study, trial: optuna.Trial, error: str) -> None:
        """Mark a trial FAIL and keep why, so the report can show it."""
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", error[:2000])
        study.tell(trial, state=TrialState.FAIL)

    def _report(self, study: optuna.Study, sweep_dir: Path) -> None:
        """Log the best trial(s) and write them to optimization_results.yaml in the sweep directory."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            log.warning("study %s has no completed trial yet", self.study_name)
            return
        best = study.best_trials if len(study.directions) > 1 else [study.best_trial]
        results = {
            "study_name": self.study_name,
            "storage": self.storage,
            "directions": [d.name.lower() for d in study.directions],
            "best": [
                {"number": t.number, "values": t.values, "params": t.params}
                | ({"seed_values": t.user_attrs.get("seed_values")} if self.seeds else {})
                for t in best
            ],
        }
        if self.seeds:  # the best values are means over these seeds
            results["seeds"] = self.seeds
        retries = [
            {"number": t.number, "retry_of": t.system_attrs["retry_history"], "state": t.state.name.lower()}
            for t in study.get_trials(deepcopy=False)
            if t.system_attrs.get("retry_history")
        ]
        if retries:  # trials re-run because their workers died; `retry_of`: the earlier tries, oldest first
            results["retries"] = retries
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        for t in best:
            log.info("best trial %d: values %s, params %s", t.number, t.values, t.params)
