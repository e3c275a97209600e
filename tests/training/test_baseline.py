"""The evaluation before training, kept and reused by runs that start from the same model on the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, logged_series

import sft.training.run as run_module
from sft.config import validate
from sft.train import train
from sft.training.baseline import baseline_key

REUSE = [*TINY, "reuse_initial_eval=true", "probe.enabled=true", "probe.max_new_tokens=4"]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_a_second_run_reads_the_evaluation_before_training_and_trains_the_same(
    make_cfg, tmp_path, monkeypatch
):
    """The same job again: no validation before training, the same held-out metrics and probe answers
    before, and (the random generators untouched by that validation) the same training to the last bit.
    Another learning rate reuses it too; another validation split does not."""
    cache = tmp_path / "cache"
    validations = []
    real = run_module._validate

    def counted(trainer, module, datamodule, ckpt_path=None):
        validations.append(ckpt_path)
        return real(trainer, module, datamodule, ckpt_path=ckpt_path)

    monkeypatch.setattr(run_module, "_validate", counted)

    def job(run: str, *overrides: str) -> dict:
        validations.clear()
        # The model cache stays the session's (built once); the kept evaluations go to this test's own.
        cfg = make_cfg(*REUSE, "trainer.max_steps=2", *overrides, run=run)
        cfg.paths.cache_dir = str(cache)
        train(cfg)
        return {"validations": len(validations), **_summary(tmp_path / run)}

    first = job("first")
    again = job("again")
    assert (first["validations"], again["validations"]) == (2, 1)  # before and after; after only
    kept = list((cache / "baseline").iterdir())
    assert len(kept) == 1
    assert first["initial_val_reused_from"] is None and again["initial_val_reused_from"] == str(kept[0])
    assert again["initial_val"] == first["initial_val"] and first["initial_val"]["val/loss"] > 0
    assert again["probes"][0]["before"] == first["probes"][0]["before"]
    assert again["train_loss"] == first["train_loss"] and again["val_loss"] == first["val_loss"]
    assert logged_series(tmp_path / "again", "val/loss")[0] == pytest.approx(first["initial_val_loss"])
    assert 0 < again["seconds_to_training"] <= again["seconds_to_first_step"]  # rounded to 0.1 s

    other_lr = job("other_lr", "optimizer.lr=1e-3")
    assert other_lr["validations"] == 1 and other_lr["initial_val"] == first["initial_val"]
    other_rows = job("other_rows", "data.val_size=6")
    assert other_rows["validations"] == 2 and len(list((cache / "baseline").iterdir())) == 2


@pytest.mark.parametrize(
    ("override", "same"),
    [
        ("optimizer.lr=0.1", True),
        ("trainer.max_steps=7", True),
        ("preset.epochs=9", True),
        ("lora.dropout=0.3", True),
        ("trainer.gradient_checkpointing=true", True),
        ("task_name=other", True),
        ("lora.r=4", False),
        ("lora.target=[q_proj]", False),
        ("data.val_size=4", False),
        ("data.cutoff_len=128", False),
        ("trainer.precision=bf16-mixed", False),
        ("trainer.eval_micro_batch_size=2", False),
        ("model.attn_implementation=eager", False),
        ("probe.max_new_tokens=5", False),
        ("seed=7", False),
    ],
)
def test_the_key_covers_what_the_evaluation_depends_on_and_nothing_else(make_cfg, tmp_path, override, same):
    """Settings that only shape training keep the key; the model, adapter, rows, precision, evaluation
    batches and probes each make a new one."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"weights")

    def key(*overrides: str) -> str | None:
        return baseline_key(validate(make_cfg(*REUSE, *overrides)), str(weights), None, "data-key")

    assert key() is not None
    assert (key(override) == key()) is same


def test_no_key_for_changed_weights_other_data_or_runs_that_must_evaluate(make_cfg, tmp_path):
    """Rewritten base weights or other tokenized rows are a new key; a hub model without a known commit,
    rows without a cache key, a run from another run, and reuse switched off have none."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"weights")
    typed = validate(make_cfg(*REUSE))
    before = baseline_key(typed, str(weights), None, "data-key")
    (weights / "model.safetensors").write_bytes(b"other weights")
    assert baseline_key(typed, str(weights), None, "data-key") != before
    assert baseline_key(typed, str(weights), None, "other-data") != before
    assert baseline_key(typed, "org/hub-model", None, "data-key") is None
    assert baseline_key(typed, str(weights), None, None) is None
    switched_off = validate(make_cfg(*REUSE, "reuse_initial_eval=false"))
    assert baseline_key(switched_off, str(weights), None, "data-key") is None
    typed.init_from = str(tmp_path)
    assert baseline_key(typed, str(weights), None, "data-key") is None
