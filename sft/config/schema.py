"""Typed schemas of `python -m sft.train`'s config groups: types, allowed values and bounds, no defaults.

Every value comes from the YAML under conf/ (one source of truth); a field's metadata says what it may
hold, and `sft.config.validate` checks it. tests/test_schemas.py fails when a schema and its YAML disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..data.formats import FORMATS
from ..data.kinds import STAGE_KIND
from ..data.templates import BUILTIN as BUILTIN_TEMPLATES
from ..data.tokenize import TRUNCATION
from .rules import setting

# Weight dtypes by torch name: the one list every command checks (model loading adds "auto").
DTYPES = ("float32", "bfloat16", "float16")
TEMPLATES = (*BUILTIN_TEMPLATES, "auto")
DATA_SOURCES = ("file", "hub", "builtin")
MIX_STRATEGIES = ("concat", "interleave_under", "interleave_over")
CURRICULA = ("none", "easy_to_hard")
# What happens to reasoning traces (`reasoning_content`, reasoning parts, <think> blocks): trained like the
# answer (with a template that renders them), or removed from the text before anything is rendered.
REASONING = ("train", "drop")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
LORA_BIAS = ("none", "all", "lora_only")
# How a LoRA adapter starts (PEFT's `init_lora_weights`): default (B = 0), gaussian, or from the base
# weights' principal directions (pissa, pissa_niter_<n> for a fast randomised SVD) or their QR (olora).
LORA_INITS = ("default", "gaussian", "pissa", "olora")
# The 4-bit data types of a QLoRA base (bitsandbytes).
QUANTIZE = ("nf4", "fp4")
DIRECTIONS = ("minimize", "maximize")
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP")
# Training stages and what each trains on (`data.kind`), and the preference losses `stage.loss` picks from.
STAGES = tuple(STAGE_KIND)
DATA_KINDS = tuple(STAGE_KIND.values())
PREFERENCE_LOSSES = ("sigmoid", "ipo", "simpo", "orpo")
HANDOFFS = ("merge", "continue")
# Where a preference stage's reference log-probabilities come from (auto: the adapter disabled when the run
# trains a fresh one, else precomputed).
REFERENCES = ("auto", "precomputed", "copy")
# Groups of train.yaml without a schema field: multirun grids, search spaces and the optional local group.
TRAIN_GROUPS = ("experiment", "sweep", "local")


def _lora_init(value: str) -> bool:
    return value in LORA_INITS or re.fullmatch(r"pissa_niter_[1-9][0-9]*", value) is not None


def _fraction_or_count(value: float) -> bool:
    return 0 <= value < 1 or value >= 1 and float(value).is_integer()


@dataclass
class ModelConfig:
    """The base model: a hub id, a local directory, a GGUF file, or a random tiny model."""

    name_or_path: str | None = setting()
    gguf_file: str | None = setting()
    template: str = setting(choices=TEMPLATES)
    default_system: str | None = setting()
    trust_remote_code: bool = setting()
    dtype: str = setting(choices=("auto", *DTYPES))
    attn_implementation: str | None = setting()
    revision: str | None = setting()
    random_init: dict[str, Any] | None = setting()


@dataclass
class DatasetConfig:
    """One dataset: where its rows are, their format, and how their columns and roles are named."""

    source: str = setting(choices=DATA_SOURCES)
    path: str | None = setting()
    subset: str | None = setting()
    split: str = setting()
    format: str = setting(choices=FORMATS)
    kind: str | None = setting(choices=DATA_KINDS)
    columns: dict[str, str] = setting()
    tags: dict[str, str] = setting()
    num_rows: int = setting(gt=0)
    max_samples: int | None = setting(gt=0)
    weight: float = setting(gt=0)
    placeholders: dict[str, str] = setting()


@dataclass
class DataConfig:
    """Which datasets to train on, how they are mixed, rendered, masked, cut and batched."""

    kind: str = setting(choices=DATA_KINDS)
    datasets: dict[str, DatasetConfig] = setting()
    dataset_defaults: DatasetConfig = setting()
    dataset_info: str | None = setting()
    mix: str = setting(choices=MIX_STRATEGIES)
    template: str = setting(choices=TEMPLATES)
    system: str | None = setting()
    placeholders: dict[str, str] = setting()
    max_samples: int | None = setting(gt=0)
    val_size: float = setting(check=(_fraction_or_count, "a fraction in [0, 1) or a whole count of rows"))
    cutoff_len: int = setting(ge=16)
    truncation: str = setting(choices=TRUNCATION)
    train_on_prompt: bool = setting()
    mask_history: bool = setting()
    reasoning: str = setting(choices=REASONING)
    packing: bool = setting()
    group_by_length: bool = setting()
    curriculum: str = setting(choices=CURRICULA)
    curriculum_stages: int = setting(ge=1)
    strict: bool = setting()
    max_bad_fraction: float = setting(ge=0, le=1)
    long_rows_warning: float = setting(ge=0, le=1)
    num_proc: int = setting(ge=1)
    num_workers: int = setting(ge=0)
    overwrite_cache: bool = setting()
    streaming: bool = setting()
    shuffle_buffer: int = setting(ge=1)


@dataclass
class LoraConfig:
    """How the model is adapted: a PEFT LoRA adapter (QLoRA on a 4-bit base, LoRA+, PiSSA/OLoRA starts),
    or, with `enabled: false`, full fine-tuning or freeze tuning (`trainable_layers`, `trainable_modules`)."""

    enabled: bool = setting()
    r: int = setting(gt=0)
    alpha: float = setting(gt=0)
    dropout: float = setting(ge=0, lt=1)
    fast_dropout: bool = setting()
    target: Any = setting(
        check=(lambda v: v == "all" or isinstance(v, list), "'all' or a list of module names")
    )
    bias: str = setting(choices=LORA_BIAS)
    use_dora: bool = setting()
    use_rslora: bool = setting()
    modules_to_save: list[str] | None = setting()
    init: str = setting(check=(_lora_init, f"one of {LORA_INITS} or pissa_niter_<n>"))
    loraplus_lr_ratio: float | None = setting(ge=1)
    quantize: str | None = setting(choices=QUANTIZE)
    double_quant: bool = setting()
    trainable_layers: int | None = setting(gt=0)
    trainable_modules: list[str] | None = setting()


@dataclass
class SchedulerConfig:
    """Learning-rate schedule by transformers' `get_scheduler` name, with warm-up."""

    name: str = setting(choices=SCHEDULERS)
    warmup_ratio: float = setting(ge=0, lt=1)
    warmup_steps: int | None = setting(ge=0)


