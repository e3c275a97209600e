"""Conversations → token ids and labels through `datasets.map`, cached on disk.

The cache key covers everything the result depends on: the content of every data file, the
tokenizer, the template, every data option, the seed and this package's data code. A hit skips
reading, mixing and tokenizing; `data.overwrite_cache=true` rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import tokenizers
import transformers
from datasets import (
    Dataset,
    Features,
    List,
    Value,
    concatenate_datasets,
    disable_progress_bars,
    load_from_disk,
)
from datasets.fingerprint import Hasher

from ..atomic import publish_dir
from ..config import DataConfig, to_plain
from ..errors import DataError
from .formats import source_files
from .loading import check_bad_rows, mix, read_dataset, split, val_counts, with_problems
from .preference_tokens import SIDES, encode_feedback, encode_pair, kl_rows
from .raw_text import chunk_text, eos_id
from .stats import KEPT, DatasetStats, DataStats
from .templates import Template
from .tokenize import IGNORE_INDEX, encode

log = logging.getLogger(__name__)
disable_progress_bars()  # the counts are logged once per dataset instead

_CODE = (
    "builtin.jsonl",
    "builtin.py",
    "complexity.py",
    "formats.py",
    "kinds.py",
    "loading.py",
    "preference_rows.py",
    "preference_tokens.py",
    "preprocess.py",
    "raw_text.py",
    "registry.py",
    "stats.py",
    "templates.py",
    "tokenize.py",
)


def _trained(labels: list[int]) -> int:
    return sum(1 for t in labels if t != IGNORE_INDEX)


class Encoder:
    """Batched `datasets.map` function: encodes each record of the run's data.kind and records its status.

    Picklable. conversations: input_ids, labels, label_weights (empty when every weight is 1); text:
    input_ids, labels of each chunk (a document may give several rows, so every column comes back);
    pairs: chosen_/rejected_ input_ids and labels; feedback: input_ids, labels, label, prompt_len (the KL
    rows are added after filtering, by `with_kl`). Every kind also gives status, length (the tokens the
    example takes in a batch) and trained; all but text give full_length (the untruncated length).
    """

    def __init__(self, tokenizer, template: Template, cfg: DataConfig):
        self.tokenizer, self.template = tokenizer, template
        self.cutoff_len, self.truncation = cfg.cutoff_len, cfg.truncation
        self.train_on_prompt, self.mask_history = cfg.train_on_prompt, cfg.mask_history
        self.kind = cfg.kind
        if self.kind == "text":
            eos_id(tokenizer)  # fail on the config, not once per row inside datasets.map

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """The encoded rows of the batch (see the class docstring for the columns of each kind)."""
        if self.kind == "text":
            return self._text(batch)
        if self.kind == "pairs":
            return self._pairs(batch)
        if self.kind == "feedback":
            return self._feedback(batch)
        return self._conversations(batch)

    def _text(self, batch: dict[str, list]) -> dict[str, list]:
        """One row per chunk, every label trained; the other columns repeat for each chunk of a document."""
        out: dict[str, list] = {k: [] for k in (*batch, "input_ids", "labels", "status", "length", "trained")}
        for i, text in enumerate(batch["conversation"]):
            chunks = chunk_text(json.loads(text)["text"], self.tokenizer, self.cutoff_len)
            for ids in chunks:
                for key in batch:
                    out[key].append(batch[key][i])
                out["input_ids"].append(ids)
                out["labels"].append(list(ids))
                out["status"].append("ok" if len(chunks) == 1 else "split")
                out["length"].append(len(ids))
                out["trained"].append(len(ids))
        return out

    def _pairs(self, batch: dict[str, list]) -> dict[str, list]:
        """Both sides of every pair; length counts the two sides together, as they travel in a batch."""
        keys = [f"{side}_{k}" for side in SIDES for k in ("input_ids", "labels")]
        out: dict[str, list] = {k: [] for k in (*keys, "status", "full_length", "length", "trained")}
        for text in batch["conversation"]:
            encoded = encode_pair(
                json.loads(text), self.tokenizer, self.template, self.cutoff_len, self.truncation
            )
            for key in (*keys, "status", "full_length"):
                out[key].append(encoded[key])
            out["length"].append(sum(len(encoded[f"{side}_input_ids"]) for side in SIDES))
            out["trained"].append(sum(_trained(encoded[f"{side}_labels"]) for side in SIDES))
        return out

    def _feedback(self, batch: dict[str, list]) -> dict[str, list]:
        """The labelled completion of every row (length grows by the KL row in `with_kl`)."""
        keys = ("input_ids", "labels", "prompt_len", "status", "full_length")
        out: dict[str, list] = {k: [] for k in (*keys, "label", "length", "trained")}
        for text in batch["conversation"]:
            record = json.loads(text)
            encoded = encode_feedback(record, self.tokenizer, self.template, self.cutoff_len, self.truncation)
            for key in keys:
                out[key].append(encoded[key])
            out["label"].append(bool(record["label"]))
            out["length"].append(len(encoded["input_ids"]))
            out["trained"].append(_trained(encoded["labels"]))
        return out

    def _conversations(self, batch: dict[str, list]) -> dict[str, list]:
        """Token ids, labels, label weights, status, lengths and trained-token count for every row."""
        keys = ("input_ids", "labels", "label_weights", "status", "full_length")
        out: dict[str, list] = {k: [] for k in (*keys, "length", "trained")}
        for text in batch["conversation"]:
            encoded = encode(
                json.loads(text),
                self.tokenizer,
                self.template,
                self.cutoff_len,
                truncation=self.truncation,
                train_on_prompt=self.train_on_prompt,
                mask_history=self.mask_history,
            )
            for key in keys:
                out[key].append(encoded[key])
            out["length"].append(len(encoded["input_ids"]))
            out["trained"].append(_trained(encoded["labels"]))
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(cfg: DataConfig) -> dict[str, str]:
    """sha256 of every local data file the run reads (hub datasets are named by id, subset and split)."""
    hashes = {}
    for spec in cfg.datasets.values():
        if spec.source == "file":
            hashes.update({str(p): _sha256(p) for p in source_files(spec.path)})
        elif spec.source == "hub":
            hashes[f"hub:{spec.path}"] = f"{spec.subset}/{spec.split}"
    return hashes


def cache_key(cfg: DataConfig, tokenizer, template: Template, seed: int, files: dict[str, str]) -> str:
    """A digest of everything the tokenized data depends on."""
    code_dir = Path(__file__).parent
    options = {
        k: v for k, v in to_plain(cfg).items() if k not in ("num_proc", "num_workers", "overwrite_cache")
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "files": files,
        "order": list(cfg.datasets),  # the key's JSON is sorted, but dataset order changes the mix
        "options": options,
        "versions": [datasets.__version__, transformers.__version__, tokenizers.__version__],
        "seed": seed,
        "template": [template.name, template.jinja, template.stop, template.default_system],
        "tokenizer": backend.to_str() if backend is not None else Hasher.hash(tokenizer),
        "special": str(tokenizer.special_tokens_map),
        "code": [(code_dir / f).read_text() for f in _CODE],
    }
    return Hasher.hash(json.dumps(parts, sort_keys=True, default=str))


@dataclass
class Prepared:
    """Tokenized training and validation rows plus the statistics of how they were made."""

    train: Dataset
    val: Dataset
    stats: DataStats
    key: str | None = None  # the cache entry's key (`cache_key`); None when built without a cache


def _features(ds: Dataset, kind: str) -> Features | None:
    """The encoded columns' types where inference would fail: an all-empty label_weights batch has no type."""
    if kind != "conversations":
        return None
    ints = List(Value("int64"))
    return Features(
        {
            **ds.features,
            "input_ids": ints,
            "labels": ints,
            "label_weights": List(Value("float32")),
            "status": Value("string"),
            "full_length": Value("int64"),
            "length": Value("int64"),
            "trained": Value("int64"),
        }
    )


