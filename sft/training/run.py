"""The steps of one training run: claim the run directory, build tokenizer, data, model, trainer and module,
fit, validate, save, summarise. `sft.train` validates the config first and calls `run`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from ..config import TrainConfig, to_record
from ..data.datamodule import SFTDataModule, build_datamodule
from ..data.loading import system_prompt
from ..data.templates import get_template
from ..data.tokenize import check_cutoff
from ..eval.parity import parity_prompts, record_reference, save_reference
from ..eval.run import evaluate
from ..locations import SOURCE_DIR
from ..provenance import hydra_overrides, run_record
from ..run_dir import SUMMARY_METRICS, RunDir
from ..serving.export import save_final, stop_token_ids
from .attention import NAME as SEGMENTS
from .attention import attend_by_segment
from .baseline import baseline_key, load_baseline, store_baseline
from .checkpoint import resolve_resume, resumed_micro_batch
from .lineage import parent_record, start_model, start_weights, trained_weights
from .memory import peak_cuda_gb, peak_rss_gb, reset_peak
from .model import count_parameters, load_tokenizer, moves_base, resolve_source, save_initial_adapter
from .module import SFTModule
from .neftune import NEFTune
from .objectives import build_objective
from .precision import resolve_precision
from .probe import ProbeAnswers
from .reference import frozen, reference_logps, reference_source
from .resilience import rng_untouched
from .strategy import full_state_dict, local_rank, quiet_other_ranks, shards_parameters, unsharded_structure
from .summary import print_summary
from .trainer import build_trainer

log = logging.getLogger(__name__)


def run(cfg: DictConfig, typed: TrainConfig) -> float | tuple[float, ...]:
    """Run one fine-tuning job from its raw and validated config; return its objective metric."""
    # Ranks > 0 run this too (Lightning's launcher, torchrun, srun): they log warnings only.
    quiet_other_ranks(rank_zero_only.rank)
    out = Path(typed.paths.output_dir)
    run_dir = RunDir(out)
    ckpt_path = resolve_resume(typed.resume, typed.paths.log_dir, typed.paths.output_dir)
    if rank_zero_only.rank == 0:
        if run_dir.claim(typed.overwrite, ckpt_path):
            run_dir.set_aside_metrics()  # the CSV logger would delete the curve so far
    out.mkdir(parents=True, exist_ok=True)
    t = typed.trainer  # `auto` is decided once, here, and recorded as what it chose
    t.precision = resolve_precision(
        t.precision, t.accelerator, typed.strategy.name, bool(typed.lora.quantize), typed.paths.cache_dir
    )
    L.seed_everything(typed.seed, workers=True)
    started = time.perf_counter()
    reset_peak()

    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    template = get_template(typed.data.template, tokenizer, system_prompt(typed.data))
    check_cutoff(typed.data.cutoff_len, tokenizer, template)
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
                parent=parent_record(typed),
            )
        )
    model = start_model(typed, typed.paths.cache_dir)
    if attend_by_segment(model):
        log.info("attention: %s (packed rows per sequence, short padded rows by matmuls on a CPU)", SEGMENTS)
    if moves_base(typed.lora) and rank_zero_only.rank == 0:
        save_initial_adapter(model, run_dir.adapter_init)
    trainable, total = count_parameters(model)
    log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    probe = typed.probe
    own = [ProbeAnswers(tokenizer, template, probe.prompts, probe.max_new_tokens)] if probe.enabled else []
    if typed.trainer.neftune_alpha:
        own.append(NEFTune(typed.trainer.neftune_alpha))
    tokens = datamodule.micro_batch_tokens
    budgeted = typed.trainer.micro_batch_tokens is not None
    if ckpt_path and budgeted and (saved := resumed_micro_batch(ckpt_path)):
        # Only the checkpoint's micro-batch resumes its epoch at the right row, whatever any non-null
        # micro_batch_tokens would choose here (`auto` depends on the CPU); with null the given
        # micro_batch_size is checked against it (the loader refuses another).
        log.info("resuming with the checkpoint's micro-batch of %d rows", saved)
        typed.trainer.micro_batch_size, tokens = saved, None
    built = build_trainer(typed, cfg, model, own, tokens)  # FSDP wraps the model's own layer classes
    trainer = built.trainer
    # Rows per micro-batch as the trainer chose them (micro_batch_tokens); config.yaml records the choice.
    typed.trainer.micro_batch_size = datamodule.micro_batch_size = built.plan.micro_batch_size
    quiet_other_ranks(trainer.global_rank)  # now known on every node
    objective = build_objective(typed.stage)
    module = SFTModule(
        model, typed.optimizer, typed.scheduler, typed.trainer, objective, typed.lora.loraplus_lr_ratio
    )
    reference = reference_source(typed) if objective.needs_reference else None
    if reference == "precomputed":
        datamodule.reference = partial(
            reference_logps,
            module,
            batch_size=typed.trainer.micro_batch_size,
            context=trainer.precision_plugin.forward_context,
        )
    elif reference == "copy":
        module.reference_model = frozen(start_weights(typed, typed.paths.cache_dir))

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

    initial, reused = ({}, None) if ckpt_path else _evaluate_before(typed, trainer, module, datamodule, own)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = built.best.best_model_path if typed.trainer.restore_best else ""
    if best:
        log.info("restoring the best weights from %s", best)
    final = _validate(trainer, module, datamodule, ckpt_path=best or None)

    summary = {
        "output_dir": str(out),
        "stage": typed.stage.name,
        "reference": reference,
        "global_step": trainer.global_step,
        "train_loss": _metric(train_metrics, "train/loss"),
        "initial_val_loss": _metric(initial, "val/loss"),
        **{key: _metric(final, name) for name, key in SUMMARY_METRICS.items()},
        "val": {name: float(value) for name, value in final.items()},  # every metric of the stage
        "initial_val": {name: float(value) for name, value in initial.items()},
        "initial_val_reused_from": reused,  # a kept evaluation (reuse_initial_eval), else None
        "best_checkpoint": built.best.best_model_path or None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": peak_rss_gb(),
        "peak_cuda_memory_gb": peak_cuda_gb(),
        "data": {k: v for k, v in asdict(datamodule.stats).items() if k != "problems"},
        **run_info,
    }
    for part in (module.guard, *trainer.callbacks):  # throughput, overfitting warnings, probes, ...
        if hasattr(part, "summary_section"):
            summary.update(part.summary_section())
    weights = full_state_dict(trainer, model)  # every rank: gathering sharded weights is collective
    if trainer.is_global_zero:
        start = run_dir.adapter_init if moves_base(typed.lora) else None
        with unsharded_structure(model):
            summary["saved"] = str(save_final(model, tokenizer, template, out, weights, start))
        # Sweep trials are searched, not shipped: their many short runs skip the reference (greedy
        # generation, minutes for a slow adapter such as DoRA); export a chosen trial after a re-run.
        if typed.evaluation.parity.prompts and typed.trial is None:
            sharded = shards_parameters(trainer.strategy)
            _record_parity(
                typed,
                out,
                trained_weights(out, typed.paths.cache_dir, merge=False) if sharded else model,
                tokenizer,
                template,
            )
        run_dir.write_summary(summary, datamodule.stats.problems)
        print_summary(summary)
        if typed.evaluation.enabled:  # from the saved files, exactly as `python -m sft.eval run=<out>` would
            evaluate(out, typed.evaluation, typed.paths.cache_dir)
    return _objective(typed, final, train_metrics, summary)


def _record_parity(typed: TrainConfig, out: Path, model, tokenizer, template) -> None:
    """Record the trained model's greedy answers, which exports are checked against (`sft.eval.parity`)."""
    parity = typed.evaluation.parity
    prompts = parity_prompts(list(typed.evaluation.suites), parity.prompts)
    stops = stop_token_ids(typed, tokenizer, model)
    reference = record_reference(model, tokenizer, template, stops, prompts, parity.max_new_tokens)
    log.info("parity reference (%d greedy answers) in %s", len(prompts), save_reference(reference, out))


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


