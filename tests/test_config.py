"""Every config option composes and validates; mistakes are reported by key with what is allowed."""

from __future__ import annotations

import pytest
from conftest import CONF, run_module

from sft.config import TRAIN_GROUPS, ConfigError, TrainConfig, accumulation_steps, override_problems, validate

# experiment/ and sweep/ hold multirun grids and search spaces, composed in test_sweep.py; prepare/ and
# backend/ configure `python -m sft.prepare`, composed in test_prepare_steps.py.
NOT_TRAIN = {"hydra", "local", "experiment", "sweep", "prepare", "backend"}
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in NOT_TRAIN)
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).rglob("*.yaml"))]


def test_every_group_has_options():
    assert {
        "model",
        "data",
        "lora",
        "optimizer",
        "scheduler",
        "preset",
        "trainer",
        "logger",
        "callbacks",
    } <= set(GROUPS)
    assert len(OPTIONS) >= 30


DATA_OF = {"pt": "c4", "dpo": "dpo_en", "kto": "kto_en"}


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_composes_and_validates(make_cfg, group, option):
    overrides = [f"{group}={option}"]
    # Data of another kind than conversations validates under its stage, and a stage with its data.
    if group == "data" and option in DATA_OF.values():
        overrides.append("stage=" + next(stage for stage, data in DATA_OF.items() if data == option))
    if (group, option) == ("data", "ultrafeedback"):  # preference pairs from the hub
        overrides.append("stage=dpo")
    if group == "stage" and option in DATA_OF:
        overrides.append(f"data={DATA_OF[option]}")
    if (group, option) == ("data", "mix"):
        overrides.append("data.datasets=[alpaca_en,self_cognition]")
    if (group, option) == ("data", "base"):  # shared processing only: names no dataset
        with pytest.raises(ConfigError, match="data.datasets: missing; give names"):
            validate(make_cfg(*overrides))
        return
    typed = validate(make_cfg(*overrides))
    assert typed.model.trust_remote_code is False


@pytest.mark.parametrize(
    ("preset", "lr", "rank", "epochs", "batch"),
    [
        ("conservative", 1e-5, 8, 2, 8),
        ("balanced", 5e-5, 32, 3, 32),
        ("aggressive", 1e-4, 64, 5, 64),
    ],
)
def test_presets_are_the_hyperparameter_table(make_cfg, preset, lr, rank, epochs, batch):
    typed = validate(make_cfg(f"preset={preset}"))
    assert typed.optimizer["lr"] == lr
    assert (typed.lora.r, typed.lora.alpha) == (rank, 2 * rank)
    assert typed.trainer.max_epochs == epochs
    assert typed.trainer.effective_batch_size == batch


def test_command_line_overrides_beat_the_preset(make_cfg):
    typed = validate(make_cfg("preset=aggressive", "optimizer.lr=3e-4", "lora.r=16", "trainer.max_epochs=1"))
    assert typed.optimizer["lr"] == 3e-4
    assert (typed.lora.r, typed.lora.alpha) == (16, 32)  # alpha follows the overridden rank
    assert typed.trainer.max_epochs == 1


def test_unknown_key_names_the_closest_valid_one(make_cfg):
    with pytest.raises(ConfigError, match=r"lora\.rank: unknown key; did you mean 'lora\.r'"):
        validate(make_cfg("+lora.rank=8"))


def test_all_bad_values_are_reported_at_once(make_cfg):
    cfg = make_cfg(
        "optimizer.lr=-1", "lora.r=0", "lora.dropout=1.0", "data.val_size=1.5", "trainer.precision=64"
    )
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    for expected in (
        "optimizer.lr=-1",
        "lora.r=0",
        "lora.dropout=1.0",
        "data.val_size=1.5",
        "trainer.precision='64'",
    ):
        assert expected in message
    assert "one of ('auto', '32-true'" in message


def test_wrong_type_names_the_key(make_cfg):
    with pytest.raises(ConfigError, match="trainer.micro_batch_size"):
        validate(make_cfg("trainer.micro_batch_size=four"))


