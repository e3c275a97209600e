"""The LightningDataModule: prepared token rows → padded or packed micro-batches.

conversations and text give one sequence per example (`PadCollator` / `PackedCollator`); pairs and
feedback give two, batched by `paired_batches` (its docstring holds their batch contract).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import DataConfig, TrainConfig
from ..errors import ConfigError
from .collate import PackedCollator, PadCollator, padded_width
from .packing import PackedDataset, pack, packing_efficiency
from .paired_batches import (
    SEQUENCES,
    PairedPackedCollator,
    PairedPackedDataset,
    PairedPadCollator,
    batch_columns,
)
from .preprocess import Encoder, Prepared, prepare
from .stats import DataStats
from .streaming import StreamLoader, TrainStream, prepare_stream
from .templates import Template

log = logging.getLogger(__name__)
# Page-locked batches copy to a GPU asynchronously; on a CPU-only machine pinning only costs.
PIN_MEMORY = torch.cuda.is_available()


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), grouped by length within each optimizer step,
    and dealt out over `num_replicas` devices.

    Each consecutive block of `group_size` indices (one effective batch, all devices together) is
    sorted longest first, so its micro-batches need little padding while every step still sees the
    same examples as without grouping. With `stages` (a curriculum), the shuffled order is sorted
    stably by stage, so an epoch trains stage 0 first, shuffled within each stage. Rank r takes
    every num_replicas-th index from r (the order padded with its own start to a multiple, as
    DistributedSampler does), so each optimizer step trains on the same examples on any number of
    devices, and each rank's share stays sorted.
    (Lightning's DistributedSampler would reshuffle this order: the trainer turns it off.) A resumed
    run sees the same order, since Lightning calls `set_epoch` on samplers that have it, and
    `resume_at` skips what this rank had already trained on in the interrupted epoch.
    """

    def __init__(
        self,
        lengths: list[int],
        seed: int,
        group_size: int = 1,
        rank: int = 0,
        num_replicas: int = 1,
        stages: list[int] | None = None,
    ):
        self.lengths, self.seed, self.group_size, self.epoch = lengths, seed, max(group_size, 1), 0
        self.rank, self.num_replicas, self.stages = rank, num_replicas, stages
        self._resume: tuple[int, int] | None = None  # (epoch, indices of this rank to skip)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for this epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Make the next pass over `epoch` start after the first `consumed` indices of this rank."""
        self.epoch, self._resume = epoch, (epoch, consumed)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if self.stages is not None:  # curriculum: stage by stage, shuffled within each (a stable sort)
            order.sort(key=self.stages.__getitem__)
        grouped = [
            i
            for start in range(0, len(order), self.group_size)
            for i in sorted(order[start : start + self.group_size], key=lambda i: -self.lengths[i])
        ]
        grouped += grouped[: len(self) * self.num_replicas - len(grouped)]
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        return iter(grouped[self.rank :: self.num_replicas][start:])

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.num_replicas)


def curriculum_stages(scores: list[float], num_stages: int) -> list[int]:
    """Each row's stage: rows ranked by complexity (ties in row order) and cut into equal-sized stages."""
    ranked = sorted(range(len(scores)), key=scores.__getitem__)
    stages = [0] * len(scores)
    for rank, index in enumerate(ranked):
        stages[index] = rank * num_stages // max(len(scores), 1)
    return stages


def pack_by_stage(
    lengths: list[int], capacity: int, seed: int, stages: list[int] | None
) -> tuple[list[list[int]], list[int] | None]:
    """Packed bins, and each bin's stage: with a curriculum, rows are packed only with their own stage."""
    if stages is None:
        return pack(lengths, capacity, seed), None
    bins, bin_stages = [], []
    for stage in sorted(set(stages)):
        members = [i for i, s in enumerate(stages) if s == stage]
        for found in pack([lengths[i] for i in members], capacity, seed):
            bins.append([members[j] for j in found])
            bin_stages.append(stage)
    return bins, bin_stages


