"""DPO (sigmoid) and KTO end to end against TRL 1.16's DPOTrainer and KTOTrainer: the same LoRA model,
the same token ids, the same loss and the same gradient on every LoRA weight.

tests/training/test_preference_losses.py checks the loss formulas on given log-probs; this closes the gap from
token ids to gradients: our batches (PairedPadCollator, and PairedPackedCollator's packed rows), the
log-probs gathered by `segments` (with and without `trained_logits_only`), the reference as the policy
with its adapter disabled, and the reduction (the module returns the summed loss of the micro-batch,
TRL the mean over pairs / rows, so ours is divided by their count).

How TRL is set up so that it computes what our design says:
- The model reaches TRL as a base model plus `peft_config` (the LoRA config our `apply_peft` builds from
  the composed `lora` group). TRL then wraps it itself, keeps no reference model, and gets the reference
  by disabling the adapter (`use_adapter(model, None)`), as our module does. A `PeftModel` passed in
  instead would get a frozen "ref" copy of its adapter as the reference, which is not our design.
  LoRA B weights are set to small random values after the trainer is built, so the policy differs from
  the reference (with B = 0 every A gradient is zero and the DPO loss is exactly log 2).
- TRL tokenizes the text rows itself (EOS appended, prompt and completion ids apart) and its own data
  collator pads them; our rows are built from those very ids: input_ids = prompt + completion, labels
  -100 on the prompt. `max_length=None` so TRL truncates nothing; float32, dropout 0.
- KL rows: TRL rotates completions by ONE BACK within each batch (row i gets the completion of row
  i - 1, `KTOTrainer._prepare_dataset`), while `sft.data.preference_tokens.kl_rows` pairs row i with
  row i + 1 (over the whole filtered dataset, whose rows the loader then shuffles). Both estimate the
  same KL baseline, but for more than two rows the sets of mismatched pairs differ, and so does the
  estimate: here `kl_rows` is applied to the rows in reverse order, which gives TRL's pairing exactly.
- Padding differs and must not matter: TRL pads to the longest row, we to a multiple of 8 (and packed
  rows attend block-diagonally by position_ids). Both pad on the right, so causal attention never lets
  a real token see padding.

What this cannot see, by construction: where `segments` says on positions whose label is -100 (padding,
and the first token of every sequence, a prompt token), since only labelled positions are gathered;
the collators' -1 on padding and their -100 labels there each guard the same positions (drop both and
this fails). tests/data/test_paired_batches.py pins the batch contract itself.
"""

from __future__ import annotations

import copy
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_train
from hydra.core.global_hydra import GlobalHydra

from sft.config import validate
from sft.data.paired_batches import PairedPackedCollator, PairedPackedDataset, PairedPadCollator
from sft.data.preference_tokens import kl_rows
from sft.data.tokenize import IGNORE_INDEX
from sft.training.model import apply_peft, load_model, load_tokenizer
from sft.training.module import SFTModule
from sft.training.objectives import FeedbackObjective, PairObjective

# Prompts and responses of different lengths (the byte-level tokenizer gives one id per byte).
PAIRS = {
    "prompt": ["Hi there", "What is 2+2? ", "x", "Name a colour:"],
    "chosen": [" hello!", "4", " yes indeed it is", " blue"],
    "rejected": [" go away", "five", " no", " the colour of the sky at noon"],
}
FEEDBACK = {
    "prompt": ["Hi there", "What is 2+2? ", "x", "Name a colour:", "Say no"],
    "completion": [" hello!", "4", " yes indeed it is", " the colour of the sky at noon", " no"],
    "label": [True, False, False, True, False],  # desirable and undesirable mixed
}
# Packed rows: examples out of order and rows of different fill, so segments are numbered across rows.
PAIR_BINS = [[0, 2], [1, 3]]
FEEDBACK_BINS = [[4, 0], [1], [2, 3]]
BETA, DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT = 0.3, 1.3, 0.7
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices this small run fastest on one thread; several spin against each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, cache_dir):
    """(typed config, tokenizer, PEFT LoRA config) of the tiny model with LoRA, dropout 0, float32."""
    out = tmp_path_factory.mktemp("trl-parity")
    typed = validate(
        compose_train(out / "run", out, cache_dir, "model=tiny", "preset=conservative", "lora.dropout=0")
    )
    GlobalHydra.instance().clear()
    assert typed.model.dtype == "float32"
    tokenizer = load_tokenizer(typed.model, str(cache_dir))
    with warnings.catch_warnings():  # PEFT's use of a deprecated transformers alias
        warnings.simplefilter("ignore", FutureWarning)
        lora = apply_peft(load_model(typed.model, str(cache_dir)), typed.lora).peft_config["default"]
    return typed, tokenizer, lora


