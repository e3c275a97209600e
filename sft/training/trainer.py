"""Build the Lightning Trainer: strategy, loggers, callbacks, checkpointing, and the batch arithmetic."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig

from ..config import TrainConfig, accumulation_steps
from ..errors import ConfigError
from ..run_dir import RunDir
from .checkpoint import AtomicCheckpointIO
from .lora_forward import FusedLoraAdds
from .precision import FrozenLinearsInBf16, NormOutputsInBf16, UncastLoraInputs, cpu_rates
from .resilience import GracefulStop, RngCheckpoint
from .strategy import build_strategy, check_launch, fill_deepspeed_config, is_deepspeed

log = logging.getLogger(__name__)
# `trainer.micro_batch_tokens: auto` on a CPU: 400 tokens measured best where matmuls ran at 420 GFLOP/s
# (an AMD EPYC, bf16), and proportionally more on faster ones. Each micro-batch costs a fixed time for its
# thousands of small operations, whatever its size, so the faster the matmuls, the more tokens it takes for
# them to outweigh it (BENCHMARKS.md, "Micro-batches sized by the CPU's matmul rate").
AUTO_TOKENS, AUTO_GFLOPS = 400, 420.0


@dataclass
class BatchPlan:
    """How the effective batch is made: micro-batch x devices x accumulation."""

    effective_batch_size: int
    micro_batch_size: int
    world_size: int
    accumulate_grad_batches: int


@dataclass
class BuiltTrainer:
    """The trainer with the callback the run reads back after fitting."""

    trainer: L.Trainer
    plan: BatchPlan
    best: ModelCheckpoint


def _instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a logger/callback group dict."""
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def token_budget(
    setting: int | str | None, precision: str, on_cpu: bool, cache_dir: str | None, processes: int = 1
) -> int | None:
    """The tokens a micro-batch may hold on average, padding included: `trainer.micro_batch_tokens` as given,
    or for `auto` on a CPU AUTO_TOKENS scaled by how much faster than AUTO_GFLOPS its matmuls run in the dtype
    the run computes in (never less); None on other devices (micro_batch_size as given)."""
    if setting != "auto":
        return setting
    if not on_cpu:
        return None
    if processes > 1:
        # Ranks share the cores the rates were measured on, and ranks that another launcher (torchrun, srun)
        # starts would each measure their own: a fixed budget is the same on every rank.
        return AUTO_TOKENS
    fp32, bf16 = cpu_rates(cache_dir)
    rate = bf16 if precision.startswith("bf16") else fp32
    return round(AUTO_TOKENS * max(1.0, rate / AUTO_GFLOPS))


def rows_per_micro_batch(
    least: int, per_device: int, budget: int | None, tokens: Callable[[int], float | None] | None
) -> int:
    """Rows per micro-batch: `least`, or the most that divide the device's `per_device` rows of a step while
    `tokens(rows)`, a micro-batch's tokens with padding, stays within `budget`."""
    if not budget or tokens is None or tokens(least) is None:  # streamed rows: lengths unknown
        return least
    fits = [m for m in range(least, per_device + 1) if per_device % m == 0 and tokens(m) <= budget]
    return max(fits, default=least)


