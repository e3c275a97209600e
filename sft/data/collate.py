"""Collators: examples (dicts of token-id lists or tensors) → right-padded micro-batch tensors.

Both follow the batch contract in notes/data_contract.md: labels are -100 on every padding position
(even when pad_id is the eos id, which many tokenizers use as pad), and `num_tokens` counts the
non-padding tokens of the batch. When any example of the batch carries per-turn loss weights, the batch
gets `label_weights` (float32, the shape of labels: each example's weights, 1.0 for an example without
any, 0.0 on padding); a batch without any has no such key and its loss is computed exactly as before.
"""

from __future__ import annotations

import torch

from .tokenize import IGNORE_INDEX


def _as_long(values) -> torch.Tensor:
    """A 1-D long tensor from a python list or a tensor (datasets rows come as lists without a format)."""
    return torch.as_tensor(values, dtype=torch.long)


def has_weights(example: dict) -> bool:
    """Whether an example carries per-token loss weights (an empty list means every weight is 1)."""
    weights = example.get("label_weights")
    return weights is not None and len(weights) > 0


def weights_of(example: dict, n: int) -> torch.Tensor:
    """An example's per-token loss weights as float32, all ones when it carries none."""
    if not has_weights(example):
        return torch.ones(n, dtype=torch.float32)
    return torch.as_tensor(example["label_weights"], dtype=torch.float32)


# Micro-batches are padded to a multiple of this many tokens (tensor-core friendly shapes, fewer recompiles).
PAD_MULTIPLE = 8


def padded_width(longest: int, multiple: int = PAD_MULTIPLE) -> int:
    """`longest` rounded up to a multiple of `multiple`: the width of a micro-batch with that longest row."""
    return -(-longest // multiple) * multiple


class PadCollator:
    """Right-pads unpacked examples to the longest one (rounded up to `multiple`), with an attention mask."""

    def __init__(self, pad_id: int, multiple: int = PAD_MULTIPLE):
        self.pad_id, self.multiple = pad_id, multiple

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Stack examples into input_ids, labels, attention_mask and num_tokens (and label_weights)."""
        width = padded_width(max(len(e["input_ids"]) for e in examples), self.multiple)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        weighted = any(has_weights(e) for e in examples)
        weights = torch.zeros((len(examples), width), dtype=torch.float32) if weighted else None
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = _as_long(e["input_ids"])
            labels[row, :n] = _as_long(e["labels"])
            mask[row, :n] = 1
            if weights is not None:
                weights[row, :n] = weights_of(e, n)
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "num_tokens": mask.sum()}
        return batch if weights is None else {**batch, "label_weights": weights}


class PackedCollator:
    """Right-pads packed rows (from PackedDataset) and emits position_ids instead of an attention mask.

    Without an attention mask and without a cache, transformers 5 derives a block-diagonal causal mask
    from position_ids (each restart at 0 opens a new block) for sdpa and eager. The padding tail gets
    its own run of positions 0..k-1, so it is a block of its own that no real token attends to.

    flash_attention_2 only honours restarting position_ids when the batch has ONE row (transformers'
    `_is_packed_sequence` returns False for batch_size > 1 and then attends across the whole row), so
    `flatten=True` concatenates all rows into a single (1, N) row for it; every sample and padding run
    is still its own block. Leave it off for sdpa/eager: their dense mask grows with N².
    """

    def __init__(self, pad_id: int, multiple: int = PAD_MULTIPLE, flatten: bool = False):
        self.pad_id, self.multiple, self.flatten = pad_id, multiple, flatten

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Stack packed rows into input_ids, labels, position_ids and num_tokens (no attention_mask), and
        label_weights when any row carries them."""
        keys = ("input_ids", "labels", "position_ids")
        weighted = any(has_weights(r) for r in rows)
        rows = [
            {
                **{k: _as_long(r[k]) for k in keys},
                **({"label_weights": weights_of(r, len(r["input_ids"]))} if weighted else {}),
            }
            for r in rows
        ]
        if self.flatten:
            rows = [{k: torch.cat([r[k] for r in rows]) for k in rows[0]}]
        width = padded_width(max(len(r["input_ids"]) for r in rows), self.multiple)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        weights = torch.zeros((len(rows), width), dtype=torch.float32) if weighted else None
        num_tokens = 0
        for row, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[row, :n] = r["input_ids"]
            labels[row, :n] = r["labels"]
            positions[row, :n] = r["position_ids"]
            positions[row, n:] = torch.arange(width - n)  # the padding run restarts at 0: its own block
            if weights is not None:
                weights[row, :n] = r["label_weights"]
            num_tokens += n
        batch = {
            "input_ids": ids,
            "labels": labels,
            "position_ids": positions,
            "num_tokens": torch.tensor(num_tokens, dtype=torch.long),
        }
        return batch if weights is None else {**batch, "label_weights": weights}
