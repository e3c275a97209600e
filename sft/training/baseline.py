"""The evaluation before training (held-out metrics and probe answers), kept for the runs that share it.

Re-runs of a job, and the trials of a sweep over training settings, start from the same weights and
evaluate them on the same held-out rows: the numbers before training are the same each time, and
computing them delays the first optimizer step by seconds (7 of the default job's 24). They are kept in
the cache directory under a key of everything they depend on: the run's config without the settings that
only shape training (TRAINING_ONLY), the base weights' files, the tokenized data's cache key, the
package's code and the library versions. A run that starts from another run (`init_from`), resumes, has
streamed or uncached data, or runs on more than one process evaluates as before and keeps nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib.metadata import version
from pathlib import Path

from ..atomic import write_json
from ..config import TrainConfig, to_record
from ..locations import PACKAGE_DIR
from ..run_dir import read_json

log = logging.getLogger(__name__)

# Settings that change how the model trains, never the model it starts from or how it is evaluated.
TRAINING_ONLY = {
    "": {"task_name", "resume", "overwrite", "paths", "optimizer", "scheduler", "preset", "logger"}
    | {"callbacks", "objective", "evaluation", "trial", "reuse_initial_eval"},
    "trainer": {"gradient_checkpointing", "max_epochs", "max_steps", "effective_batch_size"}
    | {"micro_batch_size", "micro_batch_tokens", "gradient_clip_val", "eval_steps", "log_every_n_steps"}
    | {"save_steps", "save_total_limit", "early_stopping_patience", "restore_best", "max_nonfinite_steps"}
    | {"neftune_alpha"},
    "lora": {"dropout", "fast_dropout", "loraplus_lr_ratio"},
    "data": {"num_proc", "num_workers", "overwrite_cache"},
}
LIBRARIES = ("torch", "transformers", "peft", "lightning", "datasets")


def baseline_key(typed: TrainConfig, weights_source: str, model, data_key: str | None) -> str | None:
    """A digest of everything the evaluation before training depends on; None when it is not kept."""
    if not typed.reuse_initial_eval or typed.init_from is not None or typed.resume is not None:
        return None
    if data_key is None:
        return None
    weights = _weights_fingerprint(weights_source, model)
    if weights is None:
        return None
    record = to_record(typed)
    settings = {k: v for k, v in record.items() if k not in TRAINING_ONLY[""]}
    for section, keys in TRAINING_ONLY.items():
        if section:
            settings[section] = {k: v for k, v in record[section].items() if k not in keys}
    parts = {
        "settings": settings,
        "weights": weights,
        "data": data_key,
        "code": _code_digest(),
        "versions": {name: version(name) for name in LIBRARIES},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_baseline(cache_dir: str, key: str | None) -> dict | None:
    """The kept evaluation ({"metrics": ..., "probes": [...], "path": its file}) for `key`, or None."""
    if key is None:
        return None
    path = _path(cache_dir, key)
    kept = read_json(path)
    if kept is None:
        return None
    log.info("evaluation before training read from %s (computed by an earlier run with this key)", path)
    return {**kept, "path": str(path)}


def store_baseline(cache_dir: str, key: str | None, metrics: dict, probes: list[str]) -> None:
    """Keep the evaluation before training under `key` (nothing when `key` is None)."""
    if key is not None:
        metrics = {name: float(value) for name, value in metrics.items()}
        write_json({"metrics": metrics, "probes": probes}, _path(cache_dir, key))


def _path(cache_dir: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / "baseline" / f"{key}.json"


def _weights_fingerprint(source: str, model) -> list | str | None:
    """The base weights' files (name, size, mtime), or a hub snapshot's commit; None if unknown."""
    local = Path(source)
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return [[str(p.relative_to(local)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return commit if isinstance(commit, str) and len(commit) == 40 else None


def _code_digest() -> str:
    """A digest of the package's Python sources: a change to how the loss is computed is a new key."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
