"""Batches of pairs and feedback: the padded layout, packed rows that keep an example's two sequences
together, segments numbered alike in both forms, and the data module serving them."""

from __future__ import annotations

import pytest
import torch

from sft.config import validate
from sft.data.datamodule import SFTDataModule
from sft.data.packing import pack
from sft.data.paired_batches import PairedPackedCollator, PairedPackedDataset, PairedPadCollator
from sft.data.templates import get_template
from sft.data.tokenize import IGNORE_INDEX
from sft.training.model import load_tokenizer

M = IGNORE_INDEX
PAIRS = [
    {"chosen_input_ids": [1, 2, 3], "chosen_labels": [M, M, 3], "rejected_input_ids": [1, 2, 4, 5],
     "rejected_labels": [M, M, 4, 5]},
    {"chosen_input_ids": [6, 7], "chosen_labels": [M, 7], "rejected_input_ids": [6, 8],
     "rejected_labels": [M, 8]},
]  # fmt: skip
FEEDBACK = [
    {"input_ids": [1, 2, 3], "labels": [M, M, 3], "kl_input_ids": [1, 2, 7], "kl_labels": [M, M, 7],
     "label": True},
    {"input_ids": [6, 7], "labels": [M, 7], "kl_input_ids": [6, 3], "kl_labels": [M, 3], "label": False},
]  # fmt: skip


def rows(batch: dict) -> dict:
    return {k: v.tolist() for k, v in batch.items()}


def test_padded_pairs_put_every_chosen_side_first_then_every_rejected_side():
    batch = PairedPadCollator("pairs", pad_id=0, multiple=4)(PAIRS)
    assert rows(batch) == {
        "input_ids": [[1, 2, 3, 0], [6, 7, 0, 0], [1, 2, 4, 5], [6, 8, 0, 0]],
        "labels": [[M, M, 3, M], [M, 7, M, M], [M, M, 4, 5], [M, 8, M, M]],
        "attention_mask": [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]],
        "segments": [[0, 0, 0, -1], [1, 1, -1, -1], [2, 2, 2, 2], [3, 3, -1, -1]],
        "num_tokens": 11,
        "num_sequences": 4,
    }
    assert {v.dtype for v in batch.values()} == {torch.long}


def test_padded_feedback_puts_the_kl_rows_after_the_completions_with_the_labels():
    batch = PairedPadCollator("feedback", pad_id=0, multiple=4)(FEEDBACK)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 0, 0], [1, 2, 7, 0], [6, 3, 0, 0]]
    assert batch["segments"].tolist() == [[0, 0, 0, -1], [1, 1, -1, -1], [2, 2, 2, -1], [3, 3, -1, -1]]
    assert batch["label"].tolist() == [True, False] and batch["label"].dtype == torch.bool
    assert (batch["num_tokens"].item(), batch["num_sequences"].item()) == (10, 4)


def test_packed_pairs_keep_both_sides_in_one_row_and_number_segments_as_padded():
    packed = PairedPackedDataset(PAIRS, [[1], [0]], "pairs", [4, 7])
    batch = PairedPackedCollator("pairs", pad_id=0, multiple=4)([packed[0], packed[1]])
    assert "attention_mask" not in batch
    assert rows(batch) == {
        "input_ids": [[6, 7, 6, 8, 0, 0, 0, 0], [1, 2, 3, 1, 2, 4, 5, 0]],
        "labels": [[M, 7, M, 8, M, M, M, M], [M, M, 3, M, M, 4, 5, M]],
        "position_ids": [[0, 1, 0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2, 3, 0]],
        # Pair 0 of this batch is PAIRS[1] (first row): chosen 0, rejected 2; PAIRS[0]: chosen 1, rejected 3.
        "segments": [[0, 0, 2, 2, -1, -1, -1, -1], [1, 1, 1, 3, 3, 3, 3, -1]],
        "num_tokens": 11,
        "num_sequences": 4,
    }
    flat = PairedPackedCollator("pairs", pad_id=0, multiple=4, flatten=True)([packed[0], packed[1]])
    assert flat["segments"].tolist() == [[0, 0, 2, 2, 1, 1, 1, 3, 3, 3, 3, -1]]


def varied(kind: str, i: int) -> dict:
    """Example i: sequences of lengths 2 + i % 3 and 3 + i % 2, tokens unique to the example and side."""
    first, second = [10 * i + t for t in range(2 + i % 3)], [10 * i + 5 + t for t in range(3 + i % 2)]
    a, b = SEQUENCE_KEYS[kind]
    example = {a: first, f"{a[:-9]}labels": first, b: second, f"{b[:-9]}labels": second}
    return {**example, "label": i % 3 == 0} if kind == "feedback" else example


SEQUENCE_KEYS = {
    "pairs": ("chosen_input_ids", "rejected_input_ids"),
    "feedback": ("input_ids", "kl_input_ids"),
}


