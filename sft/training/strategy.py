"""Scale-out: the `strategy` group → one of Lightning's own strategies (DDP, FSDP, DeepSpeed ZeRO).

Besides building the strategy, this module holds the few places where the rest of `sft` must know
how the strategy keeps the model: where gradients live before the optimizer step, how sharded
weights are gathered for the final adapter, and how checkpoint names are read. DeepSpeed is
imported only when chosen.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import math
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy

from ..config import StrategyConfig
from ..errors import ConfigError
from ..locations import CONF_DIR, find_deepspeed_config

log = logging.getLogger(__name__)

# Set from the trainer group so they can never disagree with it; a JSON may repeat them only unchanged.
FILLED_KEYS = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_clipping")
# Lightning sets the accumulation from the trainer (and refuses a JSON that has it).
LIGHTNING_KEYS = ("gradient_accumulation_steps",)
# The optimizer and schedule come from their own groups; in the JSON, DeepSpeed would replace both.
GROUP_KEYS = ("optimizer", "scheduler")
# Wrapper prefixes FSDP and activation checkpointing put into parameter names.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def load_deepspeed_config(value: str) -> dict:
    """The parsed DeepSpeed JSON named by `strategy.deepspeed_config`."""
    path = find_deepspeed_config(value)
    if path is None:
        raise ConfigError(
            f"strategy.deepspeed_config={value!r}: no such file here or in {CONF_DIR / 'deepspeed'}"
        )
    return json.loads(path.read_text())


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is the string 'auto' (HF Trainer fills those; Lightning does not)."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def fill_deepspeed_config(
    config: dict,
    *,
    micro_batch_size: int,
    effective_batch_size: int,
    gradient_clip_val: float | None,
    precision: str,
) -> dict:
    """A copy of `config` with micro-batch, global batch and clipping taken from the trainer group.

    Raises one ConfigError listing every value Lightning would not accept or that would disagree
    with the rest of the config: "auto" values, the accumulation (Lightning derives it), an
    optimizer or scheduler section, batch/clipping values that differ from ours, and fp16/bf16
    sections that contradict `trainer.precision`.
    """
    ours = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "train_batch_size": effective_batch_size,
        "gradient_clipping": float(gradient_clip_val or 0.0),
    }
    problems = [
        f"{key}='auto': give a number or remove it (sft fills the batch and clipping)"
        for key in _auto_keys(config)
    ]
    problems += [
        f"{key}: remove it; Lightning sets it from the accumulation sft derives "
        "(trainer.effective_batch_size / (trainer.micro_batch_size x devices x nodes))"
        for key in LIGHTNING_KEYS
        if key in config
    ]
    problems += [f"{key}: remove it; it comes from the {key} group" for key in GROUP_KEYS if key in config]
    problems += [
        f"{key}={config[key]!r}: disagrees with the trainer group ({value}); remove it"
        for key, value in ours.items()
        if key in config and config[key] != "auto" and config[key] != value
    ]
    for section, wanted in (("fp16", precision.startswith("16")), ("bf16", precision.startswith("bf16"))):
        enabled = config.get(section, {}).get("enabled", False)
        if section in config and enabled != "auto" and bool(enabled) != wanted:
            problems.append(
                f"{section}.enabled={enabled!r}: contradicts trainer.precision={precision}; remove it"
            )
    if problems:
        raise ConfigError("DeepSpeed config:\n  " + "\n  ".join(problems))
    return {**copy.deepcopy(config), **ours}


def decoder_layer_classes(model: torch.nn.Module, names: Any = "auto") -> set[type]:
    """The classes of the model's transformer blocks, to wrap (and checkpoint) one FSDP unit each.

    `names="auto"` reads them from `_no_split_modules`, which transformers models declare for
    exactly this purpose (LlamaForCausalLM: LlamaDecoderLayer); a list gives class names directly.
    """
    if names == "auto":
        wanted = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    else:
        wanted = set(names)
    found = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    if not found:
        present = sorted({type(m).__name__ for m in model.modules()})
        raise ConfigError(
            f"strategy.wrap_layers={names!r}: no module of the model has class "
            f"{sorted(wanted) or '(none declared)'}; give class names from: {', '.join(present)}"
        )
    return found


def fsdp_mixed_precision(precision: str, reduce_dtype: str):
    """FSDP's MixedPrecision for `trainer.precision` (None for full precision).

    Parameters are gathered and used in the low precision; gradients are reduced in `reduce_dtype`;
    buffers stay float32, since rotary frequencies rounded to bf16 would shift every position.
    """
    if not precision.startswith(("16", "bf16")):
        return None
    from torch.distributed.fsdp import MixedPrecision

    low = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return MixedPrecision(
        param_dtype=low, reduce_dtype=getattr(torch, reduce_dtype), buffer_dtype=torch.float32
    )


def fsdp_kwargs(cfg: StrategyConfig, precision: str, layers: set[type]) -> dict:
    """Keyword arguments for Lightning's FSDPStrategy."""
    return {
        "sharding_strategy": cfg.sharding_strategy,
        "auto_wrap_policy": layers,  # a set of classes: Lightning wraps every instance as one unit
        "activation_checkpointing_policy": layers if cfg.activation_checkpointing else None,
        "mixed_precision": fsdp_mixed_precision(precision, cfg.reduce_dtype),
        "cpu_offload": cfg.cpu_offload,
        # The frozen base and the trainable LoRA weights share each flattened layer; with the original
        # parameters kept, the optimizer sees only the LoRA ones and their names stay readable.
        "use_orig_params": True,
        # Checkpoints are one file with the trainable weights, gathered on rank 0.
        "state_dict_type": "full",
        "process_group_backend": cfg.process_group_backend,
    }


