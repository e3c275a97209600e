"""Hugging Face hub datasets (`source: hub`): load one split, or say in one message why it cannot be read.

`datasets.load_dataset` fails in many ways without a network (a ConnectionError, OfflineModeIsEnabled,
LocalEntryNotFoundError, an HTTP error of huggingface_hub, httpx or requests) and in a few with one (an
unknown or gated id, a wrong subset or split). Each becomes a HubError, a DataError, so `python -m sft.data`
and `python -m sft.train` print it and exit 2 instead of a traceback. The message names the dataset entry
and how to point it at a local copy: `data.datasets.<name>.source=file data.datasets.<name>.path=...`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable

from ..errors import HubError

# Environment variables that keep huggingface_hub and datasets off the network.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# The hub answered, but there is no such dataset (or it is gated and the token may not read it).
NOT_FOUND = ("datasets.exceptions:DatasetNotFoundError", "huggingface_hub.errors:RepositoryNotFoundError")
# The hub could not be asked: no network, offline mode, a proxy or server error, a timeout.
UNREACHABLE = (
    "builtins:ConnectionError",
    "builtins:TimeoutError",
    "huggingface_hub.errors:OfflineModeIsEnabled",
    "huggingface_hub.errors:LocalEntryNotFoundError",
    "huggingface_hub.errors:HfHubHTTPError",
    "requests:RequestException",
    "httpx:HTTPError",
)
FILE_KINDS = "a .json, .jsonl, .parquet or .csv file, a directory or a glob of them"


def _classes(names: Iterable[str]) -> tuple[type[BaseException], ...]:
    """The exception classes of `module:Class` names whose module is installed."""
    found = []
    for name in names:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def load_split(name: str, subset: str | None, split: str, entry: str | None = None, streaming: bool = False):
    """`datasets.load_dataset(name, subset, split=split)`, or a HubError saying why not and what to do.

    `streaming` returns an IterableDataset that downloads rows as they are read, nothing whole.
    """
    import datasets

    try:
        if streaming:
            return datasets.load_dataset(name, subset, split=split, streaming=True)
        return datasets.load_dataset(name, subset, split=split)
    except _classes(NOT_FOUND) as err:
        # Offline, a dataset missing from the cache may read as one missing from the hub.
        why = unreachable if offline_variables() else not_found
        raise HubError(why(name, subset, split, entry, err)) from None
    except _classes(UNREACHABLE) as err:
        raise HubError(unreachable(name, subset, split, entry, err)) from None
    except ValueError as err:  # an unknown split or subset, or a subset the dataset needs and was not given
        key = f"data.datasets.{entry_name(name, subset, split, entry)}"
        raise HubError(
            f"{key}: hub dataset {describe(name, subset, split)}: {err}\n"
            f"Check {key}.subset and {key}.split against the dataset's card on the hub."
        ) from None


def entry_name(name: str, subset: str | None, split: str, entry: str | None = None) -> str:
    """The dataset's name in data.datasets as the caller gave it, else `<name>`."""
    return entry or "<name>"


def describe(name: str, subset: str | None, split: str) -> str:
    """`id` with its subset and split, as the messages name a hub dataset."""
    return f"{name} (" + (f"subset {subset}, " if subset else "") + f"split {split})"


def offline_variables() -> list[str]:
    """The offline switches set in this environment, as NAME=value."""
    on = ("1", "on", "yes", "true")
    return [f"{v}={os.environ[v]}" for v in OFFLINE_VARIABLES if os.environ.get(v, "").lower() in on]


def local_copy(name: str, subset: str | None, split: str, entry: str | None) -> str:
    """How to train on a local copy of the dataset instead of reading it from the hub."""
    key = f"data.datasets.{entry_name(name, subset, split, entry)}"
    files = f"DIR/**/{subset}/{split}-*.parquet" if subset else f"DIR/**/{split}-*.parquet"
    part = f"subset {subset}, " if subset else ""
    note = "  (<name>: the dataset's name in data.datasets)\n" if key.endswith("<name>") else ""
    return (
        f"Use a local copy of its rows instead ({FILE_KINDS}, with the dataset's own columns): add\n"
        f"  {key}.source=file {key}.path=/path/to/copy.jsonl\n{note}"
        f"To get one, on a machine with a network: `hf download {name} --repo-type dataset --local-dir DIR`, "
        f"then point {key}.path at the files of {part}split {split} under DIR (e.g. '{files}'); "
        f"or load it there once and copy its datasets cache (HF_DATASETS_CACHE) to {_cache_dir()}."
    )


def unreachable(name: str, subset: str | None, split: str, entry: str | None, err: BaseException) -> str:
    """The message for a hub dataset that needs the network when the hub cannot be reached."""
    key = f"data.datasets.{entry_name(name, subset, split, entry)}"
    switches = offline_variables()
    why = (
        f"offline mode is on: {', '.join(switches)}" if switches else "no network, or the hub did not answer"
    )
    return (
        f"{key}: dataset {describe(name, subset, split)} needs the Hugging Face hub, which cannot be reached "
        f"({why}), and the datasets cache ({_cache_dir()}) holds no copy of it [{_short(err)}].\n"
        + local_copy(name, subset, split, entry)
    )


def not_found(name: str, subset: str | None, split: str, entry: str | None, err: BaseException) -> str:
    """The message for a hub id the hub does not serve: a typo, a private or a gated dataset."""
    key = f"data.datasets.{entry_name(name, subset, split, entry)}"
    return (
        f"{key}: dataset {describe(name, subset, split)} is not on the Hugging Face hub, or it is gated or "
        f"private and needs a token that may read it (accept its terms on its page, then `hf auth login`) "
        f"[{_short(err)}].\n" + local_copy(name, subset, split, entry)
    )


def _cache_dir() -> str:
    """Where `datasets` keeps the datasets it has loaded."""
    import datasets.config

    return str(datasets.config.HF_DATASETS_CACHE)


def _short(err: BaseException) -> str:
    """The error's type and the first line of its text."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