def test_accumulation_is_derived_from_effective_batch_and_devices():
    assert accumulation_steps(32, 4, 1) == 8
    assert accumulation_steps(32, 4, 2) == 4
    assert accumulation_steps(8, 8, 1) == 1
    with pytest.raises(ConfigError, match="not divisible"):
        accumulation_steps(32, 4, 3)


def test_hub_models_do_not_trust_remote_code(make_cfg):
    typed = validate(make_cfg("model=qwen2_5_0_5b"))
    assert typed.model.name_or_path == "Qwen/Qwen2.5-0.5B"
    assert typed.model.trust_remote_code is False


def test_trusting_remote_code_is_logged(make_cfg, caplog):
    from sft.training.model import load_tokenizer

    typed = validate(make_cfg("model=tiny", "model.trust_remote_code=true"))
    load_tokenizer(typed.model, typed.paths.cache_dir)
    assert "trust_remote_code=true" in caplog.text


def test_a_cutoff_the_template_alone_fills_is_refused_before_training(make_cfg, tmp_path):
    from sft.train import train

    with pytest.raises(ConfigError, match=r"data.cutoff_len=20: must exceed 21 tokens.*chatml"):
        train(make_cfg("model=tiny", "logger=csv", "data.cutoff_len=20", run="cut"))
    assert not (tmp_path / "cut" / "checkpoints").exists()


def test_resilience_settings_are_range_checked(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer.max_nonfinite_steps=0: an integer >= 1"):
        validate(make_cfg("trainer.max_nonfinite_steps=0"))
    with pytest.raises(ConfigError, match=r"overwrite"):
        validate(make_cfg("overwrite=maybe"))


def test_command_line_typos_name_the_closest_key_even_across_groups():
    typos = ["lora.rank=8", "trainer.learning_rate=1", "data.datasets.builtin.num_row=4", "data.cutof_len=9"]
    problems = override_problems(typos, TrainConfig, TRAIN_GROUPS)
    assert [p.split(" (allowed")[0] for p in problems] == [
        "lora.rank: unknown key; did you mean 'lora.r'?",
        "trainer.learning_rate: unknown key; did you mean 'optimizer.lr'?",
        "data.datasets.builtin.num_row: unknown key; did you mean 'data.datasets.builtin.num_rows'?",
        "data.cutof_len: unknown key; did you mean 'data.cutoff_len'?",
    ]
    valid = ["preset=aggressive", "trainer.max_steps=1,2", "hydra.run.dir=x", "+extra=1", "optimizer.lr=1e-4"]
    assert (
        override_problems(
            [*valid, "experiment=x", "data.datasets.builtin.num_rows=4", "model.random_init.hidden_size=8"],
            TrainConfig,
            TRAIN_GROUPS,
        )
        == []
    )


def test_the_cli_reports_a_mistyped_key_without_a_traceback():
    result = run_module("sft.train", "trainer.learning_rate=1e-4")
    assert result.returncode == 2
    assert "did you mean 'optimizer.lr'?" in result.stderr and "Traceback" not in result.stderr


def test_every_field_is_checked_by_its_metadata(make_cfg):
    cfg = make_cfg(
        "scheduler.warmup_ratio=1.5",
        "data.num_workers=-1",
        "data.datasets.builtin.num_rows=0",
        "objective.directions=[up]",
        "strategy.reduce_dtype=int8",
        "evaluation.limit=0",
    )
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    for expected in (
        "scheduler.warmup_ratio=1.5: a number in [0, 1)",
        "data.num_workers=-1: an integer >= 0",
        "data.datasets.builtin.num_rows=0: a positive integer",
        "objective.directions[0]='up': one of ('minimize', 'maximize')",
        "strategy.reduce_dtype='int8': one of ('float32', 'bfloat16', 'float16')",
        "evaluation.limit=0: null or a positive integer",
    ):
        assert expected in str(err.value)


def test_a_setting_no_yaml_gives_is_named_as_missing(make_cfg):
    """The schemas hold no defaults: a key removed from the YAML is reported, not silently filled."""
    with pytest.raises(ConfigError, match=r"trainer.micro_batch_size: missing; give trainer.micro_batch_s"):
        validate(make_cfg("~trainer.micro_batch_size"))
