"""End-to-end runs of the real train() on the tiny model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import TINY, files_under, logged_rows, logged_series, run_module

from sft.train import train


def test_run_writes_every_output_and_the_adapter_reloads_exactly(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, run="run")
    val_loss = train(cfg)
    run = tmp_path / "run"
    assert files_under(run) == {
        "config.yaml",
        "run_record.json",
        "summary.json",
        "csv/metrics.csv",
        "csv/hparams.yaml",
        "progress.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "checkpoints/step-000003.ckpt",
        "checkpoints/step-000006.ckpt",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/README.md",
        "adapter/tokenizer.json",
        "adapter/tokenizer_config.json",
        "adapter/chat_template.jinja",
    }
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_loss"] == pytest.approx(val_loss)
    assert summary["global_step"] == 6
    assert summary["empty_steps"] == 0
    assert summary["batch"] == {
        "effective_batch_size": 8,
        "micro_batch_size": 4,
        "world_size": 1,
        "accumulate_grad_batches": 2,
    }
    assert summary["tokens_per_sec"] > 0 and summary["train_seconds"] > 0
    logged = logged_rows(run)[0].keys()
    for key in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_sec",
        "train/trained_tokens",
        "val/loss",
        "val/ppl",
        "val/token_accuracy",
    ):
        assert key in logged

    # The adapter loads in a plain session: base from its recorded path, tokenizer from the adapter dir.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = run / "adapter"
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    # Reference: the trained module's own weights, restored from the best checkpoint.
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter).eval()
    reference.load_state_dict({k.removeprefix("model."): v for k, v in ckpt.items()}, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, reference(**ids).logits, rtol=0, atol=0)
    lora_keys = [k for k in ckpt if "lora_" in k]
    assert lora_keys and len(ckpt) == len(lora_keys)  # checkpoints hold trainable weights only


def test_loss_falls_when_overfitting_a_handful_of_examples(make_cfg, tmp_path):
    train(
        make_cfg(
            *TINY,
            "data.datasets.builtin.num_rows=8",
            "data.val_size=0",
            "trainer.max_steps=30",
            "trainer.eval_steps=30",
            "optimizer.lr=1e-2",
            "lora.r=16",
            "lora.dropout=0",
            "trainer.effective_batch_size=4",
            "scheduler=constant",
            run="overfit",
        )
    )
    loss = logged_series(tmp_path / "overfit", "train/loss")
    assert loss[29] < 0.5 * loss[0], loss


def test_the_train_val_gap_is_logged_and_overfitting_is_called_out(make_cfg, tmp_path, caplog):
    from sft.training.callbacks import OverfittingWatch

    # Eight rows to memorise, a high learning rate and an evaluation every step: val loss turns up.
    train(
        make_cfg(
            *TINY,
            "data.datasets.builtin.num_rows=24",
            "data.val_size=8",
            "trainer.max_steps=16",
            "trainer.eval_steps=2",
            "optimizer.lr=3e-2",
            "lora.dropout=0",
            "trainer.effective_batch_size=4",
            "scheduler=constant",
            run="gap",
        )
    )
    gap, val = logged_series(tmp_path / "gap", "val/gap"), logged_series(tmp_path / "gap", "val/loss")
    assert set(gap) == set(sorted(val)[1:-1])  # every evaluation during training (not before, not after)
    summary = json.loads((tmp_path / "gap" / "summary.json").read_text())
    assert summary["overfitting_warnings"] == caplog.text.count("overfitting: val loss rose")
    watch = OverfittingWatch(patience=2)
    assert watch.observe(3.0, 2.0) is None and watch.observe(2.5, 2.1) is None
    assert "val loss rose 2.000 -> 2.100 -> 2.200" in watch.observe(2.0, 2.2)
    assert watch.observe(1.9, 2.1) is None  # val fell again


def test_accumulation_matches_one_large_batch(make_cfg, tmp_path):
    common = [
        *TINY,
        "lora.dropout=0",
        "trainer.max_steps=3",
        "trainer.eval_steps=3",
        "optimizer.lr=1e-3",
        "trainer.effective_batch_size=8",
    ]
    train(make_cfg(*common, "trainer.micro_batch_size=8", run="big"))
    train(make_cfg(*common, "trainer.micro_batch_size=2", run="accum"))
    big, accum = (
        logged_series(tmp_path / "big", "train/loss"),
        logged_series(tmp_path / "accum", "train/loss"),
    )
    assert big.keys() == accum.keys() == {0, 1, 2}
    for step in big:
        assert accum[step] == pytest.approx(big[step], rel=1e-5)
    # The gradient itself (its norm before clipping), not only AdamW's nearly scale-free update: losing
    # the 1/accumulation factor doubles every accumulated gradient, which this sees whether or not
    # clipping triggers.
    big_norm = logged_series(tmp_path / "big", "train/grad_norm")
    accum_norm = logged_series(tmp_path / "accum", "train/grad_norm")
    assert big_norm.keys() == accum_norm.keys() == {0, 1, 2}
    for step in big_norm:
        assert big_norm[step] > 0
        assert accum_norm[step] == pytest.approx(big_norm[step], rel=1e-4)
    a = torch.load(tmp_path / "big" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "accum" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_resume_continues_step_count_and_schedule(make_cfg, tmp_path):
    common = [
        *TINY,
        "trainer.max_steps=6",
        "trainer.eval_steps=2",
        "trainer.save_steps=2",
        "trainer.save_total_limit=5",
        "scheduler=linear",
        "scheduler.warmup_steps=1",
        "lora.dropout=0",
    ]
    train(make_cfg(*common, run="full"))
    full = tmp_path / "full"
    train(make_cfg(*common, f"resume={full / 'checkpoints' / 'step-000004.ckpt'}", run="resumed"))
    resumed = tmp_path / "resumed"
    lr_full, lr_resumed = logged_series(full, "train/lr"), logged_series(resumed, "train/lr")
    assert set(lr_resumed) == {4, 5}  # only the steps after the checkpoint ran
    for step in lr_resumed:
        assert lr_resumed[step] == pytest.approx(lr_full[step])
    loss_full, loss_resumed = logged_series(full, "train/loss"), logged_series(resumed, "train/loss")
    for step in loss_resumed:
        assert loss_resumed[step] == pytest.approx(loss_full[step], rel=1e-4)
    assert json.loads((resumed / "summary.json").read_text())["global_step"] == 6


def test_resume_last_finds_the_newest_checkpoint(make_cfg, tmp_path):
    train(make_cfg(*TINY, "trainer.max_steps=3", run="first"))
    train(make_cfg(*TINY, "resume=last", run="second"))
    assert json.loads((tmp_path / "second" / "summary.json").read_text())["global_step"] == 6
    assert set(logged_series(tmp_path / "second", "train/lr")) == {3, 4, 5}


def test_full_fine_tuning_saves_a_whole_model(make_cfg, tmp_path):
    train(make_cfg(*TINY, "lora=none", "trainer.max_steps=2", "trainer.eval_steps=2", run="full_ft"))
    assert (tmp_path / "full_ft" / "model" / "model.safetensors").is_file()


def test_cli_runs_and_reports_config_mistakes_without_a_traceback(tmp_path, cache_dir):
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(tmp_path)}
    ok = run_module("sft.train", *TINY, "trainer.max_steps=2", env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "=== sft run summary (sft) ===" in ok.stdout
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert {
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "train.log",
        "adapter/adapter_config.json",
    } <= files_under(run)
    bad = run_module("sft.train", "lora.dropout=2", "preset=huge", env=env)
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert "preset" in bad.stderr and "balanced" in bad.stderr  # unknown option lists the available ones


def test_tensorboard_and_wandb_log_offline_without_a_key(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(make_cfg(*TINY, "logger=all", "trainer.max_steps=2", "trainer.eval_steps=2", run="loggers"))
    run = tmp_path / "loggers"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    (wandb_run,) = (run / "wandb").glob("offline-run-*")
    assert list(wandb_run.glob("*.wandb"))


# Each option with what it must change; every other expectation keeps its default below, so an option that
# is silently dropped (or that switches on another) fails.
OPTION_DEFAULTS = {
    "precision": "32-true",
    "compute_dtype": torch.float32,  # of a LoRA-wrapped projection's output in a training forward
    "forwards_per_micro_batch": 1,  # gradient checkpointing runs each layer again in backward
    "use_dora": False,
    "scaling": 16 / 8,  # lora_alpha / r; rsLoRA: alpha / sqrt(r)
    "target_modules": None,  # all linear layers
    "optimizer": torch.optim.AdamW,
}
OPTIONS = [
    (["trainer.precision=bf16-mixed"], {"precision": "bf16-mixed", "compute_dtype": torch.bfloat16}),
    (["trainer.gradient_checkpointing=true"], {"forwards_per_micro_batch": 2}),
    (["lora=dora"], {"use_dora": True}),
    (
        ["lora=rslora", "lora.target=[q_proj,v_proj]"],
        {"scaling": 16 / 8**0.5, "target_modules": {"q_proj", "v_proj"}},
    ),
    (["optimizer=sgd", "scheduler=cosine", "scheduler.warmup_ratio=0.5"], {"optimizer": torch.optim.SGD}),
]


@pytest.mark.parametrize("overrides,changes", OPTIONS, ids=[",".join(o) for o, _ in OPTIONS])
def test_training_options_run(make_cfg, tmp_path, monkeypatch, overrides, changes):
    """Each option trains and takes effect: in the trainer, the model it trains and the saved adapter."""
    import sft.training.run
    from sft.training.module import SFTModule

    seen = {"calls": 0}

    class Spy(SFTModule):
        def on_fit_start(self) -> None:
            super().on_fit_start()
            seen["module"] = self
            q_proj = next(m for n, m in self.model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))

            def hook(_module, _args, output):
                if torch.is_grad_enabled():  # training forwards and their recomputation, not validation
                    seen["calls"] += 1
                    seen["dtype"] = output.dtype

            q_proj.register_forward_hook(hook)

    monkeypatch.setattr(sft.training.run, "SFTModule", Spy)  # where the run builds its module
    value = train(make_cfg(*TINY, "trainer.max_steps=2", "trainer.eval_steps=2", *overrides, run="opt"))
    assert 0 < value < 20
    assert (tmp_path / "opt" / "adapter" / "adapter_model.safetensors").is_file()

    expect = {**OPTION_DEFAULTS, **changes}
    module = seen["module"]
    trainer = module.trainer
    assert trainer.precision == expect["precision"]
    assert seen["dtype"] == expect["compute_dtype"]
    micro_batches = trainer.global_step * trainer.accumulate_grad_batches
    assert (trainer.global_step, micro_batches) == (2, 4)
    assert seen["calls"] == expect["forwards_per_micro_batch"] * micro_batches
    assert module.model.is_gradient_checkpointing == (expect["forwards_per_micro_batch"] == 2)
    (optimizer,) = trainer.optimizers
    assert type(optimizer) is expect["optimizer"]
    if expect["optimizer"] is torch.optim.SGD:
        assert optimizer.param_groups[0]["momentum"] == 0.9
    q_proj = next(m for n, m in module.model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    assert q_proj.scaling["default"] == pytest.approx(expect["scaling"])

    adapter = tmp_path / "opt" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] == expect["use_dora"]
    assert config["use_rslora"] == (expect["scaling"] != OPTION_DEFAULTS["scaling"])
    from safetensors.torch import load_file

    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in k for k in weights) == expect["use_dora"]
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in weights if ".lora_A." in k}
    if expect["target_modules"] is None:
        assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    else:
        assert targets == expect["target_modules"]


def test_early_stopping_ends_a_run_that_stops_improving(make_cfg, tmp_path):
    # lr 0 can never improve val loss: patience 1 stops at the second evaluation.
    train(
        make_cfg(
            *TINY,
            "trainer.max_steps=30",
            "trainer.eval_steps=1",
            "trainer.early_stopping_patience=1",
            "optimizer.lr=1e-12",
            run="early",
        )
    )
    assert json.loads((tmp_path / "early" / "summary.json").read_text())["global_step"] == 2


def test_packing_trains_with_less_padding_and_the_same_validation(make_cfg, tmp_path):
    common = (*TINY, "data.datasets.builtin.num_rows=64", "trainer.max_steps=2", "trainer.eval_steps=2")
    train(make_cfg(*common, run="padded"))
    train(make_cfg(*common, "data.packing=true", run="packed"))
    padded, packed = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("padded", "packed"))
    assert packed["data"]["packed_rows"] < packed["data"]["train"] == padded["data"]["train"]
    assert packed["data"]["packing_efficiency"] > 0.8
    assert packed["padding_fraction"] < padded["padding_fraction"] / 2
    # Validation is never packed: the untrained model scores the same on it either way.
    assert packed["initial_val_loss"] == pytest.approx(padded["initial_val_loss"], abs=1e-6)
    assert logged_series(tmp_path / "packed", "train/padding_fraction")


def test_validation_batches_go_longest_first_and_change_no_loss(make_cfg, tmp_path):
    """Validation takes `trainer.eval_micro_batch_size` rows per batch, a rank's rows longest first; the
    held-out loss is a per-token sum over every row, so one row per batch and 16 give the same value."""
    from sft.config import validate
    from sft.data.datamodule import build_datamodule
    from sft.data.loading import system_prompt
    from sft.data.templates import get_template
    from sft.training.model import load_tokenizer

    typed = validate(make_cfg(*TINY, "trainer.eval_micro_batch_size=3"))
    tokenizer = load_tokenizer(typed.model, typed.paths.cache_dir)
    data = build_datamodule(
        typed, tokenizer, get_template(typed.data.template, tokenizer, system_prompt(typed.data))
    )
    data.prepare_data()
    data.setup("fit")
    batches = list(data.val_dataloader())
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 2]  # the 8 held-out rows
    lengths = [n for b in batches for n in b["attention_mask"].sum(1).tolist()]
    assert lengths == sorted(lengths, reverse=True)

    losses = []
    for size in (1, 16):
        run = f"eval{size}"
        overrides = (
            "trainer.max_steps=1",
            "trainer.limit_val_batches=1.0",
            f"trainer.eval_micro_batch_size={size}",
        )
        train(make_cfg(*TINY, *overrides, run=run))
        losses.append(json.loads((tmp_path / run / "summary.json").read_text())["initial_val_loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
