"""`trainer.precision=auto`: the precision this machine trains fastest in, decided once per run.

On a CUDA device that supports bf16: bf16-mixed. On a CPU the decision is measured, not read from the
instruction flags: an Intel Xeon that lists AVX512-BF16 multiplied bf16 at half its fp32 rate (170 against
336 GFLOP/s), an AMD EPYC with the same flag at 2.2 times it (421 against 191; BENCHMARKS.md). bf16-mixed
is chosen only when bf16 matmuls (2048-square) measure clearly faster, so noise cannot flip it.
The measurement is kept in the cache directory per CPU model, thread count, torch version and probe size,
so later runs on the same machine start without it; `trainer.micro_batch_tokens: auto` reads the same rates.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback
from peft.tuners.lora import LoraLayer

from ..atomic import write_json
from ..provenance import cpu_model
from ..run_dir import read_json
from .strategy import is_deepspeed, is_fsdp, shards_parameters

log = logging.getLogger(__name__)

# Lightning's subprocess launcher starts the other DDP ranks with this process's environment: they take
# the launching process's decision instead of measuring again (and perhaps deciding otherwise).
DECIDED = "SFT_AUTO_PRECISION"
# The same for the measured matmul rates (`trainer.micro_batch_tokens: auto` sizes micro-batches by them).
RATES = "SFT_CPU_MATMUL_GFLOPS"
# bf16 must beat fp32 by this factor: the two kinds of CPU measured here differ by 2x either way.
MARGIN = 1.3
# The side of the square matmuls that measure a CPU's rates, as `make bench` measures its peaks: an Intel
# Xeon with AMX reaches only half its bf16 rate at 1024 (1550 against 3050 GFLOP/s), and
# `trainer.micro_batch_tokens: auto` scales with the rate itself.
PROBE_SIDE = 2048


def matmul_peak(
    dtype: torch.dtype, n: int = 2048, seconds: float = 3.0, device: str = "cpu", burst: int = 4
) -> float:
    """GFLOP/s of square `n` x `n` matmuls in `dtype`: the best of repeated timed bursts of `burst`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm-up: thread pools, kernels, caches
    sync()
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(burst):
            a @ b
        sync()
        took = time.perf_counter() - start
        spent += took
        best = max(best, burst * 2 * n**3 / took / 1e9)
    return best


def cpu_choice(fp32_gflops: float, bf16_gflops: float) -> str:
    """bf16-mixed when bf16 matmuls are at least MARGIN times faster than fp32, else 32-true."""
    return "bf16-mixed" if bf16_gflops >= MARGIN * fp32_gflops else "32-true"


def resolve_precision(
    requested: str, accelerator: str, strategy: str, quantized: bool, cache_dir: str | None = None
) -> str:
    """The Lightning precision for `trainer.precision` (`auto` decided here; anything else as given)."""
    if requested != "auto":
        return requested
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        choice, why = (
            ("bf16-mixed", "CUDA bf16") if torch.cuda.is_bf16_supported() else ("32-true", "no bf16")
        )
    elif accelerator not in ("auto", "cpu"):
        choice, why = "32-true", f"accelerator {accelerator}"
    elif strategy == "fsdp":
        choice, why = "32-true", "FSDP autocasts on CUDA only"
    elif quantized:
        choice, why = "32-true", "4-bit base layers compute in model.dtype"
    else:
        return cpu_precision(cache_dir)
    log.info("trainer.precision=auto: %s (%s)", choice, why)
    return choice


def cpu_precision(cache_dir: str | None = None) -> str:
    """bf16-mixed or 32-true for this CPU, measured once per machine (kept under `cache_dir`) and once per
    process tree (DECIDED)."""
    if decided := os.environ.get(DECIDED):
        return decided
    fp32, bf16 = cpu_rates(cache_dir)
    choice = cpu_choice(fp32, bf16)
    log.info("trainer.precision=auto: %s (CPU matmuls: fp32 %.0f, bf16 %.0f GFLOP/s)", choice, fp32, bf16)
    os.environ[DECIDED] = choice
    return choice


