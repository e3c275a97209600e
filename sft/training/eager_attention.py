"""Eager attention for short rows while training on a CPU.

`sdpa` runs torch's CPU flash-attention kernel there, which costs more than plain matmuls and a softmax when
rows are short, above all in its backward (BENCHMARKS.md, "Eager attention for short rows"). Eager
attention keeps each layer's attention weights (micro-batch x heads x length^2) for the backward pass, so it
is used only while the longest training row is at most `trainer.eager_attention_max_len` tokens. Packed
rows keep `sdpa_segments` (sft.training.attention), which attends within each sequence.
"""

from __future__ import annotations

import logging

from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class ShortRowsEagerAttention(Callback):
    """While training on a CPU, a model that uses `sdpa` attends with transformers' `eager` attention when its
    rows are unpacked and the longest is at most `max_len` tokens (None: never).

    Only the fit: `sdpa` is put back when training ends (or fails), so the final evaluation, the probe
    answers, the parity reference and the saved model use the configured attention, as the evaluation
    before training did. In float32 both give the same loss to float rounding (tested).
    """

    def __init__(self, max_len: int | None) -> None:
        self.max_len = max_len
        self._switched = None

    def on_train_start(self, trainer, pl_module) -> None:
        """Switch to eager attention when this fit's rows and device call for it."""
        data, model = trainer.datamodule, pl_module.model
        if not self.max_len or not isinstance(trainer.accelerator, CPUAccelerator) or data is None:
            return
        if data.cfg.packing or getattr(model.config, "_attn_implementation", None) != "sdpa":
            return
        longest = data.stats.length_percentiles.get("max") or data.cfg.cutoff_len
        if longest > self.max_len:
            return
        model.set_attn_implementation("eager")
        self._switched = model
        log.info("training with eager attention: rows of at most %d tokens on a CPU", longest)

    def on_train_end(self, trainer, pl_module) -> None:
        """Put `sdpa` back."""
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Put `sdpa` back before anything evaluates or saves."""
        self._restore()

    def _restore(self) -> None:
        if self._switched is not None:
            self._switched.set_attn_implementation("sdpa")
            self._switched = None
