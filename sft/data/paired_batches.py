"""Batches of two-sequence examples: preference pairs (chosen, rejected) and KTO rows (completion, KL row).

Batch contract (P examples in the micro-batch; the loss reads each sequence's log-probability by
`segments`):

- padded (`PairedPadCollator`): input_ids, labels, attention_mask of shape (2P, W); rows 0..P-1 hold
  the first sequences (chosen / completions), rows P..2P-1 the second (rejected / KL rows), in the
  same example order. segments (2P, W) long: the row index on real tokens, -1 on padding.
- packed (`PairedPackedDataset` + `PairedPackedCollator`): input_ids, labels, position_ids of shape
  (R, W) (or (1, N) flattened), no attention_mask, position_ids restarting per sequence as in
  `PackedCollator`; an example's two sequences always share a packed row. segments numbers every
  token's sequence exactly as the padded form would: example k's first sequence is k, its second
  P + k, with examples counted through the batch's rows in order; -1 on padding.
- both: num_tokens (0-dim long: non-padding tokens), num_sequences (0-dim long: 2P); feedback adds
  label (bool, shape (P,), in example order); rows carrying a `ref_logps` column (the reference's
  log-probabilities of both sequences, computed before training) add ref_logps (float, shape (2P,),
  numbered like segments).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .collate import PAD_MULTIPLE, PackedCollator, PadCollator
from .packing import _to_list
from .tokenize import IGNORE_INDEX

# The two sequences of an example, per kind: (ids column, labels column) each.
SEQUENCES = {
    "pairs": (("chosen_input_ids", "chosen_labels"), ("rejected_input_ids", "rejected_labels")),
    "feedback": (("input_ids", "labels"), ("kl_input_ids", "kl_labels")),
}


def batch_columns(kind: str) -> list[str]:
    """The dataset columns a batch of `kind` is built from."""
    if kind not in SEQUENCES:
        return ["input_ids", "labels"]
    columns = [column for sequence in SEQUENCES[kind] for column in sequence]
    return columns + (["label"] if kind == "feedback" else [])


def _labels_of(kind: str, examples: list[dict]) -> dict[str, torch.Tensor]:
    """The KTO label of each example (nothing for pairs)."""
    if kind != "feedback":
        return {}
    return {"label": torch.tensor([bool(e["label"]) for e in examples], dtype=torch.bool)}


def _reference_of(pairs: list) -> dict[str, torch.Tensor]:
    """ref_logps numbered like segments (all first sequences, then all second), when the rows carry them."""
    if not pairs:
        return {}
    return {"ref_logps": torch.tensor([p[0] for p in pairs] + [p[1] for p in pairs], dtype=torch.float32)}


class PairedPadCollator:
    """Right-pads both sequences of every example into one (2P, W) batch: first sequences, then second."""

    def __init__(self, kind: str, pad_id: int, multiple: int = PAD_MULTIPLE):
        self.kind, self.pad = kind, PadCollator(pad_id, multiple)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """input_ids, labels, attention_mask, segments, num_tokens, num_sequences (+ label for feedback)."""
        sequences = [
            {"input_ids": e[ids], "labels": e[labels]}
            for ids, labels in SEQUENCES[self.kind]
            for e in examples
        ]
        batch = self.pad(sequences)
        rows = torch.arange(len(sequences)).unsqueeze(1)
        batch["segments"] = torch.where(batch["attention_mask"].bool(), rows, -1)
        batch["num_sequences"] = torch.tensor(len(sequences), dtype=torch.long)
        references = [e["ref_logps"] for e in examples if "ref_logps" in e]
        return {**batch, **_labels_of(self.kind, examples), **_reference_of(references)}


class PairedPackedDataset(Dataset):
    """Item i lays the examples of bins[i] into one row, each example's two sequences side by side.

    Per sequence, as in `PackedDataset`: position_ids restart at 0 and the first label is masked. The
    row also carries `sequence` (per token: 2k for example k's first sequence in the row, 2k + 1 for
    its second), `examples` (how many) and, for feedback, each example's `label`, from which
    `PairedPackedCollator` numbers the batch's sequences.
    """

    def __init__(self, examples, bins: list[list[int]], kind: str, lengths: list[int]):
        self.examples, self.bins, self.kind = examples, bins, kind
        self.lengths = [sum(lengths[i] for i in b) for b in bins]

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> dict[str, list]:
        """The packed row: input_ids, labels, position_ids, sequence, examples (+ label for feedback)."""
        row: dict[str, list] = {
            "input_ids": [],
            "labels": [],
            "position_ids": [],
            "sequence": [],
            "label": [],
            "ref_logps": [],
        }
        for k, i in enumerate(self.bins[index]):
            example = self.examples[i]
            for side, (ids_key, labels_key) in enumerate(SEQUENCES[self.kind]):
                ids, labels = _to_list(example[ids_key]), _to_list(example[labels_key])
                row["input_ids"] += ids
                row["labels"] += [IGNORE_INDEX, *labels[1:]]
                row["position_ids"] += range(len(ids))
                row["sequence"] += [2 * k + side] * len(ids)
            if self.kind == "feedback":
                row["label"].append(bool(example["label"]))
            if "ref_logps" in example:
                row["ref_logps"].append(_to_list(example["ref_logps"]))
        return {**row, "examples": len(self.bins[index])}


class PairedPackedCollator(PackedCollator):
    """`PackedCollator` for `PairedPackedDataset` rows, adding segments numbered as in the padded batch."""

    def __init__(self, kind: str, pad_id: int, multiple: int = PAD_MULTIPLE, flatten: bool = False):
        super().__init__(pad_id, multiple, flatten)
        self.kind = kind

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """input_ids, labels, position_ids, segments, num_tokens, num_sequences (+ label for feedback)."""
        batch = super().__call__(rows)
        total = sum(r["examples"] for r in rows)
        segments, first = [], 0
        for r in rows:
            local = torch.as_tensor(r["sequence"], dtype=torch.long)
            # Local code 2k + side → side * P + (examples in earlier rows) + k.
            segments.append((local % 2) * total + first + local // 2)
            first += r["examples"]
        if self.flatten:
            segments = [torch.cat(segments)]
        out = torch.full(batch["labels"].shape, -1, dtype=torch.long)
        for row, seg in enumerate(segments):
            out[row, : len(seg)] = seg
        batch["segments"] = out
        batch["num_sequences"] = torch.tensor(2 * total, dtype=torch.long)
        if self.kind == "feedback":
            batch["label"] = torch.tensor([label for r in rows for label in r["label"]], dtype=torch.bool)
        return {**batch, **_reference_of([pair for r in rows for pair in r["ref_logps"]])}
