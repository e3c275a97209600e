"""One validator for every command's config: unknown keys, secrets, types, missing values, then each field's
metadata (choices, bounds) walked through the schema; rules that relate several fields are written out here.

Every problem is collected and raised as one `ConfigError` that names each key, its value and what is
allowed, before any model or data is loaded.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ..data.formats import mapping_problems
from ..data.kinds import STAGE_KIND, kind_problems
from ..data.registry import expand_datasets, missing_path
from ..errors import ConfigError
from ..locations import CONF_DIR, find_deepspeed_config
from ..provenance import literal_secrets
from .overrides import entry_schema, exit_on_unknown_keys, unknown_keys
from .rules import allowed, breaks, hints
from .schema import PREFERENCE_LOSSES, DatasetConfig, TrainConfig

T = TypeVar("T")


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))


def field_problems(obj: Any, schema: type, prefix: str = "") -> list[str]:
    """Values that break their field's metadata, recursively: `key=value: what is allowed`."""
    problems = []
    for f in fields(schema):
        value, (hint, nullable) = getattr(obj, f.name), hints(schema)[f.name]
        key = f"{prefix}{f.name}"
        if value is None:
            continue
        if is_dataclass(hint):
            problems += field_problems(value, hint, f"{key}.")
        elif item := entry_schema(hint):
            for name, entry in value.items():
                problems += field_problems(entry, item, f"{key}.{name}.")
        elif f.metadata:
            kind = hint if hint in (int, float) else float
            text = allowed(f.metadata, kind, nullable)
            if isinstance(value, list) and "choices" in f.metadata:  # each item is one of the choices
                problems += [
                    f"{key}[{i}]={v!r}: {text}" for i, v in enumerate(value) if breaks(f.metadata, v)
                ]
            elif breaks(f.metadata, value):
                problems.append(f"{key}={value!r}: {text}")
    return problems


def check(
    cfg: DictConfig, schema: type[T], cross: Callable[[T], list[str]] | None = None, prefix: str = ""
) -> T:
    """`cfg` as a typed `schema` object, or a `ConfigError` listing every problem (see the module doc).

    `prefix` is where `cfg` sits in the command's config (`preview.`), for the keys in messages.
    """
    problems = unknown_keys(cfg, schema, prefix)
    problems += [
        f"{prefix}{key}: a secret typed into the config; set it in the environment instead (configs are "
        "saved with every run), e.g. WANDB_API_KEY, or refer to one with ${oc.env:NAME}"
        for key in literal_secrets(cfg)
    ]
    _raise(problems)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        _raise([f"{prefix}{key}: missing; give {prefix}{key}=<...>" for key in missing_keys(merged)])
        typed: T = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigError:
        raise
    except Exception as err:  # omegaconf names the full key and the bad value
        raise ConfigError(f"Invalid config: {err}") from None
    _raise(field_problems(typed, schema, prefix) + (cross(typed) if cross else []))
    return typed


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys still `???` after composing, without resolving interpolations (they may need Hydra's state)."""
    if prefix == "":
        node = OmegaConf.to_container(node, resolve=False)
    if node == "???":
        return [prefix.rstrip(".")]
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in missing_keys(v, f"{prefix}{k}.")]
    return []


def validate(cfg: DictConfig) -> TrainConfig:
    """Check the composed `python -m sft.train` config against its schema and return it as typed objects."""
    return check(expand_datasets(cfg), TrainConfig, train_problems)


def _dataset_problems(key: str, d: DatasetConfig) -> list[str]:
    """Where a dataset's rows are, and whether its column and role-tag mapping fits its format."""
    p: list[str] = []
    if d.source in ("file", "hub") and not d.path:
        p.append(
            f"{key}.path: missing; a file, directory or glob (source: file) or a hub dataset id (source: hub)"
        )
    elif d.source == "file" and (missing := missing_path(d.path)):
        p.append(f"{key}.path={d.path!r}: {missing}")
    return p + [f"{key}.{problem}" for problem in mapping_problems(d.format, d.columns, d.tags)]


