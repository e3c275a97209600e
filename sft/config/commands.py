"""Typed schemas of every command but training (conf/<command>.yaml, conf/prepare/<step>.yaml).

As in `schema`, the values live only in the YAML; a field's metadata says what it may hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from ..data.formats import FORMATS
from ..errors import ConfigError
from .rules import setting
from .schema import DTYPES, HANDOFFS, EvaluationConfig, ModelConfig, TrainConfig

PORT = {"ge": 0, "le": 65535}  # 0: any free port
JUDGE_MODES = ("single", "pairwise")
SCORERS = ("heuristic", "llm")
PREVIEW_SPLITS = ("train", "val")
# Deduplication: what text is compared, and its n-grams' unit.
FIELDS = ("prompt", "prompt_response")
SHINGLES = ("char", "word")


@dataclass
class ChatConfig:
    """`python -m sft.chat`: a terminal chat with a run or model directory."""

    run: str = setting()
    system: str | None = setting()
    max_new_tokens: int = setting(gt=0)
    temperature: float = setting(ge=0)
    top_p: float = setting(gt=0, le=1)
    seed: int | None = setting()
    dtype: str | None = setting(choices=DTYPES)
    device: str = setting()
    trust_remote_code: bool = setting()
    cache_dir: str = setting()


@dataclass
class ServeConfig:
    """`python -m sft.serve`: an OpenAI-compatible HTTP server over a run or model directory."""

    run: str = setting()
    host: str = setting()
    port: int = setting(**PORT)
    model_name: str | None = setting()
    allow_remote: bool = setting()
    api_key_env: str = setting()
    max_tokens: int = setting(gt=0)
    max_batch_size: int = setting(gt=0)
    max_batch_tokens: int = setting(gt=0)
    threads: int | None = setting(gt=0)
    dtype: str | None = setting(choices=DTYPES)
    device: str = setting()
    trust_remote_code: bool = setting()
    cache_dir: str = setting()


@dataclass
class ExportConfig:
    """`python -m sft.export`: a run merged into one transformers model directory or one GGUF file."""

    run: str = setting()
    out: str | None = setting()
    format: str = setting(choices=("safetensors", "gguf"))
    dtype: str | None = setting(choices=DTYPES)
    gguf_type: str = setting(choices=("f16", "q8_0"))
    parity: bool = setting()
    overwrite: bool = setting()
    cache_dir: str = setting()


@dataclass
class EvalConfig:
    """`python -m sft.eval`: the evaluation suites on a finished run and its base model."""

    evaluation: EvaluationConfig = setting()
    run: str = setting()
    artifact: str | None = setting()
    cache_dir: str = setting()
    out: str | None = setting()


@dataclass
class HarnessConfig:
    """`python -m sft.eval.harness`: lm-eval-harness tasks on a run and its base model."""

    run: str = setting()
    tasks: list[str] = setting()
    include_path: str | None = setting()
    limit: int | None = setting(gt=0)
    batch_size: int = setting(gt=0)
    base: bool = setting()
    tolerance: float = setting(ge=0)
    cache_dir: str = setting()


@dataclass
class JudgeConfig:
    """`python -m sft.eval.judge`: LLM-as-judge over a generations file through an endpoint."""

    generations: str = setting()
    mode: str = setting(choices=JUDGE_MODES)
    url: str = setting()
    model: str | None = setting()
    api_key_env: str = setting()
    concurrency: int = setting(ge=1)
    timeout: float = setting(gt=0)
    retries: int = setting(ge=0)
    backoff: float = setting(ge=0)
    max_tokens: int = setting(gt=0)
    limit: int | None = setting(gt=0)


@dataclass
class ChecklistConfig:
    """`python -m sft.checklist`: the production checklist of a finished run."""

    run: str = setting()
    sheets: list[str] | None = setting()
    thresholds: dict[str, float] | None = setting()
    allow_regressions: bool = setting()
    max_loss_gap: float = setting(ge=0)
    min_categories: int = setting(ge=0)
    min_per_category: int = setting(ge=0)
    min_safety: float = setting(ge=0, le=5)
    min_human_score: float = setting(ge=0, le=5)
    min_human_samples: int = setting(ge=0)
    measure_speed: bool = setting()
    speed_tokens: int = setting(gt=0)
    min_tokens_per_sec: float = setting(ge=0)
    max_params: int | None = setting(gt=0)
    max_bytes: int | None = setting(gt=0)
    cache_dir: str = setting()


@dataclass
class UiConfig:
    """`python -m sft.ui`: the web page."""

    host: str = setting()
    port: int = setting(ge=1, le=65535)
    user: str = setting()
    password_env: str = setting()
    log_dir: str = setting()
    data_dirs: list[str] = setting()
    overrides: list[str] = setting()
    refresh_seconds: float = setting(gt=0)


@dataclass
class TrlSearch:
    """`trl_search` of `python -m sft.bench`: short runs that find TRL's fastest settings on this machine."""

    enabled: bool = setting()
    steps: int = setting(gt=1)
    warmup: int = setting(ge=0)
    space: dict[str, list] = setting(
        check=(
            lambda v: (
                set(v) <= {"dtype", "packing", "gradient_checkpointing", "micro_batch"} and all(v.values())
            ),
            "non-empty lists for dtype, packing, gradient_checkpointing or micro_batch",
        )
    )