def _tokenize(
    ds: Dataset, encoder: Encoder, cfg: DataConfig, stats: DataStats, full_lengths: list[int] | None = None
) -> Dataset:
    """Encode every row, count and report the ones that cannot be trained on, keep the rest.

    The untruncated lengths of the rows the template rendered are added to `full_lengths`.
    """
    if not len(ds):
        return ds
    # Text chunking returns more rows than it is given, so every column comes back from the encoder.
    remove = ds.column_names if encoder.kind == "text" else None
    ds = ds.map(
        encoder,
        batched=True,
        num_proc=cfg.num_proc if cfg.num_proc > 1 else None,
        remove_columns=remove,
        features=_features(ds, encoder.kind),
    )
    keep = []
    # One read of the columns: iterating a datasets Column formats every row on its own.
    if "full_length" in ds.column_names:
        if full_lengths is not None:  # 0: a row the template could not render has no length
            full_lengths += [n for n in ds.select_columns(["full_length"])[:]["full_length"] if n]
        ds = ds.remove_columns("full_length")
    columns = ds.select_columns(["status", "source", "location"])[:]
    for i, (status, source, location) in enumerate(
        zip(columns["status"], columns["source"], columns["location"], strict=True)
    ):
        if keeps(status, source, location, stats, cfg):
            keep.append(i)
    ds = ds.select(keep) if len(keep) < len(ds) else ds
    return with_kl(ds, cfg.cutoff_len) if encoder.kind == "feedback" else ds


def keeps(status: str, source: str, location: str, stats: DataStats, cfg: DataConfig) -> bool:
    """Count an encoder status and report a row that cannot be trained on; whether the row is kept."""
    stats.count_status(source, status)
    if status in KEPT:
        return True
    # An invalid row's reason names keys (reasoning_content) and values: keep its underscores.
    problem = f"{location}: {status if status.startswith('invalid') else status.replace('_', ' ')}"
    if status == "too_long":
        problem += f" (over data.cutoff_len={cfg.cutoff_len} with data.truncation={cfg.truncation})"
    stats.problems.append(problem)
    if cfg.strict or (status == "too_long" and cfg.truncation == "error"):
        raise DataError(problem)
    return False


