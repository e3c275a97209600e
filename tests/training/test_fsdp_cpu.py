"""FSDP on two CPU processes (gloo), through the real command line: the same losses, gradient norms,
validation and checkpointed weights as one process on the same config (which DDP matches too:
tests/training/test_strategies.py), an exact resume from its own step checkpoint, and full (unsharded)
weights in what it saves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, compose_train, files_under, logged_series, train_processes
from safetensors.torch import load_file

from sft.config import ConfigError, validate
from sft.train import train
from sft.training.model import apply_peft, load_model
from sft.training.strategy import CPUFSDPStrategy, build_strategy

COMMON = [
    *TINY,
    "lora.dropout=0",  # dropout draws from each process's RNG differently
    "optimizer.lr=1e-3",
    "trainer.max_steps=4",
    "trainer.save_steps=2",
    "trainer.eval_steps=2",
    "trainer.save_total_limit=5",
    "evaluation.parity.prompts=2",  # FSDP answers from the saved weights, one process from memory
    "evaluation.parity.max_new_tokens=8",
]
FSDP = [*COMMON, "trainer.devices=2", "strategy=fsdp"]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_tensors(got: dict, expected: dict, **tolerance) -> None:
    assert got.keys() == expected.keys() and expected
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        torch.testing.assert_close(got[key], value, **tolerance)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """The same LoRA run in one process (micro-batch 4, 2 accumulation steps) and under FSDP on two gloo
    processes (micro-batch 4 each, no accumulation)."""
    root = tmp_path_factory.mktemp("fsdp-cpu")
    train(compose_train(root / "single", root, cache_dir, *COMMON))
    return SimpleNamespace(
        root=root, single=root / "single", fsdp=train_processes(root / "fsdp", cache_dir, *FSDP)
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


def test_fsdp_on_two_cpu_processes_matches_one_process(runs):
    single, fsdp = runs.single, runs.fsdp
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["strategy"] == "CPUFSDPStrategy"
    assert summary["batch"] == {
        "effective_batch_size": 8,
        "micro_batch_size": 4,
        "world_size": 2,
        "accumulate_grad_batches": 1,
    }
    assert json.loads((single / "summary.json").read_text())["batch"]["accumulate_grad_batches"] == 2
    assert "(CPUFSDPStrategy, 1 node(s))" in (fsdp / "train.log").read_text()

    # Each step trains on the same examples (each rank takes every other one of the step's block); only
    # the order of the float32 sums differs (micro-batch composition, the reduce-scatter of the gradients,
    # the norm over shards). Observed: losses, gradient norms and validation within 8.1e-8 relative
    # (4.8e-7 absolute on losses near 6).
    for key in ("train/loss", "train/grad_norm", "val/loss"):
        one, two = logged_series(single, key), logged_series(fsdp, key)
        assert one.keys() == two.keys() and one, key
        for step in one:
            assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), (key, step, one, two)
    assert summary["val_loss"] == pytest.approx(
        json.loads((single / "summary.json").read_text())["val_loss"], rel=1e-5
    )

    # Rank 0 alone wrote every file (the command line adds Hydra's .hydra/ and its log file), and the
    # checkpoints hold the full trainable weights under the one-process names (gathered from the shards,
    # no wrapper prefixes) with the same values.
    hydra = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log"}
    assert files_under(fsdp) == files_under(single) | hydra
    for name in ("step-000002.ckpt", "last.ckpt"):
        _assert_same_tensors(
            _weights(fsdp / "checkpoints" / name),
            _weights(single / "checkpoints" / name),
            rtol=1e-5,
            atol=1e-6,
        )


def test_fsdp_records_the_parity_answers_one_process_records(runs):
    # Under FSDP the model in memory is sharded: the answers come from the saved adapter on its base.
    one, two = (
        json.loads((run / "parity_reference.json").read_text())["rows"] for run in (runs.single, runs.fsdp)
    )
    assert len(one) == 2 and [r["answer_ids"] for r in two] == [r["answer_ids"] for r in one]
    assert [r["prompt_ids"] for r in two] == [r["prompt_ids"] for r in one]


def test_fsdp_on_cpu_resumes_exactly_from_its_step_checkpoint(runs, cache_dir):
    resumed = train_processes(
        runs.root / "resumed",
        cache_dir,
        *FSDP,
        f"resume={runs.fsdp / 'checkpoints' / 'step-000002.ckpt'}",
    )
    # Step 3 follows the optimizer state restored from the checkpoint (AdamW's moments).
    for key in ("train/loss", "train/grad_norm"):
        after, before = logged_series(resumed, key), logged_series(runs.fsdp, key)
        assert after.keys() == {2, 3}, key
        for step in after:
            assert after[step] == pytest.approx(before[step], rel=1e-5, abs=1e-6), (key, step, after, before)
    assert json.loads((resumed / "summary.json").read_text())["global_step"] == 4


def test_fsdp_adapter_matches_one_process_and_loads_in_a_plain_session(runs, cache_dir):
    from sft.serving.export import load_run

    single = load_file(runs.single / "adapter" / "adapter_model.safetensors")
    fsdp = load_file(runs.fsdp / "adapter" / "adapter_model.safetensors")
    _assert_same_tensors(fsdp, single, rtol=1e-5, atol=1e-6)
    merged = load_run(runs.fsdp, str(cache_dir))[0].state_dict()
    expected = load_run(runs.single, str(cache_dir))[0].state_dict()
    _assert_same_tensors(merged, expected, rtol=1e-5, atol=1e-6)


def test_fsdp_full_fine_tune_saves_full_weights(tmp_path, cache_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    run = train_processes(tmp_path, cache_dir, *FSDP, "lora=none", "trainer.max_steps=2")
    saved = load_file(run / "model" / "model.safetensors")
    # Every weight whole, as a model built from the saved config has it (a shard would be flat or empty).
    plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run / "model")).state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in plain.items()}
    # The weights of the best evaluation (restore_best), as the checkpoint gathered them.
    best = {k.removeprefix("model."): v for k, v in _weights(run / "checkpoints" / "best.ckpt").items()}
    _assert_same_tensors(saved, best, rtol=0, atol=0)
    loaded = AutoModelForCausalLM.from_pretrained(run / "model").state_dict()
    _assert_same_tensors(loaded, saved, rtol=0, atol=0)
