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
