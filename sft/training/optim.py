"""The optimizer and learning-rate schedule of a run, built from the optimizer and scheduler groups."""

from __future__ import annotations

import math

from hydra.utils import instantiate
from transformers import get_scheduler

from ..config import SchedulerConfig


def param_groups(model) -> list[dict]:
    """Trainable parameters in two groups: matrices with the configured weight decay, the rest without."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2]},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model,
    optimizer: dict,
    scheduler: SchedulerConfig,
    total_steps: int,
    loraplus_lr_ratio: float | None = None,
) -> dict:
    """Lightning's optimizer dict: the `_target_` optimizer over `param_groups` (or LoRA+'s groups, whose
    B matrices learn `loraplus_lr_ratio` times faster) and a per-step schedule."""
    factory = instantiate(optimizer)
    if loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        settings = dict(factory.keywords)
        opt = create_loraplus_optimizer(
            model,
            factory.func,  # PEFT reads the class's name, which a partial lacks
            lr=settings.pop("lr"),
            loraplus_lr_ratio=loraplus_lr_ratio,
            loraplus_weight_decay=settings.get("weight_decay", 0.0),
            **settings,
        )
    else:
        opt = factory(param_groups(model))
    total = max(total_steps, 1)
    warmup = scheduler.warmup_steps
    if warmup is None:
        warmup = math.ceil(scheduler.warmup_ratio * total)
    schedule = get_scheduler(scheduler.name, opt, num_warmup_steps=warmup, num_training_steps=total)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
