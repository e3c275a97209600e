"""FSDP on two CPU processes (gloo), through the real command line: the same losses, gradient norms,
validation and checkpointed weights as DDP on the same config, an exact resume from its own step
checkpoint, and full (unsharded) weights in what it saves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, files_under, logged_series, train_processes
from safetensors.torch import load_file

from sft.config import ConfigError, validate
from sft.training.model import apply_peft, load_model
from sft.training.strategy import CPUFSDPStrategy, build_strategy

COMMON = [
    *TINY,
    "lora.dropout=0",  # dropout draws from each process's RNG differently
    "optimizer.lr=1e-3",
    "trainer.devices=2",
    "trainer.max_steps=4",
    "trainer.save_steps=2",
    "trainer.eval_steps=2",
    "trainer.save_total_limit=5",
    "evaluation.parity.prompts=2",  # FSDP answers from the saved weights, DDP from the model in memory
    "evaluation.parity.max_new_tokens=8",
]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_tensors(got: dict, expected: dict, **tolerance) -> None:
    assert got.keys() == expected.keys() and expected
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        torch.testing.assert_close(got[key], value, **tolerance)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """The same LoRA run under DDP and under FSDP, two gloo processes each."""
    root = tmp_path_factory.mktemp("fsdp-cpu")
    return SimpleNamespace(
        root=root,
        ddp=train_processes(root / "ddp", cache_dir, *COMMON, "strategy=ddp"),
        fsdp=train_processes(root / "fsdp", cache_dir, *COMMON, "strategy=fsdp"),
    )


def test_fsdp_on_cpu_is_allowed_in_full_precision_only(make_cfg, cache_dir):
    typed = validate(make_cfg(*TINY, "strategy=fsdp", "trainer.devices=2"))  # trainer=debug: the CPU
    model = apply_peft(load_model(typed.model, str(cache_dir)), typed.lora)
    assert type(build_strategy(typed.strategy, typed.trainer.precision, model, "cpu")) is CPUFSDPStrategy
    for precision, low in (("bf16-mixed", "bfloat16"), ("16-mixed", "float16")):
        with pytest.raises(ConfigError) as err:
            validate(make_cfg(*TINY, "strategy=fsdp", f"trainer.precision={precision}"))
        assert f"trainer.precision='{precision}': 32-true for strategy fsdp on the CPU" in str(err.value)
        assert f"autocasts on CUDA only, so every layer would run in {low})" in str(err.value)
    with pytest.raises(ConfigError, match="strategy.cpu_offload=True: false for strategy fsdp on the CPU"):
        validate(make_cfg(*TINY, "strategy=fsdp", "strategy.cpu_offload=true"))


def test_fsdp_on_two_cpu_processes_matches_ddp(runs):
    ddp, fsdp = runs.ddp, runs.fsdp
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["strategy"] == "CPUFSDPStrategy"
    assert summary["batch"] == json.loads((ddp / "summary.json").read_text())["batch"]
    assert summary["batch"]["world_size"] == 2
    assert "(CPUFSDPStrategy, 1 node(s))" in (fsdp / "train.log").read_text()

    # The same examples per step and the same float32 arithmetic but for the order of the cross-rank
    # sums (all-reduce vs reduce-scatter of the gradients, the norm over shards). Observed: losses and
    # validation identical, gradient norms within 2.4e-7 (1.3e-7 relative).
    for key in ("train/loss", "train/grad_norm", "val/loss"):
        one, two = logged_series(ddp, key), logged_series(fsdp, key)
        assert one.keys() == two.keys() and one, key
        for step in one:
            assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), (key, step, one, two)
    assert summary["val_loss"] == pytest.approx(
        json.loads((ddp / "summary.json").read_text())["val_loss"], rel=1e-5
    )

    # Rank 0 alone wrote every file, and the checkpoints hold the full trainable weights under DDP's
    # names (gathered from the shards, no wrapper prefixes) with the same values.
    assert files_under(fsdp) == files_under(ddp)
    for name in ("step-000002.ckpt", "last.ckpt"):
        _assert_same_tensors(
            _weights(fsdp / "checkpoints" / name), _weights(ddp / "checkpoints" / name), rtol=1e-5, atol=1e-6
        )


def test_fsdp_records_the_parity_answers_ddp_records(runs):
    # Under FSDP the model in memory is sharded: the answers come from the saved adapter on its base.
    one, two = (
        json.loads((run / "parity_reference.json").read_text())["rows"] for run in (runs.ddp, runs.fsdp)
    )
    assert len(one) == 2 and [r["answer_ids"] for r in two] == [r["answer_ids"] for r in one]
    assert [r["prompt_ids"] for r in two] == [r["prompt_ids"] for r in one]


def test_fsdp_on_cpu_resumes_exactly_from_its_step_checkpoint(runs, cache_dir):
    resumed = train_processes(
        runs.root / "resumed",
        cache_dir,
        *COMMON,
        "strategy=fsdp",
        f"resume={runs.fsdp / 'checkpoints' / 'step-000002.ckpt'}",
    )
    # Step 3 follows the optimizer state restored from the checkpoint (AdamW's moments).
    for key in ("train/loss", "train/grad_norm"):
        after, before = logged_series(resumed, key), logged_series(runs.fsdp, key)
        assert after.keys() == {2, 3}, key
        for step in after:
            assert after[step] == pytest.approx(before[step], rel=1e-5, abs=1e-6), (key, step, after, before)
    assert json.loads((resumed / "summary.json").read_text())["global_step"] == 4


def test_fsdp_adapter_matches_ddp_and_loads_in_a_plain_session(runs, cache_dir):
    from sft.serving.export import load_run

    ddp = load_file(runs.ddp / "adapter" / "adapter_model.safetensors")
    fsdp = load_file(runs.fsdp / "adapter" / "adapter_model.safetensors")
    _assert_same_tensors(fsdp, ddp, rtol=1e-5, atol=1e-6)
    merged = load_run(runs.fsdp, str(cache_dir))[0].state_dict()
    _assert_same_tensors(merged, load_run(runs.ddp, str(cache_dir))[0].state_dict(), rtol=1e-5, atol=1e-6)


def test_fsdp_full_fine_tune_saves_full_weights(tmp_path, cache_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    run = train_processes(tmp_path, cache_dir, *COMMON, "strategy=fsdp", "lora=none", "trainer.max_steps=2")
    saved = load_file(run / "model" / "model.safetensors")
    # Every weight whole, as a model built from the saved config has it (a shard would be flat or empty).
    plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run / "model")).state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in plain.items()}
    # The weights of the best evaluation (restore_best), as the checkpoint gathered them.
    best = {k.removeprefix("model."): v for k, v in _weights(run / "checkpoints" / "best.ckpt").items()}
    _assert_same_tensors(saved, best, rtol=0, atol=0)
    loaded = AutoModelForCausalLM.from_pretrained(run / "model").state_dict()
    _assert_same_tensors(loaded, saved, rtol=0, atol=0)
