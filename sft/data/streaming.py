"""Streaming (`data.streaming=true`): training rows read, tokenized, shuffled and packed on the fly.

For corpora larger than memory or the token cache. Nothing is tokenized ahead of training and
nothing is cached: the first `data.val_size` usable rows of each dataset (a whole count, spread over
the datasets by weight) are held out for validation; after them, every pass over a dataset starts
again. Datasets are sampled by weight (a seeded draw per row), so a small dataset repeats within
a large one's pass. Raw rows are dealt round-robin to the ranks (rank r trains on rows r,
r + world_size, ...: disjoint), each rank parsing and tokenizing only its own. A seeded buffer of
`data.shuffle_buffer` examples shuffles them; then each effective batch is sorted by length
(`data.group_by_length`) or windows of `PACK_WINDOW` examples are packed, and cut into micro-batches
by a background thread (up to `PREFETCH` ahead), so reading and tokenizing overlap training.

Exact resume: after each micro-batch the stream keeps a snapshot of everything it would need to
continue (each dataset's pass and file position, the generators, the buffer and the queued
examples); a checkpoint stores the snapshot at the micro-batches training has processed, and a
resumed run continues from it, seeking straight to the saved file offsets.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from datasets import Dataset, Features, List, Value
from torch.utils.data import DataLoader, IterableDataset

from ..config import DataConfig
from ..errors import DataError
from ..training.rng import every_rank, python_rng_state, set_python_rng_state
from .builtin import builtin_conversations
from .loading import RecordMaker, check_bad_rows, val_counts, with_problems
from .packing import PackedDataset, pack
from .preprocess import Encoder, Prepared, keeps
from .shards import Position, parse_row, read_files, read_hub_stream, read_list, stream_files
from .stats import DataStats

log = logging.getLogger(__name__)

# Examples packed together: enough for best-fit to fill rows well, few enough to start training at once.
PACK_WINDOW = 256
# Snapshots kept behind the newest handed out (Lightning fetches one micro-batch ahead of training).
KEPT_SNAPSHOTS = 4
# Micro-batches the background thread may have ready ahead of training.
PREFETCH = 4
# A stream never stops, so its problem list is capped; the counts keep growing.
MAX_PROBLEMS = 1000
# Rows of a dataset read before its share of bad rows is judged (data.max_bad_fraction).
MIN_ROWS_JUDGED = 100


def streaming_files(cfg: DataConfig) -> dict[str, str]:
    """Each streamed file's size and modification time (hashing many gigabytes would delay the start)."""
    found = {}
    for name, spec in cfg.datasets.items():
        if spec.source == "file":
            for file in stream_files(name, spec.path):
                stat = file.stat()
                found[str(file)] = f"streamed: {stat.st_size} bytes, mtime {int(stat.st_mtime)}"
        elif spec.source == "hub":
            found[f"hub:{spec.path}"] = f"{spec.subset}/{spec.split} (streamed)"
    return found


class Rows:
    """Opens a dataset's rows at a position: file shards, a hub dataset (streamed) or the builtin rows."""

    def __init__(self, name: str, spec):
        self.name, self.spec = name, spec
        if spec.source == "file":
            self.files = stream_files(name, spec.path)

    def open(self, start: Position) -> Iterator[tuple[str, object, Position]]:
        """(location, raw row, position after it) from `start` to the end of the dataset."""
        spec = self.spec
        if spec.source == "file":
            return read_files(self.files, start)
        if spec.source == "hub":
            return read_hub_stream(spec.path, spec.subset, spec.split, start, self.name)
        return read_list(builtin_conversations(spec.num_rows), "builtin", start)


def encode_record(encoder: Encoder, record: dict) -> list[tuple[str, dict]]:
    """(status, example) for each sequence a record gives (raw text may give several chunks)."""
    out = encoder({key: [value] for key, value in record.items()})
    examples = []
    for i, status in enumerate(out["status"]):
        weights = out["label_weights"][i] if "label_weights" in out else []
        example = {"input_ids": out["input_ids"][i], "labels": out["labels"][i], "label_weights": weights}
        where = {"source": record["source"], "location": record["location"]}
        examples.append((status, {**example, "length": len(example["input_ids"]), **where}))
    return examples


