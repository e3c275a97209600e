"""The training stages end to end on the tiny model: pt, dpo (each loss, each reference source) and kto."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, logged_series

from sft.config import ConfigError, validate
from sft.data.paired_batches import PairedPadCollator
from sft.data.tokenize import IGNORE_INDEX
from sft.train import train
from sft.training.model import apply_peft, load_model
from sft.training.module import SFTModule
from sft.training.objectives import PairObjective

# TINY without its builtin-data row count: each stage reads its own demo set from ../shared/data. The
# tiny model's tokenizer is byte-level, so a 512-token cut-off keeps only the demo sets' shorter rows
# (about a third of the pairs); the rest are reported as too long.
STAGE_TINY = [o for o in TINY if not o.startswith("data.datasets.builtin")] + ["data.cutoff_len=512"]
DPO = [*STAGE_TINY, "stage=dpo", "data=dpo_en", "lora.dropout=0"]


def summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_every_reference_source_trains_the_same_run_as_the_disabled_adapter(make_cfg, tmp_path):
    common = [*DPO, "trainer.max_steps=2", "trainer.eval_steps=2", "optimizer.lr=1e-2"]
    common += ["trainer.effective_batch_size=4", "trainer.micro_batch_size=2", "data.val_size=4"]
    for reference in ("auto", "precomputed", "copy"):
        train(make_cfg(*common, f"stage.reference={reference}", run=reference))
    adapter = summary(tmp_path / "auto")
    assert adapter["reference"] == "adapter"  # a fresh LoRA adapter: disabling it gives the start
    assert adapter["initial_val"]["val/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert adapter["val"]["val/loss"] != pytest.approx(math.log(2), abs=1e-4)  # and then it moved
    for reference in ("precomputed", "copy"):
        other = summary(tmp_path / reference)
        assert other["reference"] == reference
        for name, value in adapter["val"].items():
            # abs: logps/margin (about 2e-3) is a difference of log-probabilities in the hundreds, summed by
            # other GEMMs in another batch, so its float32 rounding is about 1e-6 on some CPUs.
            assert other["val"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (reference, name)
        a, b = (
            logged_series(tmp_path / "auto", "train/loss"),
            logged_series(tmp_path / reference, "train/loss"),
        )
        assert a.keys() == b.keys() == {0, 1}
        assert all(b[step] == pytest.approx(a[step], rel=1e-5) for step in a), reference


def test_full_fine_tuning_dpo_starts_at_its_own_reference(make_cfg, tmp_path):
    train(make_cfg(*DPO, "lora=none", "trainer.max_steps=2", "optimizer.lr=1e-3", run="full"))
    s = summary(tmp_path / "full")
    assert s["reference"] == "precomputed"  # nothing to disable: computed once, before the first update
    assert s["initial_val"]["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert s["initial_val"]["val/rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    assert s["val"]["val/loss"] != pytest.approx(math.log(2), abs=1e-5)
    assert (tmp_path / "full" / "model").is_dir()


def test_a_precomputed_reference_survives_packing_and_biases_are_not_a_fresh_start(make_cfg, tmp_path):
    # Full fine-tuning with packed pairs: the first step's policy is its own reference, so the loss is log 2
    # (to float noise: the reference was computed on padded rows; a misplaced one is off by far more).
    short = ["trainer.max_steps=1", "trainer.effective_batch_size=4", "trainer.micro_batch_size=2"]
    train(make_cfg(*DPO, "lora=none", "data.packing=true", *short, run="packed"))
    assert summary(tmp_path / "packed")["reference"] == "precomputed"
    assert logged_series(tmp_path / "packed", "train/loss")[0] == pytest.approx(math.log(2), abs=1e-4)
    # LoRA that also trains the base's biases: disabling the adapter would not undo them, so it is computed.
    train(make_cfg(*STAGE_TINY, "stage=kto", "data=kto_en", "lora.bias=all", *short, run="kto"))
    s = summary(tmp_path / "kto")
    assert s["reference"] == "precomputed"
    assert s["initial_val"]["val/loss"] == pytest.approx(0.5, abs=1e-6)
    assert logged_series(tmp_path / "kto", "train/loss")[0] == pytest.approx(0.5, abs=1e-6)


def test_dpo_accumulation_matches_one_large_batch(make_cfg, tmp_path):
    # The loss is a mean over pairs: gradients are rescaled by pairs in the window, not trained tokens.
    common = [*DPO, "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.effective_batch_size=8"]
    train(make_cfg(*common, "trainer.micro_batch_size=8", run="big"))
    train(make_cfg(*common, "trainer.micro_batch_size=2", run="accum"))
    for key in ("train/loss", "train/grad_norm", "train/rewards/margin", "train/window_pairs"):
        big, accum = logged_series(tmp_path / "big", key), logged_series(tmp_path / "accum", key)
        assert big.keys() == accum.keys() == {0, 1}, key
        assert all(accum[s] == pytest.approx(big[s], rel=1e-4, abs=1e-7) for s in big), key
    assert logged_series(tmp_path / "big", "train/window_pairs") == {0: 8.0, 1: 8.0}
    assert summary(tmp_path / "big")["data"]["train"] >= 24


def test_a_dpo_run_resumes_exactly_from_a_checkpoint(make_cfg, tmp_path):
    common = [*DPO, "trainer.max_steps=4", "trainer.eval_steps=2", "trainer.save_steps=2"]
    common += ["trainer.effective_batch_size=4", "trainer.micro_batch_size=2", "optimizer.lr=1e-2"]
    train(make_cfg(*common, run="full"))
    checkpoint = tmp_path / "full" / "checkpoints" / "step-000002.ckpt"
    train(make_cfg(*common, f"resume={checkpoint}", run="resumed"))
    full, resumed = (
        logged_series(tmp_path / "full", "train/loss"),
        logged_series(tmp_path / "resumed", "train/loss"),
    )
    assert set(resumed) == {2, 3}  # only the steps after the checkpoint ran
    assert all(resumed[step] == pytest.approx(full[step], rel=1e-5) for step in resumed)
    assert summary(tmp_path / "resumed")["val"]["val/rewards/margin"] == pytest.approx(
        summary(tmp_path / "full")["val"]["val/rewards/margin"], rel=1e-4, abs=1e-6
    )


def test_kto_starts_at_one_half_and_logs_its_rewards_and_kl(make_cfg, tmp_path):
    overrides = ["trainer.max_steps=2", "trainer.effective_batch_size=4", "trainer.micro_batch_size=2"]
    train(make_cfg(*STAGE_TINY, "stage=kto", "data=kto_en", *overrides, run="kto"))
    s = summary(tmp_path / "kto")
    assert s["stage"] == "kto" and s["reference"] == "adapter" and s["data"]["train"] >= 40
    assert s["initial_val"]["val/loss"] == pytest.approx(0.5, abs=1e-6)  # 1 - sigmoid(0) with weights 1
    assert {"val/rewards/chosen", "val/rewards/rejected", "val/rewards/margin", "val/kl"} <= s["val"].keys()
    assert logged_series(tmp_path / "kto", "train/kl").keys() == {0, 1}


def test_continued_pretraining_trains_every_token_of_packed_text(make_cfg, tmp_path):
    short = ["data.max_samples=40", "trainer.max_steps=2"]
    train(make_cfg(*STAGE_TINY, "stage=pt", "data=c4", *short, run="pt"))
    s = summary(tmp_path / "pt")
    assert s["stage"] == "pt" and s["data"]["packed_rows"] > 0  # packing is the pt default
    assert s["val_ppl"] == pytest.approx(math.exp(s["val_loss"]), rel=1e-5)
    # Every token carries loss except the first of each packed sample, which nothing predicts.
    trained = logged_series(tmp_path / "pt", "train/trained_tokens_per_sec")
    tokens = logged_series(tmp_path / "pt", "train/tokens_per_sec")
    assert trained.keys() == tokens.keys() == {0, 1}
    assert all(0.95 * tokens[k] < trained[k] < tokens[k] for k in trained)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage=dpo", "data=dpo_en", "stage.loss=null"], "stage.loss=None: one of"),
        (["stage.loss=ipo"], "stage.loss='ipo': null for stage sft"),
        (["stage=dpo", "data=dpo_en", "stage.loss=kto"], "stage.loss='kto'"),
        (["stage=dpo", "data=dpo_en", "stage.reference=adapter"], "stage.reference='adapter'"),
        (["stage=dpo", "data=dpo_en", "stage.loss=orpo", "stage.reference=copy"], "stage.reference='copy'"),
        (["stage=sft", "data.kind=pairs"], "data.kind='pairs': 'conversations' for stage sft"),
    ],
)
def test_stage_mistakes_name_the_key_and_the_allowed_values(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train(make_cfg(*STAGE_TINY, *overrides))


# ----------------------------------------------------------------------------------- module level


def pairs_batch(seed: int = 0, pairs: int = 3) -> dict:
    """Pairs of random token ids: a shared prompt, then a chosen and a rejected answer of other lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(pairs):
        prompt = torch.randint(3, 200, (4 + i,), generator=g).tolist()
        sides = {}
        for side, n in (("chosen", 3 + i), ("rejected", 5 - i)):
            answer = torch.randint(3, 200, (n,), generator=g).tolist()
            sides[f"{side}_input_ids"] = prompt + answer
            sides[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt) + answer
        rows.append(sides)
    return PairedPadCollator("pairs", pad_id=0)(rows)


