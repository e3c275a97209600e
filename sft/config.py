"""Typed schemas for every config group, validated right after Hydra composes the config.

Validation collects every problem and raises one `ConfigError` that names each key, its value
and what is allowed, before any model or data is loaded.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from typing import Any, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf

from .data.formats import FORMATS, mapping_problems
from .data.templates import BUILTIN as BUILTIN_TEMPLATES
from .data.tokenize import TRUNCATION
from .errors import ConfigError
from .locations import default_data_dir
from .provenance import literal_secrets, redact

TEMPLATES = (*BUILTIN_TEMPLATES, "auto")
DATA_SOURCES = ("file", "hub", "builtin")
MIX_STRATEGIES = ("concat", "interleave_under", "interleave_over")
CURRICULA = ("none", "easy_to_hard")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
LORA_BIAS = ("none", "all", "lora_only")
DIRECTIONS = ("minimize", "maximize")
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP")
REDUCE_DTYPES = ("float32", "bfloat16", "float16")


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


@functools.cache
def run_name(pattern: str) -> str:
    """The run directory's name: SFT_RUN_NAME when set, a job id every rank shares, or the time now.

    torchrun and srun start all ranks at once and each composes the config itself: their clocks
    could name two directories. (Lightning's own launcher passes rank 0's directory to the others.)
    SFT_RUN_NAME lets a launcher (the web UI) know the directory before the run starts.
    """
    env = os.environ
    if env.get("SFT_RUN_NAME"):
        return env["SFT_RUN_NAME"]
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if int(env.get("WORLD_SIZE", "1")) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return datetime.now().strftime(pattern)


def on_rank_zero(value: Any) -> Any:
    """`value` on the first process of a torchrun/srun launch (and alone), None on the others."""
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0
    return value if int(rank) == 0 else None


def _register_resolvers() -> None:
    """Register the small OmegaConf resolvers the YAML files use (idempotent)."""
    if not OmegaConf.has_resolver("sft.mul"):
        OmegaConf.register_new_resolver("sft.mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("sft.env_unset"):
        OmegaConf.register_new_resolver("sft.env_unset", lambda name: not os.environ.get(name))
    if not OmegaConf.has_resolver("sft.run_name"):
        OmegaConf.register_new_resolver("sft.run_name", run_name)
    if not OmegaConf.has_resolver("sft.data_dir"):
        OmegaConf.register_new_resolver("sft.data_dir", default_data_dir)
    if not OmegaConf.has_resolver("sft.on_rank_zero"):
        OmegaConf.register_new_resolver("sft.on_rank_zero", on_rank_zero)


_register_resolvers()


@dataclass
class ModelConfig:
    """The base model: a hub id, a local directory, a GGUF file, or a random tiny model."""

    name_or_path: str | None = None
    gguf_file: str | None = None
    template: str = "chatml"
    default_system: str | None = None
    trust_remote_code: bool = False
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"
    revision: str | None = None
    random_init: dict[str, Any] | None = None


@dataclass
class DatasetConfig:
    """One dataset: where its rows are, their format, and how their columns and roles are named."""

    name: str | None = None
    source: str = "file"
    path: str | None = None
    subset: str | None = None
    split: str = "train"
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_rows: int = 480
    max_samples: int | None = None
    weight: float = 1.0
    placeholders: dict[str, str] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which datasets to train on, how they are mixed, rendered, masked, cut and batched."""

    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    dataset_info: str | None = None
    mix: str = "concat"
    template: str = "chatml"
    system: str | None = None
    placeholders: dict[str, str] = field(default_factory=dict)
    max_samples: int | None = None
    val_size: float = 0.1
    cutoff_len: int = 512
    truncation: str = "keep_response"
    train_on_prompt: bool = False
    mask_history: bool = False
    packing: bool = False
    group_by_length: bool = True
    curriculum: str = "none"
    curriculum_stages: int = 3
    strict: bool = False
    num_proc: int = 1
    num_workers: int = 0
    overwrite_cache: bool = False


@dataclass
class LoraConfig:
    """PEFT LoRA settings; `enabled: false` means full fine-tuning."""

    enabled: bool = True
    r: int = 32
    alpha: float = 64
    dropout: float = 0.05
    target: Any = "all"
    bias: str = "none"
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: list[str] | None = None


