"""The LightningModule: a thin loop around the PEFT model; the stage's objective says what is optimised."""

from __future__ import annotations

import lightning as L
import torch

from ..config import SchedulerConfig, TrainerConfig
from .loss import kept_scores, scored_sums, split_head, token_logps
from .objectives import TokenObjective
from .optim import build_optimizer
from .preference_losses import sequence_sums
from .resilience import NonFiniteGuard
from .strategy import (
    at_step_boundary,
    clean_name,
    drop_gradients,
    finish_gradients,
    gradient_divisor,
    is_fsdp,
    shard_model,
    uses_grad_scaler,
)


class SFTModule(L.LightningModule):
    """Trains `model` on the stage's batches with the stage's objective (token loss by default).

    Each micro-batch backpropagates its summed loss; before the optimizer step the gradients are
    rescaled by 1 / (what the loss is averaged over in the whole accumulation window, over all devices:
    trained tokens (their summed loss weights, with per-turn weights), pairs or examples), so
    accumulation gives the same update as one large batch
    regardless of padding and masking.
    Clipping to `gradient_clip_val` follows that rescaling, wherever the strategy keeps gradients.
    A step whose loss or gradient norm is not finite updates nothing (see NonFiniteGuard).
    """

    def __init__(
        self,
        model,
        optimizer: dict,
        scheduler: SchedulerConfig,
        trainer: TrainerConfig,
        objective=None,
        loraplus_lr_ratio: float | None = None,
    ):
        super().__init__()
        self.model = model
        self.objective = objective or TokenObjective()
        self.reference_model = None  # a frozen copy of the starting weights, when stage.reference=copy
        self.trained_logits_only = trainer.trained_logits_only
        self._head: tuple | None | bool = False  # (decoder, head) once known; None: full logits
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.gradient_clip_val = trainer.gradient_clip_val
        self.guard = NonFiniteGuard(trainer.max_nonfinite_steps)
        # Checkpoints keep only trainable weights; the frozen base comes from the model config.
        self.strict_loading = False
        width = len(self.objective.keys)  # summed loss, what it averages over, then the objective's own
        self._window = torch.zeros(width)  # since the last optimizer step
        self._val = torch.zeros(width)
        self._since_eval = torch.zeros(2)  # summed step losses, steps since the last evaluation

    def on_fit_start(self) -> None:
        """A gradient scaler skips overflowing fp16 steps itself: the guard then watches the loss only."""
        self.guard.check_gradients = not uses_grad_scaler(self.trainer)

    def train(self, mode: bool = True):
        """Switch the policy's mode; a reference copy stays in eval mode (it is a fixed function)."""
        super().train(mode)
        if self.reference_model is not None:
            self.reference_model.eval()
        return self

    def configure_model(self) -> None:
        """Under FSDP, wrap the model as its own root unit, once (sft.training.strategy.shard_model)."""
        self.model = shard_model(self.model, self.trainer.strategy)

    def _scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(score rows, wanted ids, keep mask) of the labelled positions; the head runs on those positions
        only when `trained_logits_only` and the model allows it (not under FSDP, whose root unit must run)."""
        if self._head is False:
            sharded = self._trainer is not None and is_fsdp(self._trainer.strategy)
            self._head = split_head(self.model) if self.trained_logits_only and not sharded else None
        return kept_scores(self.model, self._head, batch)

    def token_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed cross-entropy, trained tokens, correct predictions) of the batch; with label_weights,
        every term weighted (sft.training.loss)."""
        scores, wanted, keep = self._scores(batch)
        return scored_sums(scores, wanted, keep, batch.get("label_weights"))

    def sequence_logps(self, batch: dict, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed log-probability, trained tokens) of every sequence the batch's `segments` number,
        under the policy or, given, another (unsharded) model."""
        if model is None:
            scores, wanted, keep = self._scores(batch)
        else:
            head = split_head(model) if self.trained_logits_only else None
            scores, wanted, keep = kept_scores(model, head, batch)
        segments = batch["segments"][:, 1:][keep]  # a label at t + 1 belongs to the sequence of token t + 1
        return sequence_sums(token_logps(scores, wanted), segments, int(batch["num_sequences"]))

    def reference_logps(self, batch: dict) -> torch.Tensor:
        """The reference's summed log-probability of every sequence: computed before training and carried
        by the batch, from a frozen copy, or the policy with its (fresh) adapter disabled: the start."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.reference_model is not None:
            with torch.no_grad():
                return self.sequence_logps(batch, self.reference_model)[0]
        with torch.no_grad(), disabled_adapter(self.model):
            return self.sequence_logps(batch)[0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Summed loss of one micro-batch (Lightning divides by the accumulation count)."""
        sums = self.objective.sums(self, batch)
        self._window = self._window.to(sums.device) + sums.detach()
        return sums[0]

    def on_before_optimizer_step(self, optimizer) -> None:
        """Rescale gradients to a per-token mean over the window, clip, then log loss, lr and grad norm."""
        if not at_step_boundary(self.trainer):  # DeepSpeed calls this on every micro-batch
            return
        window = self.trainer.strategy.reduce(self._window, reduce_op="sum")
        count = window[1]  # trained tokens, pairs or examples: what the loss is a mean over
        scale = gradient_divisor(self.trainer) / count.clamp(min=1)
        grad_norm = finish_gradients(self.trainer, self.model, scale, self.gradient_clip_val)
        metrics, lr = self.objective.metrics(window), optimizer.param_groups[0]["lr"]
        loss = metrics["loss"]
        if not self.guard.ok(loss, grad_norm, count, self.trainer.global_step, lr):
            drop_gradients(self.trainer, optimizer)
        one_step = torch.stack([loss.detach(), torch.ones_like(loss)])
        self._since_eval = self._since_eval.to(loss.device) + one_step
        self.log("train/loss", loss, prog_bar=True)
        for name in self.objective.train_metrics[1:]:
            self.log(f"train/{name}", metrics[name])
        self.log("train/grad_norm", grad_norm)
        self.log("train/lr", lr, prog_bar=True)
        self.log(f"train/window_{self.objective.keys[1]}", count)
        self.log("train/skipped_steps", float(self.guard.skipped))
        self._window = torch.zeros_like(self._window)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Accumulate the objective's sums."""
        sums = self.objective.sums(self, batch).detach()
        self._val = self._val.to(sums.device) + sums

    def on_validation_epoch_start(self) -> None:
        """Start a fresh validation sum."""
        self._val = torch.zeros(len(self.objective.keys))

    def on_validation_epoch_end(self) -> None:
        """Log the objective's validation metrics (loss first) over all devices."""
        metrics = self.objective.metrics(self.trainer.strategy.reduce(self._val, reduce_op="sum"))
        val_loss = metrics["loss"]
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss")
        if self.trainer.state.fn == "fit" and self._since_eval[1] > 0:  # the train/val gap since the last one
            self.log("val/gap", val_loss - self._since_eval[0] / self._since_eval[1])
            self._since_eval = torch.zeros_like(self._since_eval)

    def configure_optimizers(self):
        """The configured optimizer and learning-rate schedule over the trainable parameters."""
        return build_optimizer(
            self.model,
            self.optimizer_cfg,
            self.scheduler_cfg,
            int(self.trainer.estimated_stepping_batches),
            self.loraplus_lr_ratio,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights, and the guard's step counts, in checkpoints."""
        trainable = {clean_name(n) for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["sft_counters"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the guard's step counts, so a resumed run's summary covers the whole run."""
        self.guard.load_state_dict(checkpoint.get("sft_counters", {}))


def disabled_adapter(model):
    """A context in which the PEFT model (also under a strategy's wrapper) runs without its adapter."""
    inner = model
    while not hasattr(inner, "disable_adapter") and hasattr(inner, "module"):
        inner = inner.module  # DDP, FSDP and DeepSpeed keep the wrapped model as `.module`
    if not hasattr(inner, "disable_adapter"):
        raise TypeError(
            "the reference needs a LoRA adapter to disable, or log-probabilities computed before training"
        )
    return inner.disable_adapter()
