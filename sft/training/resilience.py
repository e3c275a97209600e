"""What keeps a long run safe: preemption signals, RNG state in checkpoints, the non-finite loss guard."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ..errors import Diverged, Preempted
from .rng import every_rank, python_rng_state, set_python_rng_state

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(Callback):
    """On SIGTERM or SIGINT, finish the optimizer step in progress, save `checkpoint` and stop.

    Stopping between steps (not mid-accumulation) means the checkpoint holds no half-summed
    gradients, so the resumed run continues exactly. A second signal stops at once. Under several
    processes, every rank learns of the signal at the same step (one boolean reduction per step).
    """

    def __init__(self, checkpoint: Path):
        self.checkpoint = Path(checkpoint)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._last_step = -1

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # impatient: stop now, without a checkpoint
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "received %s: saving a checkpoint after the current optimizer step, then stopping "
            "(send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        """Take over SIGINT and SIGTERM for the length of training (signals reach the main thread only)."""
        self._last_step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After each optimizer step: if any rank was signalled, checkpoint and stop."""
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return
        trainer.save_checkpoint(self.checkpoint, weights_only=False)  # the full state, to resume from
        signum = self.signum if self.signum is not None else signal.SIGTERM
        raise Preempted(signum, trainer.global_step, self.checkpoint)

    def on_train_end(self, trainer, pl_module) -> None:
        """Give the signals back."""
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Give the signals back."""
        self._restore()


def rng_state() -> dict:
    """The state of every random generator training draws from, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Plain lists and ints, so the checkpoint still loads with weights_only=True.
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": python_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    """Put every random generator back where `rng_state` found it."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    set_python_rng_state(state["python"])


@contextmanager
def rng_untouched():
    """Every random generator left where it was, whatever the block draws: a run that validates before
    training and one that reads that validation from the cache then draw the same dropout masks."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class RngCheckpoint(Callback):
    """Saves every rank's random generators with each checkpoint and restores them at the first resumed step.

    Each rank draws its own amount (dropout masks follow its batch shapes), so all ranks' states are
    gathered. Restoring on load would be too early: building the data iterator draws from torch's
    generator, and LoRA dropout must continue from where the interrupted step left off.
    """

    def __init__(self) -> None:
        self._pending: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Add the generators of every rank (collective: every rank saves the checkpoint together)."""
        checkpoint["rng_states"] = every_rank(rng_state(), trainer.world_size)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Hold this rank's saved state (rank 0's when the world size changed) until training resumes."""
        states = checkpoint.get("rng_states") or [None]
        self._pending = states[trainer.global_rank] if len(states) == trainer.world_size else states[0]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Restore the saved generators just before the first resumed micro-batch."""
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None


class NonFiniteGuard:
    """Counts optimizer steps whose loss (or gradient norm) is NaN or infinite, and stops a diverged run.

    It also counts empty steps, whose accumulation window held no trained token (they change nothing).
    Under a gradient scaler (16-mixed) overflowing gradients are the scaler's business: it skips
    those steps and lowers its scale, so only the loss is checked.
    """

    def __init__(self, max_in_row: int, check_gradients: bool = True):
        self.max_in_row, self.check_gradients = max_in_row, check_gradients
        self.skipped = 0
        self.empty = 0
        self.in_row = 0

    def state_dict(self) -> dict:
        """The counts a resumed run continues from (checkpoints keep them)."""
        return {"skipped_steps": self.skipped, "empty_steps": self.empty}

    def load_state_dict(self, state: dict) -> None:
        """Continue the counts of the run a checkpoint came from."""
        self.skipped, self.empty = state.get("skipped_steps", 0), state.get("empty_steps", 0)

    def summary_section(self) -> dict:
        """The run summary's counts of optimizer steps that updated nothing."""
        return self.state_dict()

    def ok(self, loss: torch.Tensor, grad_norm: torch.Tensor, n_tokens: torch.Tensor, step: int, lr) -> bool:
        """Whether this step may update the weights; raises `Diverged` after too many bad steps in a row."""
        finite = torch.isfinite(loss) & (torch.isfinite(grad_norm) if self.check_gradients else True)
        finite, empty = torch.stack([finite, n_tokens == 0]).tolist()  # one host sync per optimizer step
        self.empty += int(empty)
        if finite:
            self.in_row = 0
            return True
        self.skipped += 1
        self.in_row += 1
        log.warning(
            "step %d: loss %s, gradient norm %s; update skipped (%d in a row, %d in all)",
            step,
            float(loss),
            float(grad_norm),
            self.in_row,
            self.skipped,
        )
        if self.in_row >= self.max_in_row:
            raise Diverged(
                f"the loss was NaN or infinite for {self.in_row} optimizer steps in a row (at step {step}); "
                f"stopping. Try a lower optimizer.lr (now {lr:g}), warm-up (scheduler.warmup_ratio), "
                "gradient clipping (trainer.gradient_clip_val), or trainer.precision=32-true or bf16-mixed "
                "instead of 16-mixed; look for broken rows with `python -m sft.data`. The last checkpoint "
                "before the divergence is in checkpoints/."
            )
        return False