def cpu_rates(cache_dir: str | None = None) -> tuple[float, float]:
    """This CPU's fp32 and bf16 matmul GFLOP/s: a parent process's (RATES), those kept under `cache_dir` for
    this CPU, or measured now (under a second on this project's CPUs) and kept."""
    if inherited := os.environ.get(RATES):
        fp32, bf16 = (float(v) for v in inherited.split(","))
        return fp32, bf16
    kept = Path(cache_dir).expanduser() / "precision.json" if cache_dir else None
    machine = cpu_identity()
    measurements = _read(kept)
    if machine in measurements:
        fp32, bf16 = measurements[machine]["fp32"], measurements[machine]["bf16"]
        log.info("CPU matmuls measured earlier on this CPU (%s)", kept)
    else:
        # One matmul a burst: a CPU without fast bf16 (tens of GFLOP/s) takes a few seconds, once.
        fp32 = round(matmul_peak(torch.float32, n=PROBE_SIDE, seconds=0.25, burst=1), 1)
        bf16 = round(matmul_peak(torch.bfloat16, n=PROBE_SIDE, seconds=0.25, burst=1), 1)
        if kept is not None:
            write_json({**measurements, machine: {"fp32": fp32, "bf16": bf16}}, kept)
    os.environ[RATES] = f"{fp32},{bf16}"
    return fp32, bf16


def cpu_identity() -> str:
    """The CPU model, the threads torch uses, torch's version and the probe's size: what the rates depend
    on."""
    return (
        f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {PROBE_SIDE}-square"
    )


def _read(path: Path | None) -> dict:
    """The kept measurements by CPU identity; {} when there are none or the file is unreadable."""
    kept = read_json(path) if path is not None else None
    return kept if isinstance(kept, dict) else {}


def bf16_mixed_on_cpu(trainer) -> bool:
    """Whether `trainer` trains under bf16-mixed on a CPU, where the training-time casts were measured."""
    return trainer.precision == "bf16-mixed" and isinstance(trainer.accelerator, CPUAccelerator)