@dataclass
class SchedulerConfig:
    """Learning-rate schedule by transformers' `get_scheduler` name, with warm-up."""

    name: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None


@dataclass
class PresetConfig:
    """One row of the hyperparameter table; other groups interpolate these values."""

    learning_rate: float = 5e-5
    lora_rank: int = 32
    epochs: int = 3
    batch_size: int = 32


@dataclass
class TrainerConfig:
    """Lightning Trainer settings plus batch arithmetic; steps are optimizer steps."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    gradient_checkpointing: bool = False
    max_epochs: int = 3
    max_steps: int = -1
    effective_batch_size: int = 32
    micro_batch_size: int = 4
    gradient_clip_val: float | None = 1.0
    eval_steps: int | None = None
    log_every_n_steps: int = 1
    save_steps: int | None = None
    save_total_limit: int = 2
    early_stopping_patience: int | None = None
    restore_best: bool = True
    limit_val_batches: float = 1.0
    deterministic: bool = False
    max_nonfinite_steps: int = 5
    trained_logits_only: bool = True


@dataclass
class StrategyConfig:
    """How training spreads over devices: one of Lightning's strategies, with its settings.

    `process_group_backend` applies to ddp and fsdp; `find_unused_parameters` to ddp;
    `sharding_strategy`, `wrap_layers`, `activation_checkpointing`, `reduce_dtype` and `cpu_offload`
    to fsdp; `deepspeed_config` (a JSON under conf/deepspeed/ or a path) to deepspeed.
    """

    name: str = "auto"
    process_group_backend: str | None = None
    find_unused_parameters: bool = False
    sharding_strategy: str = "FULL_SHARD"
    wrap_layers: Any = "auto"
    activation_checkpointing: bool = False
    reduce_dtype: str = "float32"
    cpu_offload: bool = False
    deepspeed_config: str | None = None


@dataclass
class PathsConfig:
    """Output and cache locations."""

    root_dir: str = "."
    log_dir: str = "outputs"
    data_dir: str = "."
    output_dir: str = "outputs/run"
    cache_dir: str = "~/.cache/sft"


@dataclass
class ObjectiveConfig:
    """What `train()` returns to a sweeper: logged metrics or summary values, and which way is better.

    One metric gives a float; several give a tuple (a multi-objective Optuna study).
    """

    metrics: list[str] = field(default_factory=lambda: ["val/loss"])
    directions: list[str] = field(default_factory=lambda: ["minimize"])


@dataclass
class EvaluationConfig:
    """Generation-based evaluation (sft.eval): which suites, how many prompts, the base-model comparison."""

    enabled: bool = False
    suites: list[str] = field(default_factory=lambda: ["ifeval", "exact"])
    references: str | None = None
    limit: int | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    base: bool = True
    tolerance: float = 0.02


@dataclass
class TrialConfig:
    """The Optuna trial a sweep job belongs to (set by the sweeper): reported to for pruning."""

    study_name: str = "sft"
    storage: str = "sqlite:///optuna.db"
    id: int = 0
    number: int = 0


@dataclass
class ProbeConfig:
    """Prompts answered before and after training, to show what changed."""

    enabled: bool = True
    prompts: list[str] = field(default_factory=lambda: ["Who are you?"])
    max_new_tokens: int = 48


@dataclass
class TrainConfig:
    """The whole composed run config (optimizer, logger and callbacks stay `_target_` dicts)."""

    task_name: str = "train"
    seed: int = 42
    resume: str | None = None
    overwrite: bool = False
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    preset: PresetConfig = field(default_factory=PresetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: dict[str, Any] | None = None
    callbacks: dict[str, Any] | None = None
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    trial: TrialConfig | None = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@functools.cache
def _homes() -> dict[str, str]:
    """Setting name -> its full key, for names that live in exactly one group (to point across groups)."""
    homes: dict[str, list[str]] = {"lr": ["optimizer.lr"], "weight_decay": ["optimizer.weight_decay"]}
    for group in fields(TrainConfig):
        schema = get_type_hints(TrainConfig)[group.name]
        for f in fields(schema) if is_dataclass(schema) else ():
            homes.setdefault(f.name, []).append(f"{group.name}.{f.name}")
    return {name: keys[0] for name, keys in homes.items() if len(keys) == 1}


def _unknown(key: str, known: dict, prefix: str) -> str:
    """The message for an unknown key: the closest valid name (or the PEFT/TRL alias) and the allowed ones."""
    alias = ALIASES.get(key, key)
    close = difflib.get_close_matches(key, list(known), n=1)
    if alias in known:
        hint = f"; did you mean '{prefix}{alias}'?"
    elif alias in _homes():  # a setting of another group, e.g. trainer.learning_rate
        hint = f"; did you mean '{_homes()[alias]}'?"
    else:
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return f"{prefix}{key}: unknown key{hint} (allowed: {', '.join(known)})"


def override_problems(args: list[str]) -> list[str]:
    """Unknown keys among command-line overrides, checked against the schemas before Hydra composes.

    Hydra would refuse them too, but without naming the closest valid key. Group choices (`preset=x`),
    additions (`+key=`), deletions and keys under free-form groups (optimizer, logger, ...) are left
    to Hydra and to `validate`.
    """
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
        schema, prefix, parts = TrainConfig, "", key.split(".")
        if parts[0] not in {f.name for f in fields(TrainConfig)} and len(parts) == 1:
            continue  # a config group choice, e.g. preset=balanced
        while parts and is_dataclass(schema):
            known = {f.name: f for f in fields(schema)}
            key, parts = parts[0], parts[1:]
            if key not in known:
                problems.append(_unknown(key, known, prefix))
                break
            schema, prefix = get_type_hints(schema)[key], f"{prefix}{key}."
            if get_origin(schema) is dict and is_dataclass(get_args(schema)[1]) and parts:
                schema, prefix, parts = get_args(schema)[1], f"{prefix}{parts[0]}.", parts[1:]
    return problems


def _unknown_keys(node: Any, schema: type, prefix: str) -> list[str]:
    """List keys of `node` that `schema` does not define, each with the closest valid name."""
    if not isinstance(node, DictConfig):
        return []
    problems = []
    known = {f.name: f for f in fields(schema)}
    for key in node.keys():
        if f"{prefix}{key}" in MOVED:
            problems.append(f"{prefix}{key}: moved to {MOVED[f'{prefix}{key}']}")
            continue
        if key not in known:
            problems.append(_unknown(str(key), known, prefix))
            continue
        sub_schema = get_type_hints(schema)[key]
        if is_dataclass(sub_schema):
            problems += _unknown_keys(node[key], sub_schema, f"{prefix}{key}.")
        elif get_origin(sub_schema) is dict and is_dataclass(item := get_args(sub_schema)[1]):
            if isinstance(node[key], DictConfig):
                for name in node[key]:
                    problems += _unknown_keys(node[key][name], item, f"{prefix}{key}.{name}.")
    return problems


def _check(problems: list[str], ok: bool, key: str, value: Any, allowed: str) -> None:
    """Record a problem naming the key, the value and what is allowed, unless `ok`."""
    if not ok:
        problems.append(f"{key}={value!r}: {allowed}")


def _dataset_problems(key: str, d: DatasetConfig) -> list[str]:
    """Problems with one dataset entry: source, format, path, column and role-tag mapping."""
    from .data.registry import missing_path  # the registry imports this module

    p: list[str] = []
    _check(p, d.source in DATA_SOURCES, f"{key}.source", d.source, f"one of {DATA_SOURCES}")
    _check(p, d.format in FORMATS, f"{key}.format", d.format, f"one of {FORMATS}")
    _check(p, d.weight > 0, f"{key}.weight", d.weight, "a positive number")
    _check(p, d.num_rows > 0, f"{key}.num_rows", d.num_rows, "a positive integer")
    _check(p, d.max_samples is None or d.max_samples > 0, f"{key}.max_samples", d.max_samples, "null or > 0")
    if d.source in ("file", "hub") and not d.path:
        p.append(
            f"{key}.path: missing; a file, directory or glob (source: file) or a hub dataset id (source: hub)"
        )
    elif d.source == "file" and (missing := missing_path(d.path)):
        p.append(f"{key}.path={d.path!r}: {missing}")
    p += [f"{key}.{problem}" for problem in mapping_problems(d.format, d.columns, d.tags)]
    return p


def _data_problems(d: DataConfig) -> list[str]:
    """Problems with the data group: every dataset entry plus the shared processing options."""
    p: list[str] = []
    _check(p, d.template in TEMPLATES, "data.template", d.template, f"one of {TEMPLATES}")
    _check(p, d.mix in MIX_STRATEGIES, "data.mix", d.mix, f"one of {MIX_STRATEGIES}")
    _check(p, d.truncation in TRUNCATION, "data.truncation", d.truncation, f"one of {TRUNCATION}")
    _check(p, d.curriculum in CURRICULA, "data.curriculum", d.curriculum, f"one of {CURRICULA}")
    _check(p, d.curriculum_stages >= 1, "data.curriculum_stages", d.curriculum_stages, "at least 1")
    _check(
        p,
        0 <= d.val_size < 1 or d.val_size >= 1 and float(d.val_size).is_integer(),
        "data.val_size",
        d.val_size,
        "a fraction in [0, 1) or a whole count of rows",
    )
    _check(p, d.cutoff_len >= 16, "data.cutoff_len", d.cutoff_len, "an integer >= 16")
    _check(p, d.max_samples is None or d.max_samples > 0, "data.max_samples", d.max_samples, "null or > 0")
    _check(p, d.num_proc >= 1, "data.num_proc", d.num_proc, "an integer >= 1")
    _check(p, d.num_workers >= 0, "data.num_workers", d.num_workers, "an integer >= 0")
    _check(
        p,
        bool(d.datasets),
        "data.datasets",
        {},
        "at least one dataset (a name from conf/data/, a path, or an entry of data.dataset_info)",
    )
    for name, entry in d.datasets.items():
        p += _dataset_problems(f"data.datasets.{name}", entry)
    return p


def _range_problems(c: TrainConfig) -> list[str]:
    """Out-of-range and not-allowed values, each named with its key."""
    p: list[str] = []
    _check(p, c.model.template in TEMPLATES, "model.template", c.model.template, f"one of {TEMPLATES}")
    _check(p, c.model.dtype in DTYPES, "model.dtype", c.model.dtype, f"one of {DTYPES}")
    _check(
        p,
        bool(c.model.name_or_path) or c.model.random_init is not None,
        "model.name_or_path",
        c.model.name_or_path,
        "a hub id, a local directory or pkg://<package>, unless model.random_init is set",
    )
    p += _data_problems(c.data)
    if c.lora.enabled:
        _check(p, c.lora.r > 0, "lora.r", c.lora.r, "a positive integer")
        _check(p, c.lora.alpha > 0, "lora.alpha", c.lora.alpha, "a positive number")
        _check(p, 0 <= c.lora.dropout < 1, "lora.dropout", c.lora.dropout, "a number in [0, 1)")
        _check(p, c.lora.bias in LORA_BIAS, "lora.bias", c.lora.bias, f"one of {LORA_BIAS}")
        _check(
            p,
            c.lora.target == "all" or isinstance(c.lora.target, list),
            "lora.target",
            c.lora.target,
            "'all' or a list of module names",
        )
    lr = c.optimizer.get("lr")
    _check(p, isinstance(lr, (int, float)) and lr > 0, "optimizer.lr", lr, "a positive number")
    _check(p, "_target_" in c.optimizer, "optimizer._target_", None, "a class path, e.g. torch.optim.AdamW")
    _check(p, c.scheduler.name in SCHEDULERS, "scheduler.name", c.scheduler.name, f"one of {SCHEDULERS}")
    _check(
        p,
        0 <= c.scheduler.warmup_ratio < 1,
        "scheduler.warmup_ratio",
        c.scheduler.warmup_ratio,
        "a number in [0, 1)",
    )
    t = c.trainer
    _check(p, t.precision in PRECISIONS, "trainer.precision", t.precision, f"one of {PRECISIONS}")
    _check(p, t.micro_batch_size > 0, "trainer.micro_batch_size", t.micro_batch_size, "a positive integer")
    _check(
        p,
        t.effective_batch_size > 0 and t.effective_batch_size % max(t.micro_batch_size, 1) == 0,
        "trainer.effective_batch_size",
        t.effective_batch_size,
        f"a positive multiple of trainer.micro_batch_size ({t.micro_batch_size})",
    )
    _check(
        p,
        t.max_epochs > 0 or t.max_steps > 0,
        "trainer.max_epochs",
        t.max_epochs,
        "a positive integer (or set trainer.max_steps)",
    )
    for key in ("eval_steps", "save_steps", "early_stopping_patience"):
        v = getattr(t, key)
        _check(p, v is None or v > 0, f"trainer.{key}", v, "null or a positive integer")
    _check(p, t.save_total_limit >= 1, "trainer.save_total_limit", t.save_total_limit, "an integer >= 1")
    _check(
        p, t.max_nonfinite_steps >= 1, "trainer.max_nonfinite_steps", t.max_nonfinite_steps, "an integer >= 1"
    )
    p += _strategy_problems(c)
    o = c.objective
    for i, direction in enumerate(o.directions):
        _check(p, direction in DIRECTIONS, f"objective.directions[{i}]", direction, f"one of {DIRECTIONS}")
    _check(
        p,
        len(o.metrics) == len(o.directions) > 0,
        "objective.directions",
        o.directions,
        f"one direction per metric of objective.metrics ({len(o.metrics)})",
    )
    return p


def _strategy_problems(c: TrainConfig) -> list[str]:
    """Problems with the strategy group and its fit with the model, precision and accelerator."""
    from .training.strategy import find_deepspeed_config

    s, p = c.strategy, []
    _check(p, s.name in STRATEGIES, "strategy.name", s.name, f"one of {STRATEGIES}")
    if s.name in ("fsdp", "deepspeed"):
        _check(p, c.trainer.accelerator != "cpu", "trainer.accelerator", "cpu", f"gpu for strategy {s.name}")
    if s.name == "fsdp":
        _check(
            p,
            s.sharding_strategy in FSDP_SHARDING,
            "strategy.sharding_strategy",
            s.sharding_strategy,
            f"one of {FSDP_SHARDING}",
        )
        _check(
            p,
            s.reduce_dtype in REDUCE_DTYPES,
            "strategy.reduce_dtype",
            s.reduce_dtype,
            f"one of {REDUCE_DTYPES}",
        )
        _check(
            p,
            s.wrap_layers == "auto" or isinstance(s.wrap_layers, list) and bool(s.wrap_layers),
            "strategy.wrap_layers",
            s.wrap_layers,
            "'auto' (the model's _no_split_modules) or a list of layer class names",
        )
        _check(
            p,
            not (c.lora.enabled and c.model.dtype != "float32"),
            "model.dtype",
            c.model.dtype,
            "float32 for LoRA under FSDP (each wrapped layer is flattened into one dtype and LoRA weights "
            "are float32); compute in bf16 with trainer.precision=bf16-mixed",
        )
        _check(
            p,
            not (s.activation_checkpointing and c.trainer.gradient_checkpointing),
            "strategy.activation_checkpointing",
            True,
            "false when trainer.gradient_checkpointing is true (choose one)",
        )
    if s.name == "deepspeed":
        if not s.deepspeed_config:
            p.append("strategy.deepspeed_config: missing; a JSON name from conf/deepspeed/ or a path")
        elif find_deepspeed_config(s.deepspeed_config) is None:
            p.append(
                f"strategy.deepspeed_config={s.deepspeed_config!r}: no such file (here or in conf/deepspeed/)"
            )
    return p


def validate(cfg: DictConfig) -> TrainConfig:
    """Check the composed config against the schemas and return it as typed objects."""
    from .data.registry import expand_datasets

    cfg = expand_datasets(cfg)
    problems = _unknown_keys(cfg, TrainConfig, "")
    problems += [
        f"{key}: a secret typed into the config; set it in the environment instead (configs are saved "
        "with every run), e.g. WANDB_API_KEY, or refer to one with ${oc.env:NAME}"
        for key in literal_secrets(cfg)
    ]
    if problems:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        typed: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except Exception as err:  # omegaconf names the full key and the bad value
        raise ConfigError(f"Invalid config: {err}") from None
    problems = _range_problems(typed)
    if problems:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
    return typed


def accumulation_steps(effective_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation that turns micro-batches on `world_size` devices into the effective batch."""
    per_step = micro_batch * world_size
    if effective_batch % per_step:
        raise ConfigError(
            f"trainer.effective_batch_size={effective_batch} is not divisible by trainer.micro_batch_size "
            f"({micro_batch}) x devices ({world_size}) = {per_step}; choose a multiple of {per_step}"
        )
    return effective_batch // per_step


def to_plain(obj: Any) -> Any:
    """A typed config as plain dicts and lists, for YAML/JSON output."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def to_record(obj: Any) -> Any:
    """A typed config as plain dicts and lists with secrets redacted: what runs save and log."""
    return redact(to_plain(obj))
