"""The LightningModule: a thin wrapper that turns the PEFT model's logits into a token-weighted loss."""

from __future__ import annotations

import math

import lightning as L
import torch
from hydra.utils import instantiate
from transformers import get_scheduler

from ..config import SchedulerConfig
from .loss import split_head, token_loss, trained_token_loss
from .resilience import NonFiniteGuard
from .strategy import (
    at_step_boundary,
    clean_name,
    drop_gradients,
    finish_gradients,
    gradient_divisor,
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

    def __init__(
        self,
        model,
        optimizer: dict,
        scheduler: SchedulerConfig,
        gradient_clip_val: float | None = None,
        max_nonfinite_steps: int = 5,
        trained_logits_only: bool = True,
    ):
        super().__init__()
        self.model = model
        self.trained_logits_only = trained_logits_only
        self._head: tuple | None | bool = False  # (decoder, head) once known; None: full logits
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.gradient_clip_val = gradient_clip_val
        self.guard = NonFiniteGuard(max_nonfinite_steps)
        # Checkpoints keep only trainable weights; the frozen base comes from the model config.
        self.strict_loading = False
        self.tokens_seen = torch.zeros((), dtype=torch.long)
        self.trained_tokens_seen = torch.zeros((), dtype=torch.long)
        self.slots_seen = torch.zeros((), dtype=torch.long)  # tokens processed, padding included
        self.empty_windows = torch.zeros((), dtype=torch.long)  # steps whose window had no trained token
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
            sharded = type(self.model).__name__ == "FullyShardedDataParallel"
            self._head = split_head(self.model) if self.trained_logits_only and not sharded else None
        if self._head is None:
            return token_loss(self(batch), batch["labels"])
        return trained_token_loss(*self._head, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Summed loss of one micro-batch (Lightning divides by the accumulation count)."""
        loss_sum, n_tokens, _ = self.token_loss(batch)
        self._window = self._window.to(loss_sum.device) + torch.stack([loss_sum.detach(), n_tokens.float()])
        self.tokens_seen = self.tokens_seen.to(n_tokens.device) + batch["num_tokens"]
        self.slots_seen = self.slots_seen.to(n_tokens.device) + batch["input_ids"].numel()
        self.trained_tokens_seen = self.trained_tokens_seen.to(n_tokens.device) + n_tokens
        return loss_sum

    def on_before_optimizer_step(self, optimizer) -> None:
        """Rescale gradients to a per-token mean over the window, clip, then log loss, lr and grad norm."""
        if not at_step_boundary(self.trainer):  # DeepSpeed calls this on every micro-batch
            return
        window = self.trainer.strategy.reduce(self._window, reduce_op="sum")
        loss_sum, n_tokens = window[0], window[1]
        # Counted on the device: a host sync per step would stall GPU training.
        self.empty_windows = self.empty_windows.to(n_tokens.device) + (n_tokens == 0)
        scale = gradient_divisor(self.trainer) / n_tokens.clamp(min=1)
        grad_norm = finish_gradients(self.trainer, self.model, scale, self.gradient_clip_val)
        loss, lr = loss_sum / n_tokens.clamp(min=1), optimizer.param_groups[0]["lr"]
        if not self.guard.ok(loss, grad_norm, self.trainer.global_step, lr):
            drop_gradients(self.trainer, optimizer)
        self._since_eval = self._since_eval.to(loss.device) + torch.stack(
            [loss.detach(), torch.ones_like(loss)]
        )
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
        """The configured optimizer over trainable parameters (no decay on biases and norms) and schedule."""
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2]},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = instantiate(self.optimizer_cfg)([g for g in groups if g["params"]])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = self.scheduler_cfg.warmup_steps
        if warmup is None:
            warmup = math.ceil(self.scheduler_cfg.warmup_ratio * total)
        scheduler = get_scheduler(
            self.scheduler_cfg.name, optimizer, num_warmup_steps=warmup, num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights and the token counters in Lightning checkpoints."""
        trainable = {clean_name(n) for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["sft_counters"] = {
            "tokens_seen": int(self.tokens_seen),
            "trained_tokens_seen": int(self.trained_tokens_seen),
            "slots_seen": int(self.slots_seen),
            "skipped_steps": self.guard.skipped,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the token counters so throughput and trained-token totals continue."""
        counters = checkpoint.get("sft_counters", {})
        self.tokens_seen = torch.tensor(counters.get("tokens_seen", 0))
        self.trained_tokens_seen = torch.tensor(counters.get("trained_tokens_seen", 0))
        self.slots_seen = torch.tensor(counters.get("slots_seen", 0))
        self.guard.skipped = counters.get("skipped_steps", 0)
