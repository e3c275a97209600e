"""Attention over packed rows, one sequence at a time: the work of each sequence, not of the whole row.

A packed row holds several sequences; `position_ids` restart at 0 where each begins. Through `sdpa`,
transformers builds a block-diagonal mask for such a row, and the kernel still computes every query against
every key of the row: for 512-token rows of 60-token conversations that is about eight times the attention
the sequences need, and about a fifth of a CPU training step (BENCHMARKS.md). `sdpa_segments` computes
each sequence's causal attention on its own slice instead: the same softmax over the same keys, so the same
result to float rounding. Rows without a restart (padded batches, validation, generation with a cache) go
to transformers' own `sdpa` path unchanged, with its mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_segments"


def segment_bounds(position_ids: torch.Tensor | None, length: int) -> list[list[int]] | None:
    """Per row, the offsets where its sequences start, plus the row's length; None when no row restarts."""
    if position_ids is None or position_ids.shape[-1] != length:
        return None
    starts = (position_ids == 0).nonzero().tolist()  # one host sync per layer: a few microseconds
    if all(col == 0 for _, col in starts):
        return None
    rows: list[list[int]] = [[] for _ in range(position_ids.shape[0])]
    for row, col in starts:
        rows[row].append(col)
    return [(r if r and r[0] == 0 else [0, *r]) + [length] for r in rows]


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence (query, key, value: batch x heads x tokens x dim)."""
    bounds = segment_bounds(position_ids, query.shape[2]) if key.shape[2] == query.shape[2] else None
    if bounds is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    rows = []
    for b, cuts in enumerate(bounds):
        pieces = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
            )
            for s, e in zip(cuts, cuts[1:], strict=False)
            if e > s
        ]
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, segment_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # rows without restarts get sdpa's mask


def attend_by_segment(model) -> bool:
    """Switch a model that uses `sdpa` to `sdpa_segments` for training on packed rows; whether it did."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True
