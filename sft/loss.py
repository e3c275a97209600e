"""Token-level next-token loss: summed over trained positions so callers can weight by tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.tokenize import IGNORE_INDEX


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, trained-token count, correct predictions) over positions whose label is kept.

    An all-masked batch gives a zero sum and a zero count, never NaN, and nothing syncs with the host.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    picked = logits[:, :-1][keep].float()  # upcast only the rows that carry loss
    wanted = targets[keep]
    loss_sum = F.cross_entropy(picked, wanted, reduction="sum")
    correct = (picked.argmax(-1) == wanted).sum()
    return loss_sum, keep.sum(), correct