def gathered_state_dict(module: torch.nn.Module, root_device: torch.device):
    """FSDP's context in which `state_dict()` and `optim_state_dict()` gather full tensors onto rank 0.

    They are copied to the CPU only from an accelerator: FSDP's copy is `.cpu()`, which for tensors
    already there returns the gather buffer itself, and FSDP then frees or reuses that buffer (model
    weights end up in freed memory, a segmentation fault on the next read; every optimizer state of a
    parameter ends up holding the last one gathered, exp_avg equal to exp_avg_sq).
    """
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    offload = root_device.type != "cpu"
    return FSDP.state_dict_type(
        module,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
        FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True),
    )


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU processes (gloo).

    The strategy runs on a CPU root device (no `device_id`, gloo, no CUDA barrier), but the Trainer's
    accelerator connector refuses `type(strategy) is FSDPStrategy` with `accelerator='cpu'`
    (`_check_strategy_and_fallback`); a subclass is not that exact type. Checkpoints are gathered
    as Lightning gathers them (full, on rank 0, optimizer state keyed by parameter index), less its
    `offload_to_cpu` (see gathered_state_dict).
    """

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The module's full weights on rank 0."""
        with gathered_state_dict(self.model, self.root_device):
            return self.model.state_dict()

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        """The optimizer's full state on rank 0, keyed by parameter index."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps it
        with gathered_state_dict(self.model, self.root_device):
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state


def build_strategy(
    cfg: StrategyConfig, precision: str, model: torch.nn.Module | None = None, accelerator: str = "gpu"
):
    """The Lightning strategy (or "auto") for the strategy group; FSDP reads the model's layer classes.

    On `accelerator="cpu"` FSDP is CPUFSDPStrategy (gloo processes).
    """
    if cfg.name == "auto":
        return "auto"
    if cfg.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(
            process_group_backend=cfg.process_group_backend, find_unused_parameters=cfg.find_unused_parameters
        )
    if cfg.name == "fsdp":
        if model is None:
            raise ValueError("strategy fsdp needs the model to find its layer classes")
        kind = CPUFSDPStrategy if accelerator == "cpu" else FSDPStrategy
        return kind(**fsdp_kwargs(cfg, precision, decoder_layer_classes(model, cfg.wrap_layers)))
    if cfg.name == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                "strategy=deepspeed_*: DeepSpeed is not installed; pip install -e '.[deepspeed]'"
            )
        from lightning.pytorch.strategies import DeepSpeedStrategy

        # Only trainable weights go into checkpoints, as for every other strategy.
        return DeepSpeedStrategy(
            config=load_deepspeed_config(cfg.deepspeed_config), exclude_frozen_parameters=True
        )
    raise ConfigError(f"strategy.name={cfg.name!r}: unknown")


def is_fsdp(strategy) -> bool:
    """Whether the strategy is Lightning's FSDP."""
    return isinstance(strategy, FSDPStrategy)


