"""The page's view of a training config: groups and options read from conf/ by Hydra, the fields a user
edits, and the same checks `python -m sft.train` runs, with each problem routed to the field it concerns.

Nothing here imports gradio, so it is tested on its own and the training package never pulls it in.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config import TRAIN_GROUPS, TrainConfig, override_problems, validate
from ..errors import ConfigError
from ..locations import CONF_DIR
from ..provenance import redact, redact_override

ENTRY = "train"
# Groups the page does not offer: Hydra's own, where outputs go (the UI decides), and the user's local file.
HIDDEN_GROUPS = {"paths", "local"}
EXTRA = "extra"  # where problems go that no field or group owns


@dataclass(frozen=True)
class Field:
    """One editable hyperparameter: its config key, label and number type."""

    name: str
    key: str
    label: str
    kind: type = float
    optional: bool = False  # null is allowed (shown as an empty box)
    derived: tuple[str, ...] = ()  # keys that take this field's value (their problems show here too)


# The hyperparameter table's rows come from the preset; the rest are the settings people change first.
FIELDS = (
    Field("learning_rate", "preset.learning_rate", "learning rate", derived=("optimizer.lr",)),
    Field("lora_rank", "preset.lora_rank", "LoRA rank", int, derived=("lora.r",)),
    Field("lora_alpha", "lora.alpha", "LoRA alpha"),
    Field("epochs", "preset.epochs", "epochs", int, derived=("trainer.max_epochs",)),
    Field(
        "batch_size", "preset.batch_size", "effective batch", int, derived=("trainer.effective_batch_size",)
    ),
    Field("beta", "preset.beta", "beta (dpo, kto)", derived=("stage.beta",)),
    Field("loraplus_lr_ratio", "lora.loraplus_lr_ratio", "LoRA+ B/A learning-rate ratio", optional=True),
    Field("trainable_layers", "lora.trainable_layers", "freeze: trained last layers", int, optional=True),
    Field("neftune_alpha", "trainer.neftune_alpha", "NEFTune alpha", optional=True),
    Field("micro_batch_size", "trainer.micro_batch_size", "micro-batch", int),
    Field("cutoff_len", "data.cutoff_len", "cutoff (tokens)", int),
    Field("warmup_ratio", "scheduler.warmup_ratio", "warm-up ratio"),
    Field("max_steps", "trainer.max_steps", "max steps (-1: by epochs)", int),
    Field("eval_steps", "trainer.eval_steps", "eval every N steps", int, optional=True),
    Field("save_steps", "trainer.save_steps", "save every N steps", int, optional=True),
)
FIELD_BY_KEY = {key: f for f in FIELDS for key in (f.key, *f.derived)}

# Hydra's loader keeps global state; the page's handlers run in threads, so composition is serialised.
_hydra_lock = threading.Lock()


@contextmanager
def hydra_conf() -> Iterator[GlobalHydra]:
    """Hydra initialised on the project's conf/ for the duration of the block."""
    with _hydra_lock:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                yield GlobalHydra.instance()
        finally:
            GlobalHydra.instance().clear()


def config_groups() -> tuple[dict[str, list[str]], dict[str, str]]:
    """(each group of train.yaml's defaults list -> its options in conf/, the option train.yaml picks)."""
    with hydra_conf() as hydra:
        choices = compose(ENTRY, return_hydra_config=True).hydra.runtime.choices
        loader = hydra.config_loader()
        # Hydra lists choices last-loaded first; the page shows them in the defaults list's order.
        shown = [
            g for g in reversed(list(choices)) if "/" not in g and g not in HIDDEN_GROUPS and g != "hydra"
        ]
        return {g: loader.get_group_options(g) for g in shown}, {g: choices[g] for g in shown}


def group_options(group: str) -> list[str]:
    """The options of any config group (e.g. `sweep`), as Hydra finds them in conf/."""
    with hydra_conf() as hydra:
        return hydra.config_loader().get_group_options(group)


@dataclass
class Draft:
    """What the user picked: an option per group, the fields they edited, and free-form overrides."""

    choices: dict[str, str]
    values: dict[str, Any] = field(default_factory=dict)  # field name -> value, edited fields only
    extra: str = ""


