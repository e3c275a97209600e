"""`trainer.micro_batch_tokens`: short rows go more to a micro-batch, which changes speed, not the update."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY, logged_series, measured

import sft.training.precision as precision_module
from sft.train import train
from sft.training.checkpoint import resumed_micro_batch
from sft.training.trainer import rows_per_micro_batch, token_budget


@pytest.mark.parametrize(
    ("least", "per_device", "budget", "row_tokens", "chosen"),
    [
        (2, 32, None, 58.0, 2),  # no budget: micro_batch_size as given
        (2, 32, 400, None, 2),  # lengths unknown (streamed rows)
        (2, 32, 400, 58.0, 4),  # 8 x 58 = 464 > 400
        (2, 32, 400, 175.0, 2),  # Alpaca-length rows stay at 2
        (2, 32, 400, 500.0, 2),  # rows longer than the budget: never fewer than micro_batch_size
        (2, 24, 400, 57.0, 6),  # 7 x 57 fits but does not divide 24
        (4, 16, 10_000, 58.0, 16),  # the whole step in one micro-batch
        (3, 9, 100, 40.0, 3),  # even micro_batch_size overflows the budget: it is kept
        (2, 8, 2857, 512.0, 4),  # packed rows of 512 within `auto`'s budget at 3000 GFLOP/s: 4, not 8
    ],
)
def test_rows_per_micro_batch_is_the_largest_divisor_within_the_budget(
    least, per_device, budget, row_tokens, chosen
):
    tokens = (lambda rows: None) if row_tokens is None else (lambda rows: rows * row_tokens)
    assert rows_per_micro_batch(least, per_device, budget, tokens) == chosen


def test_padding_counts_against_the_budget():
    """Rows of 50 tokens on average whose micro-batches pad to 90 at 4 rows: 4 x 50 fits 300, 4 x 90 not."""
    padded = {2: 150.0, 4: 360.0, 8: 900.0}
    assert rows_per_micro_batch(2, 8, 300, padded.get) == 2
    assert rows_per_micro_batch(2, 8, 400, padded.get) == 4


@pytest.mark.parametrize(
    ("setting", "precision", "on_cpu", "processes", "budget"),
    [
        (None, "32-true", True, 1, None),
        (1000, "bf16-mixed", True, 1, 1000),
        ("auto", "bf16-mixed", False, 1, None),  # a GPU: micro_batch_size as given
        ("auto", "bf16-mixed", True, 1, 2857),  # 400 x 3000 / 420: the bf16 rate
        ("auto", "bf16-true", True, 1, 2857),
        ("auto", "32-true", True, 1, 400),  # fp32 at 300 GFLOP/s, slower than the reference: never below 400
        ("auto", "bf16-mixed", True, 2, 400),  # ranks share the cores, or would each measure: fixed
    ],
)
def test_auto_scales_the_budget_with_the_rate_of_the_dtype_the_run_computes_in(
    monkeypatch, setting, precision, on_cpu, processes, budget
):
    monkeypatch.setenv(precision_module.RATES, "300,3000")  # as a parent process measured them
    assert token_budget(setting, precision, on_cpu, None, processes) == budget


def test_auto_measures_the_rates_once_for_the_process_and_its_ranks(monkeypatch, undecided):
    """Without inherited rates, `auto` measures, keeps them for the processes it starts and does not
    measure again."""
    calls = measured(monkeypatch, 210.0, 840.0)
    assert token_budget("auto", "bf16-mixed", True, None) == 800
    assert os.environ[precision_module.RATES] == "210.0,840.0"
    assert token_budget("auto", "32-true", True, None) == 400
    # Once, on the squares the reference 420 GFLOP/s was measured on.
    assert calls == [(torch.float32, 2048), (torch.bfloat16, 2048)]


def prepared_datamodule(make_cfg, *overrides):
    """The tiny run's datamodule with its data prepared."""
    from sft.config import validate
    from sft.data.datamodule import build_datamodule
    from sft.data.loading import system_prompt
    from sft.data.templates import get_template
    from sft.training.model import load_tokenizer

    cfg = validate(make_cfg(*TINY, *overrides))
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    template = get_template(cfg.data.template, tokenizer, system_prompt(cfg.data))
    data = build_datamodule(cfg, tokenizer, template)
    data.prepare_data()
    return data


def test_a_micro_batch_counts_its_padding_in_the_length_grouped_order(make_cfg):
    """One row per micro-batch has no padding (the mean length); more rows pad to the longest, less when
    each step is sorted by length (group_by_length) than in plain shuffled order; packed rows count their
    capacity."""

    def module(*overrides):
        return prepared_datamodule(make_cfg, "trainer.effective_batch_size=16", *overrides)

    grouped, shuffled = module(), module("data.group_by_length=false")
    mean = grouped.stats.train_tokens / grouped.stats.train
    assert mean <= grouped.micro_batch_tokens(1) < mean + 8  # a row alone: only the rounding to 8
    for rows in (2, 4, 8):
        assert rows * mean < grouped.micro_batch_tokens(rows) < shuffled.micro_batch_tokens(rows)
    assert module("data.packing=true").micro_batch_tokens(4) == 4 * 256  # TINY's cutoff_len

    # What it estimates: rank 0's first-epoch micro-batches as its loader yields them, on 1 or 2 devices, and
    # with a curriculum (stage by stage, then by length).
    staged = module("data.curriculum=easy_to_hard")
    for data, ranks, rows in ((grouped, 1, 4), (grouped, 2, 4), (grouped, 2, 2), (staged, 1, 4)):
        data.setup("fit")
        data.trainer = SimpleNamespace(global_rank=0, world_size=ranks)
        data.micro_batch_size = rows
        padded = [b["attention_mask"].numel() for b in data.train_dataloader()]
        assert data.micro_batch_tokens(rows, ranks) == pytest.approx(sum(padded) / len(padded))