def train_problems(c: TrainConfig) -> list[str]:
    """The rules that relate several fields of a training config (each field's own rules are metadata)."""
    p: list[str] = []
    if not (c.model.name_or_path or c.model.random_init is not None):
        p.append(
            f"model.name_or_path={c.model.name_or_path!r}: a hub id, a local directory or pkg://<package>, "
            "unless model.random_init is set"
        )
    if not c.data.datasets:
        p.append(
            "data.datasets={}: at least one dataset (a name from conf/data/, a path, or an entry of "
            "data.dataset_info)"
        )
    for name, entry in c.data.datasets.items():
        p += _dataset_problems(f"data.datasets.{name}", entry)
    p += kind_problems(c.data.datasets, c.data.kind, c.stage.name)
    lr = c.optimizer.get("lr")
    if not (isinstance(lr, (int, float)) and lr > 0):
        p.append(f"optimizer.lr={lr!r}: a positive number")
    if "_target_" not in c.optimizer:
        p.append("optimizer._target_=None: a class path, e.g. torch.optim.AdamW")
    t = c.trainer
    if t.effective_batch_size % max(t.micro_batch_size, 1):
        p.append(
            f"trainer.effective_batch_size={t.effective_batch_size!r}: a positive multiple of "
            f"trainer.micro_batch_size ({t.micro_batch_size})"
        )
    if not (t.max_epochs > 0 or t.max_steps > 0):
        p.append(f"trainer.max_epochs={t.max_epochs!r}: a positive integer (or set trainer.max_steps)")
    o = c.objective
    if not len(o.metrics) == len(o.directions) > 0:
        p.append(
            f"objective.directions={o.directions!r}: one direction per metric of objective.metrics "
            f"({len(o.metrics)})"
        )
    return p + _stage_problems(c) + _strategy_problems(c) + _method_problems(c) + _streaming_problems(c)


def _method_problems(c: TrainConfig) -> list[str]:
    """The adaptation method's settings fit together: LoRA's options need LoRA, freeze tuning needs none."""
    lo, p = c.lora, []
    lora_only = {
        "quantize": (lo.quantize, "QLoRA trains a LoRA adapter on the 4-bit base"),
        "loraplus_lr_ratio": (lo.loraplus_lr_ratio, "LoRA+ sets the learning rate of LoRA's B matrices"),
        "init": (None if lo.init == "default" else lo.init, "it sets how a LoRA adapter starts"),
    }
    if not lo.enabled:
        p += [
            f"lora.{key}={value!r}: {'default' if key == 'init' else 'null'} without LoRA "
            f"(lora.enabled=false); {why}"
            for key, (value, why) in lora_only.items()
            if value is not None
        ]
    for key in ("trainable_layers", "trainable_modules"):
        if lo.enabled and getattr(lo, key) is not None:
            p.append(
                f"lora.{key}={getattr(lo, key)!r}: null with LoRA; freeze tuning trains part of the model "
                "without an adapter (lora=freeze)"
            )
    layers = (c.model.random_init or {}).get("num_hidden_layers")
    if lo.trainable_layers and layers and lo.trainable_layers > layers:
        p.append(
            f"lora.trainable_layers={lo.trainable_layers}: at most {layers}, the model's number of layers"
        )
    if lo.quantize and c.strategy.name in ("fsdp", "deepspeed"):
        p.append(f"lora.quantize={lo.quantize!r}: null under strategy {c.strategy.name} (QLoRA: auto or ddp)")
    if c.trainer.neftune_alpha and c.stage.name not in ("sft", "pt"):
        p.append(
            f"trainer.neftune_alpha={c.trainer.neftune_alpha!r}: null for stage {c.stage.name} (NEFTune "
            "noises sft and pt batches; a preference loss compares against a noiseless reference)"
        )
    return p


def _streaming_problems(c: TrainConfig) -> list[str]:
    """Streamed training data has no length and is read once, in order: what that rules out."""
    d, p = c.data, []
    if not d.streaming:
        return p
    why = "with data.streaming=true"
    if c.trainer.max_steps <= 0:
        p.append(f"trainer.max_steps={c.trainer.max_steps}: a positive count {why} (a stream has no epochs)")
    if not (d.val_size == int(d.val_size) and (d.val_size >= 1 or d.val_size == 0)):
        p.append(
            f"data.val_size={d.val_size}: a whole count of rows {why} (the first rows of each dataset "
            "are held out; a stream's length is unknown), e.g. data.val_size=200"
        )
    if d.kind not in ("conversations", "text"):
        p.append(
            f"data.streaming=true: stage sft or pt; {d.kind} ({c.stage.name}) is read whole, not streamed"
        )
    if d.curriculum != "none":
        p.append(f"data.curriculum={d.curriculum!r}: none {why} (a curriculum orders the whole dataset)")
    if d.max_samples or any(e.max_samples for e in d.datasets.values()):
        p.append(f"data.max_samples: null {why} (trainer.max_steps sets how much is read)")
    if d.num_workers:
        p.append(
            f"data.num_workers={d.num_workers}: 0 {why} (the stream's position lives in the training process)"
        )
    return p


