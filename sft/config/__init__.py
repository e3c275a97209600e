"""Configuration: typed schemas (values only in the YAML under conf/), one validator, command-line checks.

`from sft.config import validate, TrainConfig, ConfigError, ...` is the way in; the modules are
`schema` (training), `commands` (the other commands), `rules` (field metadata), `validate`,
`overrides` (unknown keys, did-you-mean, the commands' entry point), `records` and `resolvers`.
"""

from __future__ import annotations

from ..errors import ConfigError
from .commands import (
    BACKENDS,
    COMMANDS,
    PREPARE_STEPS,
    BenchConfig,
    ChatConfig,
    ChecklistConfig,
    EvalConfig,
    ExportConfig,
    HarnessConfig,
    JudgeConfig,
    PipelineConfig,
    PipelineStage,
    PreviewConfig,
    ServeConfig,
    UiConfig,
    with_backend,
)
from .overrides import checked_cli, exit_on_unknown_keys, override_problems, unknown_keys
from .records import to_plain, to_record
from .resolvers import on_rank_zero, register_resolvers, run_name
from .schema import (
    DTYPES,
    TRAIN_GROUPS,
    DataConfig,
    DatasetConfig,
    EvaluationConfig,
    LoraConfig,
    ModelConfig,
    ObjectiveConfig,
    PathsConfig,
    PresetConfig,
    ProbeConfig,
    SchedulerConfig,
    StageConfig,
    StrategyConfig,
    TrainConfig,
    TrainerConfig,
    TrialConfig,
)
from .validate import accumulation_steps, check, validate

register_resolvers()

__all__ = [
    "BACKENDS",
    "COMMANDS",
    "PREPARE_STEPS",
    "BenchConfig",
    "ChatConfig",
    "ChecklistConfig",
    "EvalConfig",
    "ExportConfig",
    "HarnessConfig",
    "JudgeConfig",
    "PipelineConfig",
    "PipelineStage",
    "PreviewConfig",
    "ServeConfig",
    "UiConfig",
    "with_backend",
    "DTYPES",
    "TRAIN_GROUPS",
    "ConfigError",
    "DataConfig",
    "DatasetConfig",
    "EvaluationConfig",
    "LoraConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "PathsConfig",
    "PresetConfig",
    "ProbeConfig",
    "SchedulerConfig",
    "StageConfig",
    "StrategyConfig",
    "TrainConfig",
    "TrainerConfig",
    "TrialConfig",
    "accumulation_steps",
    "check",
    "checked_cli",
    "exit_on_unknown_keys",
    "on_rank_zero",
    "override_problems",
    "run_name",
    "to_plain",
    "to_record",
    "unknown_keys",
    "validate",
]