def is_deepspeed(strategy) -> bool:
    """Whether the strategy is Lightning's DeepSpeed (checked by name: DeepSpeed may not be installed)."""
    return any(c.__name__ == "DeepSpeedStrategy" for c in type(strategy).__mro__)


def shards_parameters(strategy) -> bool:
    """Whether parameters live in shards outside training (FSDP, ZeRO-3): the model cannot run unwrapped."""
    if is_fsdp(strategy):
        return True
    return is_deepspeed(strategy) and bool(getattr(strategy, "zero_stage_3", False))


def shard_model(model: torch.nn.Module, strategy) -> torch.nn.Module:
    """Under FSDP, the model wrapped as its own root unit, once; unchanged otherwise.

    Called from `configure_model`, inside Lightning's sharded context, so the strategy's settings
    (wrap policy, sharding, mixed precision, device) apply. Left to Lightning, the root unit would
    wrap the whole LightningModule at the first fit/validate, and the next call, finding it already
    wrapped, would run with the root's own weights (embeddings, head) still sharded (Lightning
    issue #19015); a root inside the module is reused by every call.
    """
    if not is_fsdp(strategy):
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import wrap

    if isinstance(model, FullyShardedDataParallel):
        return model
    # Lightning passes the device index, None on CPU, and FSDP then looks for an accelerator.
    cpu = strategy.root_device.type == "cpu"
    return wrap(model, device_id=strategy.root_device) if cpu else wrap(model)


def clean_name(name: str) -> str:
    """A parameter name without the wrapper prefixes FSDP and activation checkpointing insert."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def at_step_boundary(trainer) -> bool:
    """Whether the optimizer really steps after this backward.

    Lightning calls the optimizer step (and `on_before_optimizer_step`) on every micro-batch under
    DeepSpeed, whose engine steps only at the end of each accumulation window.
    """
    if trainer.strategy.handles_gradient_accumulation:
        return bool(trainer.model.is_gradient_accumulation_boundary())
    return True


def gradient_divisor(trainer) -> int:
    """What the summed-token gradients have already been divided by when backward is done.

    Lightning divides each micro-batch loss by the accumulation; DDP, FSDP and DeepSpeed average
    over ranks; DeepSpeed's engine divides by its accumulation steps once more.
    """
    divisor = trainer.accumulate_grad_batches * trainer.world_size
    if is_deepspeed(trainer.strategy):
        divisor *= trainer.accumulate_grad_batches
    return divisor


def finish_gradients(
    trainer, model: torch.nn.Module, scale: torch.Tensor, max_norm: float | None
) -> torch.Tensor:
    """Multiply every gradient by `scale`, clip to `max_norm` and return the norm before clipping.

    Plain and DDP gradients are in `p.grad`; FSDP's are shards of them (its root module computes
    the norm over all shards and clips, which Lightning's clipping cannot); DeepSpeed keeps them in
    its partitions, reached through its own accessors, and clips in its engine (`gradient_clipping`).
    """
    if is_deepspeed(trainer.strategy):
        return _scale_deepspeed_gradients(model, scale)
    params = [p for p in model.parameters() if p.grad is not None]
    if params:
        torch._foreach_mul_([p.grad for p in params], scale.to(params[0].grad.device))
    if is_fsdp(trainer.strategy):  # `model` is the root unit (shard_model)
        return model.clip_grad_norm_(max_norm or math.inf)
    if not params:
        return torch.zeros(())
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))


def drop_gradients(trainer, optimizer) -> None:
    """Make the coming optimizer step update nothing: parameters without a gradient are left alone.

    DeepSpeed's engine owns its gradient partitions and steps regardless; there the bad step is
    only counted (and the run stopped after too many).
    """
    if not is_deepspeed(trainer.strategy):
        optimizer.zero_grad(set_to_none=True)


def uses_grad_scaler(trainer) -> bool:
    """Whether the precision plugin scales the loss (16-mixed) and skips overflowing steps itself."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def _scale_deepspeed_gradients(model: torch.nn.Module, scale: torch.Tensor) -> torch.Tensor:
    """Scale DeepSpeed's reduced gradients (every rank, same order: the accessors communicate)."""
    from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

    squares = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        grad = safe_get_full_grad(param)
        if grad is None:
            continue
        grad = grad * scale.to(grad.device, grad.dtype)
        safe_set_full_grad(param, grad)
        squares.append(grad.float().pow(2).sum())
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


