"""`trainer.precision=auto` (decided by measured matmul rates) and LoRA's scatter dropout."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY, measured, new_process_tree, products, random_lora_b, token_ids
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils._python_dispatch import TorchDispatchMode

import sft.training.precision as precision
from sft.config import validate
from sft.train import train
from sft.training.dropout import ScatterDropout, scatter_lora_dropout
from sft.training.model import apply_peft, load_model
from sft.training.precision import (
    FrozenLinearsInBf16,
    NormOutputsInBf16,
    UncastLoraInputs,
    frozen_linears_to_bf16,
)

# What `auto` measures on a CPU it has not measured before: fp32, then bf16, on 2048-square matmuls.
PROBED = [(torch.float32, 2048), (torch.bfloat16, 2048)]


@pytest.mark.parametrize(
    "fp32,bf16,expected",
    [(191, 421, "bf16-mixed"), (336, 170, "32-true"), (200, 250, "32-true"), (200, 260, "bf16-mixed")],
)
def test_cpu_choice_takes_bf16_only_when_clearly_faster(fp32, bf16, expected):
    """The two CPUs measured (AMD 2.2x faster in bf16, Intel 2x slower) and both sides of the margin."""
    assert precision.cpu_choice(fp32, bf16) == expected


def test_auto_measures_once_and_other_settings_never_measure(monkeypatch, undecided):
    """Explicit precisions pass through; FSDP on the CPU, 4-bit bases and non-CPU accelerators without
    CUDA stay in fp32 without measuring; a decision is kept for the process and its children."""
    calls = measured(monkeypatch, 191, 421)
    assert precision.resolve_precision("bf16-true", "cpu", "auto", False) == "bf16-true"
    assert precision.resolve_precision("auto", "cpu", "fsdp", False) == "32-true"
    assert precision.resolve_precision("auto", "cpu", "auto", True) == "32-true"
    assert precision.resolve_precision("auto", "mps", "auto", False) == "32-true"
    assert calls == []
    assert precision.resolve_precision("auto", "cpu", "auto", False) == "bf16-mixed"
    assert calls == PROBED
    # Another rank (started with this environment) or a later job of a sweep: the same answer, unmeasured;
    # the rules that do not depend on the CPU still come first.
    measured(monkeypatch, 336, 170)
    assert precision.resolve_precision("auto", "auto", "ddp", False) == "bf16-mixed"
    assert precision.resolve_precision("auto", "cpu", "fsdp", False) == "32-true"


def test_a_measurement_is_kept_per_cpu_for_later_processes(monkeypatch, undecided, tmp_path):
    """A later process on the same CPU takes the kept rates without measuring; another CPU measures."""
    cache = str(tmp_path / "cache")
    calls = measured(monkeypatch, 191, 421)
    assert precision.resolve_precision("auto", "cpu", "auto", False, cache) == "bf16-mixed"
    assert calls == PROBED
    new_process_tree(monkeypatch)
    calls = measured(monkeypatch, 336, 170)
    assert precision.resolve_precision("auto", "cpu", "auto", False, cache) == "bf16-mixed"
    assert calls == []
    monkeypatch.setattr(precision, "cpu_identity", lambda: "another CPU")
    new_process_tree(monkeypatch)
    assert precision.resolve_precision("auto", "cpu", "auto", False, cache) == "32-true"
    assert calls == PROBED
    assert len(json.loads((tmp_path / "cache" / "precision.json").read_text())) == 2


def test_auto_precision_trains_in_the_measured_choice_and_records_it(
    make_cfg, tmp_path, monkeypatch, undecided
):
    """A run with precision=auto on a bf16-fast CPU trains under bf16 autocast, with its frozen Linear
    weights in bf16 while it trains and in fp32 again afterwards; its config says what it chose."""
    measured(monkeypatch, 191, 421)
    cast = []

    def spy(model):
        cast.append(frozen_linears_to_bf16(model))
        return cast[-1]

    monkeypatch.setattr(precision, "frozen_linears_to_bf16", spy)
    train(
        make_cfg(*TINY, "trainer.precision=auto", "trainer.max_steps=1", "trainer.eval_steps=1", run="auto")
    )
    recorded = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert recorded["trainer"]["precision"] == "bf16-mixed"
    (layers,) = cast
    assert layers and all(m.weight.dtype == torch.float32 for m in layers)


def test_bf16_mixed_training_leaves_lora_inputs_uncast_and_casts_again_after(make_cfg, monkeypatch):
    """bf16-mixed: PEFT's input cast is off from the first training batch to the end of training (then on
    again, for probes and saving); 32-true leaves it alone."""
    calls, real = [], precision.uncast_lora_inputs

    def spy(model, uncast=True):
        calls.append(uncast)
        return real(model, uncast)

    monkeypatch.setattr(precision, "uncast_lora_inputs", spy)
    steps = ["trainer.max_steps=2", "trainer.eval_steps=2"]
    train(make_cfg(*TINY, "trainer.precision=bf16-mixed", "model.dtype=bfloat16", *steps, run="bf16"))
    assert calls == [True, False]
    calls.clear()
    train(make_cfg(*TINY, "trainer.precision=32-true", *steps, run="fp32"))
    assert calls == []


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_scatter_dropout_has_the_rate_and_scale_of_dropout(p):
    """Over 2M elements: dropped fraction p (within 5 sigma) in both halves of the tensor, kept elements
    scaled by exactly 1 / (1 - p), mean preserved, neighbours' masks uncorrelated."""
    torch.manual_seed(0)
    n = 2_000_000
    out = ScatterDropout(p).train()(torch.ones(n))
    dropped = out == 0
    tolerance = 5 * (p * (1 - p) / (n / 2)) ** 0.5
    for half in (dropped[: n // 2], dropped[n // 2 :]):
        assert abs(half.float().mean().item() - p) < tolerance
    kept = out[~dropped]
    assert torch.equal(kept, torch.full_like(kept, 1 / (1 - p)))
    assert abs(out.mean().item() - 1) < 5 * (p / (1 - p) / n) ** 0.5
    pairs = torch.stack([dropped[0::2].float(), dropped[1::2].float()])
    assert abs(torch.corrcoef(pairs)[0, 1].item()) < 0.01


def test_scatter_dropout_drops_each_element_independently():
    """How many of 10 elements are dropped follows Binomial(10, p): its mean and variance (a fixed number of
    drawn positions, or positions without repeats, would narrow the spread) over 20,000 tensors."""
    torch.manual_seed(0)
    p, n, trials = 0.3, 10, 20_000
    drop = ScatterDropout(p).train()
    counts = torch.tensor([float((drop(torch.ones(n)) == 0).sum()) for _ in range(trials)])
    assert abs(counts.mean().item() - n * p) < 5 * (n * p * (1 - p) / trials) ** 0.5
    assert abs(counts.var().item() / (n * p * (1 - p)) - 1) < 0.05


def test_scatter_dropout_is_seeded_shaped_and_differentiable():
    """Same seed, same mask; eval mode and p=0 are the identity; the gradient is the mask times the scale,
    also for an input that is not row-major."""
    x = torch.randn(3, 5, 7, requires_grad=True)
    drop = ScatterDropout(0.3).train()
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, drop(x))
    assert a.shape == x.shape and not torch.equal(a, drop(x))
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0) * drop.scale)
    assert drop.eval()(x) is x and ScatterDropout(0.0).train()(x) is x
    t = torch.randn(7, 5, requires_grad=True)
    torch.manual_seed(2)
    b = drop.train()(t.T)
    assert torch.equal(b, torch.where(b != 0, t.T * drop.scale, 0))
    b.backward(torch.ones_like(b))
    assert torch.equal(t.grad.T, (b != 0) * drop.scale)
    with pytest.raises(ValueError, match="dropout probability"):
        ScatterDropout(1.0)
    drop(torch.randn(4, 6, requires_grad=True)).add_(1).sum().backward()  # in place, as nn.Dropout allows


