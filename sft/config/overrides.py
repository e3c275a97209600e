"""Unknown keys, named with the closest valid one: on the command line before Hydra composes, and in a
composed config. `checked_cli` wraps every command's Hydra entry point with the command-line check.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import sys
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, get_args, get_origin

from omegaconf import DictConfig, OmegaConf

from .rules import hints

# Names users bring from PEFT, TRL and LLaMA-Factory, mapped to ours for "did you mean" hints.
ALIASES = {
    "rank": "r",
    "lora_rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target": "target",
    "target_modules": "target",
    "learning_rate": "lr",
    "batch_size": "effective_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "num_train_epochs": "max_epochs",
    "epochs": "max_epochs",
    "max_length": "cutoff_len",
    "max_seq_length": "cutoff_len",
}

# Keys that moved to another group: the message says where they live now.
MOVED = {"trainer.strategy": "the strategy group: strategy=ddp (options in conf/strategy/)"}

# Settings of free-form groups (`_target_` dicts) that a typo in another group most likely meant.
FREE_FORM_HOMES = {"optimizer": ("lr", "weight_decay")}


@functools.cache
def _homes(schema: type) -> dict[str, str]:
    """Setting name -> its full key, for names that live in exactly one group (to point across groups)."""
    homes: dict[str, list[str]] = {}
    for group, names in FREE_FORM_HOMES.items():
        if group in hints(schema):
            for name in names:
                homes[name] = [f"{group}.{name}"]
    for group, (sub, _) in hints(schema).items():
        for f in fields(sub) if is_dataclass(sub) else ():
            homes.setdefault(f.name, []).append(f"{group}.{f.name}")
    return {name: keys[0] for name, keys in homes.items() if len(keys) == 1}


def unknown(key: str, known: list[str], prefix: str = "", schema: type | None = None) -> str:
    """The message for an unknown key: the closest valid name (or the PEFT/TRL alias) and the allowed ones."""
    alias = ALIASES.get(key, key)
    close = difflib.get_close_matches(key, known, n=1)
    if alias in known:
        hint = f"; did you mean '{prefix}{alias}'?"
    elif schema and alias in _homes(schema):  # a setting of another group, e.g. trainer.learning_rate
        hint = f"; did you mean '{_homes(schema)[alias]}'?"
    else:
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return f"{prefix}{key}: unknown key{hint} (allowed: {', '.join(known)})"


def entry_schema(hint: Any) -> type | None:
    """The schema of a `dict[str, Schema]` field's entries, else None."""
    if get_origin(hint) is dict and is_dataclass(args := get_args(hint)[1]):
        return args
    return None


def unknown_keys(node: Any, schema: type, prefix: str = "", root: type | None = None) -> list[str]:
    """Keys of `node` that `schema` does not define (recursively), each with the closest valid name."""
    if not isinstance(node, DictConfig):
        return []
    root = root or schema
    problems = []
    known = hints(schema)
    for key in node.keys():
        full = f"{prefix}{key}"
        if full in MOVED:
            problems.append(f"{full}: moved to {MOVED[full]}")
        elif key not in known:
            problems.append(unknown(str(key), list(known), prefix, root))
        elif OmegaConf.is_missing(node, key):
            continue
        elif is_dataclass(sub := known[key][0]):
            problems += unknown_keys(node[key], sub, f"{full}.", root)
        elif (item := entry_schema(sub)) and isinstance(node[key], DictConfig):
            for name in node[key]:
                problems += unknown_keys(node[key][name], item, f"{full}.{name}.", root)
    return problems


def override_problems(args: list[str], schema: type, groups: tuple[str, ...] = ()) -> list[str]:
    """Unknown keys among command-line overrides, checked against `schema` before Hydra composes.

    Hydra would refuse them too, but without naming the closest valid key. Choices of the schema's
    groups (`preset=x`) and of the extra `groups` (`experiment=x`), additions (`+key=`), deletions and
    keys under free-form groups (optimizer, logger, ...) are left to Hydra and to validation.
    """
    # Hydra's override grammar (ANTLR) loads only for a command line, not wherever a schema is imported.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # Hydra reports syntax errors itself
        return []
    problems = []
    for override in overrides:
        key = override.key_or_group
        if override.type.name != "CHANGE" or "/" in key or "@" in key or key.startswith("hydra."):
            continue
        if key in groups:
            continue
        current, prefix, parts = schema, "", key.split(".")
        while parts and is_dataclass(current):
            known = hints(current)
            key, parts = parts[0], parts[1:]
            if key not in known:
                problems.append(unknown(key, list(known), prefix, schema))
                break
            current, prefix = known[key][0], f"{prefix}{key}."
            if (item := entry_schema(current)) and parts:
                current, prefix, parts = item, f"{prefix}{parts[0]}.", parts[1:]
    return problems


def checked_cli(main: Callable[[], Any], schema: type, groups: tuple[str, ...] = ()) -> Callable[[], None]:
    """`main` (a Hydra entry point) behind a check of the command line's keys against `schema`.

    A misspelt key exits 2 with the closest valid one before Hydra composes (or any model loads).
    """

    @functools.wraps(main)
    def cli() -> None:
        exit_on_unknown_keys(sys.argv[1:], schema, groups)
        main()

    return cli


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse's parse, but an unknown option exits 2 naming the closest one (as unknown keys do)."""
    args, extra = parser.parse_known_args(argv)
    actions = [action for action in parser._actions if action.dest != "help"]
    options = [o for action in actions for o in action.option_strings if o.startswith("--")]
    problems = [unknown(arg.split("=")[0], options) for arg in extra if arg.startswith("--")]
    if problems:
        print("Invalid arguments:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(2)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def exit_on_unknown_keys(args: list[str], schema: type, groups: tuple[str, ...] = ()) -> None:
    """Print every unknown key among the command-line overrides and exit 2, if there are any."""
    problems = override_problems([a for a in args if not a.startswith("-")], schema, groups)
    if problems:
        print("Invalid config:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(2)
