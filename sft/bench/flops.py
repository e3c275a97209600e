"""Model FLOPs per training token, for model-FLOPs utilisation (the peak: sft.training.precision)."""

from __future__ import annotations

import torch


def parameter_counts(model) -> dict:
    """Frozen matmul weights, trainable weights, layers and width of a (PEFT-wrapped) causal LM.

    Every Linear counts, the output head included (tied or not); embedding lookups cost no FLOPs.
    """
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    config = model.config
    return {
        "frozen_matmul": sum(w.numel() for w in linear if not w.requires_grad),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "layers": config.num_hidden_layers,
        "width": config.hidden_size,
    }


def mean_context(lengths: list[int]) -> float:
    """Mean number of positions a token attends to under a causal mask, over sequences of `lengths`."""
    return sum(n * (n + 1) / 2 for n in lengths) / max(sum(lengths), 1)


def flops_per_token(frozen: int, trainable: int, layers: int, width: int, context: float) -> float:
    """Training FLOPs per token: 2N forward + 2N backward on a frozen base (activation gradients only),
    6 per trainable weight, and attention scores and values (4·layers·width·context forward, twice that
    backward)."""
    return 4 * frozen + 6 * trainable + 3 * 4 * layers * width * context
