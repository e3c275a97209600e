"""Sequence packing: group tokenized examples into rows of at most `capacity` tokens.

A packed row concatenates whole samples; position_ids restart at 0 for each sample so the model
(attention_mask=None, use_cache=False) attends only within a sample, and the first label of each
sample is masked so no loss term predicts one sample's first token from the previous sample.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

from torch.utils.data import Dataset

from .tokenize import IGNORE_INDEX


def _to_list(values) -> list[int]:
    """Plain ints from a list, tensor or numpy array (datasets rows may carry any of them)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def pack(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Best-fit-decreasing bins of example indices, each summing to at most `capacity` tokens.

    The seed breaks ties between equal lengths and orders the bins, so the result depends only on
    (lengths, capacity, seed). Runs in O(n log n) plus list shifts, fine for millions of rows.
    """
    if capacity < 1:
        raise ValueError(f"packing capacity must be positive, got {capacity}")
    for i, n in enumerate(lengths):
        if not 1 <= n <= capacity:
            raise ValueError(
                f"example {i} has {n} tokens, outside 1..{capacity}: examples must be cut to cutoff_len "
                "before packing and the packing capacity must be at least cutoff_len"
            )
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep their seeded order
    bins: list[list[int]] = []
    # (remaining space, bin id), sorted: the first entry >= (n, -1) is the tightest bin that fits.
    open_bins: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(open_bins, (n, -1))
        if at < len(open_bins):
            space, b = open_bins.pop(at)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - n > 0:
            bisect.insort(open_bins, (space - n, b))
    # Creation order runs from long to short samples; shuffle so unsampled loaders see no length trend.
    rng.shuffle(bins)
    return bins


def packing_efficiency(lengths: list[int], bins: list[list[int]], capacity: int) -> float:
    """Fraction of the packed rows' token slots (bins × capacity) filled by real tokens."""
    return sum(lengths[i] for b in bins for i in b) / max(len(bins) * capacity, 1)


class PackedDataset(Dataset):
    """Item i concatenates the examples of bins[i] into one row with per-sample position_ids.

    `examples` is any indexable of {"input_ids", "labels"} rows, optionally with "label_weights" (a list
    or a datasets.Dataset); rows are fetched on access, never all held in memory. `lengths` (tokens per
    example), if given, saves a pass over the data to compute the per-row lengths exposed as
    `self.lengths` for the sampler.
    """

    def __init__(self, examples: Sequence[dict], bins: list[list[int]], lengths: list[int] | None = None):
        self.examples, self.bins = examples, bins
        if lengths is None:
            self.lengths = [sum(len(examples[i]["input_ids"]) for i in b) for b in bins]
        else:
            self.lengths = [sum(lengths[i] for i in b) for b in bins]

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> dict[str, list]:
        """The packed row: input_ids, labels (each sample's first label masked) and position_ids, plus
        label_weights (1.0 for a sample without any) when any of its samples carries loss weights."""
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        weights: list[float] = []
        weighted = False
        for i in self.bins[index]:
            example = self.examples[i]
            ids, labs = _to_list(example["input_ids"]), _to_list(example["labels"])
            input_ids += ids
            # The loss predicts labels[t] from position t-1; for a sample's first token that is the
            # previous sample's last token. Unpacked, labels[0] is never a target either.
            labels += [IGNORE_INDEX, *labs[1:]]
            position_ids += range(len(ids))
            given = example.get("label_weights")
            own = [] if given is None else _to_list(given)
            weighted = weighted or bool(own)
            weights += own or [1.0] * len(ids)
        row = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        return {**row, "label_weights": weights} if weighted else row
