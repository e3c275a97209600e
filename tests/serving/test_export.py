"""`python -m sft.export`: a merged export behaves exactly like the adapter on its base model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, chat_ids, compose_train, run_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft.config import ModelConfig
from sft.data.templates import get_template
from sft.serving.export import ADAPTER_FILES, ExportError, export, save_final
from sft.train import train
from sft.training.model import load_model, load_tokenizer

# A high learning rate moves the adapter far from zero, so a merge that dropped it would show.
TRAINED = [*TINY, "trainer.max_steps=4", "trainer.eval_steps=4", "optimizer.lr=1e-2", "lora.dropout=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """One tiny LoRA run shared by this module's tests (training is the slow part)."""
    root = tmp_path_factory.mktemp("export")
    train(compose_train(root / "trained", root, cache_dir, *TRAINED))
    GlobalHydra.instance().clear()
    return root / "trained"


def adapter_on_base(run: Path, cache_dir: Path):
    """The reference: the run's base model rebuilt from config.yaml with the adapter applied, unmerged."""
    model_cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(run / "config.yaml").model))
    return PeftModel.from_pretrained(load_model(model_cfg, str(cache_dir)), run / "adapter").eval()


def test_merged_export_matches_the_adapter_on_its_base(trained, cache_dir, tmp_path):
    out = tmp_path / "merged"
    done = run_module(
        "sft.serving.export",
        f"run={trained}",
        f"out={out}",
        "dtype=float32",
        env={**os.environ, "SFT_CACHE": str(cache_dir)},
    )
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and "parameters:" in done.stdout

    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not files & set(ADAPTER_FILES)
    assert (out / "chat_template.jinja").read_text() == (
        trained / "adapter" / "chat_template.jinja"
    ).read_text()

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference = adapter_on_base(trained, cache_dir)
    ids = chat_ids(tokenizer)
    with torch.no_grad():
        logits = merged(**ids).logits
        torch.testing.assert_close(logits, reference(**ids).logits, rtol=0, atol=1e-4)
        base = reference.get_base_model()
        with reference.disable_adapter():
            assert (logits - base(**ids).logits).abs().max() > 1e-2  # the adapter really changed the model
        greedy = {"max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False}
        assert torch.equal(merged.generate(**ids, **greedy), reference.generate(**ids, **greedy))


def test_run_directories_without_weights_or_config_are_refused(trained, tmp_path, cache_dir):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.yaml").write_text((trained / "config.yaml").read_text())
    with pytest.raises(ExportError, match="neither .*adapter"):
        export(empty, tmp_path / "out", str(cache_dir))
    no_config = tmp_path / "no-config"
    (no_config / "adapter").mkdir(parents=True)
    with pytest.raises(ExportError, match="config.yaml"):
        export(no_config, tmp_path / "out", str(cache_dir))
    # An output directory that would replace the run, or an earlier export, needs overwrite=true.
    with pytest.raises(ExportError, match="would replace the run"):
        export(trained, trained, str(cache_dir))
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="overwrite=true"):
        export(trained, earlier, str(cache_dir))


def test_a_full_fine_tuning_run_is_re_saved_in_the_requested_dtype(trained, tmp_path, cache_dir):
    # A full fine-tuning run directory, as train() leaves it: config.yaml and model/.
    run = tmp_path / "full"
    run.mkdir()
    (run / "config.yaml").write_text((trained / "config.yaml").read_text())
    model_cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(run / "config.yaml").model))
    tokenizer = load_tokenizer(model_cfg, str(cache_dir))
    model = load_model(model_cfg, str(cache_dir))
    save_final(model, tokenizer, get_template("chatml", tokenizer, "Be brief."), run)
    assert (run / "model").is_dir()

    out, _ = export(run, tmp_path / "bf16", str(cache_dir), dtype="bfloat16")
    saved = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert saved.dtype == torch.bfloat16
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], weight.to(torch.bfloat16), rtol=0, atol=0)
    assert "Be brief." in AutoTokenizer.from_pretrained(out).chat_template