def test_scatter_dropout_gives_the_same_gradients_under_activation_checkpointing(make_cfg, cache_dir):
    """Checkpointing replays the generator when it recomputes a layer: the same positions are dropped, so
    logits and LoRA gradients equal those of a run that keeps its activations."""
    typed = validate(make_cfg("model=tiny", "lora.r=4", "lora.dropout=0.3"))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(4)
        model = apply_peft(load_model(typed.model, str(cache_dir)), typed.lora, checkpointing).train()
        results.append(products(random_lora_b(model)))
    (plain, plain_grads), (checkpointed, grads) = results
    assert model.is_activation_checkpointing
    assert torch.allclose(checkpointed, plain, atol=1e-6)
    assert all(torch.allclose(grads[n], plain_grads[n], atol=1e-6) for n in plain_grads)


def test_lora_layers_get_scatter_dropout_unless_switched_off(make_cfg, cache_dir):
    """Every LoRA layer's dropout is replaced (lora.fast_dropout=true), none with false."""

    def lora_model(*overrides):
        typed = validate(make_cfg("model=tiny", "lora.r=4", *overrides))
        return apply_peft(load_model(typed.model, str(cache_dir)), typed.lora)

    def kinds(model) -> set[str]:
        layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
        return {type(d).__name__ for m in layers for d in m.lora_dropout.values()}

    assert kinds(lora_model()) == {"ScatterDropout"}
    plain = lora_model("lora.fast_dropout=false")
    assert kinds(plain) == {"Dropout"}
    layers = sum(1 for m in plain.modules() if hasattr(m, "lora_dropout"))
    assert scatter_lora_dropout(plain) == layers > 0
    assert kinds(plain) == {"ScatterDropout"}