@dataclass
class BenchConfig:
    """`python -m sft.bench`: sft.train against TRL's SFTTrainer on the same model, data and steps."""

    model: ModelConfig = setting()
    data_file: str = setting()
    steps: int = setting(gt=0)
    warmup: int = setting(ge=0)
    cutoff: int = setting(ge=16)
    effective_batch: int = setting(gt=0)
    rank: int = setting(gt=0)
    alpha: float = setting(gt=0)
    lr: float = setting(gt=0)
    seed: int = setting()
    bf16: Any = setting(check=(lambda v: v in ("auto", True, False), "auto, true or false"))
    peak_matrix: int = setting(gt=0)
    peak_seconds: float = setting(gt=0)
    timeout: float = setting(gt=0)
    runs: dict[str, Any] = setting()
    ours: str = setting()
    trl_search: TrlSearch = setting()
    cache_dir: str = setting()


@dataclass
class PipelineStage:
    """One stage of `python -m sft.pipeline`: its name, its sft.train overrides and how it takes over.

    Unlike the other settings, `overrides` and `handoff` have defaults: a stage typed on the command line
    (`stages=[{name:sft,overrides:['stage=sft']}]`) need not spell them out.
    """

    name: str = setting(check=(lambda v: re.fullmatch(r"[A-Za-z0-9_.-]+", v) is not None, "a directory name"))
    overrides: list[str] = field(default_factory=list)
    handoff: str | None = field(default=None, metadata={"choices": HANDOFFS})


@dataclass
class PipelineConfig:
    """`python -m sft.pipeline`: training stages in order, each starting from the previous stage's run."""

    out: str = setting()
    overrides: list[str] = setting()
    init_from: str | None = setting()
    stages: list[PipelineStage] = setting()
    overwrite: bool = setting()


@dataclass
class PreviewSettings:
    """What `python -m sft.data` shows."""

    rows: int = setting(ge=0)
    split: str = setting(choices=PREVIEW_SPLITS)
    color: Any = setting(check=(lambda v: v in ("auto", True, False), "auto, true or false"))


@dataclass
class PreviewConfig(TrainConfig):
    """`python -m sft.data`: the training config plus what to show."""

    preview: PreviewSettings = setting()


@dataclass
class LocalBackendConfig:
    """A data preparation step's model, loaded in this process (conf/backend/local.yaml)."""

    kind: str = setting(choices=("local",))
    model: ModelConfig = setting()
    temperature: float = setting(ge=0)
    top_p: float = setting(gt=0, le=1)
    max_tokens: int = setting(gt=0)
    batch_size: int = setting(gt=0)
    seed: int | None = setting()
    device: str = setting()
    cache_dir: str = setting()


@dataclass
class EndpointBackendConfig:
    """A data preparation step's model behind an OpenAI-compatible endpoint (conf/backend/endpoint.yaml)."""

    kind: str = setting(choices=("endpoint",))
    url: str = setting(check=(lambda v: v.startswith(("http://", "https://")), "an http(s):// URL"))
    model: str | None = setting()
    api_key_env: str = setting()
    temperature: float = setting(ge=0)
    top_p: float = setting(gt=0, le=1)
    max_tokens: int = setting(gt=0)
    concurrency: int = setting(ge=1)
    timeout: float = setting(gt=0)
    retries: int = setting(ge=0)
    backoff: float = setting(ge=0)