def _stage_problems(c: TrainConfig) -> list[str]:
    """The stage's loss, reference and data kind agree with its name."""
    s, p = c.stage, []
    if c.data.kind != STAGE_KIND[s.name]:  # set by hand, it would batch rows the loss does not expect
        p.append(f"data.kind={c.data.kind!r}: {STAGE_KIND[s.name]!r} for stage {s.name} (set by the stage)")
    uses_reference = s.name == "kto" or s.name == "dpo" and s.loss in ("sigmoid", "ipo")
    if s.reference != "auto" and not uses_reference:
        p.append(
            f"stage.reference={s.reference!r}: auto unless the loss compares with a reference "
            "(stage=dpo with stage.loss=sigmoid or ipo, stage=kto)"
        )
    if s.name == "dpo" and s.loss is None:
        p.append(f"stage.loss=None: one of {PREFERENCE_LOSSES} for stage dpo")
    if s.name != "dpo" and s.loss is not None:
        p.append(f"stage.loss={s.loss!r}: null for stage {s.name} (the loss is chosen for stage=dpo only)")
    return p


def _strategy_problems(c: TrainConfig) -> list[str]:
    """How the strategy fits the model, precision and accelerator."""
    s, p = c.strategy, []
    if s.name == "deepspeed" and c.trainer.accelerator == "cpu":
        p.append(f"trainer.accelerator='cpu': gpu for strategy {s.name}")
    if s.name == "fsdp" and c.trainer.accelerator == "cpu":
        if c.trainer.precision.endswith("-mixed"):
            low = "bfloat16" if c.trainer.precision.startswith("bf16") else "float16"
            p.append(
                f"trainer.precision={c.trainer.precision!r}: 32-true for strategy fsdp on the CPU "
                f"(Lightning's FSDP precision autocasts on CUDA only, so every layer would run in {low})"
            )
        if s.cpu_offload:
            p.append(
                "strategy.cpu_offload=True: false for strategy fsdp on the CPU (its shards are in CPU memory)"
            )
    if s.name == "fsdp" and c.lora.enabled and c.model.dtype != "float32":
        p.append(
            f"model.dtype={c.model.dtype!r}: float32 for LoRA under FSDP (each wrapped layer is flattened "
            "into one dtype and LoRA weights are float32); compute in bf16 with trainer.precision=bf16-mixed"
        )
    if s.name == "fsdp" and s.activation_checkpointing and c.trainer.gradient_checkpointing:
        p.append(
            "strategy.activation_checkpointing=True: false when trainer.gradient_checkpointing is true "
            "(choose one)"
        )
    if s.name == "deepspeed":
        if not s.deepspeed_config:
            p.append("strategy.deepspeed_config: missing; a JSON name from conf/deepspeed/ or a path")
        elif find_deepspeed_config(s.deepspeed_config) is None:
            p.append(
                f"strategy.deepspeed_config={s.deepspeed_config!r}: no such file (here or in conf/deepspeed/)"
            )
    return p


def accumulation_steps(effective_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation that turns micro-batches on `world_size` devices into the effective batch."""
    per_step = micro_batch * world_size
    if effective_batch % per_step:
        raise ConfigError(
            f"trainer.effective_batch_size={effective_batch} is not divisible by trainer.micro_batch_size "
            f"({micro_batch}) x devices ({world_size}) = {per_step}; choose a multiple of {per_step}"
        )
    return effective_batch // per_step


def deferred_cli(schema: type, module: str, config_name: str) -> Callable[[], None]:
    """A command that checks the command line's keys and values, then imports `module` and runs its Hydra
    `main` (which composes `config_name` again and checks it as before).

    The checks need only the schema and the composed config, so a misspelt key, a value out of range or a
    run directory that does not exist is answered in a second, before the module's model stack (torch,
    transformers, PEFT: about 6 s) loads.
    """

    def cli() -> None:
        args = sys.argv[1:]
        exit_on_unknown_keys(args, schema)
        exit_on_bad_values(args, schema, config_name)
        importlib.import_module(module).main()

    return cli


def exit_on_bad_values(args: list[str], schema: type, config_name: str) -> None:
    """Compose `config_name` with plain `key=value` overrides and exit 2 with every problem `check` finds, or
    when its `run` names no directory; a command line with Hydra's own flags or settings is left to Hydra."""
    if any(a.startswith("-") or a.lstrip("+~").startswith("hydra.") for a in args):
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=args)
    except Exception:  # a syntax error or a missing group option: Hydra reports it, as before
        return
    try:
        check(cfg, schema)
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    run = cfg.get("run")
    if isinstance(run, str) and run and not Path(run).expanduser().exists():
        where = "give a run directory that `python -m sft.train` wrote"
        print(f"run={run}: no such directory ({where})", file=sys.stderr)
        sys.exit(2)