def test_frozen_bf16_copies_change_no_product_and_are_put_back(make_cfg, cache_dir):
    """Under bf16 autocast, casting the frozen Linear weights once gives bit-identical logits and LoRA
    gradients (autocast rounds the same weights the same way); embeddings stay fp32; training's end puts
    back the very fp32 tensors."""
    typed = validate(make_cfg("model=tiny", "lora.r=4", "lora.dropout=0", "lora.init=gaussian"))
    model = apply_peft(load_model(typed.model, str(cache_dir)), typed.lora)
    reference, reference_grads = products(model, autocast=True)
    fp32 = {n: p.data_ptr() for n, p in model.named_parameters()}
    callback = FrozenLinearsInBf16()
    callback._kept = frozen_linears_to_bf16(model)
    assert callback._kept and all(m.weight.dtype == torch.bfloat16 for m in callback._kept)
    assert all(not m.weight.requires_grad for m in callback._kept)
    assert model.get_input_embeddings().weight.dtype == torch.float32
    logits, grads = products(model, autocast=True)
    assert torch.equal(logits, reference)
    assert all(torch.equal(grads[n], reference_grads[n]) for n in grads)
    callback.on_train_end(None, None)
    assert all(p.dtype == torch.float32 and p.data_ptr() == fp32[n] for n, p in model.named_parameters())


@pytest.mark.parametrize(("method", "uncast"), [("default", torch.bfloat16), ("dora", torch.float32)])
def test_uncast_lora_inputs_change_no_product_with_bf16_weights(make_cfg, cache_dir, method, uncast):
    """bf16 base weights, fp32 adapters, dropout on, bf16 autocast: with PEFT's input cast off, plain LoRA's
    dropout runs on the bf16 input (DoRA's layers keep the cast), and logits and LoRA gradients are
    bit-identical to PEFT's cast (same seed, same masks); training's end turns the cast back on."""
    overrides = ("model=tiny", "model.dtype=bfloat16", "lora.r=4", "lora.dropout=0.3", "lora.init=gaussian")
    typed = validate(make_cfg(*overrides, f"lora={method}"))
    model = apply_peft(load_model(typed.model, str(cache_dir)), typed.lora).train()
    seen = []
    drops = [m for m in model.modules() if isinstance(m, ScatterDropout)]
    for drop in drops:
        drop.register_forward_hook(lambda module, args, out: seen.append(args[0].dtype))

    def forward():
        seen.clear()
        return products(model, autocast=True)

    reference, reference_grads = forward()
    assert drops and set(seen) == {torch.float32}  # PEFT casts each input to the fp32 adapter
    callback = UncastLoraInputs()
    callback._model = model
    assert (precision.uncast_lora_inputs(model) > 0) == (uncast == torch.bfloat16)
    logits, grads = forward()
    assert set(seen) == {uncast}
    assert torch.equal(logits, reference)
    assert all(torch.equal(grads[n], reference_grads[n]) for n in grads)
    callback.on_train_end(None, None)
    forward()
    assert set(seen) == {torch.float32}


def test_a_failed_fit_undoes_both_training_only_changes(make_cfg, cache_dir):
    """on_exception puts the fp32 frozen weights back and turns PEFT's input cast on again, as the end of
    training does, before anything saves or answers with the model."""
    typed = validate(make_cfg("model=tiny", "model.dtype=bfloat16", "lora.r=4"))
    model = apply_peft(load_model(typed.model, str(cache_dir)), typed.lora)
    frozen, uncast = FrozenLinearsInBf16(), UncastLoraInputs()
    frozen._kept = {m: m.weight.data for m in model.modules() if isinstance(m, torch.nn.Linear)}
    before = {m: w.data_ptr() for m, w in frozen._kept.items()}
    for module in frozen._kept:
        module.weight.data = module.weight.data.float()
    uncast._model = model
    assert precision.uncast_lora_inputs(model) > 0
    for callback in (frozen, uncast):
        callback.on_exception(None, None, RuntimeError("failed step"))
    assert all(m.weight.data_ptr() == ptr for m, ptr in before.items())
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


