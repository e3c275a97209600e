"""Padding and packing collation, and the bins behind packing, on exact tensors and index lists."""

from __future__ import annotations

import pytest
import torch

from sft.data.collate import PackedCollator, PadCollator
from sft.data.packing import PackedDataset, pack, packing_efficiency
from sft.data.tokenize import IGNORE_INDEX

M = IGNORE_INDEX


def rows(batch: dict) -> dict:
    """The batch as plain lists, so a failure shows the whole tensor."""
    return {k: v.tolist() for k, v in batch.items()}


def test_pad_collator_right_pads_to_a_multiple_and_masks_the_padding():
    examples = [
        {"input_ids": [1, 2, 3], "labels": [M, 2, 3]},
        {"input_ids": torch.tensor([4, 5, 6, 7, 8]), "labels": torch.tensor([M, M, 6, 7, 8])},
    ]
    batch = PadCollator(pad_id=9, multiple=4)(examples)
    assert rows(batch) == {
        "input_ids": [[1, 2, 3, 9, 9, 9, 9, 9], [4, 5, 6, 7, 8, 9, 9, 9]],
        "labels": [[M, 2, 3, M, M, M, M, M], [M, M, 6, 7, 8, M, M, M]],
        "attention_mask": [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]],
        "num_tokens": 8,
    }
    assert {v.dtype for v in batch.values()} == {torch.long}


@pytest.mark.parametrize(("longest", "multiple", "width"), [(3, 1, 3), (4, 4, 4), (5, 4, 8), (1, 8, 8)])
def test_padded_width_rounds_up_to_the_multiple(longest, multiple, width):
    batch = PadCollator(pad_id=0, multiple=multiple)([{"input_ids": [1] * longest, "labels": [1] * longest}])
    assert batch["input_ids"].shape == (1, width)


def test_pad_collator_rounds_to_eight_by_default():
    batch = PadCollator(pad_id=0)([{"input_ids": [1] * 9, "labels": [1] * 9}])
    assert batch["input_ids"].shape == (1, 16)


PACKED = [
    {"input_ids": [1, 2, 3, 4, 5], "labels": [M, 2, M, 4, 5], "position_ids": [0, 1, 2, 0, 1]},
    {"input_ids": torch.tensor([6, 7]), "labels": torch.tensor([M, 7]), "position_ids": torch.tensor([0, 1])},
]


def test_packed_collator_pads_with_a_restarting_position_run_and_no_mask():
    batch = PackedCollator(pad_id=9, multiple=4)(PACKED)
    assert rows(batch) == {
        "input_ids": [[1, 2, 3, 4, 5, 9, 9, 9], [6, 7, 9, 9, 9, 9, 9, 9]],
        "labels": [[M, 2, M, 4, 5, M, M, M], [M, 7, M, M, M, M, M, M]],
        "position_ids": [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]],
        "num_tokens": 7,
    }
    assert {v.dtype for v in batch.values()} == {torch.long}


def test_packed_collator_flattens_into_one_row_for_flash_attention():
    batch = PackedCollator(pad_id=9, multiple=4, flatten=True)(PACKED)
    assert rows(batch) == {
        "input_ids": [[1, 2, 3, 4, 5, 6, 7, 9]],
        "labels": [[M, 2, M, 4, 5, M, 7, M]],
        "position_ids": [[0, 1, 2, 0, 1, 0, 1, 0]],
        "num_tokens": 7,
    }


def test_packed_collator_defaults_to_eight_wide_unflattened_rows():
    batch = PackedCollator(pad_id=0)(PACKED)
    assert batch["input_ids"].shape == (2, 8)


# --- bins ------------------------------------------------------------------------------------------


def contents(lengths: list[int], bins: list[list[int]]) -> list[list[int]]:
    """Each bin's lengths, longest first, bins in a fixed order: the packing without its seeded order."""
    return sorted(sorted((lengths[i] for i in b), reverse=True) for b in bins)