@dataclass
class PresetConfig:
    """One row of the hyperparameter table; other groups interpolate these values (and check them there)."""

    learning_rate: float = setting()
    lora_rank: int = setting()
    epochs: int = setting()
    batch_size: int = setting()
    beta: float = setting()


@dataclass
class StageConfig:
    """What the run trains: SFT on conversations, continued pre-training on raw text, DPO-family
    preference tuning on pairs or KTO on unpaired feedback; the stage changes the batch and the loss."""

    name: str = setting(choices=STAGES)
    loss: str | None = setting(choices=PREFERENCE_LOSSES)
    beta: float = setting(gt=0)
    simpo_gamma: float = setting(ge=0)
    desirable_weight: float = setting(gt=0)
    undesirable_weight: float = setting(gt=0)
    reference: str = setting(choices=REFERENCES)
    lr_scale: float = setting(gt=0)
    packing: bool = setting()


@dataclass
class TrainerConfig:
    """Lightning Trainer settings plus batch arithmetic; steps are optimizer steps."""

    accelerator: str = setting(choices=ACCELERATORS)
    devices: Any = setting()
    num_nodes: int = setting(ge=1)
    precision: str = setting(choices=PRECISIONS)
    gradient_checkpointing: bool = setting()
    max_epochs: int = setting()
    max_steps: int = setting()
    effective_batch_size: int = setting(gt=0)
    micro_batch_size: int = setting(gt=0)
    micro_batch_tokens: Any = setting(
        check=(
            lambda v: v is None or v == "auto" or type(v) is int and v > 0,
            "'auto', a positive whole number of tokens or null",
        )
    )
    eval_micro_batch_size: int = setting(gt=0)
    gradient_clip_val: float | None = setting(ge=0)
    eval_steps: int | None = setting(gt=0)
    log_every_n_steps: int = setting(ge=1)
    save_steps: int | None = setting(gt=0)
    save_total_limit: int = setting(ge=1)
    early_stopping_patience: int | None = setting(gt=0)
    restore_best: bool = setting()
    limit_val_batches: float = setting(ge=0)
    deterministic: bool = setting()
    max_nonfinite_steps: int = setting(ge=1)
    trained_logits_only: bool = setting()
    neftune_alpha: float | None = setting(ge=0)