def describe_stages(stages: list[int], scores: list[float], packed: bool) -> str:
    """Rows (or packed rows) per stage, for the log."""
    unit = "packed rows" if packed else "rows"
    counts = {stage: stages.count(stage) for stage in sorted(set(stages))}
    spread = f"complexity {min(scores):.2f}-{max(scores):.2f}" if scores else "no rows"
    return ", ".join(f"stage {s}: {n} {unit}" for s, n in counts.items()) + f" ({spread})"


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch travels with Lightning checkpoints.

    Lightning saves `state_dict()` of stateful loaders in every checkpoint and hands it back to
    `load_state_dict` on resume (before the first batch is drawn). The position is the number of
    micro-batches the training loop has processed this epoch, read from `position`: counting what
    the iterator yielded would include batches that workers prefetched but training never saw.
    """

    def __init__(self, *args, position: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position

    def state_dict(self) -> dict:
        """The epoch, how many micro-batches of it this rank has trained on, their size, and the number of
        devices the epoch's rows were dealt to."""
        return {
            "epoch": self.sampler.epoch,
            "batches": int(self.position()),
            "micro_batch_size": self.batch_size,
            "devices": self.sampler.num_replicas,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved epoch after the micro-batches it had already trained on.

        Lightning counts the epoch's progress in micro-batches of each device's share, so a resume with
        another micro-batch size (a changed `trainer.micro_batch_size`, or `trainer.micro_batch_tokens`
        choosing otherwise) or on another number of devices would start at the wrong row: it is refused,
        naming what resumes exactly.
        """
        devices = state.get("devices", self.sampler.num_replicas)  # checkpoints before this key: unchecked
        if devices != self.sampler.num_replicas and state["batches"]:  # at an epoch's start any count fits
            raise ConfigError(
                f"the checkpoint was trained on {devices} device(s) and this run has "
                f"{self.sampler.num_replicas}: each device's place in the epoch is kept for its own share of "
                f"the rows, so resume on {devices} (trainer.devices x trainer.num_nodes)"
            )
        saved = state.get("micro_batch_size", self.batch_size)  # checkpoints before this key: unchecked
        if saved != self.batch_size:
            raise ConfigError(
                f"the checkpoint was trained with micro-batches of {saved} rows and this run makes them of "
                f"{self.batch_size}; resume with trainer.micro_batch_size={saved} "
                "trainer.micro_batch_tokens=null"
            )
        self.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)


class SFTDataModule(L.LightningDataModule):
    """Prepares the tokenized data once (cached on disk), then serves padded or packed micro-batches.

    `prepare_data` (local rank 0 only, followed by a barrier, per Lightning's contract) builds the
    cache; `setup` on every rank then opens the same cached rows, so devices never tokenize twice
    or disagree about the data.
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
        eval_batch_size: int | None = None,
    ):
        super().__init__()
        self.cfg, self.tokenizer, self.template = cfg, tokenizer, template
        self.micro_batch_size, self.seed, self.cache_dir = micro_batch_size, seed, cache_dir
        self.eval_batch_size = eval_batch_size or micro_batch_size
        # Examples per optimizer step on one device: the span within which batches are length-grouped.
        self.group_size = group_size if cfg.group_by_length else 1
        # FlashAttention only honours sample boundaries in a single (1, N) row of packed samples.
        self.flatten_packed = flatten_packed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.prepared: Prepared | None = None
        self.train_set = None
        self.train_lengths: list[int] = []
        self._keys: tuple[list[int], list[float], list[int] | None] | None = None  # _example_keys
        self._first_epoch: dict[int, list[int]] = {}  # by device count: rank 0's row lengths, in order
        self.train_stages: list[int] | None = None
        # (rows, collate) → each row's reference log-probabilities, when the stage computes them up front.
        self.reference: Callable | None = None

    @property
    def stats(self) -> DataStats:
        """Counts, lengths and problems of the prepared data."""
        return self.prepared.stats if self.prepared else DataStats()

    def prepare_data(self) -> None:
        """Build (or find) the tokenized cache; runs on one process per node."""
        if self.prepared is None:
            self._prepare()

    def setup(self, stage: str | None = None) -> None:
        """Open the prepared rows and pack them when `data.packing` is on (once)."""
        if self.train_set is not None:
            return
        if self.prepared is None:  # built by local rank 0 in prepare_data; here it is only read
            self._prepare(rebuild=False)
        if self.reference is not None:
            self._add_reference()
        lengths, complexity, stages = self._example_keys()
        rows = self.prepared.train.with_format(columns=self._columns(self.prepared.train))
        if self.cfg.packing:
            capacity = self.capacity
            bins, stages = pack_by_stage(lengths, capacity, self.seed, stages)
            self.stats.packed_rows = len(bins)
            self.stats.packing_efficiency = round(packing_efficiency(lengths, bins, capacity), 4)
            log.info(
                "packing: %d examples into %d rows of up to %d tokens (%.1f%% filled)",
                len(lengths),
                len(bins),
                capacity,
                100 * self.stats.packing_efficiency,
            )
            if self.paired:
                rows = PairedPackedDataset(rows, bins, self.cfg.kind, lengths)
            else:
                rows = PackedDataset(rows, bins, lengths)
            lengths = rows.lengths
        if stages is not None:
            described = describe_stages(stages, complexity, self.cfg.packing)
            log.info("curriculum %s: %s", self.cfg.curriculum, described)
        self.train_set, self.train_lengths, self.train_stages = rows, lengths, stages

    def _add_reference(self) -> None:
        """Attach the reference log-probabilities of every training and validation row (before packing)."""
        for split in ("train", "val"):
            rows = getattr(self.prepared, split)
            if len(rows) and "ref_logps" not in rows.column_names:
                values = self.reference(rows.with_format(columns=self._columns(rows)), self._pad_collator())
                setattr(self.prepared, split, rows.add_column("ref_logps", values))

    def _columns(self, rows) -> list[str]:
        """The columns batches are built from, plus ref_logps and label_weights when rows carry them."""
        extra = [c for c in ("ref_logps", "label_weights") if c in rows.column_names]
        return batch_columns(self.cfg.kind) + extra

    @property
    def paired(self) -> bool:
        """Whether an example is two sequences (pairs: chosen, rejected; feedback: completion, KL row)."""
        return self.cfg.kind in SEQUENCES

    @property
    def capacity(self) -> int:
        """Tokens a packed row holds: cutoff_len, twice that when an example is two sequences (together)."""
        return self.cfg.cutoff_len * (2 if self.paired else 1)

    def micro_batch_tokens(self, rows: int, ranks: int = 1) -> float | None:
        """About how many tokens a training micro-batch of `rows` rows holds on one of `ranks` devices,
        padding to its longest row (rounded as the collators round it) included, what
        `trainer.micro_batch_tokens` sizes micro-batches by: packed rows count `capacity` each; other rows the
        mean over rank 0's micro-batches in the first epoch's order (length-grouped, by curriculum stage), a
        pair or KTO row as its two sequences."""
        if self.cfg.packing:
            return rows * padded_width(self.capacity)
        if ranks not in self._first_epoch:
            if self.prepared is None:  # a rank that did not prepare: the cached rows another process built
                self._prepare(rebuild=False)
            lengths, _, stages = self._example_keys()
            order = EpochShuffleSampler(lengths, self.seed, self.group_size, 0, ranks, stages=stages)
            self._first_epoch[ranks] = [lengths[i] for i in order]
        first = self._first_epoch[ranks]
        batches = [first[start : start + rows] for start in range(0, len(first), rows)]
        return sum(len(b) * padded_width(max(b)) for b in batches) / len(batches) if batches else None

    def _example_keys(self) -> tuple[list[int], list[float], list[int] | None]:
        """Each prepared training example's length, complexity and curriculum stage (None without a
        curriculum), read once as plain lists: the sampler indexes lengths row by row, slow on a Column."""
        if self._keys is None:
            columns = self.prepared.train.select_columns(["length", "complexity"])[:]
            stages = None
            if self.cfg.curriculum != "none":
                stages = curriculum_stages(columns["complexity"], self.cfg.curriculum_stages)
            self._keys = (columns["length"], columns["complexity"], stages)
        return self._keys

    def _prepare(self, rebuild: bool | None = None) -> None:
        self.prepared = prepare(self.cfg, self.tokenizer, self.template, self.seed, self.cache_dir, rebuild)
        self._keys = None
        self.prepared.stats.log(self.cfg.cutoff_len)

    def _shard(self) -> tuple[int, int]:
        """(rank, number of ranks) of this process; (0, 1) outside a Trainer."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        """Micro-batches in a (seed, epoch)-determined order, this rank's share of it."""
        if self.cfg.packing and self.paired:
            collate = PairedPackedCollator(self.cfg.kind, self.pad_id, flatten=self.flatten_packed)
        elif self.cfg.packing:
            collate = PackedCollator(self.pad_id, flatten=self.flatten_packed)
        else:
            collate = self._pad_collator()
        return ResumableLoader(
            self.train_set,
            batch_size=self.micro_batch_size,
            sampler=EpochShuffleSampler(
                self.train_lengths, self.seed, self.group_size, *self._shard(), stages=self.train_stages
            ),
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=PIN_MEMORY,
            position=self._batches_trained,
        )

    def _pad_collator(self):
        """The padded form of this kind's batches (validation always uses it)."""
        return PairedPadCollator(self.cfg.kind, self.pad_id) if self.paired else PadCollator(self.pad_id)

    def _batches_trained(self) -> int:
        """Micro-batches the training loop has processed in the current epoch."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order, never packed, so val loss compares across runs.

        Each rank takes every world_size-th row, none twice (unlike DistributedSampler's padding), so
        the loss summed over ranks counts every row once; a rank left without rows repeats one. A rank's
        rows go longest first, so a batch (`trainer.eval_micro_batch_size` rows: no activations are kept
        for a backward pass) holds rows of similar length and little padding; a validation limited to
        some batches (`trainer.limit_val_batches`) keeps the split's seeded order, so it sees a fair sample.
        """
        val = self.prepared.val
        rank, replicas = self._shard()
        mine = list(range(rank, len(val), replicas))
        if mine and (self.trainer is None or self.trainer.limit_val_batches == 1.0):  # limited: a fair sample
            lengths = val.select_columns(["length"])[:]["length"]
            mine.sort(key=lambda i: -lengths[i])
        return DataLoader(
            val.with_format(columns=self._columns(val)) if len(val) else [],
            batch_size=self.eval_batch_size,
            sampler=(mine or [rank % len(val)]) if len(val) else None,
            collate_fn=self._pad_collator(),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=PIN_MEMORY,
        )


class StreamingDataModule(SFTDataModule):
    """`data.streaming=true`: validation rows read up front, training rows streamed (`sft.data.streaming`)."""

    def _prepare(self, rebuild: bool | None = None) -> None:
        self.prepared, self.sources, self.starts = prepare_stream(self.cfg, self.tokenizer, self.template)

    def micro_batch_tokens(self, rows: int, ranks: int = 1) -> None:
        """Unknown before the stream is read: streamed micro-batches keep `trainer.micro_batch_size`."""
        return None

    def setup(self, stage: str | None = None) -> None:
        """Open this rank's training stream (validation rows are read once, by `prepare_data` or here)."""
        if self.train_set is not None:
            return
        if self.prepared is None:
            self._prepare()
        self.train_set = TrainStream(
            self.cfg,
            Encoder(self.tokenizer, self.template, self.cfg),
            self.sources,
            self.starts,
            self.stats,
            self.seed,
            self.micro_batch_size,
            self.group_size,
            *self._shard(),
        )

    def train_dataloader(self) -> DataLoader:
        """Micro-batches as the stream makes them; its position is saved with every checkpoint."""
        collate = (
            PackedCollator(self.pad_id, flatten=self.flatten_packed)
            if self.cfg.packing
            else self._pad_collator()
        )
        return StreamLoader(self.train_set, collate, self._batches_trained, pin_memory=PIN_MEMORY)


def build_datamodule(cfg: TrainConfig, tokenizer, template: Template) -> SFTDataModule:
    """The data module of a training run, from its data, trainer and model settings."""
    kind = StreamingDataModule if cfg.data.streaming else SFTDataModule
    return kind(
        cfg.data,
        tokenizer,
        template,
        cfg.trainer.micro_batch_size,
        cfg.seed,
        cfg.paths.cache_dir,
        # Length-grouped per optimizer step over all devices: each rank takes every world_size-th
        # example of a sorted step, so its share stays sorted.
        group_size=cfg.trainer.effective_batch_size,
        flatten_packed="flash" in (cfg.model.attn_implementation or ""),
        eval_batch_size=cfg.trainer.eval_micro_batch_size,
    )
