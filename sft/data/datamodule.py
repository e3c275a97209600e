"""The LightningDataModule: prepared token rows → padded or packed micro-batches."""

from __future__ import annotations

import json
import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import DataConfig
from .collate import PackedCollator, PadCollator
from .packing import PackedDataset, pack, packing_efficiency
from .preprocess import Prepared, prepare
from .stats import DataStats
from .templates import Template

log = logging.getLogger(__name__)


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
    """Prepares the tokenized data once (cached on disk), then serves padded or packed micro-batches.

    `prepare_data` (rank 0 only, per Lightning's contract) builds the cache; `setup` on every rank
    then opens the same cached rows, so devices never tokenize twice or disagree about the data.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        template: Template,
        micro_batch_size: int,
        seed: int,
        cache_dir: str | None,
        group_size: int = 1,
        flatten_packed: bool = False,
    ):
        super().__init__()
        self.cfg, self.tokenizer, self.template = cfg, tokenizer, template
        self.micro_batch_size, self.seed, self.cache_dir = micro_batch_size, seed, cache_dir
        # Examples per optimizer step on one device: the span within which batches are length-grouped.
        self.group_size = group_size if cfg.group_by_length else 1
        # FlashAttention only honours sample boundaries in a single (1, N) row of packed samples.
        self.flatten_packed = flatten_packed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.prepared: Prepared | None = None
        self.train_set = None
        self.train_lengths: list[int] = []

    @property
    def stats(self) -> DataStats:
        """Counts, lengths and problems of the prepared data."""
        return self.prepared.stats if self.prepared else DataStats()

    @property
    def val_conversations(self) -> list[dict]:
        """The held-out conversations, as canonical dicts."""
        return [json.loads(c) for c in self.prepared.val["conversation"]] if self.prepared else []

    def prepare_data(self) -> None:
        """Build (or find) the tokenized cache; runs on one process per node."""
        if self.prepared is None:
            self._prepare()

    def setup(self, stage: str | None = None) -> None:
        """Open the prepared rows and pack them when `data.packing` is on (once)."""
        if self.train_set is not None:
            return
        if self.prepared is None:
            self._prepare()
        lengths = self.prepared.train["length"]
        rows = self.prepared.train.with_format(columns=["input_ids", "labels"])
        if self.cfg.packing:
            bins = pack(lengths, self.cfg.cutoff_len, self.seed)
            self.stats.packed_rows = len(bins)
            self.stats.packing_efficiency = round(packing_efficiency(lengths, bins, self.cfg.cutoff_len), 4)
            log.info(
                "packing: %d examples into %d rows of up to %d tokens (%.1f%% filled)",
                len(lengths),
                len(bins),
                self.cfg.cutoff_len,
                100 * self.stats.packing_efficiency,
            )
            rows = PackedDataset(rows, bins, lengths)
            lengths = rows.lengths
        self.train_set, self.train_lengths = rows, lengths

    def _prepare(self) -> None:
        self.prepared = prepare(self.cfg, self.tokenizer, self.template, self.seed, self.cache_dir)
        self.prepared.stats.log(self.cfg.cutoff_len)

    def train_dataloader(self) -> DataLoader:
        """Micro-batches in a (seed, epoch)-determined order (Lightning shards it across devices)."""
        if self.cfg.packing:
            collate = PackedCollator(self.pad_id, flatten=self.flatten_packed)
        else:
            collate = PadCollator(self.pad_id)
        return DataLoader(
            self.train_set,
            batch_size=self.micro_batch_size,
            sampler=EpochShuffleSampler(self.train_lengths, self.seed, self.group_size),
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation micro-batches in a fixed order, never packed, so val loss compares across runs."""
        val = self.prepared.val
        return DataLoader(
            val.with_format(columns=["input_ids", "labels"]) if len(val) else [],
            batch_size=self.micro_batch_size,
            collate_fn=PadCollator(self.pad_id),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )
