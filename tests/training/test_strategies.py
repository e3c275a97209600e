"""Scale-out strategies: every strategy config builds the right Lightning strategy; DeepSpeed JSONs
round-trip and are filled from the trainer group; DDP on 2 CPU processes matches one process step
for step and writes one run directory and one adapter. (Two-process resumes: FSDP's in
tests/training/test_fsdp_cpu.py, a preempted DDP run's in tests/training/test_faults.py.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF, ROOT, TINY, files_under, logged_series, train_processes

from sft.config import ConfigError, on_rank_zero, run_name, validate
from sft.training.checkpoint import resolve_resume
from sft.training.model import apply_peft, load_model
from sft.training.strategy import (
    build_strategy,
    clean_name,
    decoder_layer_classes,
    fill_deepspeed_config,
    find_deepspeed_config,
    finish_gradients,
    fsdp_kwargs,
    gradient_divisor,
    is_deepspeed,
    load_deepspeed_config,
)
from sft.training.trainer import build_trainer

STRATEGY_OPTIONS = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
DEEPSPEED_JSONS = sorted((CONF / "deepspeed").glob("*.json"))
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# FSDP and DeepSpeed need a GPU accelerator; validation refuses them with trainer=cpu (the debug default).
GPU_TRAINER = ["trainer.accelerator=gpu", "trainer.devices=1"]
# The DeepSpeed keys sft fills from the trainer group.
FILLED = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_clipping")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny Llama model wrapped with LoRA, as a run builds it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    base = tmp_path_factory.mktemp("tiny-model")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny", "lora.r=4", f"paths.output_dir={base}"])
    GlobalHydra.instance().clear()
    typed = validate(cfg)
    return apply_peft(load_model(typed.model, str(base / "cache")), typed.lora)


def test_every_scale_out_option_exists():
    assert set(STRATEGY_OPTIONS) == {
        "auto",
        "ddp",
        "fsdp",
        "fsdp_shard_grad_op",
        "deepspeed_zero2",
        "deepspeed_zero2_offload",
        "deepspeed_zero3",
        "deepspeed_zero3_offload",
    }
    assert {p.name for p in DEEPSPEED_JSONS} == {
        "zero2.json",
        "zero2_offload.json",
        "zero3.json",
        "zero3_offload.json",
    }


@pytest.mark.parametrize("option", STRATEGY_OPTIONS)
def test_strategy_option_builds_lightnings_strategy(make_cfg, tiny_model, option):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    extra = GPU_TRAINER + ["trainer.precision=bf16-mixed"] if option.startswith(("fsdp", "deepspeed")) else []
    typed = validate(make_cfg(*TINY, f"strategy={option}", *extra))
    if option == "auto":
        assert build_strategy(typed.strategy, typed.trainer.precision, tiny_model) == "auto"
    elif option == "ddp":
        strategy = build_strategy(typed.strategy, typed.trainer.precision, tiny_model)
        assert type(strategy) is DDPStrategy
        assert strategy.process_group_backend is None  # Lightning's choice: gloo on CPU, nccl on GPU
    elif option.startswith("fsdp"):
        from torch.distributed.fsdp import ShardingStrategy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        strategy = build_strategy(typed.strategy, typed.trainer.precision, tiny_model)
        assert type(strategy) is FSDPStrategy
        expected = "SHARD_GRAD_OP" if option == "fsdp_shard_grad_op" else "FULL_SHARD"
        assert strategy.sharding_strategy == ShardingStrategy[expected]
        assert strategy.kwargs["use_orig_params"] is True  # frozen base + trainable LoRA in one flat layer
        policy = strategy.kwargs["auto_wrap_policy"]  # Lightning turned our class set into this policy
        wrapped = {
            type(m) for m in tiny_model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)
        }
        assert wrapped == {LlamaDecoderLayer}
        mp = strategy.mixed_precision
        assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (
            torch.bfloat16,
            torch.float32,
            torch.float32,
        )
        assert strategy.cpu_offload.offload_params is False
    else:
        path = find_deepspeed_config(typed.strategy.deepspeed_config)
        stage = int(option.split("zero")[1][0])
        assert path == CONF / "deepspeed" / f"zero{stage}{'_offload' if 'offload' in option else ''}.json"
        assert load_deepspeed_config(typed.strategy.deepspeed_config)["zero_optimization"]["stage"] == stage
        if not HAS_DEEPSPEED:
            with pytest.raises(ConfigError, match=r"pip install -e '\.\[deepspeed\]'"):
                build_strategy(typed.strategy, typed.trainer.precision, tiny_model)
            pytest.skip(
                "deepspeed is not installed (an optional extra); its JSON and mapping are checked above"
            )
        strategy = build_strategy(typed.strategy, typed.trainer.precision, tiny_model)
        assert is_deepspeed(strategy)
        assert strategy.config == load_deepspeed_config(typed.strategy.deepspeed_config)
        assert strategy.exclude_frozen_parameters is True


def test_fsdp_activation_checkpointing_and_mixed_precision_follow_the_config(make_cfg, tiny_model):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    typed = validate(make_cfg(*TINY, "strategy=fsdp", *GPU_TRAINER, "strategy.activation_checkpointing=true"))
    layers = decoder_layer_classes(tiny_model)
    kwargs = fsdp_kwargs(typed.strategy, typed.trainer.precision, layers)
    assert kwargs["activation_checkpointing_policy"] == kwargs["auto_wrap_policy"] == {LlamaDecoderLayer}
    assert kwargs["mixed_precision"] is None  # trainer.precision 32-true: no mixed precision
    assert FSDPStrategy(**kwargs)  # Lightning accepts exactly these arguments
    fp16 = fsdp_kwargs(typed.strategy, "16-mixed", layers)["mixed_precision"]
    assert (fp16.param_dtype, fp16.reduce_dtype) == (torch.float16, torch.float32)


def test_wrap_layers_come_from_no_split_modules_or_names(tiny_model):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

    # The PEFT wrapper hides nothing: the declaration is found on the inner transformers model.
    assert decoder_layer_classes(tiny_model) == {LlamaDecoderLayer}
    assert decoder_layer_classes(tiny_model, ["LlamaRMSNorm"]) == {LlamaRMSNorm}
    with pytest.raises(ConfigError, match="strategy.wrap_layers.*GPT2Block.*LlamaDecoderLayer"):
        decoder_layer_classes(tiny_model, ["GPT2Block"])


def test_strategy_mistakes_are_reported_by_key(make_cfg):
    with pytest.raises(ConfigError) as err:
        validate(
            make_cfg(
                *TINY,
                "strategy=fsdp",
                "model.dtype=bfloat16",
                "strategy.activation_checkpointing=true",
                "trainer.gradient_checkpointing=true",
                "strategy.sharding_strategy=HYBRID",
            )
        )
    message = str(err.value)
    for expected in (
        "model.dtype='bfloat16': float32 for LoRA under FSDP",
        "strategy.activation_checkpointing=True: false when trainer.gradient_checkpointing",
        "strategy.sharding_strategy='HYBRID'",
    ):
        assert expected in message
    with pytest.raises(ConfigError, match="strategy.deepspeed_config='nope.json': no such file"):
        validate(
            make_cfg(*TINY, "strategy=deepspeed_zero2", *GPU_TRAINER, "strategy.deepspeed_config=nope.json")
        )
    with pytest.raises(ConfigError, match=r"trainer.strategy: moved to the strategy group: strategy=ddp"):
        validate(make_cfg(*TINY, "+trainer.strategy=ddp"))


@pytest.mark.parametrize("path", DEEPSPEED_JSONS, ids=lambda p: p.name)
def test_deepspeed_json_round_trips_and_is_filled_from_the_trainer(path):
    config = json.loads(path.read_text())
    assert json.loads(json.dumps(config)) == config
    stage = int(path.stem[len("zero")])
    assert config["zero_optimization"]["stage"] == stage
    offload = config["zero_optimization"].get("offload_optimizer", {}).get("device")
    assert offload == ("cpu" if "offload" in path.stem else None)
    if path.stem == "zero3_offload":
        assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    # Nothing Lightning refuses or that our other groups own: no "auto", no accumulation, no optimizer.
    for key in ("gradient_accumulation_steps", "optimizer", "scheduler", "fp16", "bf16", *FILLED):
        assert key not in config
    assert '"auto"' not in path.read_text()
    filled = fill_deepspeed_config(
        config, micro_batch_size=4, effective_batch_size=32, gradient_clip_val=1.0, precision="bf16-mixed"
    )
    assert {k: filled[k] for k in FILLED} == {
        "train_micro_batch_size_per_gpu": 4,
        "train_batch_size": 32,
        "gradient_clipping": 1.0,
    }
    assert {k: v for k, v in filled.items() if k not in FILLED} == config  # the rest untouched
    assert "train_batch_size" not in config  # the input is not modified


def test_deepspeed_fill_reports_every_conflict_at_once():
    hf_style = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW"},
        "fp16": {"enabled": True},
        "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"},
    }
    with pytest.raises(ConfigError) as err:
        fill_deepspeed_config(
            hf_style,
            micro_batch_size=4,
            effective_batch_size=32,
            gradient_clip_val=1.0,
            precision="bf16-mixed",
        )
    message = str(err.value)
    for expected in (
        "train_batch_size='auto'",
        "zero_optimization.reduce_bucket_size='auto'",
        "gradient_accumulation_steps: remove it; Lightning sets it",
        "optimizer: remove it; it comes from the optimizer group",
        "train_micro_batch_size_per_gpu=8: disagrees with the trainer group (4)",
        "fp16.enabled=True: contradicts trainer.precision=bf16-mixed",
    ):
        assert expected in message
    assert "gradient_clipping" not in message  # the same value as ours is allowed


def test_gradient_bookkeeping_per_strategy():
    class DeepSpeedStrategy:  # stands in for Lightning's, which needs deepspeed installed
        handles_gradient_accumulation = True

    plain = SimpleNamespace(strategy=object(), accumulate_grad_batches=4, world_size=2)
    deepspeed = SimpleNamespace(strategy=DeepSpeedStrategy(), accumulate_grad_batches=4, world_size=2)
    assert gradient_divisor(plain) == 8  # Lightning's 1/accumulation, then the mean over 2 ranks
    assert gradient_divisor(deepspeed) == 32  # DeepSpeed's engine divides by its accumulation again
    assert clean_name("model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.q.lora_A.weight") == (
        "model.layers.0.q.lora_A.weight"
    )

    # Single device / DDP: scale, then clip to the norm Lightning's clipping would use.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    expected = [p.grad.clone() * 0.5 for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected]))
    trainer = SimpleNamespace(strategy=object())
    got = finish_gradients(trainer, model, torch.tensor(0.5), max_norm=float(norm) / 2)
    torch.testing.assert_close(got, norm)
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g / 2, rtol=1e-5, atol=1e-6)


def test_resume_accepts_checkpoint_directories(tmp_path):
    run = tmp_path / "train" / "runs" / "r1"
    (run / "checkpoints" / "last.ckpt" / "checkpoint").mkdir(parents=True)  # DeepSpeed saves a directory
    (run / "checkpoints" / "last.ckpt" / "latest").write_text("checkpoint")
    assert resolve_resume(str(run), str(tmp_path), str(tmp_path / "new")) == str(
        run / "checkpoints" / "last.ckpt"
    )
    direct = str(run / "checkpoints" / "last.ckpt")
    assert resolve_resume(direct, str(tmp_path), str(tmp_path / "new")) == direct
    assert resolve_resume("last", str(tmp_path), str(tmp_path / "new")) == direct


def test_torchrun_and_srun_ranks_share_one_run_directory(monkeypatch):
    for name in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    try:
        run_name.cache_clear()
        assert run_name("%Y") == str(__import__("datetime").date.today().year)
        run_name.cache_clear()
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
        assert run_name("%Y") == "torchrun-abc"
        run_name.cache_clear()
        monkeypatch.setenv("SLURM_NTASKS", "8")
        monkeypatch.setenv("SLURM_JOB_ID", "123")
        monkeypatch.setenv("SLURM_STEP_ID", "0")
        assert run_name("%Y") == "slurm-123.0"
    finally:
        run_name.cache_clear()
    assert on_rank_zero(".hydra") == ".hydra"
    monkeypatch.setenv("RANK", "3")
    assert on_rank_zero(".hydra") is None  # only rank 0 writes .hydra/


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_strategies_say_so_on_a_machine_without_one(make_cfg):
    cfg = make_cfg(*TINY, "strategy=fsdp", *GPU_TRAINER)
    with pytest.raises(ConfigError, match="strategy fsdp needs a CUDA GPU"):
        build_trainer(validate(cfg), cfg)


def test_two_processes_build_a_world_of_two_on_cpu(make_cfg):
    typed = validate(make_cfg(*TINY, "trainer.devices=2", "strategy=ddp"))
    built = build_trainer(typed, make_cfg(*TINY))
    assert built.trainer.world_size == 2
    assert str(built.trainer.strategy.root_device) == "cpu"
    assert (built.plan.world_size, built.plan.accumulate_grad_batches) == (2, 1)  # 8 = 4 x 2 x 1


def test_each_step_deals_the_one_device_examples_over_the_ranks():
    from sft.data.datamodule import EpochShuffleSampler

    lengths = [(i * 37) % 101 for i in range(50)]  # 50 rows: the last step is short, ranks padded evenly
    one = list(EpochShuffleSampler(lengths, seed=3, group_size=8))
    for ranks in (2, 4):
        shares = [list(EpochShuffleSampler(lengths, 3, 8, rank, ranks)) for rank in range(ranks)]
        assert {len(s) for s in shares} == {-(-50 // ranks)}
        per_rank = 8 // ranks  # examples each rank contributes to one optimizer step of 8
        for start in range(0, 48, 8):
            step = [i for s in shares for i in s[start // ranks : start // ranks + per_rank]]
            assert sorted(step) == sorted(one[start : start + 8])  # the same examples as on one device
        for share in shares:  # each rank's share of a step stays longest first
            for start in range(0, 48 // ranks, per_rank):
                block = [lengths[i] for i in share[start : start + per_rank]]
                assert block == sorted(block, reverse=True)


# --- DDP on two CPU processes, through the real command line ------------------------------------------


DDP_COMMON = [
    *TINY,
    "lora.dropout=0",  # dropout draws from each process's RNG differently
    "optimizer.lr=1e-3",
    "trainer.save_steps=2",
    "trainer.eval_steps=2",
    "trainer.save_total_limit=5",
]


@pytest.mark.slow  # two runs, one spawning a second process
def test_dpo_on_two_cpu_processes_matches_one_process(make_cfg, tmp_path, cache_dir):
    """The pair objective's sums (loss, pairs, rewards) are reduced over ranks like SFT's token sums."""
    from sft.train import train

    common = [o for o in DDP_COMMON if not o.startswith("data.datasets.builtin")]
    common += ["stage=dpo", "data=dpo_en", "data.cutoff_len=512", "trainer.max_steps=2", "optimizer.lr=1e-2"]
    train(make_cfg(*common, run="single"))
    single = tmp_path / "single"
    run = train_processes(tmp_path / "ddp", cache_dir, *common, "trainer.devices=2", "strategy=ddp")
    for key in ("train/loss", "train/grad_norm", "train/rewards/margin", "train/window_pairs"):
        one, two = logged_series(single, key), logged_series(run, key)
        assert one.keys() == two.keys() == {0, 1}, key
        assert all(two[s] == pytest.approx(one[s], rel=1e-4, abs=1e-6) for s in one), (key, one, two)
    assert logged_series(run, "train/window_pairs") == {0: 8.0, 1: 8.0}
    val_one = json.loads((single / "summary.json").read_text())["val"]
    val_two = json.loads((run / "summary.json").read_text())["val"]
    assert val_two == pytest.approx(val_one, rel=1e-4, abs=1e-6)


@pytest.mark.slow  # two runs, one spawning a second process
def test_ddp_on_two_cpu_processes_matches_one_process(make_cfg, tmp_path, cache_dir):
    from sft.train import train

    # One process: micro-batch 4 x 2 accumulation steps = effective batch 8.
    train(make_cfg(*DDP_COMMON, run="single"))
    single = tmp_path / "single"
    # Two processes (gloo): micro-batch 4 x 2 devices x 1 accumulation step = the same 8. The 4 is the token
    # budget's choice from micro_batch_size 2, made on each rank from the cached data (with rank 1 left at 2,
    # the ranks' collectives fell out of step and the run hung until the 600 s timeout failed it).
    budget = ["trainer.micro_batch_size=2", "trainer.micro_batch_tokens=100000"]
    run = train_processes(
        tmp_path / "ddp", cache_dir, *DDP_COMMON, *budget, "trainer.devices=2", "strategy=ddp"
    )

    summary = json.loads((run / "summary.json").read_text())
    assert summary["strategy"] == "DDPStrategy"
    assert summary["batch"] == {
        "effective_batch_size": 8,
        "micro_batch_size": 4,
        "world_size": 2,
        "accumulate_grad_batches": 1,
    }
    # The gradient scale itself (the norm before clipping): one process divides by its 2 accumulation
    # steps, two processes by their 2 ranks. Dropping either factor doubles that run's gradients, which
    # AdamW's nearly scale-free update hides from the losses below (at most a 3e-5 relative drift by
    # step 4) unless clipping triggers.
    norm_one, norm_two = logged_series(single, "train/grad_norm"), logged_series(run, "train/grad_norm")
    assert norm_one.keys() == norm_two.keys() == set(range(6))
    for step in norm_one:
        assert norm_one[step] > 0
        assert norm_two[step] == pytest.approx(norm_one[step], rel=1e-4), (step, norm_one, norm_two)

    # Each rank takes every other index of the step's length-sorted block of 8 (the data module
    # deals the shares itself), so every step trains on exactly the examples of the one-process
    # step; only the order of float32 additions differs (micro-batch composition and padding,
    # the cross-rank sum). Observed: max |diff| 4.8e-7 on losses near 6 (8e-8 relative).
    one, two = logged_series(single, "train/loss"), logged_series(run, "train/loss")
    assert one.keys() == two.keys() == set(range(6))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), (step, one, two)
    assert summary["val_loss"] == pytest.approx(
        json.loads((single / "summary.json").read_text())["val_loss"], rel=1e-5
    )

    # Exactly one copy of every output: rank 1 wrote no .hydra/, no files of its own, no second adapter.
    assert files_under(run) == {
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "train.log",
        "config.yaml",
        "run_record.json",
        "summary.json",
        "csv/metrics.csv",
        "csv/hparams.yaml",
        "progress.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "checkpoints/step-000002.ckpt",
        "checkpoints/step-000004.ckpt",
        "checkpoints/step-000006.ckpt",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/README.md",
        "adapter/tokenizer.json",
        "adapter/tokenizer_config.json",
        "adapter/chat_template.jinja",
    }
    log = (run / "train.log").read_text()
    assert (
        log.count("effective batch 8 = micro-batch 4 x 2 device(s) x 1 accumulation steps (DDPStrategy") == 1
    )

    # The same plain PEFT adapter as the one-process run.
    from safetensors.torch import load_file

    a = load_file(single / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


# --- scripts/gpu_smoke.sh: everything but the GPU runs -----------------------------------------------


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_smoke_arguments_and_plan(smoke, tmp_path):
    args = smoke.parse_args(
        ["--steps", "3", "--strategies", "ddp,deepspeed_zero3", "model=tiny", f"--out={tmp_path}"]
    )
    assert (args.steps, args.strategies, args.overrides, args.out) == (
        3,
        ["ddp", "deepspeed_zero3"],
        ["model=tiny"],
        tmp_path,
    )
    assert smoke.parse_args([]).strategies == STRATEGY_OPTIONS  # every option of conf/strategy/ by default
    with pytest.raises(SystemExit):
        smoke.parse_args(["--strategies", "zero9"])
    with pytest.raises(SystemExit):
        smoke.parse_args(["--bogus"])

    no_gpu = smoke.plan(["auto", "ddp"], gpus=0, deepspeed=True)
    assert [r.skip for r in no_gpu] == ["skipped: no CUDA GPU"] * 2
    one_gpu = smoke.plan(["ddp", "fsdp", "deepspeed_zero2"], gpus=1, deepspeed=False)
    assert [(r.devices, r.skip) for r in one_gpu] == [
        (1, None),  # DDP and FSDP run as a world of one
        (1, None),
        (1, "skipped: deepspeed not installed (pip install -e '.[deepspeed]')"),
    ]
    assert {r.devices for r in smoke.plan(["ddp"], gpus=8, deepspeed=True, devices=4)} == {4}

    cmd = smoke.command(one_gpu[1], args, tmp_path / "fsdp")
    assert cmd[1:3] == ["-m", "sft.train"]
    for expected in (
        "strategy=fsdp",
        "trainer=gpu",
        "trainer.devices=1",
        "trainer.max_steps=3",
        "model=tiny",
    ):
        assert expected in cmd
    assert f"hydra.run.dir={tmp_path / 'fsdp'}" in cmd


def test_gpu_smoke_table_reads_summaries_and_reports_failures(smoke, tmp_path):
    ok_dir = tmp_path / "ddp"
    ok_dir.mkdir()
    (ok_dir / "summary.json").write_text(
        json.dumps({"tokens_per_sec": 12345.6, "peak_cuda_memory_gb": 3.14159, "train_loss": 1.23456})
    )
    rows = [
        smoke.row(smoke.Run("ddp", 2), ok_dir, 0),
        smoke.row(
            smoke.Run("fsdp", 2),
            tmp_path / "fsdp",
            1,
            "Traceback\ntorch.OutOfMemoryError: CUDA out of memory\n",
        ),
        smoke.row(smoke.Run("deepspeed_zero3", 2), tmp_path / "ds", None),
        smoke.row(
            smoke.Run("deepspeed_zero2", 2, skip="skipped: deepspeed not installed"), tmp_path / "x", None
        ),
    ]
    assert rows[0] == {
        "strategy": "ddp",
        "devices": 2,
        "tokens_per_sec": 12345.6,
        "peak_memory_gb": 3.14159,
        "final_loss": 1.23456,
        "status": "ok",
    }
    assert rows[1]["status"] == "failed (exit 1): torch.OutOfMemoryError: CUDA out of memory"
    assert rows[2]["status"] == "failed: timed out"
    lines = smoke.table(rows).splitlines()
    assert lines[0] == "| strategy | devices | tokens/s per GPU | peak memory (GiB) | final loss | status |"
    assert lines[2] == "| ddp | 2 | 12,346 | 3.14 | 1.2346 | ok |"
    assert lines[3].startswith("| fsdp | 2 | - | - | - | failed (exit 1)")
    assert lines[5] == "| deepspeed_zero2 | 2 | - | - | - | skipped: deepspeed not installed |"


def test_gpu_smoke_without_gpus_still_prints_the_table(tmp_path):
    # Runs the real script here: no GPU, so every row is skipped, none fails and it exits 0.
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), "--strategies", "auto,ddp", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "no CUDA GPU" not in done.stdout:
        pytest.skip("a GPU is present: the script would really train")
    assert done.returncode == 0, done.stderr
    assert "| ddp | 0 | - | - | - | skipped: no CUDA GPU |" in done.stdout
    assert (tmp_path / "table.md").read_text().count("skipped") == 2
