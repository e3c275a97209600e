"""One forward over many sequences at once, each with its own key/value cache, without batching changing a
sequence's numbers.

The sequences' new tokens are laid end to end in a single row of the batch (prompts of joining sequences and
the last token of decoding ones alike). The linear layers see all of them; attention runs per sequence over
that sequence's own cache, through the same SDPA call and with the same shapes as when it runs alone. No
padding enters any attention, so a sequence's logits are bitwise the same alone or beside others, given one
more condition, below (ROWS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sft_serve"  # the attention implementation the served model is switched to
LAYOUT = "sft_layout"  # the forward keyword that carries a Layout down to the attention function

# fp32 GEMM on the CPU (oneDNN/MKL) computes rows in blocks of 4; a matrix of 1, 2 or 3 rows, and the
# 1-3 leftover rows of one with 5-11, take other kernels whose sums differ in the last bits (measured: a
# row is bitwise the same for every row count that is a multiple of 4, from 4 to 700, in every projection of
# the tiny model and SmolLM2). Padding every matmul to a multiple of 4 rows keeps a sequence's logits
# independent of how many others share its step.
ROWS = 4

# A 4-D mask is passed through untouched by transformers' mask builders, so no padded or packed-sequence
# mask of the whole flattened row is ever built (attention here needs none).
_NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


class SequenceCache:
    """The keys and values of one sequence, per layer, in buffers sized for its whole generation."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.length = capacity, 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values ([1, heads, n, dim]) after the cached ones; all of them, as views."""
        if layer not in self.keys:
            self.keys[layer] = key.new_empty(1, key.shape[1], self.capacity, key.shape[3])
            self.values[layer] = value.new_empty(1, value.shape[1], self.capacity, value.shape[3])
        end = self.length + key.shape[2]
        if end > self.capacity:
            raise ValueError(f"sequence cache overflow: {end} tokens, room for {self.capacity}")
        self.keys[layer][:, :, self.length : end] = key
        self.values[layer][:, :, self.length : end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


@dataclass
class Layout:
    """Which slice of the flattened row belongs to which sequence: (start, length) per cache."""

    caches: list[SequenceCache]
    spans: list[tuple[int, int]]


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention per sequence of a Layout; without one (any ordinary forward or generate), plain SDPA."""
    layout: Layout | None = kwargs.pop(LAYOUT, None)
    if layout is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    outputs, used = [], 0
    for cache, (start, length) in zip(layout.caches, layout.spans, strict=True):
        end = start + length
        keys, values = cache.extend(module.layer_idx, key[:, :, start:end], value[:, :, start:end])
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], keys, values, None, scaling=scaling)
        outputs.append(out)
        used = end
    rest = query.shape[2] - used  # the filler rows: their outputs are never read
    if rest:
        outputs.append(query.new_zeros(1, rest, query.shape[1], query.shape[3]))
    return torch.cat(outputs, dim=1), None


def install(model) -> None:
    """Switch `model` to the per-sequence attention (registered once; ordinary calls still run SDPA)."""
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)


def _pad(values: list[int], filler: int) -> list[int]:
    """`values` (never empty) lengthened with `filler` to a multiple of ROWS."""
    return values + [filler] * (-len(values) % ROWS)


def forward(model, parts: list[tuple[SequenceCache, list[int]]]) -> torch.Tensor:
    """Next-token logits ([len(parts), vocab], float32) of each (cache, new token ids) in one forward; each
    cache grows by its new tokens."""
    ids, positions, spans, last = [], [], [], []
    for cache, new in parts:
        spans.append((len(ids), len(new)))
        ids += new
        positions += range(cache.length, cache.length + len(new))
        last.append(len(ids) - 1)
    device = next(model.parameters()).device
    out = model(
        input_ids=torch.tensor([_pad(ids, 0)], device=device),
        position_ids=torch.tensor([_pad(positions, 0)], device=device),
        attention_mask=_NO_MASK.to(device),
        use_cache=False,
        logits_to_keep=torch.tensor(_pad(last, last[-1]), device=device),
        **{LAYOUT: Layout([cache for cache, _ in parts], spans)},
    )
    for cache, new in parts:
        cache.length += len(new)
    return out.logits[0, : len(parts)].float()
