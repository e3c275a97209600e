"""The LightningDataModule: conversations → token ids and labels → padded micro-batches."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import DataConfig
from .builtin import builtin_conversations
from .formats import MalformedRow, read_rows, to_conversation
from .templates import Template
from .tokenize import IGNORE_INDEX, encode

log = logging.getLogger(__name__)


@dataclass
class DataStats:
    """What happened to the rows on the way to the batches."""

    rows: int = 0
    malformed: int = 0
    too_long: int = 0
    train: int = 0
    val: int = 0
    train_tokens: int = 0
    train_trained_tokens: int = 0
    problems: list[str] = field(default_factory=list)


def fill_placeholders(conversation: dict, values: dict[str, str]) -> dict:
    """Replace `{{key}}` in the system prompt and every message with the configured value."""

    def fill(text: str | None) -> str | None:
        if text is None:
            return None
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", str(value))
        return text

    return {
        **conversation,
        "system": fill(conversation.get("system")),
        "messages": [{**m, "content": fill(m["content"])} for m in conversation["messages"]],
    }


def load_conversations(cfg: DataConfig, stats: DataStats) -> list[dict]:
    """Read the configured source into canonical conversations, counting and reporting bad rows."""
    if cfg.source == "builtin":
        rows = [(f"builtin:{r['id']}", r) for r in builtin_conversations(cfg.num_rows)]
    else:
        rows = list(read_rows(cfg.path))
    conversations = []
    for location, row in rows:
        stats.rows += 1
        try:
            conversations.append(fill_placeholders(to_conversation(row, cfg.format), cfg.placeholders))
        except MalformedRow as err:
            stats.malformed += 1
            stats.problems.append(f"{location}: {err}")
    for problem in stats.problems[:20]:
        log.warning("skipped malformed row %s", problem)
    if stats.malformed:
        log.warning("skipped %d of %d rows as malformed", stats.malformed, stats.rows)
    if not conversations:
        raise ValueError(f"no usable rows in {cfg.path or cfg.source}: {stats.malformed} malformed")
    return conversations


def split(items: list, val_size: float, seed: int) -> tuple[list, list]:
    """Seeded train/validation split; `val_size` is a fraction (< 1) or a row count."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = int(val_size) if val_size >= 1 else round(len(items) * val_size)
    n_val = min(n_val, len(items) - 1)
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [items[i] for i in sorted(val_idx)]


class PadCollator:
    """Right-pads a list of examples to the longest one (rounded up to a multiple of 8)."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id, self.multiple = pad_id, multiple

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Stack examples into input_ids, attention_mask and labels tensors."""
        longest = max(len(e["input_ids"]) for e in examples)
        width = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"])
            labels[row, :n] = torch.tensor(e["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), grouped by length within each optimizer step.

    Each consecutive block of `group_size` indices (one effective batch) is sorted longest first,
    so its micro-batches need little padding while every step still sees the same examples as
    without grouping. A resumed run sees the same order, since Lightning calls `set_epoch` on
    samplers that have it, as it does for DistributedSampler.
    """

    def __init__(self, lengths: list[int], seed: int, group_size: int = 1):
        self.lengths, self.seed, self.group_size, self.epoch = lengths, seed, max(group_size, 1), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for this epoch."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        for start in range(0, len(order), self.group_size):
            yield from sorted(order[start : start + self.group_size], key=lambda i: -self.lengths[i])

    def __len__(self) -> int:
        return len(self.lengths)


class SFTDataModule(L.LightningDataModule):
    """Loads, splits and tokenizes the configured conversations once, then serves batches."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        template: Template,
        micro_batch_size: int,
        seed: int,
        group_size: int = 1,
    ):
        super().__init__()
        self.cfg, self.tokenizer, self.template = cfg, tokenizer, template
        self.micro_batch_size, self.seed = micro_batch_size, seed
        # Examples per optimizer step on one device: the span within which batches are length-grouped.
        self.group_size = group_size if cfg.group_by_length else 1
        self.stats = DataStats()
        self.train_set: list[dict] | None = None
        self.val_set: list[dict] = []
        self.val_conversations: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        """Build the tokenized train and validation sets (once)."""
        if self.train_set is not None:
            return
        conversations = load_conversations(self.cfg, self.stats)
        if self.cfg.max_samples:
            conversations = conversations[: self.cfg.max_samples]
        train, val = split(conversations, self.cfg.val_size, self.seed)
        self.val_conversations = val
        self.train_set, self.val_set = self._encode(train), self._encode(val)
        self.stats.train, self.stats.val = len(self.train_set), len(self.val_set)
        self.stats.train_tokens = sum(len(e["input_ids"]) for e in self.train_set)
        self.stats.train_trained_tokens = sum(
            sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in self.train_set
        )
        log.info(
            "data: %d rows, %d malformed, %d dropped (nothing trainable within cutoff_len=%d); "
            "%d train / %d val examples; %d train tokens, %d of them trained",
            self.stats.rows,
            self.stats.malformed,
            self.stats.too_long,
            self.cfg.cutoff_len,
            self.stats.train,
            self.stats.val,
            self.stats.train_tokens,
            self.stats.train_trained_tokens,
        )
        if not self.train_set:
            raise ValueError("no training examples left after tokenization; raise data.cutoff_len")

    def _encode(self, conversations: list[dict]) -> list[dict]:
        out = []
        for conv in conversations:
            example = encode(conv, self.tokenizer, self.template, self.cfg.cutoff_len)
            if example is None:
                self.stats.too_long += 1
            else:
                out.append(example)
        return out

    def _loader(self, data: list[dict], shuffle: bool) -> DataLoader:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return DataLoader(
            data,
            batch_size=self.micro_batch_size,
            sampler=EpochShuffleSampler([len(e["input_ids"]) for e in data], self.seed, self.group_size)
            if shuffle
            else None,
            collate_fn=PadCollator(pad_id),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Micro-batches in a (seed, epoch)-determined order (Lightning shards it across devices)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation micro-batches in a fixed order."""
        return self._loader(self.val_set, shuffle=False)
