"""Callbacks that make faults happen inside a real training run (added with `+callbacks.<name>._target_=`)."""

from __future__ import annotations

import os
import resource
import signal

import torch
from lightning.pytorch.callbacks import Callback


def trainable(pl_module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights."""
    return {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}


class InjectNaN(Callback):
    """Turns every logit NaN during the optimizer steps listed in `steps` (as a diverging model would).

    The output head is hooked, so the poison reaches the loss whether logits are computed for every
    position or only for trained ones.

    The trainable weights at the start of each step are recorded in `InjectNaN.weights` (step -> weights),
    so a test can check that a poisoned step changed nothing.
    """

    weights: dict[int, dict[str, torch.Tensor]] = {}

    def __init__(self, steps: list[int]):
        self.steps = set(steps)
        self._hook = None
        InjectNaN.weights = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Record the weights once per step; poison the forward pass during the listed steps."""
        InjectNaN.weights.setdefault(trainer.global_step, trainable(pl_module))
        if trainer.global_step in self.steps and self._hook is None:
            head = pl_module.model.get_base_model().get_output_embeddings()
            self._hook = head.register_forward_hook(lambda module, args, output: output * torch.nan)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Stop poisoning once the step is over."""
        if self._hook is not None and trainer.global_step not in self.steps:
            self._hook.remove()
            self._hook = None


class LimitFileSize(Callback):
    """From optimizer step `step` on, the kernel refuses to grow any file past `max_bytes` (RLIMIT_FSIZE).

    SIGXFSZ is ignored so the refused write raises OSError(EFBIG) instead of killing the process; both
    are restored when training ends, however it ends.
    """

    def __init__(self, step: int, max_bytes: int):
        self.step, self.max_bytes = step, max_bytes
        self._saved = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Lower the file size limit once the step is reached."""
        if trainer.global_step >= self.step and self._saved is None:
            self._saved = (
                resource.getrlimit(resource.RLIMIT_FSIZE),
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
            )
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_bytes, self._saved[0][1]))

    def _restore(self) -> None:
        if self._saved is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, self._saved[0])
            signal.signal(signal.SIGXFSZ, self._saved[1])
            self._saved = None

    def on_train_end(self, trainer, pl_module) -> None:
        """Lift the limit."""
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Lift the limit."""
        self._restore()


class SendSignal(Callback):
    """Sends `signum` to this very process after optimizer step `step` (as a scheduler or Ctrl+C would)."""

    def __init__(self, step: int, signum: int = signal.SIGINT):
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Signal once, as soon as the step is reached."""
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