@dataclass
class StrategyConfig:
    """How training spreads over devices: one of Lightning's strategies, with its settings.

    `process_group_backend` applies to ddp and fsdp; `find_unused_parameters` to ddp;
    `sharding_strategy`, `wrap_layers`, `activation_checkpointing`, `reduce_dtype` and `cpu_offload`
    to fsdp; `deepspeed_config` (a JSON under conf/deepspeed/ or a path) to deepspeed.
    """

    name: str = setting(choices=STRATEGIES)
    process_group_backend: str | None = setting()
    find_unused_parameters: bool = setting()
    sharding_strategy: str = setting(choices=FSDP_SHARDING)
    wrap_layers: Any = setting(
        check=(
            lambda v: v == "auto" or isinstance(v, list) and bool(v),
            "'auto' (the model's _no_split_modules) or a list of layer class names",
        )
    )
    activation_checkpointing: bool = setting()
    reduce_dtype: str = setting(choices=DTYPES)
    cpu_offload: bool = setting()
    deepspeed_config: str | None = setting()


@dataclass
class PathsConfig:
    """Output and cache locations."""

    root_dir: str = setting()
    log_dir: str = setting()
    data_dir: str = setting()
    output_dir: str = setting()
    cache_dir: str = setting()


@dataclass
class ObjectiveConfig:
    """What `train()` returns to a sweeper: logged metrics or summary values, and which way is better.

    One metric gives a float; several give a tuple (a multi-objective Optuna study).
    """

    metrics: list[str] = setting()
    directions: list[str] = setting(choices=DIRECTIONS)


@dataclass
class ParityConfig:
    """The greedy answers a run records at its end, which exports are checked against (sft.eval.parity)."""

    prompts: int = setting(ge=0)
    max_new_tokens: int = setting(gt=0)


@dataclass
class EvaluationConfig:
    """Generation-based evaluation (sft.eval): which suites, how many prompts, the base-model comparison."""

    enabled: bool = setting()
    suites: list[str] = setting()
    references: str | None = setting()
    limit: int | None = setting(gt=0)
    max_new_tokens: int = setting(gt=0)
    batch_size: int = setting(gt=0)
    base: bool = setting()
    tolerance: float = setting(ge=0)
    parity: ParityConfig = setting()


@dataclass
class TrialConfig:
    """The Optuna trial a sweep job belongs to (set by the sweeper): reported to for pruning."""

    study_name: str = setting()
    storage: str = setting()
    id: int = setting(ge=0)
    number: int = setting(ge=0)


@dataclass
class ProbeConfig:
    """Prompts answered before and after training, to show what changed."""

    enabled: bool = setting()
    prompts: list[str] = setting()
    max_new_tokens: int = setting(gt=0)


@dataclass
class TrainConfig:
    """The whole composed run config (optimizer, logger and callbacks stay `_target_` dicts)."""

    task_name: str = setting()
    seed: int = setting()
    resume: str | None = setting()
    overwrite: bool = setting()
    init_from: str | None = setting()
    handoff: str = setting(choices=HANDOFFS)
    stage: StageConfig = setting()
    paths: PathsConfig = setting()
    model: ModelConfig = setting()
    data: DataConfig = setting()
    lora: LoraConfig = setting()
    optimizer: dict[str, Any] = setting()
    scheduler: SchedulerConfig = setting()
    preset: PresetConfig = setting()
    trainer: TrainerConfig = setting()
    strategy: StrategyConfig = setting()
    logger: dict[str, Any] | None = setting()
    callbacks: dict[str, Any] | None = setting()
    objective: ObjectiveConfig = setting()
    evaluation: EvaluationConfig = setting()
    trial: TrialConfig | None = setting()
    probe: ProbeConfig = setting()
    reuse_initial_eval: bool = setting()