def same_sequences(padded: dict, packed: dict) -> None:
    """Every segment holds the same tokens (and trained labels past its first token) in both forms."""
    count = padded["num_sequences"].item()
    assert packed["num_sequences"].item() == count
    assert set(padded["segments"].unique().tolist()) - {-1} == set(range(count))
    for s in range(count):
        a, b = padded["segments"] == s, packed["segments"] == s
        assert padded["input_ids"][a].tolist() == packed["input_ids"][b].tolist()
        assert padded["labels"][a].tolist()[1:] == packed["labels"][b].tolist()[1:]


@pytest.mark.parametrize("kind", ["pairs", "feedback"])
def test_reference_log_probs_are_numbered_like_the_segments_padded_and_packed(kind):
    # Example i's reference log-probabilities are (i + 0.25, -i - 0.5): first sequence, then second.
    examples = [{**varied(kind, i), "ref_logps": [i + 0.25, -i - 0.5]} for i in range(7)]
    lengths = [sum(len(v) for k, v in e.items() if k.endswith("input_ids")) for e in examples]
    bins = pack(lengths, 12, seed=0)
    assert len({len(b) for b in bins}) > 1  # rows holding different numbers of examples
    packed = PairedPackedDataset(examples, bins, kind, lengths)
    in_order = [examples[i] for b in bins for i in b]
    expected = [e["ref_logps"][0] for e in in_order] + [e["ref_logps"][1] for e in in_order]
    a = PairedPadCollator(kind, pad_id=0)(in_order)
    b = PairedPackedCollator(kind, pad_id=0)([packed[i] for i in range(len(bins))])
    assert a["ref_logps"].tolist() == b["ref_logps"].tolist() == expected
    for batch in (a, b):  # the reference of segment s is the one of the example sequence s holds
        for s in range(len(expected)):
            first_token = batch["input_ids"][batch["segments"] == s][0].item()
            example, side = divmod(first_token, 10)  # varied(): tokens 10 i + t, second sequence from t = 5
            assert batch["ref_logps"][s].item() == (example + 0.25 if side < 5 else -example - 0.5)


@pytest.mark.parametrize("kind", ["pairs", "feedback"])
def test_packed_segments_match_padded_segments_for_the_same_examples(kind):
    examples = [varied(kind, i) for i in range(7)]
    lengths = [sum(len(v) for k, v in e.items() if k.endswith("input_ids")) for e in examples]
    bins = pack(lengths, 12, seed=0)
    packed = PairedPackedDataset(examples, bins, kind, lengths)
    in_order = [examples[i] for b in bins for i in b]  # the packed batch's example order
    a = PairedPadCollator(kind, pad_id=0)(in_order)
    b = PairedPackedCollator(kind, pad_id=0)([packed[i] for i in range(len(bins))])
    same_sequences(a, b)
    if kind == "feedback":
        assert a["label"].tolist() == b["label"].tolist()
    assert "ref_logps" not in a and "ref_logps" not in b  # only rows that carry a reference give one
    # An example's two sequences always share a packed row.
    p = len(examples)
    for row in b["segments"]:
        present = set(row.tolist()) - {-1}
        assert present == {s + p for s in present if s < p} | {s - p for s in present if s >= p}


@pytest.mark.parametrize("kind", ["pairs", "feedback"])
@pytest.mark.parametrize("packing", [False, True])
def test_the_data_module_serves_the_kind_s_batches(make_cfg, cache_dir, kind, packing):
    data = "dpo_en" if kind == "pairs" else "kto_en"
    stage = "dpo" if kind == "pairs" else "kto"
    typed = validate(
        make_cfg(
            "model=tiny", f"stage={stage}", f"data={data}", "data.cutoff_len=2048", "data.max_samples=40",
            "data.val_size=8", f"data.packing={packing}",
        )
    )  # fmt: skip
    tokenizer = load_tokenizer(typed.model, str(cache_dir))
    module = SFTDataModule(typed.data, tokenizer, get_template("chatml", tokenizer), 4, typed.seed, None)
    module.prepare_data()
    module.setup()
    batch = next(iter(module.train_dataloader()))
    mask_key = "position_ids" if packing else "attention_mask"
    expected = {"input_ids", "labels", mask_key, "segments", "num_tokens", "num_sequences"}
    assert set(batch) == expected | ({"label"} if kind == "feedback" else set())
    assert batch["segments"].shape == batch["labels"].shape
    count = batch["num_sequences"].item()
    assert set(batch["segments"].unique().tolist()) - {-1} == set(range(count))
    assert (batch["segments"] >= 0).sum() == batch["num_tokens"]
    if not packing:
        assert batch["input_ids"].shape[0] == count == 8
    if kind == "feedback":
        assert batch["label"].shape == (count // 2,)
    val = next(iter(module.val_dataloader()))
    assert "attention_mask" in val and val["input_ids"].shape[0] == val["num_sequences"].item()
