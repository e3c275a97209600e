"""Runs on disk and runs started from the page: discovery, status, curves, progress and processes.

A run is a directory Hydra made under the outputs directory (`<task>/runs/<name>`, or a multirun job
`<task>/multiruns/<time>/<n>`). Everything shown about it is read from its own files: `.hydra/`,
`csv/metrics.csv`, `progress.json`, `summary.json`, `checkpoints/` and the console log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from ..provenance import redact_override
from ..run_dir import CONSOLE_LOG, HYDRA, RunDir, series

# Curves the page draws, by metrics.csv column.
CURVES = {"train/loss": "train loss", "val/loss": "val loss", "train/lr": "learning rate"}


def find_runs(log_dir: Path) -> list[Path]:
    """Every run directory under `log_dir`, newest first."""
    log_dir = Path(log_dir)
    found = [
        *log_dir.glob(f"*/runs/*/{HYDRA}"),
        *log_dir.glob(f"*/multiruns/*/*/{HYDRA}"),
    ]
    runs = {p.parent for p in found} | {p.parent for p in log_dir.glob(f"*/runs/*/{CONSOLE_LOG}")}
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def pid_alive(pid: int | None) -> bool:
    """True when a process with this id exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def status(run: Path, running: bool | None = None) -> str:
    """finished, starting, running, stopped (by Stop, with a checkpoint) or failed.

    `running` is what the caller knows of the process (the page's own children); otherwise the pid
    that progress.json names decides. A stopped or failed run with `checkpoints/last.ckpt` resumes.
    """
    layout = RunDir(run)
    if layout.finished:
        return "finished"
    progress = layout.read_progress() or {}
    state = progress.get("state")
    if running is None:
        running = state in ("running", "trained") and pid_alive(progress.get("pid"))
    if running:
        return "running" if progress else "starting"
    if state != "failed" and resumable(run):
        return "stopped"
    return "failed"


def resumable(run: Path) -> bool:
    """True when the run has a checkpoint to continue from and is not finished."""
    layout = RunDir(run)
    return layout.last_checkpoint.exists() and not layout.finished


def metrics(run: Path) -> pd.DataFrame:
    """The run's curves in long form: step, value, series (train loss, val loss, learning rate)."""
    return curves(RunDir(run).metrics())


def curves(logged: pd.DataFrame) -> pd.DataFrame:
    """Logged metrics rows as the page's curves: step, value, series."""
    frames = [
        series(logged, column).rename(columns={column: "value"}).assign(series=name)
        for column, name in CURVES.items()
        if column in logged
    ]
    if not frames:
        return pd.DataFrame(columns=["step", "value", "series"])
    return pd.concat(frames, ignore_index=True)


def progress_line(run: Path, state: str, logged: pd.DataFrame) -> str:
    """One line for a watched run in `state` (see `status`): step of total, tokens/s, ETA, final val loss."""
    layout = RunDir(run)
    p = layout.read_progress() or {}
    parts = [state]
    if "step" in p:
        parts.append(f"step {p['step']}/{p['total_steps']}")
    rates = series(logged, "train/tokens_per_sec")["train/tokens_per_sec"]
    if len(rates):
        parts.append(f"{float(rates.iloc[-1]):,.0f} tokens/s")
    if p.get("eta_seconds") is not None and state == "running":
        parts.append(f"ETA {format_seconds(p['eta_seconds'])}")
    summary = layout.read_summary()
    if summary and summary.get("val_loss") is not None:
        parts.append(f"val loss {summary['val_loss']:.4f}")
    return " · ".join(parts)


def format_seconds(seconds: float) -> str:
    """1h 02m, 3m 05s or 12s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def table(log_dir: Path, running: set[Path] = frozenset()) -> pd.DataFrame:
    """One row per run: name, status, config summary and final metrics, newest first."""
    rows = []
    for run in find_runs(log_dir):
        layout = RunDir(run)
        picked = layout.choices()
        summary = layout.read_summary() or {}
        progress = layout.read_progress() or {}
        known = run in running or None
        rows.append(
            {
                "run": str(run.relative_to(log_dir)),
                "status": status(run, known),
                "model": picked.get("model", ""),
                "data": picked.get("data", ""),
                "preset": picked.get("preset", ""),
                "overrides": " ".join(
                    redact_override(o) for o in layout.overrides() if not o.startswith(("resume=", "paths."))
                ),
                "step": summary.get("global_step", progress.get("step")),
                "train_loss": _rounded(summary.get("train_loss")),
                "val_loss": _rounded(summary.get("val_loss")),
                "tokens_per_sec": summary.get("tokens_per_sec"),
                "wall_seconds": summary.get("wall_seconds"),
            }
        )
    return pd.DataFrame(rows, columns=[
        "run", "status", "model", "data", "preset", "overrides", "step",
        "train_loss", "val_loss", "tokens_per_sec", "wall_seconds",
    ])  # fmt: skip


def _rounded(value) -> float | None:
    return None if value is None else round(float(value), 4)


def overlay(log_dir: Path, names: list[str], series: str = "train loss") -> pd.DataFrame:
    """One curve per selected run (step, value, run), for comparing runs on one chart."""
    frames = []
    for name in names:
        curves = metrics(Path(log_dir) / name)
        frames.append(curves[curves["series"] == series].assign(run=name))
    if not frames:
        return pd.DataFrame(columns=["step", "value", "run"])
    return pd.concat(frames, ignore_index=True)[["step", "value", "run"]]


def tail(path: Path, limit: int = 20_000) -> str:
    """The last `limit` characters of a text file ('' when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - limit, 0))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # A progress bar redraws its line with carriage returns; keep what the last redraw shows.
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