def judge_bad_rows(stats: DataStats, name: str, cfg: DataConfig) -> None:
    """Stop once a dataset's share of bad rows is over data.max_bad_fraction (judged after some rows)."""
    d = stats.dataset(name)
    if d.rows >= MIN_ROWS_JUDGED:
        what = "are malformed or cannot be rendered by the template"
        check_bad_rows(name, d.malformed + d.invalid, d.rows, cfg.max_bad_fraction, stats.problems, what)


def read_validation(
    cfg: DataConfig, encoder: Encoder, sources: dict[str, Rows], stats: DataStats
) -> tuple[Dataset, dict[str, Position]]:
    """The first `data.val_size` usable rows of each dataset, and where each dataset's training rows start."""
    weights = {name: spec.weight for name, spec in cfg.datasets.items()}
    n_val = val_counts({name: max(1, round(w * 10**6)) for name, w in weights.items()}, cfg.val_size)
    examples, starts = [], {}
    for name, rows in sources.items():
        make, kept, position = RecordMaker(name, cfg.datasets[name], cfg, stats), 0, Position()
        reader = rows.open(position) if n_val[name] else iter(())
        for location, raw, after in reader:
            position = after
            record = make(location, parse_row(raw))
            if record is not None:
                for status, example in encode_record(encoder, record):
                    if keeps(status, record["source"], record["location"], stats, cfg):
                        examples.append(example)
                        kept += 1
            if kept >= n_val[name]:
                break
        stats.dataset(name).val = kept
        starts[name] = position
    stats.val = len(examples)
    ints = List(Value("int64"))
    features = Features(
        {
            **{"input_ids": ints, "labels": ints, "label_weights": List(Value("float32"))},
            **{"length": Value("int64"), "source": Value("string"), "location": Value("string")},
        }
    )
    val = Dataset.from_list(examples, features=features) if examples else Dataset.from_dict({})
    if val and not any(val["label_weights"]):
        val = val.remove_columns("label_weights")
    return val, starts


@dataclass
class StreamState:
    """Everything a stream needs to continue exactly: the snapshot a checkpoint stores (plain values)."""

    passes: dict[str, int]
    positions: dict[str, list[int]]  # dataset → [file, offset, line] of its next row
    mix_rng: list
    shuffle_rng: list
    dealt: int = 0  # raw rows dealt to the ranks so far (all ranks together)
    batches: int = 0  # micro-batches yielded
    buffer: list[dict] = field(default_factory=list)  # the shuffle buffer
    units: list[dict] = field(default_factory=list)  # examples (or packed rows) not yet in a micro-batch
    ready: list[list[dict]] = field(default_factory=list)  # micro-batches not yet yielded

    def frozen(self) -> dict:
        """A copy that later changes to this state leave alone (examples are never modified in place)."""
        return {
            "passes": dict(self.passes),
            "positions": {k: list(v) for k, v in self.positions.items()},
            "mix_rng": list(self.mix_rng),
            "shuffle_rng": list(self.shuffle_rng),
            "dealt": self.dealt,
            "batches": self.batches,
            "buffer": list(self.buffer),
            "units": list(self.units),
            "ready": [list(batch) for batch in self.ready],
        }


def _rng(state: list) -> random.Random:
    """A generator continuing from a `python_rng_state` list."""
    rng = random.Random()
    set_python_rng_state(state, rng)
    return rng


