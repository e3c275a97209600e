"""One forward over many sequences at once, each with its own key/value cache, without batching changing a
sequence's numbers.

The sequences' new tokens are laid end to end in a single row of the batch (prompts of joining sequences and
the last token of decoding ones alike). The linear layers see all of them; attention runs per sequence over
that sequence's own cache, through the same SDPA call and with the same shapes as when it runs alone. No
padding enters any attention, so a sequence's logits are bitwise the same alone or beside others, given one
more condition, below (ROWS).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)

NAME = "sft_serve"  # the attention implementation the served model is switched to
LAYOUT = "sft_layout"  # the forward keyword that carries a Layout down to the attention function

# A GEMM library picks its kernel by the matrix's row count and thread count, and kernels sum in different
# orders. Measured: fp32 on an AMD CPU computes rows in blocks of 4, so 1-3 leftover rows come out different
# in the last bits; MKL on an Intel CPU takes a small-matrix path below 16 rows and, on 2 threads, splits a
# 1536-wide input's sum between them up to 192 rows, where one thread from 16 rows up gives the bits of two
# on many rows. So every matmul is padded to a multiple of ROWS and to a floor measured on this machine
# (`plans`), from which every row count gives each row the same bits, and a step with fewer rows than the
# floor of every thread runs on one thread: a sequence's logits do not depend on who shares its step.
ROWS = 4
PROBE_ROWS = 256  # the largest row count probed for the decoder's layers (beyond it no kernel changed)
PROBE_LOGIT_ROWS = 64  # the same for the output layer, whose rows are the step's sequences

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


@dataclass(frozen=True)
class Plan:
    """How a step runs: its thread count and the fewest rows of the decoder's and the output's matmuls."""

    threads: int
    tokens: int
    logits: int


def plans(model) -> tuple[Plan, Plan]:
    """(every thread, one thread): the row floors from which each gives the bits of PROBE_ROWS rows on every
    thread, measured on this machine once per thread count (kept on the model)."""
    threads = torch.get_num_threads()
    kept = model.__dict__.setdefault("_sft_row_plans", {})
    if threads not in kept:
        head = model.get_output_embeddings()
        layers = {
            (m.in_features, m.out_features, m.bias is not None): m
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not head
        }
        with torch.inference_mode():
            tokens = [_floors(m, PROBE_ROWS, threads) for m in layers.values()] or [(ROWS, ROWS)]
            logits = (
                _floors(head, PROBE_LOGIT_ROWS, threads)
                if isinstance(head, torch.nn.Linear)
                else (ROWS, ROWS)
            )
        kept[threads] = tuple(
            Plan(count, max(floor[i] for floor in tokens), logits[i]) for i, count in enumerate((threads, 1))
        )
        log.info("serving steps: matmul row floors %s", kept[threads])
    return kept[threads]


def _floors(linear: torch.nn.Linear, limit: int, threads: int) -> tuple[int, int]:
    """The fewest rows (a multiple of ROWS) from which `linear`, on `threads` threads and on one, gives each
    row the bits it gets among `limit` rows on `threads` threads."""
    generator = torch.Generator(device=linear.weight.device).manual_seed(0)
    x = torch.randn(
        limit, linear.in_features, generator=generator, device=linear.weight.device, dtype=linear.weight.dtype
    )
    whole = linear(x)
    floors = []
    for count in (threads, 1) if threads > 1 else (1,):  # on one thread already (serving's default): once
        with _threads(count):
            floor = ROWS
            for rows in range(ROWS, limit, ROWS):
                if not torch.equal(linear(x[:rows]), whole[:rows]):
                    floor = rows + ROWS
        floors.append(floor)
    return floors[0], floors[-1]


@contextmanager
def _threads(count: int):
    """torch's intra-op threads set to `count` for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pad(values: list[int], filler: int, floor: int) -> list[int]:
    """`values` (never empty) lengthened with `filler` to a multiple of ROWS and to at least `floor`."""
    return values + [filler] * max(floor - len(values), -len(values) % ROWS)


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
    every, one = plans(model)
    # A step too short for every thread's floor runs on one thread, whose floor is lower, rather than padded.
    plan = one if len(_pad(ids, 0, one.tokens)) < every.tokens else every
    with _threads(plan.threads):
        out = model(
            input_ids=torch.tensor([_pad(ids, 0, plan.tokens)], device=device),
            position_ids=torch.tensor([_pad(positions, 0, plan.tokens)], device=device),
            attention_mask=_NO_MASK.to(device),
            use_cache=False,
            logits_to_keep=torch.tensor(_pad(last, last[-1], plan.logits), device=device),
            **{LAYOUT: Layout([cache for cache, _ in parts], spans)},
        )
    for cache, new in parts:
        cache.length += len(new)
    return out.logits[0, : len(parts)].float()
