"""The adaptation methods beyond plain LoRA: QLoRA, LoRA+, PiSSA/OLoRA starts, freeze tuning and NEFTune."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, chat_ids, logged_rows, run_module
from peft import PeftModel

from sft.config import ConfigError, validate
from sft.train import train
from sft.training.lineage import adapter_base, start_model, trained_weights
from sft.training.memory import peak_rss_gb, reset_peak
from sft.training.model import apply_peft, count_parameters, load_model, load_tokenizer, quantization_config
from sft.training.neftune import NEFTune, neftune_noise, sequence_lengths
from sft.training.optim import build_optimizer
from sft.training.reference import reference_source

SHORT = [*TINY, "trainer.max_steps=2", "trainer.eval_steps=2"]
# Preference data: the byte tokenizer needs room for a pair, and dpo_en brings its own rows.
DPO = [*(o for o in TINY if "num_rows" not in o), "data.cutoff_len=512", "stage=dpo", "data=dpo_en"]
# bitsandbytes' CPU kernels pack 4-bit weights in blocks of 64: the tiny model's width must divide by it.
WIDE = "model.random_init.hidden_size=128"


def _typed(make_cfg, *overrides: str):
    return validate(make_cfg(*TINY, *overrides))


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# --- mistakes are named before anything loads ---------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora=qlora", "lora.enabled=false"], "lora.quantize='nf4': null without LoRA"),
        (["lora.quantize=int3"], "lora.quantize='int3': null or one of ('nf4', 'fp4')"),
        (
            ["lora=qlora", "strategy=ddp", "strategy.name=fsdp"],
            "lora.quantize='nf4': null under strategy fsdp",
        ),
        (["trainer.neftune_alpha=-1"], "trainer.neftune_alpha=-1"),
        (["lora=freeze", "lora.trainable_layers=3"], "lora.trainable_layers=3: at most 2"),
        (["lora.trainable_layers=1"], "lora.trainable_layers=1: null with LoRA"),
        (["lora.trainable_modules=[mlp]"], "lora.trainable_modules=['mlp']: null with LoRA"),
        (["lora=loraplus", "lora.enabled=false"], "lora.loraplus_lr_ratio=16.0: null without LoRA"),
        (["lora.loraplus_lr_ratio=0.5"], "lora.loraplus_lr_ratio=0.5"),
        (["lora=pissa", "lora.enabled=false"], "lora.init='pissa': default without LoRA"),
        (["lora.init=svd"], "lora.init='svd': one of ('default', 'gaussian', 'pissa', 'olora')"),
    ],
)
def test_wrong_combinations_name_the_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        _typed(make_cfg, *overrides)
    assert message in str(err.value)


def test_neftune_is_refused_for_preference_stages(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer.neftune_alpha=5.0: null for stage dpo"):
        validate(make_cfg(*DPO, "trainer.neftune_alpha=5"))


def test_every_method_validates_and_pissa_needs_a_computed_reference(make_cfg):
    for method in ("qlora", "loraplus", "pissa", "olora", "freeze"):
        _typed(make_cfg, f"lora={method}", "trainer.neftune_alpha=5")
    assert reference_source(validate(make_cfg(*DPO))) == "adapter"
    # PiSSA leaves a residual in the base: the disabled adapter is not the starting model.
    assert reference_source(validate(make_cfg(*DPO, "lora=pissa"))) == "precomputed"


# --- NEFTune ------------------------------------------------------------------------------------------


def test_sequence_lengths_of_padded_and_packed_rows():
    padded = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    assert sequence_lengths(padded).tolist() == [[3, 3, 3, 3], [2, 2, 2, 2]]
    packed = {"position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6]])}
    assert sequence_lengths(packed).tolist() == [[3, 3, 3, 2, 2, 1, 1], [7] * 7]


def test_noise_has_the_papers_scale_and_equals_transformers_on_an_unpadded_batch():
    from transformers.integrations.neftune import neftune_post_forward_hook

    alpha, length, width = 5.0, 50, 64
    embeds = torch.randn(4, length, width)
    torch.manual_seed(0)
    ours = neftune_noise(embeds, torch.full((4, length), length), alpha)
    bound = alpha / (length * width) ** 0.5  # Jain et al. 2023, Algorithm 1
    assert ours.abs().max() <= bound and ours.abs().max() > 0.99 * bound
    assert ours.std().item() == pytest.approx(bound / 3**0.5, rel=0.03)  # uniform on [-bound, bound]
    # transformers' own NEFTune hook (what its Trainer and TRL use) on the same draws
    module = SimpleNamespace(training=True, neftune_noise_alpha=alpha)
    torch.manual_seed(0)
    theirs = neftune_post_forward_hook(module, None, embeds) - embeds
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_a_packed_sequence_gets_the_noise_of_its_own_length():
    embeds = torch.zeros(1, 1000, 16)
    lengths = torch.tensor([[900] * 900 + [100] * 100])
    noise = neftune_noise(embeds, lengths, 10.0)
    assert noise[0, :900].abs().max() <= 10 / (900 * 16) ** 0.5 < noise[0, 900:].abs().max()


def test_noise_only_in_training_batches(make_cfg):
    """Validation, generation and anything after fitting see the plain embeddings."""
    typed = _typed(make_cfg)
    model = load_model(typed.model, typed.paths.cache_dir)
    ids = torch.randint(0, 200, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    plain = model(**batch).logits.detach()
    callback = NEFTune(5.0)
    holder = SimpleNamespace(model=model)
    callback.on_fit_start(None, holder)

    def logits(training: bool) -> torch.Tensor:
        model.train(training)
        return model(**batch).logits.detach()

    callback.on_train_batch_start(None, holder, batch, 0)
    assert not torch.allclose(logits(True), plain)  # a training step is noisy
    torch.testing.assert_close(logits(False), plain, rtol=0, atol=0)  # validation mid-batch: eval mode
    callback.on_train_batch_end(None, holder, None, batch, 0)
    torch.testing.assert_close(logits(True), plain, rtol=0, atol=0)  # outside a training batch
    callback.on_train_batch_start(None, holder, batch, 1)
    callback.on_fit_end(None, holder)
    torch.testing.assert_close(logits(True), plain, rtol=0, atol=0)  # unhooked after fitting


def test_neftune_changes_training_and_leaves_validation_alone(make_cfg, tmp_path):
    train(make_cfg(*SHORT, "trainer.eval_steps=1", run="plain"))
    train(make_cfg(*SHORT, "trainer.eval_steps=1", "trainer.neftune_alpha=15", run="noisy"))
    plain, noisy = _summary(tmp_path / "plain"), _summary(tmp_path / "noisy")
    assert noisy["initial_val_loss"] == plain["initial_val_loss"]
    assert noisy["train_loss"] != plain["train_loss"]  # the same batches, different losses

    val_losses = [float(r["val/loss"]) for r in logged_rows(tmp_path / "noisy") if r["val/loss"]]
    # validation during the fit (after step 2) equals the final one of the same weights: no noise in it
    during, final = val_losses[-2:]
    assert during == pytest.approx(final, abs=1e-6)


# --- LoRA+ --------------------------------------------------------------------------------------------


def test_loraplus_gives_the_b_matrices_a_larger_learning_rate(make_cfg):
    typed = _typed(make_cfg, "lora=loraplus", "optimizer.weight_decay=0.01")
    model = apply_peft(load_model(typed.model, typed.paths.cache_dir), typed.lora)
    built = build_optimizer(model, typed.optimizer, typed.scheduler, 10, typed.lora.loraplus_lr_ratio)
    optimizer, lr = built["optimizer"], typed.optimizer["lr"]
    rate = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(rate) == {id(p) for p in named.values()}  # every trainable weight, once
    for name, param in named.items():
        assert rate[id(param)] == pytest.approx(lr * (16 if "lora_B" in name else 1)), name
        assert decay[id(param)] == 0.01, name
    built["lr_scheduler"]["scheduler"].step()  # the schedule scales both groups alike
    a, b = (
        next(g["lr"] for g in optimizer.param_groups if any(p is named[k] for p in g["params"]))
        for k in (
            next(n for n in named if "lora_A" in n),
            next(n for n in named if "lora_B" in n),
        )
    )
    assert b == pytest.approx(16 * a)
    plain = build_optimizer(model, typed.optimizer, typed.scheduler, 10)["optimizer"]
    assert {g["initial_lr"] for g in plain.param_groups} == {lr}


def test_loraplus_trains_and_resumes(make_cfg, tmp_path):
    common = [*TINY, "lora=loraplus", "trainer.max_steps=4", "trainer.save_steps=2", "trainer.eval_steps=4"]
    train(make_cfg(*common, run="full"))
    step2 = tmp_path / "full" / "checkpoints" / "step-000002.ckpt"
    train(make_cfg(*common, f"resume={step2}", run="resumed"))
    assert _summary(tmp_path / "resumed")["val_loss"] == pytest.approx(
        _summary(tmp_path / "full")["val_loss"]
    )
    groups = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    lrs = [g["initial_lr"] for g in groups["optimizer_states"][0]["param_groups"] if g["params"]]
    assert max(lrs) == pytest.approx(16 * min(lrs))


# --- PiSSA and OLoRA ------------------------------------------------------------------------------------


def test_factored_starts_begin_at_the_base_and_save_a_plain_adapter(make_cfg, tmp_path):
    common = [*SHORT, "optimizer.lr=1e-2", "lora.dropout=0"]  # large steps: a wrong conversion would show
    train(make_cfg(*common, run="lora"))
    for method in ("pissa", "olora"):
        cfg = make_cfg(*common, f"lora={method}", run=method)
        train(cfg)
        _check_factored(cfg, tmp_path / method, _summary(tmp_path / "lora")["initial_val_loss"])


def _check_factored(cfg, run: Path, base_val_loss: float) -> None:
    # the adapter's start is the base model exactly: the same first validation as plain LoRA's
    assert _summary(run)["initial_val_loss"] == pytest.approx(base_val_loss)
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 2 * cfg.lora.r and saved["init_lora_weights"] is True
    assert not (run / "adapter_init").exists()

    # The trained model as training had it: residual base + factored start, then the checkpoint's A and B.
    typed = validate(cfg)
    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    trained = apply_peft(load_model(typed.model, typed.paths.cache_dir), typed.lora).eval()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    missing = trained.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=False)
    assert not missing.unexpected_keys
    # The saved adapter on the original base, in a plain session.
    plain = PeftModel.from_pretrained(load_model(typed.model, typed.paths.cache_dir), run / "adapter").eval()
    ids = chat_ids(tokenizer, "Name three colours.")
    with torch.no_grad():
        torch.testing.assert_close(plain(**ids).logits, trained(**ids).logits, rtol=0, atol=1e-4)
        base = load_model(typed.model, typed.paths.cache_dir)
        assert (trained(**ids).logits - base(**ids).logits).abs().max() > 1e-2, run.name


# --- freeze tuning --------------------------------------------------------------------------------------


def _trainable(make_cfg, *overrides: str) -> set[str]:
    typed = _typed(make_cfg, "lora=freeze", *overrides)
    model = apply_peft(load_model(typed.model, typed.paths.cache_dir), typed.lora)
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_trains_the_last_layers_or_the_named_modules(make_cfg):
    last = _trainable(make_cfg, "lora.trainable_layers=1")
    assert last and all(n.startswith("model.layers.1.") for n in last)
    assert len(_trainable(make_cfg)) == 2 * len(last)  # lora=freeze: the last 2 of the tiny model's 2
    mlp = _trainable(make_cfg, "lora.trainable_layers=1", "lora.trainable_modules=[mlp,lm_head]")
    assert mlp == {n for n in last if ".mlp." in n} | {"lm_head.weight"}
    head = _trainable(make_cfg, "lora.trainable_layers=null", "lora.trainable_modules=[self_attn.q_proj]")
    assert head == {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"}
    with pytest.raises(ConfigError, match=r"\['attention'\] match no parameter of the model; .*mlp"):
        _trainable(make_cfg, "lora.trainable_modules=[mlp,attention]")


def test_freeze_layer_count_is_checked_against_a_loaded_model(make_cfg):
    """Models whose config the validator cannot read (hub ids, GGUF) are checked when they load."""
    typed = _typed(make_cfg, "lora=freeze")
    typed.lora.trainable_layers = 5
    with pytest.raises(ConfigError, match="lora.trainable_layers=5: at most 2"):
        apply_peft(load_model(typed.model, typed.paths.cache_dir), typed.lora)


def test_a_freeze_run_changes_only_its_layers(make_cfg, tmp_path):
    cfg = make_cfg(*SHORT, "lora=freeze", "lora.trainable_layers=1", "optimizer.lr=1e-3", run="frozen")
    train(cfg)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "frozen" / "model" / "model.safetensors")
    typed = validate(cfg)
    base = load_model(typed.model, typed.paths.cache_dir).state_dict()
    changed = {k for k, v in saved.items() if not torch.equal(v, base[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)
    summary = _summary(tmp_path / "frozen")
    assert summary["parameters"]["trainable"] == sum(
        base[k].numel() for k in base if k.startswith("model.layers.1.")
    )


# --- QLoRA ------------------------------------------------------------------------------------------------


def test_qlora_trains_lora_on_a_4bit_base_counted_like_lora(make_cfg):
    import bitsandbytes as bnb

    qlora = _typed(make_cfg, WIDE, "lora=qlora")
    model = start_model(qlora, qlora.paths.cache_dir)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
    assert (
        layer.base_layer.weight.quant_type == "nf4" and layer.base_layer.weight.quant_state.nested
    )  # double
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }
    lora = _typed(make_cfg, WIDE)
    assert count_parameters(model) == count_parameters(start_model(lora, lora.paths.cache_dir))


def test_qlora_export_answers_like_the_adapter_on_the_4bit_base(make_cfg, tmp_path, cache_dir):
    import bitsandbytes as bnb

    cfg = make_cfg(*SHORT, WIDE, "lora=qlora", "optimizer.lr=1e-2", "lora.dropout=0", run="qlora")
    train(cfg)
    run, typed = tmp_path / "qlora", validate(cfg)
    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    four_bit = load_model(typed.model, typed.paths.cache_dir, quantization_config("nf4", True, typed.model))
    on_4bit = PeftModel.from_pretrained(four_bit, run / "adapter").eval()
    merged = trained_weights(run, typed.paths.cache_dir).eval()  # de-quantised base, adapter merged
    assert not hasattr(merged.config, "quantization_config")
    greedy = {"max_new_tokens": 24, "min_new_tokens": 24, "do_sample": False}
    for text in ("Name three colours.", "Who are you?", "Write a haiku about rain."):
        ids = chat_ids(tokenizer, text)
        with torch.no_grad():
            torch.testing.assert_close(merged(**ids).logits, on_4bit(**ids).logits, rtol=0, atol=1e-4)
            assert torch.equal(merged.generate(**ids, **greedy), on_4bit.generate(**ids, **greedy)), text
    # A QLoRA run after this one starts from its result, stored in 4 bits again; its evaluations
    # rebuild that start de-quantised, which answers as the 4-bit one does.
    child = validate(make_cfg(*SHORT, WIDE, "lora=qlora", f"init_from={run}", run="child"))
    start = adapter_base(child, child.paths.cache_dir, four_bit=True).eval()
    assert isinstance(start.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    rebuilt = adapter_base(child, child.paths.cache_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**ids).logits, start(**ids).logits, rtol=0, atol=1e-4)
        assert (rebuilt(**ids).logits - merged(**ids).logits).abs().max() > 1e-4  # quantised once more
    # sft.export writes that merged model as a plain directory
    out = tmp_path / "merged"
    done = run_module(
        "sft.export", f"run={run}", f"out={out}", env={**os.environ, "SFT_CACHE": str(cache_dir)}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


# --- memory -------------------------------------------------------------------------------------------------


def test_peak_memory_restarts_for_each_run():
    hold = torch.ones(300 * 2**20 // 4)  # 300 MiB
    del hold
    before = peak_rss_gb()
    reset_peak()
    assert peak_rss_gb() < before - 0.2