def trl_trainer(kind: str, parts, cache_dir, tmp_path, seed: int):
    """TRL's DPOTrainer ("pairs") or KTOTrainer ("feedback") on a fresh tiny model it wraps with LoRA itself;
    LoRA B weights then drawn from `seed`, so the policy is not its reference."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    typed, tokenizer, lora = parts
    common = {
        "output_dir": str(tmp_path / "trl"), "report_to": [], "use_cpu": True, "bf16": False,
        "beta": BETA, "max_length": None, "gradient_checkpointing": False,
    }  # fmt: skip
    with warnings.catch_warnings():  # transformers' and TRL's advice, not ours
        warnings.simplefilter("ignore")
        if kind == "pairs":
            args = DPOConfig(
                **common, loss_type=["sigmoid"], per_device_train_batch_size=len(PAIRS["prompt"])
            )
            build, data = DPOTrainer, Dataset.from_dict(PAIRS)
        else:
            args = KTOConfig(
                **common,
                desirable_weight=DESIRABLE_WEIGHT,
                undesirable_weight=UNDESIRABLE_WEIGHT,
                per_device_train_batch_size=len(FEEDBACK["prompt"]),  # KL rows rotate within this batch
            )
            build, data = KTOTrainer, Dataset.from_dict(FEEDBACK)
        trainer = build(
            model=load_model(typed.model, str(cache_dir)),
            ref_model=None,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=copy.deepcopy(lora),
        )
    # The reference is the policy with its adapter disabled: no reference model, no "ref" adapter copy.
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    if kind == "feedback":
        assert trainer.loss_type == "kto" and trainer.calculate_KL
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    trainer.model.train()
    return trainer


def lora_gradients(model) -> dict[str, torch.Tensor]:
    """Every trainable (LoRA) parameter's gradient, then cleared."""
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    model.zero_grad(set_to_none=True)
    return grads