@dataclass
class Checked:
    """A draft composed and validated: the overrides, the config, and every problem by field or group."""

    overrides: list[str]
    problems: dict[str, list[str]]
    values: dict[str, Any]  # every field's value in the composed config
    yaml: str = ""
    cfg: DictConfig | None = None

    @property
    def ok(self) -> bool:
        """True when nothing stops a launch."""
        return not self.problems

    def command(self) -> str:
        """The equivalent command line, quoted for a POSIX shell (a typed secret's value hidden)."""
        return shlex.join(["python", "-m", "sft.train", *map(redact_override, self.overrides)])


def _number(value: Any) -> str:
    """A field value as Hydra override text (null for an empty optional field)."""
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def _coerce(f: Field, value: Any) -> Any:
    """The field's value in its type; a problem message (str) when it is not a number of that type."""
    if value is None or value == "":
        return None if f.optional else f"{f.key}: a value is required"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"{f.key}={value!r}: a number"
    if f.kind is int:
        if not number.is_integer():
            return f"{f.key}={value!r}: a whole number"
        return int(number)
    return number


def draft_overrides(draft: Draft, defaults: dict[str, str]) -> tuple[list[str], dict[str, list[str]]]:
    """Overrides for a draft (groups that differ from train.yaml's, edited fields, then the extra text)."""
    overrides = [f"{g}={o}" for g, o in draft.choices.items() if defaults.get(g) != o]
    problems: dict[str, list[str]] = {}
    for f in FIELDS:
        if f.name not in draft.values:
            continue
        value = _coerce(f, draft.values[f.name])
        if isinstance(value, str):
            problems.setdefault(f.name, []).append(value)
        else:
            overrides.append(f"{f.key}={_number(value)}")
    overrides += _split(draft.extra)
    try:
        shlex.split(draft.extra)
    except ValueError as err:
        problems.setdefault(EXTRA, []).append(f"unbalanced quotes: {err}")
    return overrides, problems


def _split(text: str) -> list[str]:
    """Shell-like words of the extra box ([] when its quotes do not balance)."""
    try:
        return shlex.split(text)
    except ValueError:
        return []


# `key=value: ...`, `key: ...` (validate and override_problems), or omegaconf's `full_key: key`.
_KEY = re.compile(r"^\s*([\w./\[\]@+~-]+?)(?:=|:\s)")
_FULL_KEY = re.compile(r"full_key:\s*(\S+)")
_OPTION = re.compile(r"Could not (?:find|load) '(\w+)/")  # Hydra: a group option that does not exist


def owner(problem: str, groups: list[str], typed: set[str] = frozenset()) -> str:
    """The field or group a problem message concerns, or EXTRA (also for keys typed into the extra box)."""
    found = _FULL_KEY.search(problem) or _OPTION.search(problem) or _KEY.match(problem)
    key = found.group(1).lstrip("+~") if found else ""
    if key in typed:
        return EXTRA
    if key in FIELD_BY_KEY:
        return FIELD_BY_KEY[key].name
    top = re.split(r"[./\[]", key, maxsplit=1)[0]
    return top if top in groups else EXTRA


def _problem_lines(message: str) -> list[str]:
    """The individual problems of a ConfigError message (one per indented line)."""
    lines = [line.strip() for line in message.splitlines()]
    body = [line for line in lines[1:] if line] if lines and lines[0].endswith(":") else []
    return body or [message.removeprefix("Invalid config: ").strip()]


def check(draft: Draft, defaults: dict[str, str], fixed: list[str], root_ok) -> Checked:
    """Compose and validate a draft as `python -m sft.train` does, without starting anything.

    The one check left out is the cutoff against the template's overhead, which needs the tokenizer (the
    run itself still makes it). `fixed` are overrides the page adds (where outputs go); `root_ok(key,
    value)` returns a problem for a path outside the allowed locations, or None.
    """
    overrides, problems = draft_overrides(draft, defaults)
    groups = list(draft.choices)
    typed = [_key(o) for o in overrides if _key(o) not in groups]
    found = [p for key in typed if (p := refused(key))]
    found += override_problems(overrides, TrainConfig, TRAIN_GROUPS)
    values: dict[str, Any] = {}
    cfg = None
    text = ""
    if not found and not problems:
        try:
            with hydra_conf():
                cfg = compose(ENTRY, overrides=[*overrides, *fixed])
            found += [p for key in typed for p in path_problems(cfg, key, root_ok)]
            found += [] if re.fullmatch(r"[\w.-]+", str(cfg.task_name)) else [TASK_NAME]
            validate(cfg)
        except ConfigError as err:
            found += [" ".join(line.split()) for line in _problem_lines(str(err))]
        except Exception as err:  # Hydra names the bad override, group or option itself
            found.append(" ".join(str(err).split()))
    if cfg is not None:
        values = {f.name: _select(cfg, f.key) for f in FIELDS}
        text = shown_yaml(cfg)
    extra_keys = {_key(o) for o in _split(draft.extra)}
    for problem in found:
        problems.setdefault(owner(problem, groups, extra_keys), []).append(problem)
    return Checked(overrides, problems, values, text, cfg if not problems else None)


