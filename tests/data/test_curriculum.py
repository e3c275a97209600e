"""Curriculum training (`data.curriculum=easy_to_hard`): stages by complexity, in order, in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY

from sft.config import validate
from sft.data.complexity import complexity
from sft.data.datamodule import EpochShuffleSampler, SFTDataModule, curriculum_stages, pack_by_stage
from sft.data.templates import get_template
from sft.train import train
from sft.training.model import load_tokenizer


def test_stages_cut_the_complexity_ranking_into_equal_parts():
    scores = [5.0, 1.0, 3.0, 2.0, 4.0, 6.0]
    assert curriculum_stages(scores, 3) == [2, 0, 1, 0, 1, 2]
    assert curriculum_stages(scores, 1) == [0] * 6
    assert curriculum_stages([], 3) == []


@pytest.mark.parametrize("replicas", [1, 2])
def test_sampler_goes_stage_by_stage_and_reshuffles_within_stages(replicas):
    stages = [i % 3 for i in range(30)]
    orders = []
    for epoch in (0, 1):
        for rank in range(replicas):
            sampler = EpochShuffleSampler([10] * 30, seed=7, rank=rank, num_replicas=replicas, stages=stages)
            sampler.set_epoch(epoch)
            order = list(sampler)
            assert [stages[i] for i in order] == sorted(stages[i] for i in order)  # never back to easier
            orders.append(order)
    assert orders[0] != orders[replicas]  # epoch 1 shuffles the stages' members anew
    for epoch in (0, 1):  # the ranks' shares cover every row
        assert sorted(
            i for order in orders[epoch * replicas : (epoch + 1) * replicas] for i in order
        ) == list(range(30))


def test_packing_keeps_each_bin_within_one_stage():
    lengths = [100, 30, 60, 200, 90, 10, 120, 50]
    stages = curriculum_stages([float(n) for n in lengths], 2)
    bins, bin_stages = pack_by_stage(lengths, 256, 0, stages)
    assert sorted(i for b in bins for i in b) == list(range(8))
    for members, stage in zip(bins, bin_stages, strict=True):
        assert {stages[i] for i in members} == {stage}
        assert sum(lengths[i] for i in members) <= 256


def test_epoch_order_follows_the_complexity_estimate(make_cfg, cache_dir):
    typed = validate(make_cfg(*TINY, "data.datasets.builtin.num_rows=60", "data.curriculum=easy_to_hard"))
    tokenizer = load_tokenizer(typed.model, str(cache_dir))
    module = SFTDataModule(
        typed.data, tokenizer, get_template("chatml", tokenizer), 2, typed.seed, str(cache_dir)
    )
    module.prepare_data()
    module.setup()
    train_rows = module.prepared.train
    scores = train_rows["complexity"]
    # The column is the estimate of each row's conversation (builtin rows carry no complexity of their own).
    conversation = json.loads(module.prepared.val["conversation"][0])
    assert module.prepared.val["complexity"][0] == pytest.approx(complexity(conversation), rel=1e-6)
    order = list(module.train_dataloader().sampler)
    stages = [module.train_stages[i] for i in order]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}
    by_stage = [[scores[i] for i in order if module.train_stages[i] == s] for s in range(3)]
    assert max(by_stage[0]) <= min(by_stage[1]) and max(by_stage[1]) <= min(by_stage[2])


def test_a_row_brings_its_own_complexity(make_cfg, cache_dir, tmp_path):
    rows = [
        {"instruction": f"Say {w}.", "output": f"{w}.", "complexity": c}
        for w, c in [("one", 9.0), ("two", 1.0), ("three", 5.0), ("four", 3.0), ("five", 7.0), ("six", 2.0)]
    ]
    path = tmp_path / "rated.json"
    path.write_text(json.dumps(rows))
    tiny = [o for o in TINY if not o.startswith("data.datasets.builtin")]
    typed = validate(
        make_cfg(
            *tiny,
            "data=alpaca_en",
            f"data.datasets.alpaca_en.path={path}",
            "data.val_size=0",
            "data.curriculum=easy_to_hard",
            "data.curriculum_stages=6",
        )
    )
    tokenizer = load_tokenizer(typed.model, str(cache_dir))
    module = SFTDataModule(
        typed.data, tokenizer, get_template("chatml", tokenizer), 1, typed.seed, str(cache_dir)
    )
    module.prepare_data()
    module.setup()
    scores = module.prepared.train["complexity"]
    assert [scores[i] for i in module.train_dataloader().sampler] == [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]


def test_curriculum_run_trains_through_all_stages(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "data.curriculum=easy_to_hard", "data.packing=true", "trainer.max_steps=3")
    loss = train(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["global_step"] == 3 and loss == pytest.approx(summary["val_loss"])
