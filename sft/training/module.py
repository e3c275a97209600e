"""The LightningModule: a thin wrapper that turns the PEFT model's logits into a token-weighted loss."""

from __future__ import annotations

import lightning as L
import torch

from ..config import SchedulerConfig, TrainerConfig
from .loss import split_head, token_loss, trained_token_loss
from .optim import build_optimizer
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
    """Trains `model` on (input_ids, attention_mask, labels) batches with loss on labelled tokens only.

    Each micro-batch backpropagates its summed loss; before the optimizer step the gradients are
    rescaled by 1 / (trained tokens in the whole accumulation window, over all devices), so
    accumulation gives the same update as one large batch regardless of padding and masking.
    Clipping to `gradient_clip_val` follows that rescaling, wherever the strategy keeps gradients.
    A step whose loss or gradient norm is not finite updates nothing (see NonFiniteGuard).
    """

    def __init__(self, model, optimizer: dict, scheduler: SchedulerConfig, trainer: TrainerConfig):
        super().__init__()
        self.model = model
        self.trained_logits_only = trainer.trained_logits_only
        self._head: tuple | None | bool = False  # (decoder, head) once known; None: full logits
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.gradient_clip_val = trainer.gradient_clip_val
        self.guard = NonFiniteGuard(trainer.max_nonfinite_steps)
        # Checkpoints keep only trainable weights; the frozen base comes from the model config.
        self.strict_loading = False
        self._window = torch.zeros(2)  # summed loss, trained tokens since the last optimizer step
        self._val = torch.zeros(3)  # summed loss, trained tokens, correct predictions
        self._since_eval = torch.zeros(2)  # summed step losses, steps since the last evaluation

    def on_fit_start(self) -> None:
        """A gradient scaler skips overflowing fp16 steps itself: the guard then watches the loss only."""
        self.guard.check_gradients = not uses_grad_scaler(self.trainer)

    def configure_model(self) -> None:
        """Under FSDP, wrap the model as its own root unit, once (sft.training.strategy.shard_model)."""
        self.model = shard_model(self.model, self.trainer.strategy)

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits for a padded batch (attention_mask) or a packed one (position_ids restarting per sample)."""
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,  # a cache would also stop transformers from building the packed-sample mask
        ).logits

    def token_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed loss, trained tokens, correct predictions); the head runs on trained positions only
        when `trained_logits_only` and the model allows it (not under FSDP, whose root unit must run)."""
        if self._head is False:
            sharded = self._trainer is not None and is_fsdp(self._trainer.strategy)
            self._head = split_head(self.model) if self.trained_logits_only and not sharded else None
        if self._head is None:
            return token_loss(self(batch), batch["labels"])
        return trained_token_loss(*self._head, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Summed loss of one micro-batch (Lightning divides by the accumulation count)."""
        loss_sum, n_tokens, _ = self.token_loss(batch)
        self._window = self._window.to(loss_sum.device) + torch.stack([loss_sum.detach(), n_tokens.float()])
        return loss_sum

    def on_before_optimizer_step(self, optimizer) -> None:
        """Rescale gradients to a per-token mean over the window, clip, then log loss, lr and grad norm."""
        if not at_step_boundary(self.trainer):  # DeepSpeed calls this on every micro-batch
            return
        window = self.trainer.strategy.reduce(self._window, reduce_op="sum")
        loss_sum, n_tokens = window[0], window[1]
        scale = gradient_divisor(self.trainer) / n_tokens.clamp(min=1)
        grad_norm = finish_gradients(self.trainer, self.model, scale, self.gradient_clip_val)
        loss, lr = loss_sum / n_tokens.clamp(min=1), optimizer.param_groups[0]["lr"]
        if not self.guard.ok(loss, grad_norm, n_tokens, self.trainer.global_step, lr):
            drop_gradients(self.trainer, optimizer)
        one_step = torch.stack([loss.detach(), torch.ones_like(loss)])
        self._since_eval = self._since_eval.to(loss.device) + one_step
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/grad_norm", grad_norm)
        self.log("train/lr", lr, prog_bar=True)
        self.log("train/window_tokens", n_tokens)
        self.log("train/skipped_steps", float(self.guard.skipped))
        self._window = torch.zeros_like(self._window)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Accumulate summed loss, token count and correct predictions."""
        loss_sum, n_tokens, correct = self.token_loss(batch)
        self._val = self._val.to(loss_sum.device) + torch.stack([loss_sum, n_tokens.float(), correct.float()])

    def on_validation_epoch_start(self) -> None:
        """Start a fresh validation sum."""
        self._val = torch.zeros(3)

    def on_validation_epoch_end(self) -> None:
        """Log token-weighted val loss, perplexity and token accuracy over all devices."""
        loss_sum, n_tokens, correct = self.trainer.strategy.reduce(self._val, reduce_op="sum")
        val_loss = loss_sum / n_tokens.clamp(min=1)
        self.log("val/loss", val_loss, prog_bar=True)
        self.log("val/ppl", torch.exp(val_loss.clamp(max=50)))
        self.log("val/token_accuracy", correct / n_tokens.clamp(min=1))
        if self.trainer.state.fn == "fit" and self._since_eval[1] > 0:  # the train/val gap since the last one
            self.log("val/gap", val_loss - self._since_eval[0] / self._since_eval[1])
            self._since_eval = torch.zeros_like(self._since_eval)

    def configure_optimizers(self):
        """The configured optimizer and learning-rate schedule over the trainable parameters."""
        return build_optimizer(
            self.model, self.optimizer_cfg, self.scheduler_cfg, int(self.trainer.estimated_stepping_batches)
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights, and the guard's step counts, in checkpoints."""
        trainable = {clean_name(n) for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["sft_counters"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the guard's step counts, so a resumed run's summary covers the whole run."""
        self.guard.load_state_dict(checkpoint.get("sft_counters", {}))
