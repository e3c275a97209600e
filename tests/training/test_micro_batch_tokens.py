"""`trainer.micro_batch_tokens`: short rows go more to a micro-batch, which changes speed, not the update."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY, logged_series

from sft.train import train
from sft.training.trainer import rows_per_micro_batch


@pytest.mark.parametrize(
    ("least", "per_device", "budget", "row_tokens", "chosen"),
    [
        (2, 32, None, 58.0, 2),  # no budget: micro_batch_size as given
        (2, 32, 400, None, 2),  # no mean length (packed or streamed rows)
        (2, 32, 400, 58.0, 4),  # 8 x 58 = 464 > 400
        (2, 32, 400, 175.0, 2),  # Alpaca-length rows stay at 2
        (2, 32, 400, 500.0, 2),  # rows longer than the budget: never fewer than micro_batch_size
        (2, 24, 400, 57.0, 6),  # 7 x 57 fits but does not divide 24
        (4, 16, 10_000, 58.0, 16),  # the whole step in one micro-batch
        (3, 9, 100, 40.0, 3),  # even micro_batch_size overflows the budget: it is kept
    ],
)
def test_rows_per_micro_batch_is_the_largest_divisor_within_the_budget(
    least, per_device, budget, row_tokens, chosen
):
    assert rows_per_micro_batch(least, per_device, budget, row_tokens) == chosen


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


def test_a_resume_with_other_micro_batches_is_refused_with_the_settings_that_fit(make_cfg, tmp_path):
    """The loader's place in the epoch counts micro-batches: resuming at another size would replay or skip
    rows, so it stops and names the settings that resume exactly (which then do)."""
    from sft.errors import ConfigError

    first = [*TINY, "trainer.max_steps=2"]
    train(make_cfg(*first, run="first"))  # micro-batch 4 (TINY), the budget unused with these long rows
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    again = [*TINY, "trainer.max_steps=4", f"resume={checkpoint}"]
    with pytest.raises(ConfigError, match="trainer.micro_batch_size=4 trainer.micro_batch_tokens=null"):
        train(make_cfg(*again, "trainer.micro_batch_tokens=100000", run="budget"))
    train(make_cfg(*again, "trainer.micro_batch_size=4", "trainer.micro_batch_tokens=null", run="given"))
    assert json.loads((tmp_path / "given" / "summary.json").read_text())["global_step"] == 4