def build_trainer(
    cfg: TrainConfig,
    raw: DictConfig,
    model=None,
    extra_callbacks=(),
    micro_batch_tokens: Callable[[int, int], float | None] | None = None,
) -> BuiltTrainer:
    """A Lightning Trainer configured from the typed config (and the raw logger/callback dicts).

    `model` (the PEFT model) is needed by FSDP, which wraps the model's own layer classes;
    `extra_callbacks` are those the run builds itself (they need its tokenizer, for example);
    `micro_batch_tokens(rows, ranks)`, the tokens a micro-batch of that many training rows holds with padding
    on one of `ranks` devices, sizes micro-batches by `trainer.micro_batch_tokens`.
    """
    t = cfg.trainer
    needs_cuda = cfg.strategy.name == "deepspeed" or (cfg.strategy.name == "fsdp" and t.accelerator != "cpu")
    if needs_cuda and not torch.cuda.is_available():
        raise ConfigError(f"strategy {cfg.strategy.name} needs a CUDA GPU, and none is visible here")
    run_dir = RunDir(cfg.paths.output_dir)
    ckpt_dir = run_dir.checkpoints
    last = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step-{step:06d}",
        every_n_train_steps=t.save_steps,
        save_top_k=t.save_total_limit,
        monitor="step",
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
    )
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks = [last, best, GracefulStop(run_dir.last_checkpoint), RngCheckpoint()]
    callbacks += [FrozenLinearsInBf16(), UncastLoraInputs(), FusedLoraAdds(), NormOutputsInBf16()]
    callbacks += [*_instantiate_all(raw.get("callbacks")), *extra_callbacks]
    if cfg.trial is not None:  # a job of an Optuna sweep: report evaluations, stop when pruned
        from ..sweep.pruning import TrialPruning  # here, so that optuna loads only for sweep jobs

        callbacks.append(TrialPruning(cfg.trial, cfg.objective.metrics[0], cfg.seed))
    if t.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=t.early_stopping_patience))
    strategy = build_strategy(cfg.strategy, t.precision, model, t.accelerator)
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        # DeepSpeed's engine writes its own sharded checkpoints; every other strategy goes through this.
        plugins=[] if is_deepspeed(strategy) else [AtomicCheckpointIO()],
        precision=t.precision,
        max_epochs=t.max_epochs if t.max_steps <= 0 else -1,
        max_steps=t.max_steps,
        # Clipping happens in SFTModule after the per-token gradient scaling (strategy.finish_gradients).
        gradient_clip_val=None,
        log_every_n_steps=t.log_every_n_steps,
        limit_val_batches=t.limit_val_batches,
        deterministic=t.deterministic,
        logger=_instantiate_all(raw.get("logger")) or False,
        callbacks=callbacks,
        default_root_dir=cfg.paths.output_dir,
        num_sanity_val_steps=0,
        # The data module deals each rank its share itself (the same examples per step on any number
        # of devices); Lightning's sampler would reshuffle the training order.
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    # The world size is only known once Lightning has resolved accelerator and devices, so the
    # accumulation (and the evaluation interval, counted in micro-batches) is set afterwards.
    accumulation_steps(t.effective_batch_size, t.micro_batch_size, trainer.world_size)  # names a bad split
    per_device = t.effective_batch_size // trainer.world_size
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    budget = token_budget(t.micro_batch_tokens, t.precision, on_cpu, cfg.paths.cache_dir, trainer.world_size)
    tokens = partial(micro_batch_tokens, ranks=trainer.world_size) if micro_batch_tokens else None
    micro = rows_per_micro_batch(t.micro_batch_size, per_device, budget, tokens)
    accumulate = per_device // micro  # micro divides per_device by construction
    trainer.accumulate_grad_batches = accumulate
    if t.eval_steps:
        trainer.val_check_interval = t.eval_steps * accumulate
        trainer.check_val_every_n_epoch = None
    if is_deepspeed(trainer.strategy):
        trainer.strategy.config = fill_deepspeed_config(
            trainer.strategy.config,
            micro_batch_size=micro,
            effective_batch_size=t.effective_batch_size,
            gradient_clip_val=t.gradient_clip_val,
            precision=t.precision,
        )
    check_launch(trainer)
    plan = BatchPlan(t.effective_batch_size, micro, trainer.world_size, accumulate)
    log.info(
        "effective batch %d = micro-batch %d x %d device(s) x %d accumulation steps (%s, %d node(s))%s",
        plan.effective_batch_size,
        plan.micro_batch_size,
        plan.world_size,
        plan.accumulate_grad_batches,
        type(trainer.strategy).__name__,
        trainer.num_nodes,
        f"; about {tokens(micro):.0f} tokens per micro-batch with padding, within "
        f"micro_batch_tokens={t.micro_batch_tokens} ({budget})"
        if micro != t.micro_batch_size
        else "",
    )
    return BuiltTrainer(trainer, plan, best)