class DuringTraining(Callback):
    """A change to the model made at the first training batch (after the model has been set up and wrapped,
    under the precision's forward context) and undone when training ends or fails, before probes, the final
    evaluation and saving. Subclasses say what `_apply` changes and how `_restore` undoes it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Make the change (each subclass applies it once)."""
        self._apply(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """Undo the change."""
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Undo the change before anything saves or answers with the model."""
        self._restore()

    def _apply(self, trainer, pl_module) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError


class FrozenLinearsInBf16(DuringTraining):
    """Under bf16-mixed on a CPU, frozen Linear weights are cast to bf16 once, while training, instead of in
    every forward: autocast re-casts a weight that requires no gradient on every call (its cast cache
    keeps only trainable leaves); casting once measured 1.04x on a packed SmolLM2 step (BENCHMARKS.md,
    "The levers, one at a time"). The products do not change: autocast rounds the same fp32 weight to the
    same bf16 values. A weight shared with the input embeddings (a tied head) keeps fp32, so lookups are
    untouched. The fp32 weights are put back when training ends (or fails), before probes, the final
    evaluation and saving; checkpoints hold only trainable weights, so they never see the copies.
    """

    def __init__(self) -> None:
        self._kept: dict[torch.nn.Linear, torch.Tensor] = {}

    def _apply(self, trainer, pl_module) -> None:
        if self._kept or not bf16_mixed_on_cpu(trainer):
            return
        if shards_parameters(trainer.strategy):  # its weights live in flat shards: left alone
            return
        self._kept = frozen_linears_to_bf16(pl_module.model)

    def _restore(self) -> None:
        for module, weight in self._kept.items():
            module.weight.data = weight
        self._kept = {}


def frozen_linears_to_bf16(model: torch.nn.Module) -> dict[torch.nn.Linear, torch.Tensor]:
    """Cast the frozen fp32 weights of `model`'s Linear layers (not one tied to the input embeddings) to
    bf16 in place; each cast layer with its fp32 weight, to put back."""
    embeddings = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    kept = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None or weight is embeddings:
            continue
        if weight.requires_grad or weight.dtype != torch.float32:
            continue
        kept[module] = weight.data
        weight.data = weight.data.to(torch.bfloat16)
    return kept


class SwitchDuringTraining(DuringTraining):
    """A switch over a model's LoRA layers, on from the first training batch to the end of training when the
    run allows it (`_allowed`), never under FSDP or DeepSpeed (which wrap the layers and run their own mixed
    precision); `_switch(model, on)` flips it and says how many layers it touched."""

    def __init__(self) -> None:
        self._model: torch.nn.Module | None = None

    def _apply(self, trainer, pl_module) -> None:
        if self._model is not None or is_fsdp(trainer.strategy) or is_deepspeed(trainer.strategy):
            return
        if self._allowed(trainer) and self._switch(pl_module.model, True):
            self._model = pl_module.model

    def _restore(self) -> None:
        if self._model is not None:
            self._switch(self._model, False)
            self._model = None

    def _allowed(self, trainer) -> bool:
        return True

    def _switch(self, model: torch.nn.Module, on: bool) -> int:
        raise NotImplementedError


class UncastLoraInputs(SwitchDuringTraining):
    """Under autocast (a "-mixed" precision, DDP or one device), each plain LoRA layer's input keeps its dtype
    while training instead of PEFT casting it to the adapter's fp32 weights: autocast casts it back to bf16
    for the adapter's matmul anyway, so with bf16 base weights PEFT's cast cost two copies of every adapter
    input per direction and ran the dropout in fp32. Products and gradients do not change (the dropout
    scales and rounds once either way); with fp32 base weights the input is fp32 already. Measured 1.09x
    on a packed SmolLM2 step with bf16 weights (BENCHMARKS.md). PEFT's cast is back when training ends.
    """

    def _allowed(self, trainer) -> bool:
        return str(trainer.precision).endswith("-mixed")

    def _switch(self, model: torch.nn.Module, on: bool) -> int:
        return uncast_lora_inputs(model, uncast=on)


def uncast_lora_inputs(model: torch.nn.Module, uncast: bool = True) -> int:
    """PEFT's cast of each plain LoRA layer's input to its adapter's dtype turned off (or on); how many.

    Layers with a variant (DoRA) keep the cast: DoRA's magnitude arithmetic follows the input's dtype, so
    its products would change (measured: gradients differ by up to 1.7e-2 on the tiny model)."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not getattr(m, "lora_variant", None)]
    for layer in layers:
        layer.cast_input_dtype_enabled = not uncast
    return len(layers)


# Families whose decoder layers are pre-norm: `input_layernorm`'s output goes only to the attention's
# projections and `post_attention_layernorm`'s only to the MLP's (OLMo-2 and Gemma-2 instead add a norm's
# output to the residual stream, where its fp32 values count).
PRE_NORM = ("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3")


class NormOutputsInBf16(SwitchDuringTraining):
    """Under bf16-mixed on a CPU, the two norms of each pre-norm decoder layer hand their output on in bf16
    while training: with fp32 weights the residual stream is fp32, so autocast cast each norm's output to
    bf16 once per projection that reads it (q, k, v and their adapters; gate, up and theirs), and the
    dropout in front of each adapter scaled fp32 values, and backward cast each of those gradients back.
    Every consumer is a Linear that autocast feeds bf16 anyway, so the products with dropout off are the
    same bit for bit; with dropout on, an adapter's input is scaled after the rounding instead of before
    (each value within one bf16 rounding), and the consumers' gradients are summed in bf16 before the one
    cast back to fp32. Measured 1.04-1.09x on a packed SmolLM2 step (BENCHMARKS.md). Hooks off when training
    ends. Only CPUs were measured."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list = []

    def _allowed(self, trainer) -> bool:
        return bf16_mixed_on_cpu(trainer)

    def _switch(self, model: torch.nn.Module, on: bool) -> int:
        for hook in self._hooks:
            hook.remove()
        self._hooks = norm_outputs_to_bf16(model) if on else []
        return len(self._hooks)


def norm_outputs_to_bf16(model: torch.nn.Module) -> list:
    """Hooks that cast the fp32 output of each pre-norm decoder layer's two norms to autocast's dtype (bf16
    under bf16-mixed) while autocast is on (no hooks for other families); their handles."""
    if getattr(model.config, "model_type", None) not in PRE_NORM:
        return []
    norms = [
        norm
        for layer in model.modules()
        if hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
        for norm in (layer.input_layernorm, layer.post_attention_layernorm)
    ]
    return [norm.register_forward_hook(_to_autocast_dtype) for norm in norms]


def _to_autocast_dtype(module, args, output: torch.Tensor) -> torch.Tensor | None:
    device = output.device.type
    if output.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    return output.to(torch.get_autocast_dtype(device))
