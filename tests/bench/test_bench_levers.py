"""scripts/bench_levers.py: every lever still names real settings, and the fused q/k/v estimate runs."""

from __future__ import annotations

import pytest
from conftest import load_script
from hydra import compose, initialize_config_dir

from sft.config import validate
from sft.locations import CONF_DIR


@pytest.fixture(scope="module")
def levers():
    """scripts/bench_levers.py as a module."""
    return load_script("bench_levers")


def test_every_lever_composes_a_valid_training_config(levers, tmp_path):
    """A renamed or removed setting would otherwise surface only minutes into a benchmark's worker."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, (overrides, _, _) in levers.LEVERS.items():
            cfg = compose("train", overrides=[*levers.COMMON, *overrides, f"paths.output_dir={tmp_path}"])
            assert validate(cfg).model.name_or_path, name


def test_the_fused_qkv_estimate_times_both_ways(levers):
    found = levers.fused_qkv_estimate(rounds=1)
    assert found["separate"] > 0 and found["fused"] > 0
    assert found["saved_per_step"] == pytest.approx(30 * (found["separate"] - found["fused"]))


def test_the_matmul_bound_counts_and_times_each_matmul_of_a_step(levers):
    """A step's forward and backward matmuls are recorded with their shapes, counted in FLOPs, timed in the
    step and alone; every other operator is tallied apart."""
    import torch

    a, b = torch.randn(64, 32, requires_grad=True), torch.randn(32, 16)
    calls = levers.record_matmuls(lambda: (a @ b).relu().sum().backward())
    found = levers.matmul_bound(calls, model_flops=1.0, step_seconds=1.0)
    assert sum(row["calls"] for _, row in found["rows"]) == 2  # x @ b, then grad @ b.T
    assert found["matmul_flops"] == 2 * (2 * 64 * 32 * 16)
    assert found["matmul_seconds_alone"] > 0 and found["matmul_seconds_in_step"] > 0
    assert "relu" in dict(found["others"])
    query = ("tensor", (1, 2, 8, 4), (64, 32, 4, 1), "bfloat16")
    forward = levers.matmul_flops("_scaled_dot_product_flash_attention_for_cpu", [query, query, query])
    assert forward == 2 * 2 * 8 * 8 * 4  # scores and values, the causal half of each
    backward = levers.matmul_flops("_scaled_dot_product_flash_attention_for_cpu_backward", [query, query])
    assert backward == 2 * forward
