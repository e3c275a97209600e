"""Where a run's weights start: the configured base model, or an earlier run's result (`init_from`).

The hand-off between stages (CPT → SFT → DPO) is decided here and nowhere else: `merge` folds the parent's
adapter into its base and trains a new adapter on top; `continue` trains the parent's adapter further.
"""

from __future__ import annotations

from ..config import TrainConfig
from .model import apply_peft, load_model


def start_model(cfg: TrainConfig, cache_dir: str):
    """The model a run trains: its starting weights, wrapped for training (LoRA or full)."""
    return apply_peft(load_model(cfg.model, cache_dir), cfg.lora, cfg.trainer.gradient_checkpointing)


def fresh_adapter(cfg: TrainConfig) -> bool:
    """Whether the run trains a new LoRA adapter, so that disabling it gives back the starting weights."""
    return cfg.lora.enabled
