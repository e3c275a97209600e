"""Lightning callbacks: throughput measurement, a progress file and the overfitting watch."""

from __future__ import annotations

import itertools
import logging
import os
import time

import psutil
import torch
from lightning.pytorch.callbacks import Callback

from ..data.tokenize import IGNORE_INDEX
from ..errors import Preempted
from ..run_dir import RunDir

log = logging.getLogger(__name__)


def batch_counts(batch: dict) -> torch.Tensor:
    """(non-padding tokens, trained tokens, tokens with padding) of one micro-batch, on its device."""
    labels = batch["labels"]
    # All on the batch's device, without a host-to-device copy per micro-batch (a fill is a kernel).
    tokens = torch.as_tensor(batch["num_tokens"], device=labels.device)
    trained = (labels[:, 1:] != IGNORE_INDEX).sum()
    return torch.stack([tokens, trained, torch.full_like(tokens, labels.numel())])


class ThroughputMonitor(Callback):
    """Logs tokens/s (non-padding), trained tokens/s and padding fraction per optimizer step (not eval).

    Its totals over the whole fit (kept in checkpoints, so a resumed run continues them) make the run
    summary's throughput section, with the seconds from this process's start to the start of training
    (imports, data, model and the evaluation before training) and to the end of its first optimizer step.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.counts = [0, 0, 0]  # non-padding, trained, all tokens since the fit started
        self._window = torch.zeros(3, dtype=torch.long)  # on the batches' device: one host sync per step
        self._start: float | None = None
        self._last_step = -1
        self.training_at: float | None = None  # wall clock, this process
        self.first_step_at: float | None = None

    def state_dict(self) -> dict:
        """Totals a resumed run continues from."""
        return {"train_seconds": self.train_seconds, "counts": list(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the totals of the run a checkpoint came from."""
        self.train_seconds, self.counts = state["train_seconds"], list(state["counts"])

    def on_train_start(self, trainer, pl_module) -> None:
        """Start timing."""
        self._start, self._last_step = time.perf_counter(), trainer.global_step
        self.training_at = self.training_at or time.time()

    def on_validation_end(self, trainer, pl_module) -> None:
        """Evaluation time does not count as training time."""
        if trainer.training:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Count every micro-batch; after each optimizer step, log the rates over the step's window."""
        counts = batch_counts(batch)
        self._window = self._window.to(counts.device) + counts
        if trainer.global_step == self._last_step or self._start is None:
            return
        self._last_step = trainer.global_step
        if self.first_step_at is None:
            self.first_step_at = time.time()
        seconds = max(time.perf_counter() - self._start, 1e-9)
        tokens, trained, slots = self._window.tolist()
        self.train_seconds += seconds
        self.counts = [self.counts[0] + tokens, self.counts[1] + trained, self.counts[2] + slots]
        pl_module.log("train/tokens_per_sec", tokens / seconds)
        pl_module.log("train/padding_fraction", 1 - tokens / max(slots, 1))
        pl_module.log("train/trained_tokens_per_sec", trained / seconds)
        pl_module.log("train/trained_tokens", float(self.counts[1]))
        self._window, self._start = torch.zeros_like(self._window), time.perf_counter()

    def summary_section(self) -> dict[str, float]:
        """Totals over the fit: seconds spent training, tokens per second and the padding fraction."""
        seconds = max(self.train_seconds, 1e-9)
        tokens, trained, slots = self.counts
        return {
            "train_seconds": round(self.train_seconds, 2),
            "tokens_per_sec": round(tokens / seconds, 1),
            "trained_tokens_per_sec": round(trained / seconds, 1),
            "padding_fraction": round(1 - tokens / max(slots, 1), 4),
            "seconds_to_training": _since_start(self.training_at),
            "seconds_to_first_step": _since_start(self.first_step_at),
        }


def _since_start(moment: float | None) -> float | None:
    """Seconds from this process's creation to `moment` (a wall-clock time), or None."""
    return None if moment is None else round(moment - psutil.Process().create_time(), 1)


class ProgressFile(Callback):
    """Writes `progress.json` (state, step, total steps, elapsed time, ETA, pid) after every optimizer step.

    Watchers (the web UI, a shell loop) read it instead of parsing the progress bar; it is replaced
    atomically, so a reader never sees half a file. Only the first process writes it. The state is
    running, trained (final evaluation and saving follow), stopped (by a signal) or failed.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = RunDir(run_dir)
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
        self.run_dir.write_progress(record)


class OverfittingWatch(Callback):
    """Warns when the run starts to overfit: val loss rising for `patience` evaluations in a row while
    the train loss (mean over the steps since the previous evaluation) keeps falling.

    The train side is read back from `val/gap` (val loss minus that mean), which SFTModule logs at every
    evaluation. Each warning says what to try; `warnings` counts them for the run summary.
    """

    def __init__(self, patience: int):
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

    def summary_section(self) -> dict:
        """The run summary's count of overfitting warnings."""
        return {"overfitting_warnings": self.warnings}

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
