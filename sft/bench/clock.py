"""Per-optimizer-step timestamps and token counts, from sft.train (Lightning) and from TRL (transformers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from transformers import TrainerCallback

from ..training.callbacks import batch_counts
from .flops import parameter_counts


def rates(steps: list[dict], warmup: int) -> dict:
    """Non-padding and trained tokens/s, padding fraction and seconds over the steps after `warmup`.

    Each record holds cumulative `tokens`, `trained`, `slots` (tokens with padding) and `time` at the
    end of a step; the window starts at the end of step `warmup`.
    """
    if len(steps) <= warmup:
        raise ValueError(f"{len(steps)} steps recorded, not more than the {warmup} warm-up steps")
    zero = {"time": steps[0]["start"], "tokens": 0, "trained": 0, "slots": 0}
    first, last = (steps[warmup - 1] if warmup else zero), steps[-1]
    seconds = last["time"] - first["time"]
    tokens, trained, slots = (last[k] - first[k] for k in ("tokens", "trained", "slots"))
    return {
        "timed_steps": len(steps) - warmup,
        "seconds": seconds,
        "tokens_per_sec": tokens / seconds,
        "trained_tokens_per_sec": trained / seconds,
        "padding_fraction": 1 - tokens / max(slots, 1),
        "loss": last.get("loss"),
    }


class LightningClock(Callback):
    """Records each optimizer step of an sft.train run and writes the records to `path` at the end."""

    def __init__(self, path: str):
        self.path, self.steps, self.start, self.params = Path(path), [], None, {}
        self._last = -1
        self._counts = torch.zeros(3, dtype=torch.long)  # cumulative, on the batches' device

    def on_train_start(self, trainer, pl_module) -> None:
        """Mark the start of training and count the model's parameters."""
        self.start, self._last = time.perf_counter(), trainer.global_step
        self.params = parameter_counts(pl_module.model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Count every micro-batch; after each optimizer step, record the time and cumulative counts."""
        counts = batch_counts(batch)
        self._counts = self._counts.to(counts.device) + counts
        if trainer.global_step == self._last:
            return
        self._last = trainer.global_step
        loss = trainer.callback_metrics.get("train/loss")
        tokens, trained, slots = self._counts.tolist()
        record = {"start": self.start, "time": time.perf_counter(), "tokens": tokens, "trained": trained}
        self.steps.append({**record, "slots": slots, "loss": None if loss is None else float(loss)})

    def on_train_end(self, trainer, pl_module) -> None:
        """Write the step records."""
        self.path.write_text(json.dumps({"steps": self.steps, **self.params}))


class CountingCollator:
    """Wraps a collator and counts each batch's non-padding, trained (shifted label) and total tokens."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, examples):
        """The inner collator's batch, counted."""
        batch = self.inner(examples)
        ids, labels = batch["input_ids"], batch["labels"]
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else ids.numel()  # padding-free batches have no mask
        self.batches.append((tokens, int((labels[..., 1:] != -100).sum()), ids.numel()))
        return batch


class TrlClock(TrainerCallback):
    """Records each optimizer step of a transformers Trainer (accumulation 1: one batch per step)."""

    def __init__(self, counter: CountingCollator):
        self.counter, self.steps, self.start, self.loss = counter, [], None, None

    def on_train_begin(self, args, state, control, **kwargs):
        """Mark the start of training."""
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Keep the latest logged training loss."""
        if logs and "loss" in logs:
            self.loss = logs["loss"]
            if self.steps:
                self.steps[-1]["loss"] = self.loss

    def on_step_end(self, args, state, control, **kwargs):
        """Time and cumulative counts of the batches this step trained on."""
        done = self.counter.batches[: state.global_step * args.gradient_accumulation_steps]
        self.steps.append(
            {
                "start": self.start,
                "time": time.perf_counter(),
                "tokens": sum(b[0] for b in done),
                "trained": sum(b[1] for b in done),
                "slots": sum(b[2] for b in done),
                "loss": self.loss,
            }
        )
