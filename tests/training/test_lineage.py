"""`init_from`: a run starts from an earlier run's result, and export rebuilds the whole chain."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file

from sft.config import ModelConfig, validate
from sft.errors import ConfigError
from sft.serving.export import load_run
from sft.train import train
from sft.training import lineage
from sft.training.lineage import (
    adapter_base,
    check_handoff,
    fresh_adapter,
    inherit,
    start_model,
    start_weights,
)
from sft.training.model import load_model

# A high learning rate moves each adapter far from zero, so a chain that dropped one would show.
STEPS = [*TINY, "trainer.max_steps=2", "trainer.eval_steps=2", "optimizer.lr=1e-2", "lora.dropout=0"]
# The children do not repeat the model: it comes from the parent's config.yaml.
NO_MODEL = [o for o in STEPS if not o.startswith("model=")]
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 2]])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """parent → child (merge) → grandchild (merge), and parent → cont (continue): tiny LoRA runs."""
    root = tmp_path_factory.mktemp("lineage")
    plan = {
        "parent": list(STEPS),
        "child": [*NO_MODEL, f"init_from={root / 'parent'}", "seed=1"],
        "grandchild": [*NO_MODEL, f"init_from={root / 'child'}", "seed=2"],
        "cont": [*NO_MODEL, f"init_from={root / 'parent'}", "handoff=continue", "seed=3"],
    }
    for name, overrides in plan.items():
        train(compose_train(root / name, root, cache_dir, *overrides))
    GlobalHydra.instance().clear()
    return {name: root / name for name in plan}


def typed(run_dir: Path, cache_dir: Path, *overrides: str):
    """The validated config of a run like the ones above (not trained), with init_from inherited."""
    cfg = compose_train(run_dir.parent / "unused", run_dir.parent, cache_dir, *overrides)
    inherit(cfg)
    GlobalHydra.instance().clear()
    return validate(cfg)


def tiny_base(run: Path, cache_dir: Path):
    model_cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(run / "config.yaml").model))
    return load_model(model_cfg, str(cache_dir))


def merged(model, *adapters: Path):
    """`model` with each adapter merged in turn: the chain computed by hand."""
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_a_merge_child_starts_from_its_parents_export_with_a_new_adapter(runs, cache_dir):
    cfg = typed(runs["child"], cache_dir, *NO_MODEL, f"init_from={runs['parent']}")
    assert fresh_adapter(cfg)
    parent_export, _ = load_run(runs["parent"], str(cache_dir))
    base = tiny_base(runs["parent"], cache_dir)
    assert (logits(parent_export) - logits(base)).abs().max() > 1e-3  # the parent's adapter changed it
    model = start_model(cfg, str(cache_dir))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad and not p.any() for p in lora_b)  # a new adapter starts at zero
    torch.testing.assert_close(logits(model), logits(parent_export), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        logits(start_weights(cfg, str(cache_dir))), logits(parent_export), rtol=0, atol=0
    )


def test_a_merge_childs_export_is_base_then_each_adapter_merged(runs, cache_dir):
    base = tiny_base(runs["parent"], cache_dir)
    manual = merged(base, runs["parent"] / "adapter", runs["child"] / "adapter")
    exported, _ = load_run(runs["child"], str(cache_dir))
    torch.testing.assert_close(logits(exported), logits(manual), rtol=0, atol=1e-5)
    parent_only = merged(tiny_base(runs["parent"], cache_dir), runs["parent"] / "adapter")
    assert (logits(exported) - logits(parent_only)).abs().max() > 1e-3  # the child's adapter counts


def test_a_three_level_chain_exports_correctly(runs, cache_dir):
    adapters = [runs[name] / "adapter" for name in ("parent", "child", "grandchild")]
    manual = merged(tiny_base(runs["parent"], cache_dir), *adapters)
    exported, _ = load_run(runs["grandchild"], str(cache_dir))
    torch.testing.assert_close(logits(exported), logits(manual), rtol=0, atol=1e-5)


def test_continue_trains_the_parents_adapter_further_on_the_parents_base(runs, cache_dir):
    cfg = typed(runs["cont"], cache_dir, *NO_MODEL, f"init_from={runs['parent']}", "handoff=continue")
    assert not fresh_adapter(cfg)
    saved = load_file(runs["parent"] / "adapter" / "adapter_model.safetensors")
    model = start_model(cfg, str(cache_dir))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert set(saved) == set(state)
    for name, weight in saved.items():
        torch.testing.assert_close(state[name], weight, rtol=0, atol=0)

    # The export merges only its own adapter (the parent's, trained further) into the parent's base.
    exported, _ = load_run(runs["cont"], str(cache_dir))
    manual = merged(tiny_base(runs["parent"], cache_dir), runs["cont"] / "adapter")
    torch.testing.assert_close(logits(exported), logits(manual), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        logits(adapter_base(cfg, str(cache_dir))),
        logits(tiny_base(runs["parent"], cache_dir)),
        rtol=0,
        atol=0,
    )
    further = load_file(runs["cont"] / "adapter" / "adapter_model.safetensors")
    assert any((further[k] - saved[k]).abs().max() > 1e-4 for k in saved)  # it did train


def test_the_record_names_the_parent_and_the_config_inherits_its_model(runs):
    for child, parent, handoff in (
        ("child", "parent", "merge"),
        ("grandchild", "child", "merge"),
        ("cont", "parent", "continue"),
    ):
        record = json.loads((runs[child] / "run_record.json").read_text())
        assert record["parent"] == {
            "run": str(runs[parent].resolve()),
            "handoff": handoff,
            "stage": "sft",
            "weights": "adapter",
        }
        config = OmegaConf.load(runs[child] / "config.yaml")
        assert config.init_from == str(runs[parent].resolve())
        # composed with the default model, trained (and recorded) with the parent's tiny one
        assert config.model == OmegaConf.load(runs["parent"] / "config.yaml").model
        assert config.data.template == config.model.template
    assert json.loads((runs["parent"] / "run_record.json").read_text())["parent"] is None


def test_a_child_keeps_how_its_command_line_loads_the_weights_but_never_which_weights(
    runs, cache_dir, monkeypatch
):
    typed_here = ["model.attn_implementation=eager", "model.name_or_path=gpt2"]
    monkeypatch.setattr(lineage, "hydra_overrides", lambda: typed_here)
    cfg = typed(runs["child"], cache_dir, *NO_MODEL, f"init_from={runs['parent']}", *typed_here)
    parent = OmegaConf.load(runs["parent"] / "config.yaml").model
    assert cfg.model.attn_implementation == "eager" != parent.attn_implementation
    assert (cfg.model.name_or_path, cfg.model.random_init) == (parent.name_or_path, parent.random_init)


def test_a_relative_init_from_is_recorded_absolute(runs, cache_dir, monkeypatch):
    monkeypatch.chdir(runs["parent"].parent)
    cfg = typed(runs["child"], cache_dir, *NO_MODEL, "init_from=parent")
    assert cfg.init_from == str(runs["parent"].resolve())


def test_init_from_must_name_a_finished_run(tmp_path, cache_dir):
    missing = tmp_path / "nothing"
    with pytest.raises(ConfigError, match=r"init_from=.*nothing: no such directory"):
        typed(tmp_path, cache_dir, *STEPS, f"init_from={missing}")
    training = tmp_path / "training"
    training.mkdir()
    (training / "config.yaml").write_text("model: {}\n")  # written before fit; no weights yet
    with pytest.raises(
        ConfigError, match=r"init_from=.*training: neither adapter/ nor model/.*still training"
    ):
        typed(tmp_path, cache_dir, *STEPS, f"init_from={training}")
    with pytest.raises(ConfigError, match=r"no config.yaml"):
        typed(tmp_path, cache_dir, *STEPS, f"init_from={tmp_path}")


def test_continue_refuses_different_lora_settings(runs, cache_dir):
    cfg = typed(
        runs["cont"], cache_dir, *NO_MODEL, f"init_from={runs['parent']}", "handoff=continue", "lora.r=4"
    )
    with pytest.raises(ConfigError, match=r"lora\.r=4 \(the parent's is \d+\)"):
        check_handoff(cfg)


def test_continue_without_an_adapter_to_continue_acts_as_merge(runs, cache_dir, caplog):
    cfg = typed(
        runs["cont"], cache_dir, *NO_MODEL, f"init_from={runs['parent']}", "handoff=continue", "lora=none"
    )
    with caplog.at_level(logging.WARNING):
        check_handoff(cfg)
    assert "acts as merge" in caplog.text and "lora.enabled=false" in caplog.text
    assert not fresh_adapter(cfg)  # full fine-tuning: no adapter to disable
    torch.testing.assert_close(
        logits(adapter_base(cfg, str(cache_dir))),
        logits(load_run(runs["parent"], str(cache_dir))[0]),
        rtol=0,
        atol=0,
    )
