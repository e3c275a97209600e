"""Eager attention while training short unpacked rows on a CPU: switched on for the fit only, same numbers."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from conftest import TINY, logged_series
from lightning.pytorch.accelerators import CPUAccelerator

from sft.config import validate
from sft.train import train
from sft.training.eager_attention import ShortRowsEagerAttention
from sft.training.model import apply_peft, load_model


@pytest.fixture(scope="module")
def tiny_lora(cache_dir, tmp_path_factory):
    """The tiny model with LoRA, as a run trains it (sdpa attention)."""
    from hydra import compose, initialize_config_dir

    from sft.locations import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        out = tmp_path_factory.mktemp("out")
        overrides = ["model=tiny", "lora.r=4", f"paths.cache_dir={cache_dir}", f"paths.output_dir={out}"]
        cfg = compose("train", overrides=overrides)
    typed = validate(cfg)
    return apply_peft(load_model(typed.model, typed.paths.cache_dir), typed.lora)


def fit(model, *, packing=False, longest=116, accelerator=None):
    """A trainer and module as Lightning hands them to callbacks, for rows of at most `longest` tokens."""
    data = SimpleNamespace(
        cfg=SimpleNamespace(packing=packing, cutoff_len=512),
        stats=SimpleNamespace(length_percentiles={"max": longest}),
    )
    trainer = SimpleNamespace(datamodule=data, accelerator=accelerator or CPUAccelerator())
    return trainer, SimpleNamespace(model=model)


@pytest.mark.parametrize(
    ("max_len", "setting", "eager"),
    [
        (256, {}, True),
        (256, {"longest": 300}, False),  # a row over the limit: its weights would be large
        (256, {"packing": True}, False),  # packed rows attend per sequence (sdpa_segments)
        (256, {"accelerator": object()}, False),  # not a CPU
        (None, {}, False),  # switched off
    ],
)
def test_eager_only_while_training_short_unpacked_rows_on_a_cpu(tiny_lora, max_len, setting, eager):
    callback = ShortRowsEagerAttention(max_len)
    trainer, module = fit(tiny_lora, **setting)
    callback.on_train_start(trainer, module)
    assert tiny_lora.config._attn_implementation == ("eager" if eager else "sdpa")
    callback.on_train_end(trainer, module)
    assert tiny_lora.config._attn_implementation == "sdpa"


def test_a_failed_fit_puts_sdpa_back(tiny_lora):
    callback = ShortRowsEagerAttention(256)
    trainer, module = fit(tiny_lora)
    callback.on_train_start(trainer, module)
    callback.on_exception(trainer, module, RuntimeError("boom"))
    assert tiny_lora.config._attn_implementation == "sdpa"


def test_eager_and_sdpa_train_the_same_steps_in_float32(make_cfg, tmp_path, caplog):
    """Dropout off, float32: the same losses and held-out loss to 1e-6 with and without the switch."""
    same = [*TINY, "lora.dropout=0", "trainer.max_steps=4", "trainer.eval_steps=2"]
    train(make_cfg(*same, "trainer.eager_attention_max_len=null", run="sdpa"))
    with caplog.at_level(logging.INFO, logger="sft.training.eager_attention"):
        train(make_cfg(*same, "trainer.eager_attention_max_len=1024", run="eager"))
    assert "training with eager attention" in caplog.text
    for name in ("train/loss", "val/loss"):
        a, b = logged_series(tmp_path / "sdpa", name), logged_series(tmp_path / "eager", name)
        assert len(a) >= 2 and a.keys() == b.keys()
        assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-6, abs=1e-6)
