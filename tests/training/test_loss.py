"""The token loss on hand-computed numbers: which positions count, the shift, fp32, and the head split."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import sft.training.loss as loss
from sft.data.tokenize import IGNORE_INDEX
from sft.training.loss import split_head, token_loss, token_nll, trained_token_loss

M = IGNORE_INDEX

# Three positions over a vocabulary of 3: position t scores class t highest (2.0 against 0.0), so the
# cross-entropy of a position is CE_HIT when its target is class t and CE_MISS otherwise.
LOGITS = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]])
CE_HIT = -2.0 + math.log(math.exp(2.0) + 2.0)
CE_MISS = math.log(math.exp(2.0) + 2.0)


def test_the_loss_sums_kept_positions_against_the_next_label():
    # labels[t + 1] is the target of position t: position 0 -> 0 (hit), position 1 -> 2 (miss).
    loss_sum, count, correct = token_loss(LOGITS, torch.tensor([[M, 0, 2]]))
    assert loss_sum.item() == pytest.approx(CE_HIT + CE_MISS, abs=1e-6)
    assert (count.item(), correct.item()) == (2, 1)


def test_masked_labels_are_skipped_and_the_last_position_predicts_nothing():
    # Only position 1's target (label 1: a hit) is kept; labels[0] is never a target.
    loss_sum, count, correct = token_loss(LOGITS, torch.tensor([[0, M, 1]]))
    assert loss_sum.item() == pytest.approx(CE_HIT, abs=1e-6)
    assert (count.item(), correct.item()) == (1, 1)


def test_an_all_masked_batch_gives_zeros_not_nan():
    loss_sum, count, correct = token_loss(LOGITS, torch.full((1, 3), M))
    assert (loss_sum.item(), count.item(), correct.item()) == (0.0, 0, 0)


def test_low_precision_logits_give_an_fp32_loss():
    loss_sum, _, _ = token_loss(LOGITS.to(torch.bfloat16), torch.tensor([[M, 0, 2]]))
    assert loss_sum.dtype == torch.float32
    assert loss_sum.item() == pytest.approx(CE_HIT + CE_MISS, abs=1e-6)


def test_accuracy_counts_argmax_over_the_vocabulary():
    # Two rows of one position each: argmax over the vocabulary is class 2 in both, so only the row
    # whose target is 2 is correct (an argmax over positions would pick differently).
    logits = torch.tensor([[[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]], [[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]]])
    _, count, correct = token_loss(logits, torch.tensor([[M, 2], [M, 1]]))
    assert (count.item(), correct.item()) == (2, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_equals_torchs_across_chunk_boundaries(monkeypatch, dtype):
    """11 rows in chunks of 3 (the last one short): each row's loss and the scores' gradient (in the scores'
    dtype, for unequal upstream gradients) as F.cross_entropy on the fp32 upcast; argmax hits as counted."""
    monkeypatch.setitem(loss.CHUNK_BYTES, "cpu", 3 * 4 * 50)
    generator = torch.Generator().manual_seed(0)
    scores = (3 * torch.randn(11, 50, generator=generator)).to(dtype).requires_grad_()
    wanted = torch.randint(0, 50, (11,), generator=generator)
    wanted[:4] = scores[:4].argmax(-1)
    upstream = torch.rand(11, generator=generator)
    nll, correct = token_nll(scores, wanted)
    (nll * upstream).sum().backward()
    reference = scores.detach().float().requires_grad_()
    expected = torch.nn.functional.cross_entropy(reference, wanted, reduction="none")
    (expected * upstream).sum().backward()
    assert nll.dtype == torch.float32 and torch.allclose(nll, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(correct, reference.argmax(-1) == wanted) and correct[:4].all()
    assert scores.grad.dtype == dtype
    rtol = 1e-5 if dtype == torch.float32 else 2**-8  # bf16: one unit in the last place
    assert torch.allclose(scores.grad.float(), reference.grad.float(), rtol=rtol, atol=1e-7)


class Decoder(torch.nn.Module):
    """A decoder whose hidden states are the input ids one-hot (width 3); it records what it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        self.calls.append(
            {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": use_cache}
        )
        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(input_ids, 3).float())


class Head(torch.nn.Module):
    """2 x identity: the logits of a position are 2.0 at its input id; it records how many rows it saw."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, hidden):
        self.rows.append(hidden.shape[0])
        return 2.0 * hidden


def test_the_head_runs_on_trained_positions_only_and_matches_full_logits():
    decoder, head = Decoder(), Head()
    mask, positions = torch.ones(1, 4, dtype=torch.long), torch.tensor([[0, 1, 0, 1]])
    batch = {
        "input_ids": torch.tensor([[0, 1, 2, 0]]),
        "labels": torch.tensor([[M, M, 2, 1]]),
        "attention_mask": mask,
        "position_ids": positions,
    }
    loss_sum, count, correct = trained_token_loss(decoder, head, batch)
    # Position 1 (input 1) targets 2: a miss; position 2 (input 2) targets 1: a miss.
    assert loss_sum.item() == pytest.approx(2 * CE_MISS, abs=1e-6)
    assert (count.item(), correct.item()) == (2, 0)
    assert head.rows == [2]
    (call,) = decoder.calls
    assert call["attention_mask"] is mask and call["position_ids"] is positions and call["use_cache"] is False
    full = token_loss(2.0 * decoder(batch["input_ids"]).last_hidden_state, batch["labels"])
    assert [t.item() for t in full] == pytest.approx([loss_sum.item(), 2, 0])


def causal_lm(model_type, decoder="decoder", head="head"):
    return SimpleNamespace(
        config=SimpleNamespace(model_type=model_type),
        get_decoder=lambda: decoder,
        get_output_embeddings=lambda: head,
    )


def test_split_head_reads_plain_families_under_peft_too():
    assert split_head(causal_lm("llama")) == ("decoder", "head")
    peft = SimpleNamespace(get_base_model=lambda: causal_lm("qwen2", "d", "h"))
    assert split_head(peft) == ("d", "h")


def test_split_head_refuses_unknown_families_and_missing_parts():
    assert split_head(causal_lm("gemma2")) is None
    assert split_head(SimpleNamespace()) is None
    assert split_head(causal_lm("llama", decoder=None)) is None
    assert split_head(causal_lm("llama", head=None)) is None