def theirs(trainer) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """(TRL's loss, LoRA gradients, its logged metrics) on the whole (tokenized) train set as one batch."""
    trainer.model.zero_grad(set_to_none=True)
    batch = trainer.data_collator(list(trainer.train_dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), lora_gradients(trainer.model), metrics


def ours(model, objective, batch: dict, trained_logits_only: bool):
    """(our mean loss, LoRA gradients, our metrics): SFTModule.training_step's summed loss over its count."""
    settings = SimpleNamespace(
        gradient_clip_val=None, max_nonfinite_steps=5, trained_logits_only=trained_logits_only
    )
    module = SFTModule(model, optimizer={}, scheduler=None, trainer=settings, objective=objective)
    model.zero_grad(set_to_none=True)
    summed = module.training_step(batch, 0)
    count = module._window[1]  # pairs or examples: what the loss is a mean over
    loss = summed / count
    loss.backward()
    return loss.detach(), lora_gradients(model), objective.metrics(module._window)


def our_batch(kind: str, examples: list[dict], pad_id: int, layout: str, bins: list[list[int]]) -> dict:
    """The micro-batch of `examples` as the data module serves it: padded, or packed into `bins`."""
    if layout == "padded":
        return PairedPadCollator(kind, pad_id)(examples)
    first, second = (
        ("chosen_input_ids", "rejected_input_ids") if kind == "pairs" else ("input_ids", "kl_input_ids")
    )
    lengths = [len(e[first]) + len(e[second]) for e in examples]
    rows = PairedPackedDataset(examples, bins, kind, lengths)
    return PairedPackedCollator(kind, pad_id)([rows[i] for i in range(len(rows))])


def side(prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + response, labels on the response only (as preference_tokens)."""
    return [*prompt, *response], [IGNORE_INDEX] * len(prompt) + list(response)


def assert_same_gradients(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")
    # Not a vacuous match: both A and B receive gradient.
    assert any("lora_A" in n and g.abs().max() > 1e-4 for n, g in expected.items())
    assert any("lora_B" in n and g.abs().max() > 1e-4 for n, g in expected.items())


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("trained_logits_only", [True, False])
def test_dpo_loss_and_lora_gradients_match_trl(parts, cache_dir, tmp_path, layout, trained_logits_only):
    trainer = trl_trainer("pairs", parts, cache_dir, tmp_path, seed=0)
    rows = list(trainer.train_dataset)
    assert len({len(r["prompt_ids"]) for r in rows}) == len(rows)  # lengths differ, padding matters
    expected, expected_grads, trl_metrics = theirs(trainer)
    assert abs(expected.item() - math.log(2)) > 1e-2  # the policy is not its reference

    examples = []
    for r in rows:
        chosen_ids, chosen_labels = side(r["prompt_ids"], r["chosen_ids"])
        rejected_ids, rejected_labels = side(r["prompt_ids"], r["rejected_ids"])
        examples.append({
            "chosen_input_ids": chosen_ids, "chosen_labels": chosen_labels,
            "rejected_input_ids": rejected_ids, "rejected_labels": rejected_labels,
        })  # fmt: skip
    batch = our_batch("pairs", examples, parts[1].pad_token_id, layout, PAIR_BINS)
    objective = PairObjective("sigmoid", BETA, 0.0)
    loss, grads, metrics = ours(trainer.model, objective, batch, trained_logits_only)

    torch.testing.assert_close(loss, expected, **TOLERANCE)
    assert_same_gradients(grads, expected_grads)
    for name, trl_name in [
        ("rewards/chosen", "rewards/chosen"),
        ("rewards/rejected", "rewards/rejected"),
        ("rewards/margin", "rewards/margins"),
        ("rewards/accuracy", "rewards/accuracies"),
    ]:
        assert metrics[name].item() == pytest.approx(trl_metrics[trl_name], abs=1e-5), name


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("trained_logits_only", [True, False])
@pytest.mark.parametrize("seed, kl_positive", [(1, True), (2, False)])  # a KL baseline, and one clamped to 0
def test_kto_loss_and_lora_gradients_match_trl(
    parts, cache_dir, tmp_path, layout, trained_logits_only, seed, kl_positive
):
    trainer = trl_trainer("feedback", parts, cache_dir, tmp_path, seed=seed)
    rows = list(trainer.train_dataset)
    n = len(rows)
    # TRL's KL rows: row i's prompt with row i - 1's completion.
    assert [r["KL_completion_ids"] for r in rows] == [rows[(i - 1) % n]["completion_ids"] for i in range(n)]
    expected, expected_grads, trl_metrics = theirs(trainer)
    assert (trl_metrics["kl"] > 1e-3) == kl_positive

    pairs = [side(r["prompt_ids"], r["completion_ids"]) for r in rows]
    ids, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    prompt_lens = [len(r["prompt_ids"]) for r in rows]
    # Our kl_rows pairs row i with row i + 1; on the reversed rows that is TRL's i - 1 (see the docstring).
    kl_ids, kl_labels = (x[::-1] for x in kl_rows(ids[::-1], labels[::-1], prompt_lens[::-1], 10**6))
    assert kl_ids == [r["prompt_ids"] + r["KL_completion_ids"] for r in rows]
    examples = [
        {"input_ids": i, "labels": lab, "kl_input_ids": ki, "kl_labels": kl, "label": r["label"]}
        for i, lab, ki, kl, r in zip(ids, labels, kl_ids, kl_labels, rows, strict=True)
    ]
    batch = our_batch("feedback", examples, parts[1].pad_token_id, layout, FEEDBACK_BINS)
    objective = FeedbackObjective(BETA, DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT)
    loss, grads, metrics = ours(trainer.model, objective, batch, trained_logits_only)

    torch.testing.assert_close(loss, expected, **TOLERANCE)
    assert_same_gradients(grads, expected_grads)
    for name in ("kl", "rewards/chosen", "rewards/rejected"):
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=1e-5), name
