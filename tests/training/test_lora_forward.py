"""FusedLoraLinear: LoRA's adapter product added inside the GEMM while training, PEFT's layers after."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, products, random_lora_b, token_ids
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy
from peft.tuners.lora.layer import Linear as LoraLinear

import sft.training.lora_forward as lora_forward
from sft.config import validate
from sft.train import train
from sft.training.lora_forward import FusedLoraAdds, FusedLoraLinear, fuse_lora_adds
from sft.training.model import apply_peft, load_model
from sft.training.precision import NormOutputsInBf16, UncastLoraInputs

IDS = token_ids()


def lora_model(make_cfg, cache_dir, *overrides):
    """The tiny model with LoRA (dropout 0.3), every lora_B drawn at random so the adapter moves logits."""
    typed = validate(make_cfg("model=tiny", "lora.r=4", "lora.dropout=0.3", *overrides))
    torch.manual_seed(5)
    return random_lora_b(apply_peft(load_model(typed.model, str(cache_dir)), typed.lora).train())


@pytest.mark.parametrize(
    ("overrides", "autocast", "tolerance"),
    [
        ((), False, 1e-5),
        (("lora.fast_dropout=false",), False, 1e-5),
        (("model.dtype=bfloat16",), True, 5e-2),
        (("model.dtype=bfloat16",), False, 0.0),
    ],
    ids=["fp32", "torch-dropout", "bf16-autocast", "bf16-weights-without-autocast"],
)
def test_fused_layers_compute_peft_products(make_cfg, cache_dir, overrides, autocast, tolerance):
    """Same logits and LoRA gradients as PEFT's layers, with dropout on (the same masks): to 1e-5 in fp32,
    to bf16's rounding under autocast with bf16 weights (relative to the largest logit, to each gradient's
    norm); bf16 weights without autocast take PEFT's path (its sum in the fp32 adapter's dtype): exactly."""
    model = lora_model(make_cfg, cache_dir, *overrides)
    reference, reference_grads = products(model, autocast)
    assert fuse_lora_adds(model) > 0
    assert all(type(m) is not LoraLinear for m in model.modules())
    logits, grads = products(model, autocast)
    scale = reference.float().abs().max()
    assert (logits.float() - reference.float()).abs().max() <= tolerance * scale
    assert not torch.equal(logits, products(lora_model(make_cfg, cache_dir, *overrides, "lora.r=2"))[0])
    for name, grad in grads.items():
        expected = reference_grads[name]
        assert (grad - expected).norm() <= tolerance * expected.norm(), name


def test_fused_layers_fall_back_to_peft_where_the_sum_is_not_plain(make_cfg, cache_dir):
    """A disabled adapter gives the base model's logits; DoRA's layers (a variant) compute PEFT's products
    bit for bit; putting PEFT's class back restores every layer."""
    model = lora_model(make_cfg, cache_dir)
    with model.disable_adapter(), torch.no_grad():
        base = model(input_ids=IDS).logits
    fused = fuse_lora_adds(model)
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, base)
    assert fuse_lora_adds(model, fused=False) == fused
    assert all(type(m) is not FusedLoraLinear for m in model.modules())

    dora = lora_model(make_cfg, cache_dir, "lora=dora")
    reference, reference_grads = products(dora)
    fuse_lora_adds(dora)
    logits, grads = products(dora)
    assert torch.equal(logits, reference)
    assert all(torch.equal(grads[n], reference_grads[n]) for n in grads)


def test_training_fuses_the_adds_and_puts_peft_layers_back(make_cfg, cache_dir, monkeypatch):
    """A run fuses its LoRA layers at the first training batch and puts PEFT's back when training ends
    (before the final evaluation and saving); a failed fit puts them back too."""
    calls, real = [], lora_forward.fuse_lora_adds

    def spy(model, fused=True):
        calls.append(fused)
        return real(model, fused)

    monkeypatch.setattr(lora_forward, "fuse_lora_adds", spy)
    train(make_cfg(*TINY, "trainer.max_steps=2", "trainer.eval_steps=2", run="fused"))
    assert calls == [True, False]

    model = lora_model(make_cfg, cache_dir)
    callback = FusedLoraAdds()
    callback._model = model
    assert real(model) > 0
    callback.on_exception(None, None, RuntimeError("failed step"))
    assert not any(type(m) is FusedLoraLinear for m in model.modules())
    assert any(type(m) is LoraLinear for m in model.modules())


def test_the_training_switches_leave_fsdp_alone(make_cfg, cache_dir):
    """Under FSDP no training-time switch touches the LoRA layers (FSDP wraps them and runs its own mixed
    precision); on one device both do."""
    strategies = ((FSDPStrategy(), False), (SingleDeviceStrategy(torch.device("cpu")), True))
    for callback in (FusedLoraAdds(), UncastLoraInputs(), NormOutputsInBf16()):
        for strategy, switched in strategies:
            model = lora_model(make_cfg, cache_dir)
            trainer = SimpleNamespace(strategy=strategy, precision="bf16-mixed", accelerator=CPUAccelerator())
            callback._apply(trainer, SimpleNamespace(model=model))
            assert (callback._model is model) == switched
            callback._restore()