def _select(cfg: DictConfig, key: str) -> Any:
    """A key's resolved value, or None when the composed config lacks it (e.g. lora=none has no alpha)."""
    try:
        return OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    except Exception:
        return None


def shown_yaml(cfg: DictConfig) -> str:
    """The composed config as YAML for the page: resolved where possible, secrets replaced."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation only Hydra's runtime can resolve: show it unresolved
        plain = OmegaConf.to_container(cfg, resolve=False)
    return yaml.safe_dump(redact(plain), sort_keys=False)


def _key(override: str) -> str:
    """The config key of an override, without Hydra's +, ++ and ~ prefixes."""
    return override.partition("=")[0].lstrip("+~")


# Where runs go is the page's setting (`python -m sft.ui log_dir=...`), so it can find them again.
PLACED_BY_PAGE = ("paths.log_dir", "paths.output_dir")
TASK_NAME = "task_name: letters, digits, '.', '_' and '-' only (it names a directory under the outputs)"


def refused(key: str) -> str | None:
    """Why the page does not take this key from a user, or None.

    A `_target_` (or any `_private_` key) typed into a page could instantiate any class, and Hydra's own
    settings could write logs or load configs anywhere: those stay in YAML files and on the command line.
    """
    if key in PLACED_BY_PAGE:
        return f"{key}: set by the page (python -m sft.ui log_dir=<dir>), so it can find the run again"
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return f"{key}: Hydra's own settings are not taken from the page; use the command line"
    if any(part.startswith("_") for part in re.split(r"[./]", key)):
        return f"{key}: not taken from the page (it could run any code); put it in a YAML file under conf/"
    return None


# Keys whose values are file or directory names, and strings that look like paths wherever they are.
_PATH_KEY = re.compile(r"(^|\.)(\w*_)?(dir|path|file|paths)$|(^|\.)resume$")
_NOT_PATHS = {"null", "none", "last", "auto", ""}
_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow", ".ckpt", ".gguf", ".safetensors")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _looks_like_path(key: str, text: str) -> bool:
    """True when a value at `key` names a location on disk (hub ids and URLs do not)."""
    text = text.strip()
    if text.lower() in _NOT_PATHS or "://" in text or any(c.isspace() for c in text):
        return False
    if key.endswith("name_or_path") and _HUB_ID.fullmatch(text) and not Path(text).exists():
        return False
    return (
        bool(_PATH_KEY.search(key))
        or text.startswith(("/", ".", "~"))
        or "/" in text
        or text.endswith(_DATA_SUFFIXES)
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a value, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def path_problems(cfg: DictConfig, key: str, root_ok) -> list[str]:
    """Problems for paths outside the allowed locations in what an override set, as resolved."""
    node = _select(cfg, key)
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    found = (root_ok(key, text) for text in _strings(node) if _looks_like_path(key, text))
    return [problem for problem in found if problem]


class Roots:
    """The locations the page may read and write: the outputs directory and the data directories."""

    def __init__(self, roots: list[str | Path], base: Path | None = None) -> None:
        self.base = base or Path.cwd()  # relative paths mean what they mean where the page was started
        self.roots = [self.resolve(r) for r in roots]

    def resolve(self, value: str | Path) -> Path:
        """A typed path made absolute against the project root, with `..` and links resolved."""
        path = Path(str(value)).expanduser()
        return (path if path.is_absolute() else self.base / path).resolve()

    def problem(self, key: str, value: str) -> str | None:
        """The refusal message when `value` lies outside every allowed root, else None."""
        path = self.resolve(value.strip("'\""))
        if any(path == root or root in path.parents for root in self.roots):
            return None
        allowed = ", ".join(str(r) for r in self.roots)
        return f"{key}={value}: outside the locations this page may read or write ({allowed})"

    def check(self, value: str | Path, what: str) -> Path:
        """The resolved path, or a ValueError naming it and the allowed locations."""
        if problem := self.problem(what, str(value)):
            raise ValueError(problem)
        return self.resolve(value)