class WidthCasts(TorchDispatchMode):
    """Counts fp32 -> bf16 copies of (tokens x width) activations: a norm's output, a projection's input."""

    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.tokens, self.width, self.count = tokens, width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and source.dtype == torch.float32
            and kwargs.get("dtype") == torch.bfloat16
            and source.shape[-1] == self.width
            and source.numel() == self.tokens * self.width
        ):
            self.count += 1
        return func(*args, **kwargs)


def test_norm_outputs_in_bf16_keep_the_products_and_cast_each_once(make_cfg, cache_dir):
    """fp32 weights, bf16 autocast, LoRA dropout on: with the norms handing on bf16, each norm's output is
    cast once, not once per projection and adapter that reads it; with dropout off the logits are
    bit-identical, with it on logits and LoRA gradients agree to bf16 rounding (the dropout scales after
    the rounding); without autocast nothing changes; training's end removes the hooks."""
    typed = validate(make_cfg("model=tiny", "lora.r=4", "lora.dropout=0.3"))
    torch.manual_seed(5)
    model = random_lora_b(apply_peft(load_model(typed.model, str(cache_dir)), typed.lora))
    precision.uncast_lora_inputs(model)  # as bf16-mixed training does: else PEFT casts bf16 inputs back
    layers, width = model.config.num_hidden_layers, model.config.hidden_size

    def eval_logits():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model.eval()(input_ids=token_ids()).logits

    def counted():
        model.train()
        with WidthCasts(token_ids().numel(), width) as casts:
            found = products(model, autocast=True)
        return (*found, casts.count)

    reference_eval, (reference, reference_grads, reference_casts) = eval_logits(), counted()
    plain_logits, plain_grads = products(model.train())
    callback = NormOutputsInBf16()
    cpu = SingleDeviceStrategy(torch.device("cpu"))
    trainer = SimpleNamespace(strategy=cpu, precision="bf16-mixed", accelerator=CPUAccelerator())
    callback._apply(trainer, SimpleNamespace(model=model))
    assert callback._model is model and len(callback._hooks) == 2 * layers
    assert torch.equal(eval_logits(), reference_eval)
    logits, grads, casts = counted()
    # Per layer 5 projections and 5 adapters read the two norms' outputs: 10 casts, now the hooks' 2.
    assert reference_casts - casts == 8 * layers
    scale = reference.float().abs().max()
    assert (logits.float() - reference.float()).abs().max() <= 2e-2 * scale
    for name, grad in grads.items():
        assert (grad - reference_grads[name]).norm() <= 5e-2 * reference_grads[name].norm(), name
    logits, grads = products(model)  # without autocast
    assert torch.equal(logits, plain_logits) and all(torch.equal(grads[n], plain_grads[n]) for n in grads)
    callback.on_train_end(None, None)
    assert not callback._hooks and callback._model is None
    logits, grads, casts = counted()
    assert casts == reference_casts and torch.equal(logits, reference)
    assert all(torch.equal(grads[n], reference_grads[n]) for n in grads)


def test_norm_outputs_stay_fp32_where_they_feed_the_residual_stream_or_off_a_cpu(make_cfg, cache_dir):
    """A family whose norms' outputs reach the residual stream (OLMo-2) gets no hooks; neither does a run
    in fp32, or on another accelerator."""
    typed = validate(make_cfg("model=tiny", "lora.r=4"))
    model = apply_peft(load_model(typed.model, str(cache_dir)), typed.lora)
    cpu = SingleDeviceStrategy(torch.device("cpu"))
    for precision_, accelerator in (("32-true", CPUAccelerator()), ("bf16-mixed", object())):
        callback = NormOutputsInBf16()
        trainer = SimpleNamespace(strategy=cpu, precision=precision_, accelerator=accelerator)
        callback._apply(trainer, SimpleNamespace(model=model))
        assert callback._model is None and not callback._hooks
    assert precision.norm_outputs_to_bf16(model)
    model.config.model_type = "olmo2"
    assert precision.norm_outputs_to_bf16(model) == []


def test_bf16_mixed_training_hooks_the_norms_and_removes_them_after(make_cfg, monkeypatch):
    """A bf16-mixed run on a CPU hooks the norms at its first training batch and leaves none behind."""
    hooked, real = [], precision.norm_outputs_to_bf16

    def spy(model):
        hooked.append(model)
        return real(model)

    monkeypatch.setattr(precision, "norm_outputs_to_bf16", spy)
    train(make_cfg(*TINY, "trainer.precision=bf16-mixed", "trainer.max_steps=2", run="norms"))
    assert len(hooked) == 1
    norms = [m for m in hooked[0].modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms and not any(m._forward_hooks for m in norms)