def test_pack_fills_the_tightest_bin_that_fits():
    # Decreasing 5, 4, 3, 2, 2: the first 2 fills the 3's bin exactly; the second fits nowhere (the 4's
    # bin has 1 slot left) and opens a bin of its own.
    lengths = [2, 5, 3, 4, 2]
    bins = pack(lengths, capacity=5, seed=0)
    assert contents(lengths, bins) == [[2], [3, 2], [4], [5]]
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4]


def test_pack_reuses_an_exactly_fitting_first_bin():
    assert contents([3, 2, 1], pack([3, 2, 1], capacity=5, seed=0)) == [[1], [3, 2]]


def test_pack_keeps_a_bin_with_one_slot_open():
    assert contents([4, 1], pack([4, 1], capacity=5, seed=0)) == [[4, 1]]


def test_pack_places_long_samples_first():
    # Shortest first, 1 + 1 would share a bin and each 3 need one of its own: three bins, not two.
    assert contents([1, 1, 3, 3], pack([1, 1, 3, 3], capacity=4, seed=0)) == [[3, 1], [3, 1]]


def test_pack_prefers_the_tighter_of_two_open_bins():
    # 5 then 4 leave 3 and 4 slots; the 3 must go into the bin with exactly 3 left, leaving 4 for the 4.
    assert contents([5, 4, 3, 4], pack([5, 4, 3, 4], capacity=8, seed=0)) == [[4, 4], [5, 3]]


def test_pack_order_depends_on_the_seed_only():
    lengths = [3, 1, 4, 1, 5, 2, 2, 6]
    # Pinned: the row order of every packed run follows from it.
    assert pack(lengths, capacity=6, seed=0) == pack(lengths, capacity=6, seed=0)
    assert pack(lengths, capacity=6, seed=0) == [[7], [2, 5], [4, 1], [0, 6, 3]]
    assert pack(lengths, capacity=6, seed=1) == [[7], [4, 3], [2, 6], [0, 5, 1]]


def test_pack_accepts_the_boundaries_and_names_what_is_outside():
    assert pack([1], capacity=1, seed=0) == [[0]]
    assert pack([], capacity=1, seed=0) == []
    with pytest.raises(ValueError, match=r"^packing capacity must be positive, got 0$"):
        pack([1], capacity=0, seed=0)
    with pytest.raises(ValueError) as outside:
        pack([4, 5], capacity=4, seed=0)
    assert str(outside.value) == (
        "example 1 has 5 tokens, outside 1..4: examples must be cut to cutoff_len before packing and the "
        "packing capacity must be at least cutoff_len"
    )
    with pytest.raises(ValueError, match=r"^example 0 has 0 tokens, outside 1\.\.4"):
        pack([0], capacity=4, seed=0)


def test_packing_efficiency_is_filled_slots_over_all_slots():
    assert packing_efficiency([3, 2, 1], [[0, 1], [2]], capacity=5) == 0.6
    assert packing_efficiency([1], [[0]], capacity=1) == 1.0
    assert packing_efficiency([], [], capacity=4) == 0.0


def test_packed_dataset_concatenates_its_bin_and_masks_each_samples_first_label():
    examples = [
        {"input_ids": [1, 2, 3], "labels": [M, 2, 3]},
        {"input_ids": torch.tensor([4, 5]), "labels": torch.tensor([4, 5])},
        {"input_ids": [6], "labels": [6]},
    ]
    data = PackedDataset(examples, [[1, 0], [2]])
    assert len(data) == 2
    assert data.lengths == [5, 1]
    assert data[0] == {
        "input_ids": [4, 5, 1, 2, 3],
        "labels": [M, 5, M, 2, 3],
        "position_ids": [0, 1, 0, 1, 2],
    }
    assert data[1] == {"input_ids": [6], "labels": [M], "position_ids": [0]}
    # Plain ints, not 0-d tensors: collation and the datasets cache both expect them.
    assert {type(x) for v in data[0].values() for x in v} == {int}


def test_packed_dataset_takes_lengths_without_reading_rows():
    class Untouchable(list):
        def __getitem__(self, i):
            raise AssertionError("rows must not be read to size the bins")

    data = PackedDataset(Untouchable([None] * 3), [[0, 2], [1]], lengths=[4, 7, 2])
    assert data.lengths == [6, 7]