@pytest.fixture
def tiny_lora(make_cfg):
    """The tiny model (float32, no dropout) under LoRA with non-zero B: the policy differs from its base."""
    cfg = validate(make_cfg(*STAGE_TINY, "lora.dropout=0"))
    model = apply_peft(load_model(cfg.model, cfg.paths.cache_dir), cfg.lora)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return cfg, model


def test_the_disabled_adapter_scores_like_a_separately_loaded_base(tiny_lora):
    cfg, model = tiny_lora
    module = SFTModule(model, {}, None, cfg.trainer, PairObjective("sigmoid", 0.1, 0.0))
    batch = pairs_batch()
    base = SFTModule(load_model(cfg.model, cfg.paths.cache_dir), {}, None, cfg.trainer)
    with torch.no_grad():
        expected, counts = base.sequence_logps(batch)
        policy, _ = module.sequence_logps(batch)
    reference = module.reference_logps(batch)
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-5)
    assert counts.tolist() == [3, 4, 5, 5, 4, 3]  # answers of the chosen sides, then the rejected ones
    assert (policy - reference).abs().max() > 1e-3  # the adapter really was off for the reference
    assert any(p.requires_grad for p in model.parameters())  # and is back on afterwards


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "simpo", "orpo"])
def test_a_few_steps_on_pairs_raise_the_chosen_answers_over_the_rejected(tiny_lora, loss):
    cfg, model = tiny_lora
    module = SFTModule(model, {}, None, cfg.trainer, PairObjective(loss, 0.5, 0.1))
    batch = pairs_batch(pairs=4)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    objective = module.objective
    first = objective.metrics(objective.sums(module, batch).detach())
    for _ in range(15):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    last = objective.metrics(objective.sums(module, batch).detach())
    assert last["loss"] < first["loss"] - 0.05
    assert last["rewards/margin"] > first["rewards/margin"]
    assert last["rewards/accuracy"] == 1.0
    assert last["logps/margin"] > first["logps/margin"]  # the policy's own preference, no reference
    assert last["logps/accuracy"] >= first["logps/accuracy"]


def test_the_policys_own_preference_is_its_mean_log_probability_per_token():
    # Stand-in log-probabilities: pair 0 prefers chosen per token (-1.0 > -1.5) though its sum is lower.
    scorer = SimpleNamespace(
        sequence_logps=lambda batch: (torch.tensor([-4.0, -2.0, -3.0, -1.0]), torch.tensor([4, 1, 2, 2])),
        reference_logps=lambda batch: torch.tensor([-4.0, -2.0, -3.0, -1.0]),
    )
    objective = PairObjective("sigmoid", 0.1, 0.0)
    metrics = objective.metrics(objective.sums(scorer, {}))
    assert metrics["logps/accuracy"].item() == 0.5
    assert metrics["logps/margin"].item() == pytest.approx(((-1.0 + 1.5) + (-2.0 + 0.5)) / 2)
    assert metrics["rewards/accuracy"].item() == 0.0 and metrics["loss"].item() == pytest.approx(math.log(2))
