"""Where a preference stage's reference comes from, and reference log-probabilities computed up front.

Preference losses (DPO, IPO, KTO) compare the policy with its starting point. A freshly initialised LoRA
adapter gives that starting point for free: the module disables the adapter. Full fine-tuning and a
continued adapter have nothing to disable, so each example's reference log-probabilities are computed
here, before the first update, and travel with the data as a `ref_logps` column. A frozen second copy
of the starting weights is the third way (what a framework without either does; it costs the memory).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from .lineage import fresh_adapter

log = logging.getLogger(__name__)


def reference_source(cfg: TrainConfig) -> str:
    """adapter, precomputed or copy: `stage.reference`, with auto resolved for this run."""
    if cfg.stage.reference != "auto":
        return cfg.stage.reference
    return "adapter" if fresh_adapter(cfg) else "precomputed"


def frozen(model):
    """The model in eval mode with no trainable parameter: a fixed reference."""
    return model.requires_grad_(False).eval()


def reference_logps(module, rows, collate, batch_size: int, context=nullcontext) -> list[list[float]]:
    """Per row, the starting model's summed log-probability of its two sequences (chosen and rejected,
    or completion and KL row), in row order.

    `context` is the trainer precision's forward context (autocast under bf16-mixed), so the reference
    is computed at the precision the policy's first step runs at.
    """
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    before, was_training = next(module.parameters()).device, module.training
    if device is not None:
        module.to(device)
    module.eval()  # dropout off: the reference is one fixed function of the starting weights
    out: list[list[float]] = []
    try:
        with torch.no_grad(), context():
            for batch in DataLoader(rows, batch_size=batch_size, collate_fn=collate):
                batch = {
                    k: v.to(device) if device is not None and torch.is_tensor(v) else v
                    for k, v in batch.items()
                }
                logps = module.sequence_logps(batch)[0].tolist()
                half = len(logps) // 2
                out += [[first, second] for first, second in zip(logps[:half], logps[half:], strict=True)]
    finally:
        module.to(before)
        module.train(was_training)
    log.info("reference log-probabilities of %d rows computed from the starting weights", len(out))
    return out
