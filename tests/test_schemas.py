"""Every schema agrees with its YAML: each option sets only keys the schema knows, with values of the
schema's types, and the composed config sets every field (the schemas hold no defaults of their own)."""

from __future__ import annotations

from dataclasses import is_dataclass

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from sft.config import (
    BACKENDS,
    COMMANDS,
    PREPARE_STEPS,
    DatasetConfig,
    TrainConfig,
    unknown_keys,
    with_backend,
)
from sft.config.rules import hints
from sft.config.validate import missing_keys
from sft.data.registry import expand_datasets

# Groups of train.yaml whose options are typed by a field of TrainConfig.
GROUPS = {g: s for g, (s, _) in hints(TrainConfig).items() if is_dataclass(s) and (CONF / g).is_dir()}
OPTIONS = [(g, f) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def _own_keys(file) -> DictConfig:
    """A YAML file's settings without its defaults list and Hydra's own settings."""
    node = OmegaConf.load(file)
    node.pop("defaults", None)
    node.pop("hydra", None)
    return node


def _type_problems(node: DictConfig, schema: type) -> str | None:
    """omegaconf's complaint when `node`'s values do not fit the schema's types (interpolations fit)."""
    try:
        OmegaConf.merge(OmegaConf.structured(schema), node)
    except Exception as err:
        return str(err)
    return None


def test_every_schema_group_has_options():
    assert set(GROUPS) >= {"paths", "model", "data", "lora", "scheduler", "preset", "trainer", "strategy"}


@pytest.mark.parametrize(("group", "file"), OPTIONS, ids=[f"{g}/{f.stem}" for g, f in OPTIONS])
def test_an_option_has_only_schema_keys_of_schema_types(group, file):
    node, schema = _own_keys(file), GROUPS[group]
    assert unknown_keys(node, schema) == []
    datasets = None
    if "datasets" in node.keys():  # the list form (names) is expanded by the data registry
        datasets = None if OmegaConf.is_missing(node, "datasets") else node.datasets
        del node["datasets"]
    if isinstance(datasets, DictConfig):
        for name, entry in datasets.items():
            assert unknown_keys(entry, DatasetConfig, f"datasets.{name}.") == []
            assert _type_problems(entry, DatasetConfig) is None
    assert _type_problems(node, schema) is None


@pytest.mark.parametrize(("group", "file"), OPTIONS, ids=[f"{g}/{f.stem}" for g, f in OPTIONS])
def test_a_composed_option_sets_every_field(group, file):
    overrides = [f"{group}={file.stem}"]
    if group == "data" and OmegaConf.to_container(OmegaConf.load(file)).get("datasets", "???") == "???":
        overrides.append("data.datasets=[builtin]")  # base and mix leave the names to the command line
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), expand_datasets(cfg))  # entries get defaults
    assert missing_keys(merged) == []


def test_the_entry_config_sets_only_and_every_schema_key():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train")
    assert unknown_keys(_own_keys(CONF / "train.yaml"), TrainConfig) == []
    assert set(cfg) == set(hints(TrainConfig))
    assert _type_problems(cfg, TrainConfig) is None


def test_a_schema_and_yaml_that_disagree_are_caught(tmp_path):
    (tmp_path / "trainer.yaml").write_text("micro_batch_size: four\nmicro_batch: 2\n")
    node = _own_keys(tmp_path / "trainer.yaml")
    assert unknown_keys(node, GROUPS["trainer"])[0].startswith("micro_batch: unknown key")
    wrong_type = OmegaConf.create({"micro_batch_size": "four"})
    assert "micro_batch_size" in _type_problems(wrong_type, GROUPS["trainer"])


ENTRY_CONFIGS = sorted(p.stem for p in CONF.glob("*.yaml"))
STEP_CONFIGS = sorted(p.stem for p in (CONF / "prepare").glob("*.yaml") if p.stem != "common")


def test_every_command_and_prepare_step_has_a_schema():
    assert ENTRY_CONFIGS == sorted(COMMANDS)
    assert STEP_CONFIGS == sorted(PREPARE_STEPS)


def _composed(name: str, *overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("name", [n for n in ENTRY_CONFIGS if n != "train"])
def test_a_command_config_sets_only_and_every_schema_key(name):
    cfg, schema = _composed(name), COMMANDS[name]
    assert unknown_keys(_own_keys(CONF / f"{name}.yaml"), schema) == []
    assert set(cfg.keys()) == set(hints(schema))
    assert _type_problems(cfg, schema) is None


@pytest.mark.parametrize(
    ("step", "kind"),
    [(s, k) for s in STEP_CONFIGS for k in (BACKENDS if "backend" in hints(PREPARE_STEPS[s]) else [""])],
)
def test_a_prepare_step_sets_only_and_every_schema_key(step, kind):
    cfg = _composed(f"prepare/{step}", *([f"backend={kind}"] if kind else []))
    schema = with_backend(PREPARE_STEPS[step], kind)
    assert unknown_keys(cfg, schema) == []
    assert set(cfg.keys()) == set(hints(schema))
    assert _type_problems(cfg, schema) is None