class TrainStream(IterableDataset):
    """This rank's endless stream of training micro-batches (lists of examples, or of packed rows)."""

    def __init__(
        self,
        cfg: DataConfig,
        encoder: Encoder,
        sources: dict[str, Rows],
        starts: dict[str, Position],
        stats: DataStats,
        seed: int,
        micro_batch_size: int,
        group_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.cfg, self.encoder, self.sources, self.starts, self.stats = cfg, encoder, sources, starts, stats
        self.seed, self.micro_batch_size = seed, micro_batch_size
        self.rank, self.world_size = rank, world_size
        # Examples sorted together: one optimizer step of this rank (micro-batch x accumulation).
        self.group_size = max(group_size // world_size, micro_batch_size) if cfg.group_by_length else 1
        self.names = list(cfg.datasets)
        self.weights = [cfg.datasets[name].weight for name in self.names]
        self.makers = {name: RecordMaker(name, cfg.datasets[name], cfg, stats) for name in self.names}
        self.resume_from: dict | None = None
        self.snapshots: dict[int, dict] = {}

    def initial_state(self) -> StreamState:
        """The state before the first micro-batch: every dataset at its first training row."""
        return StreamState(
            passes={name: 0 for name in self.names},
            positions={name: [p.file, p.offset, p.line] for name, p in self.starts.items()},
            mix_rng=python_rng_state(random.Random(self.seed)),
            # Each rank shuffles its own rows with its own generator.
            shuffle_rng=python_rng_state(random.Random(self.seed * 1000003 + self.rank)),
        )

    def snapshot(self, batches: int) -> dict:
        """The state right after `batches` micro-batches were yielded (kept for the last few only)."""
        if batches not in self.snapshots:
            raise RuntimeError(
                f"no stream snapshot after micro-batch {batches} (kept: {sorted(self.snapshots)})"
            )
        return self.snapshots[batches]

    def __iter__(self) -> Iterator[list[dict]]:
        """Micro-batches made by a background thread (reading and tokenizing overlap training), each
        recorded with its snapshot as it is handed out."""
        state = StreamState(**self.resume_from) if self.resume_from else self.initial_state()
        self.resume_from = None
        self.snapshots = {state.batches: state.frozen()}
        made: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()

        def hand_over(item) -> None:
            while not stop.is_set():
                try:
                    made.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                for item in self._batches(state):
                    hand_over(item)
                    if stop.is_set():
                        return
            except BaseException as err:  # raised where training asks for the batch
                hand_over((err, None))

        threading.Thread(target=produce, name="sft-data-stream", daemon=True).start()
        try:
            while True:
                batch, snapshot = made.get()
                if snapshot is None:
                    raise batch
                self.snapshots[snapshot["batches"]] = snapshot
                self.snapshots.pop(snapshot["batches"] - KEPT_SNAPSHOTS, None)
                yield batch
        finally:
            stop.set()

    def _batches(self, state: StreamState) -> Iterator[tuple[list[dict], dict]]:
        """(micro-batch, the state right after it) from `state` on; only this generator changes the state."""
        mix, shuffle = _rng(state.mix_rng), _rng(state.shuffle_rng)
        readers: dict[str, Iterator] = {}
        while True:
            while not state.ready:
                self._fill(state, readers, mix, shuffle)
            batch = state.ready.pop(0)
            state.batches += 1
            state.mix_rng, state.shuffle_rng = python_rng_state(mix), python_rng_state(shuffle)
            yield batch, state.frozen()

    def _fill(self, state: StreamState, readers: dict, mix: random.Random, shuffle: random.Random) -> None:
        """Queue the micro-batches of the next effective batch (or packing window)."""
        if self.cfg.packing:
            examples = [self._shuffled(state, readers, mix, shuffle) for _ in range(PACK_WINDOW)]
            lengths = [e["length"] for e in examples]
            bins = pack(lengths, self.cfg.cutoff_len, shuffle.randrange(2**31))
            packed = PackedDataset(examples, bins, lengths)
            state.units += [packed[i] for i in range(len(packed))]
        else:
            examples = [self._shuffled(state, readers, mix, shuffle) for _ in range(self.group_size)]
            if self.cfg.group_by_length:  # longest first: each micro-batch needs little padding
                examples.sort(key=lambda e: -e["length"])
            state.units += examples
        size = self.micro_batch_size
        while len(state.units) >= size:
            state.ready.append(state.units[:size])
            del state.units[:size]

    def _shuffled(
        self, state: StreamState, readers: dict, mix: random.Random, shuffle: random.Random
    ) -> dict:
        """The next example out of the shuffle buffer (filled to data.shuffle_buffer first)."""
        while len(state.buffer) < self.cfg.shuffle_buffer:
            state.buffer += self._own_examples(state, readers, mix)
        j = shuffle.randrange(len(state.buffer))
        state.buffer[j], state.buffer[-1] = state.buffer[-1], state.buffer[j]
        return state.buffer.pop()

    def _own_examples(self, state: StreamState, readers: dict, mix: random.Random) -> list[dict]:
        """The examples of the next raw row dealt to this rank (none when it is malformed or dropped)."""
        while True:
            name = self.names[0] if len(self.names) == 1 else mix.choices(self.names, self.weights)[0]
            location, raw = self._next_row(state, readers, name)
            state.dealt += 1
            if (state.dealt - 1) % self.world_size == self.rank:
                break
        record = self.makers[name](location, parse_row(raw))
        kept = []
        if record is not None:
            encoded = encode_record(self.encoder, record)
            kept = [
                e
                for status, e in encoded
                if keeps(status, record["source"], record["location"], self.stats, self.cfg)
            ]
        self.stats.train += len(kept)
        self.stats.dataset(name).train += len(kept)
        del self.stats.problems[MAX_PROBLEMS:]
        judge_bad_rows(self.stats, name, self.cfg)
        return kept

    def _next_row(self, state: StreamState, readers: dict, name: str) -> tuple[str, object]:
        """The next raw row of a dataset; at its end the next pass starts after the validation rows."""
        for _ in range(2):
            if name not in readers:
                readers[name] = self.sources[name].open(Position(*state.positions[name]))
            for location, raw, position in readers[name]:
                state.positions[name] = [position.file, position.offset, position.line]
                return location, raw
            readers.pop(name)
            start = self.starts[name]
            if state.positions[name] == [start.file, start.offset, start.line]:
                break  # a whole pass read nothing: every row is held out for validation
            state.passes[name] += 1
            state.positions[name] = [start.file, start.offset, start.line]
            log.info("dataset %r: pass %d starts", name, state.passes[name] + 1)
        raise DataError(
            f"dataset {name!r}: no rows left to train on after the validation rows "
            f"({self.stats.dataset(name).val} found for data.val_size={int(self.cfg.val_size)}); "
            "lower data.val_size or add rows"
        )


class StreamLoader(DataLoader):
    """The DataLoader of a `TrainStream`, whose position travels with Lightning checkpoints.

    `state_dict` (called on every rank as a checkpoint is saved) gathers every rank's snapshot at the
    micro-batches training has processed, read from `position` (the stream itself has run one ahead).
    """

    def __init__(self, stream: TrainStream, collate_fn, position, pin_memory: bool = False):
        super().__init__(stream, batch_size=None, collate_fn=collate_fn, pin_memory=pin_memory)
        self.position = position

    def state_dict(self) -> dict:
        """Every rank's stream snapshot (rank order) after the micro-batches trained so far."""
        mine = self.dataset.snapshot(int(self.position()))
        return {"stream": every_rank(mine, self.dataset.world_size)}

    def load_state_dict(self, state: dict) -> None:
        """Continue this rank's stream where the checkpoint left it."""
        states = state["stream"]
        if len(states) != self.dataset.world_size:
            raise DataError(
                f"the checkpoint's data stream was saved by {len(states)} rank(s); this run has "
                f"{self.dataset.world_size}. A streamed run resumes on the same number of devices"
            )
        self.dataset.resume_from = states[self.dataset.rank]


def prepare_stream(
    cfg: DataConfig, tokenizer, template
) -> tuple[Prepared, dict[str, Rows], dict[str, Position]]:
    """Validation rows read up front; the sources and start positions the training stream continues from."""
    stats = DataStats(cache="streaming: tokenized on the fly, nothing cached")
    stats.files = streaming_files(cfg)
    sources = {name: Rows(name, spec) for name, spec in cfg.datasets.items()}
    encoder = Encoder(tokenizer, template, cfg)
    val, starts = read_validation(cfg, encoder, sources, stats)
    if stats.problems:
        log.warning(with_problems(f"{len(stats.problems)} problem(s) in the first rows:", stats.problems))
    return Prepared(None, val, stats), sources, starts