def with_kl(ds: Dataset, cutoff_len: int) -> Dataset:
    """Add KTO's KL rows (kl_input_ids, kl_labels; see `kl_rows`) to kept rows; length counts both."""
    if not len(ds):
        return ds
    columns = ds.select_columns(["input_ids", "labels", "prompt_len"])[:]
    kl_ids, kl_labels = kl_rows(columns["input_ids"], columns["labels"], columns["prompt_len"], cutoff_len)
    lengths = [len(a) + len(b) for a, b in zip(columns["input_ids"], kl_ids, strict=True)]
    ds = ds.remove_columns("length").add_column("kl_input_ids", kl_ids).add_column("kl_labels", kl_labels)
    return ds.add_column("length", lengths)


def build(cfg: DataConfig, tokenizer, template: Template, seed: int) -> Prepared:
    """Read, split and tokenize each dataset, then mix the training parts (no cache).

    Each row is tokenized and counted once, before weights repeat it.
    """
    stats = DataStats()
    records, problems = {}, {}
    for name, spec in cfg.datasets.items():
        first = len(stats.problems)
        records[name] = read_dataset(name, spec, cfg, stats)
        problems[name] = stats.problems[first:]
    n_val = val_counts({name: len(rows) for name, rows in records.items()}, cfg.val_size)
    encoder = Encoder(tokenizer, template, cfg)
    train_parts, val_parts = {}, []
    for name, rows in records.items():
        train, val = split(rows, n_val[name], seed)
        first, full_lengths = len(stats.problems), []
        train = _tokenize(train, encoder, cfg, stats, full_lengths)
        train_parts[name] = train.remove_columns(["conversation", "status"])
        val = _tokenize(val, encoder, cfg, stats, full_lengths)
        d = stats.dataset(name)
        d.val = len(val)
        if len(val):
            val_parts.append(val)
        # Rows the template cannot render count as bad too: a chatml run on reasoning data trains on nothing.
        bad = problems[name] + [p for p in stats.problems[first:] if ": invalid" in p]
        what = "are malformed or cannot be rendered by the template"
        check_bad_rows(name, d.malformed + d.invalid, d.rows, cfg.max_bad_fraction, bad, what)
        stats.check_long_rows(name, full_lengths, cfg.cutoff_len, cfg.long_rows_warning)
    train = mix(train_parts, {name: spec.weight for name, spec in cfg.datasets.items()}, cfg.mix, seed)
    if not len(train):
        raise DataError(with_problems("no training examples left after tokenization", stats.problems))
    val = concatenate_datasets(val_parts) if val_parts else Dataset.from_dict({})
    columns = train.select_columns(["source", "length", "trained", "category"])[:]
    per_source = Counter(columns["source"])
    for name, d in stats.datasets.items():
        d.train = per_source[name]
    stats.train, stats.val = len(train), len(val)
    stats.describe_lengths(columns["length"], columns["trained"], columns["category"])
    return Prepared(train, val, stats)


def prepare(
    cfg: DataConfig,
    tokenizer,
    template: Template,
    seed: int,
    cache_dir: str | None,
    rebuild: bool | None = None,
) -> Prepared:
    """Tokenized data from the cache when its key matches, else built (and cached if a cache dir is set).

    `rebuild` (default: `data.overwrite_cache`) rebuilds an existing cache entry; processes that
    only need to read what another process built pass False.
    """
    rebuild = cfg.overwrite_cache if rebuild is None else rebuild
    files = file_hashes(cfg)
    if cache_dir is None:
        prepared = build(cfg, tokenizer, template, seed)
        prepared.stats.files = files
        return prepared
    target = Path(cache_dir).expanduser() / "data" / cache_key(cfg, tokenizer, template, seed, files)
    if target.exists() and not rebuild:
        return _load(target, "hit")

    def store(tmp: Path) -> None:
        prepared = build(cfg, tokenizer, template, seed)
        prepared.stats.files = files
        prepared.train.save_to_disk(str(tmp / "train"))
        if len(prepared.val):  # an empty dataset saves no shard and cannot be loaded back
            prepared.val.save_to_disk(str(tmp / "val"))
        (tmp / "stats.json").write_text(json.dumps(asdict(prepared.stats), indent=1))

    publish_dir(store, target, overwrite=rebuild)
    return _load(target, "built")


def _load(target: Path, how: str) -> Prepared:
    """Open a cached preparation (memory-mapped Arrow files)."""
    raw = json.loads((target / "stats.json").read_text())
    raw["datasets"] = {k: DatasetStats(**v) for k, v in raw["datasets"].items()}
    stats = DataStats(**raw)
    stats.cache = f"{how}: {target}"
    log.info("tokenized data %s %s", "loaded from cache" if how == "hit" else "cached in", target)
    val = load_from_disk(str(target / "val")) if (target / "val").exists() else Dataset.from_dict({})
    return Prepared(load_from_disk(str(target / "train")), val, stats, key=target.name)
