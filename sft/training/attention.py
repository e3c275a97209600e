"""Attention over packed rows, one sequence at a time: the work of each sequence, not of the whole row.

A packed row holds several sequences; `position_ids` restart at 0 where each begins. Through `sdpa`,
transformers builds a block-diagonal mask for such a row, and the kernel still computes every query against
every key of the row: for 512-token rows of 60-token conversations that is about eight times the attention
the sequences need, and about a fifth of a CPU training step (BENCHMARKS.md). `sdpa_segments` computes
each sequence's causal attention on its own slice instead: the same softmax over the same keys, so the same
result to float rounding. Rows without a restart (padded batches, validation, generation with a cache) go
to transformers' own `sdpa` path unchanged, with its mask.

On a CPU, sequences of at most `EAGER_MAX_LEN` tokens take matmuls and a float32 softmax, a block of queries
at a time, instead of torch's flash kernel, whose backward is slow on short sequences: forward and backward
measured 1.1-1.4x faster from 256 to 512 tokens and about even at 1024 and 2048 (BENCHMARKS.md).

Padded rows in training on a CPU take the same matmuls, all rows at once under transformers' padding mask,
when they are at most `PADDED_MAX_LEN` tokens long: forward and backward measured 2.9x the kernel's for 16
rows of 96 tokens and 1.5x for 4 of 256 (BENCHMARKS.md). Evaluation and generation keep transformers' path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_segments"
EAGER_MAX_LEN = 512  # longest sequence computed with matmuls on a CPU; longer ones use the flash kernel
QUERY_BLOCK = 128  # queries per softmax block: the keys after a block's last query are never multiplied
# Longest padded rows trained with matmuls on a CPU: a micro-batch's saved probabilities grow with its tokens
# times its rows' length (at 512, `make bench`'s padded run peaked 0.75 GB higher, no faster end to end).
PADDED_MAX_LEN = 256


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


def kernel_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, dropout: float
) -> torch.Tensor:
    """Causal attention of one sequence through torch's SDPA (heads x tokens x dim in, tokens x heads x dim
    out)."""
    groups = query.shape[0] // key.shape[0]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=0), value.repeat_interleave(groups, dim=0)
    q, k, v = (x.unsqueeze(0) for x in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale)
    return out[0].transpose(0, 1)


def matmul_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention as two matmuls and a float32 softmax per block of `QUERY_BLOCK` queries over the keys
    up to the block's end (the keys after it are never multiplied), each key head serving its group of query
    heads without copies of the keys; every query sees all its keys in one softmax. [batch x] heads x tokens
    x dim in; [batch x] tokens x heads x dim out, as transformers' attention functions return. `mask`: True
    where a query may see a key (batch x 1 x tokens x tokens, transformers' causal padding mask), or None
    for causal alone."""
    *batch, heads, n, dim = query.shape
    kv_heads = key.shape[-3]
    groups = heads // kv_heads
    if mask is None:
        hidden = torch.ones(n, n, dtype=torch.bool, device=query.device).triu(1)
    else:
        hidden = ~mask[:, :, None]  # one row of masks for each key head's group of query heads
    # The lowest value, not -inf: a query that may see no key (a left pad) gets an even spread, not NaN.
    lowest = torch.finfo(query.dtype).min
    blocks = []
    for start in range(0, n, QUERY_BLOCK):
        end = min(n, start + QUERY_BLOCK)
        rows = end - start
        q = query[..., start:end, :].reshape(*batch, kv_heads, groups * rows, dim)
        scores = torch.matmul(q, key[..., :end, :].transpose(-1, -2))
        scores = scores.view(*batch, kv_heads, groups, rows, end) * scale
        probs = torch.softmax(
            scores.masked_fill(hidden[..., start:end, :end], lowest), dim=-1, dtype=torch.float32
        )
        out = torch.matmul(
            probs.to(value.dtype).view(*batch, kv_heads, groups * rows, end), value[..., :end, :]
        )
        blocks.append(out.view(*batch, heads, rows, dim))
    out = torch.cat(blocks, dim=-2) if len(blocks) > 1 else blocks[0]
    return out.transpose(-3, -2).contiguous()


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
    """Causal attention within each packed sequence, or of padded rows in training on a CPU (query, key,
    value: batch x heads x tokens x dim)."""
    plain = key.shape[2] == query.shape[2] and _plain_causal(module, kwargs)
    bounds = segment_bounds(position_ids, query.shape[2]) if plain else None
    batch, heads, length, dim = query.shape
    scale = scaling if scaling is not None else dim**-0.5
    by_matmuls = dropout == 0.0 and query.device.type == "cpu"  # where rows are short enough
    padded = bounds is None and plain and by_matmuls and _padded_by_matmuls(module, length, attention_mask)
    if bounds is None and not padded:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # Rotary embeddings leave query and key in float32 under autocast; cast them once, not per sequence.
    query, key = query.to(value.dtype), key.to(value.dtype)
    if padded:
        return matmul_attention(query, key, value, scale, attention_mask), None
    lengths = [e - s for cuts in bounds for s, e in zip(cuts, cuts[1:], strict=False) if e > s]
    # Heads x (batch*tokens) x dim, token-major in memory (the projections' own layout): split's backward is
    # one concatenation, where a slice's backward writes a zero tensor of the whole batch per sequence.
    q, k, v = (
        x.transpose(1, 2).reshape(batch * length, x.shape[1], dim).transpose(0, 1)
        for x in (query, key, value)
    )
    pieces = [
        matmul_attention(qs, ks, vs, scale)
        if by_matmuls and qs.shape[1] <= EAGER_MAX_LEN
        else kernel_attention(qs, ks, vs, scale, dropout)
        for qs, ks, vs in zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1), strict=True)
    ]
    return torch.cat(pieces).view(batch, length, heads, dim), None


# Arguments of transformers' attention functions that the matmuls here do not apply: they go to sdpa.
NOT_APPLIED = ("sliding_window", "position_bias", "softcap", "s_aux")


def _plain_causal(module: torch.nn.Module | None, kwargs: dict) -> bool:
    """Whether a call is plain causal attention: no window, bias, soft-cap or sinks, and causal."""
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    return bool(causal) and all(kwargs.get(name) is None for name in NOT_APPLIED)


def _padded_by_matmuls(module: torch.nn.Module | None, length: int, mask: torch.Tensor | None) -> bool:
    """Whether rows without restarts (on a CPU, without attention dropout) take `matmul_attention`: in
    training, rows of at most PADDED_MAX_LEN tokens, and a boolean mask that lets no query see a later key
    (or none): the blocks never multiply the keys after a block's last query."""
    if not getattr(module, "training", False) or length > PADDED_MAX_LEN:
        return False
    return mask is None or (mask.dtype == torch.bool and not mask.triu(1).any())


AttentionInterface.register(NAME, segment_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # rows without restarts get sdpa's mask


def attend_by_segment(model) -> bool:
    """Switch a model that uses `sdpa` to `sdpa_segments` for training on packed rows; whether it did."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True