def test_a_token_budget_merges_micro_batches_without_changing_the_update(make_cfg, tmp_path):
    """Micro-batch 4 x 2 accumulation, and the budget's choice of 8 x 1, train the same steps: the loss is a
    per-token mean over the whole optimizer step. Dropout off, so both draw nothing random."""
    same = [*TINY, "lora.dropout=0", "trainer.max_steps=4"]
    train(make_cfg(*same, "trainer.micro_batch_tokens=null", run="given"))
    train(make_cfg(*same, "trainer.micro_batch_tokens=100000", run="budget"))
    given, budget = tmp_path / "given", tmp_path / "budget"
    batches = [json.loads((run / "summary.json").read_text())["batch"] for run in (given, budget)]
    assert [(b["micro_batch_size"], b["accumulate_grad_batches"]) for b in batches] == [(4, 2), (8, 1)]
    assert yaml.safe_load((budget / "config.yaml").read_text())["trainer"]["micro_batch_size"] == 8
    a, b = logged_series(given, "train/loss"), logged_series(budget, "train/loss")
    assert len(a) == 4 and a.keys() == b.keys()
    assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-5, abs=1e-5)


def test_a_resume_keeps_the_checkpoints_micro_batches(make_cfg, tmp_path):
    """The loader's place in the epoch counts micro-batches: a resume under a token budget (which would choose
    8 here) takes the checkpoint's 4; another micro_batch_size given without a budget is refused, naming the
    settings that resume exactly."""
    from sft.errors import ConfigError

    first = [*TINY, "trainer.max_steps=2"]
    train(make_cfg(*first, run="first"))  # micro-batch 4 (TINY): the 400-token budget keeps it for these rows
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert resumed_micro_batch(checkpoint) == 4
    again = [*TINY, "trainer.max_steps=4", f"resume={checkpoint}"]
    with pytest.raises(ConfigError, match="trainer.micro_batch_size=4 trainer.micro_batch_tokens=null"):
        train(make_cfg(*again, "trainer.micro_batch_size=2", "trainer.micro_batch_tokens=null", run="given"))
    train(make_cfg(*again, "trainer.micro_batch_tokens=100000", run="budget"))
    summary = json.loads((tmp_path / "budget" / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["batch"]["micro_batch_size"] == 4


def test_a_checkpoint_without_a_saved_loader_says_so(tmp_path):
    """DeepSpeed's checkpoint directories and checkpoints from before the loader saved its state: None."""
    torch.save({"loops": {"fit_loop": {"state_dict": {}}}}, tmp_path / "old.ckpt")
    assert resumed_micro_batch(tmp_path / "old.ckpt") is None
    (tmp_path / "shards.ckpt").mkdir()
    assert resumed_micro_batch(tmp_path / "shards.ckpt") is None


@pytest.mark.parametrize("value", ["fast", "0", "-5", "true", "12.5"])
def test_a_bad_budget_names_the_key_and_what_it_may_be(make_cfg, value):
    from sft.config import validate
    from sft.errors import ConfigError

    allowed = r"trainer\.micro_batch_tokens.*'auto', a positive whole number of tokens"
    with pytest.raises(ConfigError, match=allowed):
        validate(make_cfg(*TINY, f"trainer.micro_batch_tokens={value}"))


def test_a_resume_on_another_number_of_devices_is_refused(make_cfg):
    """Each device's place in the epoch counts micro-batches of its own share of the rows: a loader state
    saved on two devices is refused on one, naming the count that resumes exactly; on two it resumes, and
    at an epoch's start on any count."""
    from sft.errors import ConfigError

    data = prepared_datamodule(make_cfg)
    data.setup("fit")

    progress = SimpleNamespace(current=SimpleNamespace(processed=1))  # one micro-batch trained
    fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))

    def loader(ranks):
        data.trainer = SimpleNamespace(global_rank=0, world_size=ranks, fit_loop=fit_loop)
        return data.train_dataloader()

    saved = loader(2).state_dict()
    assert saved["devices"] == 2
    with pytest.raises(ConfigError, match=r"trained on 2 device\(s\) and this run has 1.*resume on 2"):
        loader(1).load_state_dict(saved)
    loader(2).load_state_dict(saved)
    loader(1).load_state_dict({**saved, "batches": 0})  # at the epoch's start: exact on any count