@dataclass
class Job:
    """A process the page started: its command, its log, and (for a training run) its run directory."""

    args: list[str]
    log: Path
    process: subprocess.Popen
    run: Path | None = None

    @property
    def alive(self) -> bool:
        """True until the process exits."""
        return self.process.poll() is None


class Launcher:
    """Starts training runs and sweeps as their own processes, from argument lists (never a shell)."""

    def __init__(
        self, log_dir: Path, cwd: Path, python: str = sys.executable, hidden_env: tuple = ()
    ) -> None:
        self.log_dir, self.cwd, self.python = Path(log_dir).resolve(), Path(cwd), python
        self.hidden_env = set(hidden_env)  # e.g. the page's password: runs never see it
        self.jobs: dict[str, Job] = {}  # run dir or sweep log -> job
        self._lock = threading.Lock()

    def _unique_name(self, task_dir: Path) -> str:
        name = base = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        n = 1
        while (task_dir / name).exists():
            n += 1
            name = f"{base}-{n}"
        return name

    def _spawn(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            return subprocess.Popen(
                [self.python, "-m", *args],
                cwd=self.cwd,
                env={
                    **{k: v for k, v in os.environ.items() if k not in self.hidden_env},
                    "PYTHONUNBUFFERED": "1",
                    **env,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl+C in the page's terminal must not stop the runs
            )

    def start_run(self, overrides: list[str], task_name: str = "train") -> Job:
        """Start `python -m sft.train <overrides>` in a run directory named before it starts."""
        task_dir = (self.log_dir / task_name / "runs").resolve()
        if not re.fullmatch(r"[\w.-]+", task_name) or self.log_dir not in task_dir.parents:
            raise ValueError(f"task_name={task_name!r}: letters, digits, '.', '_' and '-' only")
        with self._lock:
            run = task_dir / self._unique_name(task_dir)
            run.mkdir(parents=True)
            # SFT_RUN_NAME names Hydra's run directory, so its log, curves and progress are found at once.
            args = ["sft.train", *overrides]
            log = RunDir(run).console_log
            job = Job(args, log, self._spawn(args, log, {"SFT_RUN_NAME": run.name}), run)
            self.jobs[str(run)] = job
            return job

    def resume_run(self, run: Path) -> Job:
        """Continue a stopped (or failed) run in its own directory from its last checkpoint and overrides."""
        run = Path(run).resolve()
        state = status(run, True if self.alive(run) else None)
        if run.parent.name != "runs" or self.log_dir not in run.parents:
            raise ValueError(
                f"{run}: not a single run under {self.log_dir}; a sweep continues by running it again"
            )
        if state in ("running", "starting", "finished") or not resumable(run):
            raise ValueError(f"{run.name}: {state}; only a stopped or failed run with a checkpoint resumes")
        keep = [o for o in RunDir(run).overrides() if not o.startswith(("resume=", "overwrite="))]
        args = ["sft.train", *keep, f"resume={run}"]
        with self._lock:
            log = RunDir(run).console_log
            job = Job(args, log, self._spawn(args, log, {"SFT_RUN_NAME": run.name}), run)
            self.jobs[str(run)] = job
            return job

    def start_sweep(self, args: list[str]) -> Job:
        """Start a multirun (`python -m sft.train -m ...`) whose console goes to a log under ui/."""
        with self._lock:
            log = self.log_dir / "ui" / f"sweep-{self._unique_name(self.log_dir / 'ui')}.log"
            process = self._spawn(["sft.train", "-m", *args], log, {})
            job = Job(["sft.train", "-m", *args], log, process)
            self.jobs[str(log)] = job
            return job

    def alive(self, run: Path) -> bool:
        """True when the page started this run and its process is still going."""
        job = self.jobs.get(str(run))
        return bool(job and job.alive)

    def running(self) -> set[Path]:
        """Run directories of the page's live training processes."""
        return {Path(k) for k, job in self.jobs.items() if job.run is not None and job.alive}

    def stop(self, key: Path | str, timeout: float = 0.0) -> bool:
        """SIGTERM the job (a run saves a checkpoint at the next step and exits); False if it is not live."""
        job = self.jobs.get(str(key))
        if not job or not job.alive:
            return False
        job.process.send_signal(signal.SIGTERM)
        if timeout:
            try:
                job.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return True

    def shutdown(self, grace: float = 120.0) -> None:
        """Stop every live job, giving each `grace` seconds to save before it is killed."""
        live = [job for job in self.jobs.values() if job.alive]
        for job in live:
            job.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for job in live:
            try:
                job.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                job.process.kill()
