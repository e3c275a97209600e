"""`python -m sft.train`: compose → validate → build model, data, module, trainer → fit → export.

`train(cfg)` returns the objective named in `cfg.objective` so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from .config import TRAIN_GROUPS, TrainConfig, checked_cli, to_record, validate
from .data.datamodule import SFTDataModule, build_datamodule
from .data.loading import system_prompt
from .data.templates import get_template
from .data.tokenize import template_overhead
from .errors import CheckpointWriteError, ConfigError, DataError, Diverged, Preempted
from .eval.run import evaluate
from .locations import CONF_DIR, SOURCE_DIR
from .provenance import hydra_overrides, run_record
from .run_dir import RunDir
from .serving.export import save_final
from .training.checkpoint import resolve_resume
from .training.model import apply_peft, count_parameters, load_model, load_tokenizer
from .training.module import SFTModule
from .training.probe import ProbeAnswers
from .training.strategy import full_state_dict, local_rank, quiet_other_ranks
from .training.summary import print_summary
from .training.trainer import build_trainer

log = logging.getLogger(__name__)


def _metric(metrics: dict, name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def _validate(trainer: L.Trainer, module: SFTModule, datamodule: SFTDataModule, ckpt_path=None) -> dict:
    """Validation metrics, or {} when the run has no validation rows.

    With `ckpt_path`, Lightning first loads that checkpoint's weights (whatever the strategy's
    checkpoint format), and they stay in the module afterwards.
    """
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    return dict(results[0]) if results else {}


def train(cfg: DictConfig) -> float | tuple[float, ...]:
    """Run one fine-tuning job and return its objective metric; loggers are closed even on failure."""
    try:
        return _run(cfg)
    finally:
        if "wandb" in sys.modules:  # a sweep runs many jobs in one process: never leave a W&B run open
            sys.modules["wandb"].finish()


def _run(cfg: DictConfig) -> float | tuple[float, ...]:
    # Ranks > 0 run this script too (Lightning's launcher, torchrun, srun): they log warnings only.
    quiet_other_ranks(rank_zero_only.rank)
    typed = validate(cfg)
    out = Path(typed.paths.output_dir)
    run_dir = RunDir(out)
    ckpt_path = resolve_resume(typed.resume, typed.paths.log_dir, typed.paths.output_dir)
    if rank_zero_only.rank == 0:
        if run_dir.claim(typed.overwrite, ckpt_path):
            run_dir.set_aside_metrics()  # the CSV logger would delete the curve so far
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(typed.seed, workers=True)
    started = time.perf_counter()

    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    template = get_template(typed.data.template, tokenizer, system_prompt(typed.data))
    _check_cutoff(typed, tokenizer, template)
    datamodule = build_datamodule(typed, tokenizer, template)
    if local_rank() == 0:  # data problems surface before the model weights are loaded
        datamodule.prepare_data()
    if rank_zero_only.rank == 0:  # written before training, so even a crashed run can be repeated
        run_dir.write_record(
            run_record(
                argv=[Path(sys.executable).name, "-m", "sft.train", *sys.argv[1:]],
                overrides=hydra_overrides(),
                seed=typed.seed,
                data_files=datamodule.stats.files,
                project_dir=SOURCE_DIR,
            )
        )
    model = apply_peft(
        load_model(typed.model, typed.paths.cache_dir), typed.lora, typed.trainer.gradient_checkpointing
    )
    trainable, total = count_parameters(model)
    log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    probe = typed.probe
    probes = [ProbeAnswers(tokenizer, template, probe.prompts, probe.max_new_tokens)] if probe.enabled else []
    built = build_trainer(typed, cfg, model, probes)  # FSDP wraps the model's own layer classes
    trainer = built.trainer
    quiet_other_ranks(trainer.global_rank)  # now known on every node
    module = SFTModule(model, typed.optimizer, typed.scheduler, typed.trainer)

    run_info = {
        "batch": asdict(built.plan),
        "parameters": {"trainable": trainable, "total": total},
        "strategy": type(trainer.strategy).__name__,
    }  # package versions, git commit and data hashes are in run_record.json
    record = to_record(typed)
    for logger in trainer.loggers:
        logger.log_hyperparams({**record, **{f"batch/{k}": v for k, v in run_info["batch"].items()}})
    if trainer.is_global_zero:
        run_dir.write_config(record)

    initial = {} if ckpt_path else _validate(trainer, module, datamodule)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = built.best.best_model_path if typed.trainer.restore_best else ""
    if best:
        log.info("restoring the best weights from %s", best)
    final = _validate(trainer, module, datamodule, ckpt_path=best or None)

    summary = {
        "output_dir": str(out),
        "global_step": trainer.global_step,
        "train_loss": _metric(train_metrics, "train/loss"),
        "initial_val_loss": _metric(initial, "val/loss"),
        "val_loss": _metric(final, "val/loss"),
        "val_ppl": _metric(final, "val/ppl"),
        "val_token_accuracy": _metric(final, "val/token_accuracy"),
        "best_checkpoint": built.best.best_model_path or None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_cuda_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if torch.cuda.is_available()
        else None,
        "data": {k: v for k, v in asdict(datamodule.stats).items() if k != "problems"},
        **run_info,
    }
    for part in (module.guard, *trainer.callbacks):  # throughput, overfitting warnings, probes, ...
        if hasattr(part, "summary_section"):
            summary.update(part.summary_section())
    weights = full_state_dict(trainer, model)  # every rank: gathering sharded weights is collective
    if trainer.is_global_zero:
        summary["saved"] = str(save_final(model, tokenizer, template, out, weights))
        run_dir.write_summary(summary, datamodule.stats.problems)
        print_summary(summary)
        if typed.evaluation.enabled:  # from the saved files, exactly as `python -m sft.eval run=<out>` would
            evaluate(out, typed.evaluation, typed.paths.cache_dir)
    return _objective(typed, final, train_metrics, summary)


def _objective(cfg: TrainConfig, final: dict, train_metrics: dict, summary: dict) -> float | tuple:
    """The objective metrics: from the final validation, else the last logged values, else the summary."""
    values = []
    for name in cfg.objective.metrics:
        value = _metric(final, name)
        if value is None:
            value = _metric(train_metrics, name)
        if value is None and isinstance(summary.get(name), (int, float)):
            value = float(summary[name])
        values.append(math.nan if value is None else value)
    return values[0] if len(values) == 1 else tuple(values)


def _check_cutoff(cfg: TrainConfig, tokenizer, template) -> None:
    """A cutoff that the template's markup alone fills would leave no room for any text."""
    overhead = template_overhead(tokenizer, template)
    if cfg.data.cutoff_len <= overhead:
        raise ConfigError(
            f"Invalid config:\n  data.cutoff_len={cfg.data.cutoff_len}: must exceed {overhead} tokens, "
            f"which the {template.name} template's markup and default system prompt take with no text at all"
        )


# How each expected way of stopping early is reported: exit code, and whether it is an error.
EXIT_CODES = {ConfigError: 2, DataError: 2, Diverged: 3, CheckpointWriteError: 4}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """Hydra entry point; a user mistake or an expected stop exits with a message, not a traceback.

    In a multirun the error is raised instead, so the sweeper records that job as failed and goes on.
    """
    try:
        return train(cfg)
    except Preempted as stop:  # the conventional 128 + signal number tells schedulers it was a signal
        _report(stop)
        sys.exit(128 + stop.signum)
    except tuple(EXIT_CODES) as err:
        _report(err)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(next(code for kind, code in EXIT_CODES.items() if isinstance(err, kind)))


def _report(err: Exception) -> None:
    """Log and print why the run stopped, once (every rank of a multi-process run stops alike)."""
    if rank_zero_only.rank == 0:
        log.error("%s", err)
        print(err, file=sys.stderr)


cli = checked_cli(main, TrainConfig, TRAIN_GROUPS)


if __name__ == "__main__":
    cli()
