"""Lightning callbacks: throughput measurement, a progress file and the overfitting watch."""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from ..errors import Preempted
from ..provenance import write_json

log = logging.getLogger(__name__)


class ThroughputMonitor(Callback):
    """Logs tokens/s (non-padding), trained tokens/s and padding fraction per optimizer step (not eval).

    Totals over the whole fit are kept in `train_seconds`, `tokens` and `trained_tokens` for the run summary.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.tokens = 0
        self.trained_tokens = 0
        self._mark: tuple[float, int, int, int] | None = None
        self._last_step = -1

    def _counts(self, pl_module) -> tuple[int, int, int]:
        return int(pl_module.tokens_seen), int(pl_module.trained_tokens_seen), int(pl_module.slots_seen)

    def _start_window(self, pl_module) -> None:
        self._mark = (time.perf_counter(), *self._counts(pl_module))

    def on_train_start(self, trainer, pl_module) -> None:
        """Start timing."""
        self._start_window(pl_module)
        self._last_step = trainer.global_step

    def on_validation_end(self, trainer, pl_module) -> None:
        """Evaluation time does not count as training time."""
        if trainer.training:
            self._start_window(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After each optimizer step, log the rates over the window since the previous one."""
        if trainer.global_step == self._last_step or self._mark is None:
            return
        self._last_step = trainer.global_step
        start, tokens0, trained0, slots0 = self._mark
        seconds = max(time.perf_counter() - start, 1e-9)
        tokens, trained, slots = self._counts(pl_module)
        self.train_seconds += seconds
        self.tokens += tokens - tokens0
        self.trained_tokens += trained - trained0
        pl_module.log("train/tokens_per_sec", (tokens - tokens0) / seconds)
        pl_module.log("train/padding_fraction", 1 - (tokens - tokens0) / max(slots - slots0, 1))
        pl_module.log("train/trained_tokens_per_sec", (trained - trained0) / seconds)
        pl_module.log("train/trained_tokens", float(trained))
        self._start_window(pl_module)

    def summary(self) -> dict[str, float]:
        """Totals over the fit: seconds spent training and tokens per second."""
        seconds = max(self.train_seconds, 1e-9)
        return {
            "train_seconds": round(self.train_seconds, 2),
            "tokens_per_sec": round(self.tokens / seconds, 1),
            "trained_tokens_per_sec": round(self.trained_tokens / seconds, 1),
        }


class ProgressFile(Callback):
    """Writes `progress.json` (state, step, total steps, elapsed time, ETA, pid) after every optimizer step.

    Watchers (the web UI, a shell loop) read it instead of parsing the progress bar; it is replaced
    atomically, so a reader never sees half a file. Only the first process writes it. The state is
    running, trained (final evaluation and saving follow), stopped (by a signal) or failed.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._start = 0.0
        self._first_step = 0
        self._written = -1

    def on_train_start(self, trainer, pl_module) -> None:
        """Start the clock at the step training starts (or resumes) from."""
        self._start, self._first_step = time.monotonic(), trainer.global_step
        self._write(trainer, "running")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Rewrite the file once per optimizer step (not per micro-batch)."""
        if trainer.global_step != self._written:
            self._write(trainer, "running")

    def on_train_end(self, trainer, pl_module) -> None:
        """Mark the fit as done (the run summary follows)."""
        self._write(trainer, "trained")

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Record how the fit ended early: stopped by a signal (with a checkpoint) or failed."""
        self._write(trainer, "stopped" if isinstance(exception, Preempted) else "failed")

    def _write(self, trainer, state: str) -> None:
        self._written = trainer.global_step
        if not trainer.is_global_zero:
            return
        total = int(trainer.estimated_stepping_batches)
        step, elapsed = trainer.global_step, time.monotonic() - self._start
        done = step - self._first_step
        eta = elapsed / done * max(total - step, 0) if done > 0 else None
        record = {
            "state": state,
            "step": step,
            "total_steps": total,
            "elapsed_seconds": round(elapsed, 2),
            "eta_seconds": None if eta is None else round(eta, 1),
            "pid": os.getpid(),
        }
        write_json(record, self.path, durable=False)


class OverfittingWatch(Callback):
    """Warns when the run starts to overfit: val loss rising for `patience` evaluations in a row while
    the train loss (mean over the steps since the previous evaluation) keeps falling.

    The train side is read back from `val/gap` (val loss minus that mean), which SFTModule logs at every
    evaluation. Each warning says what to try; `warnings` counts them for the run summary.
    """

    def __init__(self, patience: int = 2):
        self.patience = patience
        self.history: list[tuple[float, float]] = []  # (train loss since last evaluation, val loss)
        self.warnings = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        """Check the trend after each evaluation during fitting."""
        val, gap = trainer.callback_metrics.get("val/loss"), trainer.callback_metrics.get("val/gap")
        if trainer.sanity_checking or trainer.state.fn != "fit" or val is None or gap is None:
            return
        if warning := self.observe(float(val) - float(gap), float(val)):
            self.warnings += 1
            log.warning("step %d: %s", trainer.global_step, warning)

    def observe(self, train_loss: float, val_loss: float) -> str | None:
        """Record one evaluation; the warning text when val loss rose while train loss fell, else None."""
        self.history.append((train_loss, val_loss))
        recent = self.history[-(self.patience + 1) :]
        if len(recent) <= self.patience:
            return None
        trains, vals = [t for t, _ in recent], [v for _, v in recent]
        rising = all(b > a for a, b in itertools.pairwise(vals))
        falling = all(b < a for a, b in itertools.pairwise(trains))
        if not (rising and falling):
            return None
        arrow = " -> ".join
        return (
            f"overfitting: val loss rose {arrow(f'{v:.3f}' for v in vals)} over the last {self.patience} "
            f"evaluations while train loss fell {arrow(f'{t:.3f}' for t in trains)}. Try fewer epochs or "
            "trainer.early_stopping_patience, a lower optimizer.lr, more lora.dropout, or more data"
        )