def _metric(metrics: dict, name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def _evaluate_before(
    typed: TrainConfig, trainer, module, datamodule: SFTDataModule, callbacks
) -> tuple[dict, str | None]:
    """Validation metrics (and probe answers) of the untrained model, with the file they were read from:
    kept by an earlier run with the same key (`sft.training.baseline`), else computed (file None), and
    kept when the run has a key."""
    probes = next((c for c in callbacks if isinstance(c, ProbeAnswers)), None)
    cache = typed.paths.cache_dir
    key = None
    if trainer.num_devices * trainer.num_nodes == 1:  # every process must agree on whether to validate
        source = resolve_source(typed.model, cache)
        key = baseline_key(typed, source, module.model, getattr(datamodule.prepared, "key", None))
    kept = load_baseline(cache, key)
    if kept is not None:
        if probes is not None:
            probes.before = kept["probes"]
        for logger in trainer.loggers:
            logger.log_metrics(kept["metrics"], step=0)
        return kept["metrics"], kept["path"]
    with rng_untouched():
        initial = _validate(trainer, module, datamodule)
    store_baseline(cache, key, initial, probes.before if probes is not None else [])
    return initial, None


def _validate(trainer: L.Trainer, module: SFTModule, datamodule: SFTDataModule, ckpt_path=None) -> dict:
    """Validation metrics, or {} when the run has no validation rows.

    With `ckpt_path`, Lightning first loads that checkpoint's weights (whatever the strategy's
    checkpoint format), and they stay in the module afterwards.
    """
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    return dict(results[0]) if results else {}