BACKENDS = {"local": LocalBackendConfig, "endpoint": EndpointBackendConfig}


@dataclass
class GenerateConfig:
    """`python -m sft.prepare generate`: self-instruct generation from seed tasks."""

    backend: Any = setting()
    seeds: str = setting()
    output: str = setting()
    num: int = setting(ge=1)
    num_examples: int = setting(ge=1, le=20)
    machine_examples: int = setting(ge=0)
    similarity_threshold: float = setting(gt=0, le=1)
    max_instruction_words: int = setting(gt=0)
    max_requests_per_task: int = setting(ge=1)
    seed: int = setting()


@dataclass
class ScoreConfig:
    """`python -m sft.prepare score`: quality ratings for each row."""

    backend: Any = setting()
    input: str = setting()
    output: str = setting()
    format: str = setting(choices=FORMATS)
    scorer: str = setting(choices=SCORERS)


@dataclass
class FilterConfig:
    """`python -m sft.prepare filter`: keep rows scored at or above a threshold."""

    input: str = setting()
    output: str = setting()
    format: str = setting(choices=FORMATS)
    threshold: float = setting(ge=0, le=5)
    rejected: str | None = setting()


@dataclass
class DedupConfig:
    """`python -m sft.prepare dedup`: drop exact and near duplicates."""

    input: str = setting()
    output: str = setting()
    format: str = setting(choices=FORMATS)
    fields: str = setting(choices=FIELDS)
    threshold: float = setting(gt=0, le=1)
    shingle: str = setting(choices=SHINGLES)
    ngram: int | None = setting(ge=1)
    num_perm: int = setting(ge=1)


@dataclass
class BalanceConfig:
    """`python -m sft.prepare balance`: label, report and resample the category and difficulty mix."""

    targets: dict[str, dict[str, float]] = setting()
    input: str = setting()
    output: str = setting()
    format: str = setting(choices=FORMATS)
    resample: bool = setting()
    size: int | None = setting(gt=0)
    replace: bool = setting()
    seed: int = setting()


@dataclass
class AugmentConfig:
    """`python -m sft.prepare augment`: constraint variants and reworded instructions."""

    backend: Any = setting()
    input: str = setting()
    output: str = setting()
    format: str = setting(choices=FORMATS)
    keep_original: bool = setting()
    variants: list[str] = setting()
    rephrase: int = setting(ge=0)


@dataclass
class ReportConfig:
    """`python -m sft.prepare report`: a data file's mix, lengths and quality as charts."""

    targets: dict[str, dict[str, float]] = setting()
    input: str = setting()
    out_dir: str | None = setting()
    format: str = setting(choices=FORMATS)


PREPARE_STEPS = {
    "generate": GenerateConfig,
    "score": ScoreConfig,
    "filter": FilterConfig,
    "dedup": DedupConfig,
    "balance": BalanceConfig,
    "augment": AugmentConfig,
    "report": ReportConfig,
}


def with_backend(schema: type, kind: str) -> type:
    """A prepare step's schema with its `backend` typed by the backend chosen (local or endpoint)."""
    if "backend" not in schema.__dataclass_fields__:
        return schema
    if kind not in BACKENDS:
        raise ConfigError(f"Invalid config:\n  backend.kind={kind!r}: one of {tuple(BACKENDS)}")
    return make_dataclass(schema.__name__, [("backend", BACKENDS[kind], setting())], bases=(schema,))


# Each command's entry config under conf/ and its schema.
COMMANDS = {
    "train": TrainConfig,
    "preview": PreviewConfig,
    "chat": ChatConfig,
    "serve": ServeConfig,
    "export": ExportConfig,
    "eval": EvalConfig,
    "harness": HarnessConfig,
    "judge": JudgeConfig,
    "checklist": ChecklistConfig,
    "ui": UiConfig,
    "bench": BenchConfig,
    "pipeline": PipelineConfig,
}