def full_state_dict(trainer, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's weights gathered onto rank 0 when the strategy shards them; None when it holds them whole.

    Collective: every rank must call it. Keys are the model's own (what `save_pretrained` expects);
    for a PEFT model only trainable weights are gathered, since the adapter is all it saves.
    """
    strategy = trainer.strategy
    if is_fsdp(strategy):
        module = trainer.lightning_module  # its `model` is the root unit around the PEFT model
        with gathered_state_dict(module, strategy.root_device):
            state = module.state_dict()
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if shards_parameters(strategy):  # DeepSpeed ZeRO-3
        import deepspeed
        from peft import PeftModel

        adapter_only = isinstance(model, PeftModel)
        state = {}
        for name, param in model.named_parameters():
            if adapter_only and not param.requires_grad:
                continue
            with deepspeed.zero.GatheredParameters([param]):
                if trainer.is_global_zero:
                    state[name] = param.detach().cpu().clone()
        return state
    return None


@contextlib.contextmanager
def unsharded_structure(model: torch.nn.Module):
    """Within the block, every FSDP unit inside `model` is replaced by the module it wraps.

    PEFT finds an adapter's weights by walking module names, and FSDP's units put `_fsdp_wrapped_module`
    in the middle of them, so saving an adapter from gathered weights would save nothing. Only the names
    are needed then (the weights come from `full_state_dict`); the units are put back afterwards.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FullyShardedDataParallel):
                swapped.append((parent, name, child))
                parent._modules[name] = child.module
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child


def check_launch(trainer) -> None:
    """Refuse a Hydra multirun that would make Lightning start device processes itself.

    Lightning's launcher re-runs the command line for each extra device; inside a sweep (`-m`) that
    would re-run the whole sweep per device. torchrun and srun start the processes beforehand.
    """
    env = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.world_size == 1 or env is None or env.creates_processes_externally:
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"a multirun (-m) with {trainer.world_size} devices: Lightning would re-run the whole sweep on "
            "every device; launch the sweep with torchrun or srun (one process per device) instead"
        )


def quiet_other_ranks(rank: int) -> None:
    """Ranks other than 0 log warnings and errors only, so console and train.log hold each message once."""
    if rank > 0:
        logging.getLogger().setLevel(logging.WARNING)


def local_rank() -> int:
    """This process's rank on its node before the Trainer exists, read as Lightning's environments read it."""
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for env in (SLURMEnvironment, TorchElasticEnvironment):
        if env.detect():
            return env().local_rank()
    return LightningEnvironment().local_rank()
