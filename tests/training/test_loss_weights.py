"""Per-turn loss weights in the loss: hand-computed weighted sums, weight 1 = the unweighted loss, and one
large batch = the same rows accumulated over micro-batches and devices (sum(w x nll) / sum(w) per step)."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import SHARED_DATA, TINY, logged_series

from sft.data.collate import PadCollator
from sft.data.formats import read_source, to_conversation
from sft.data.tokenize import IGNORE_INDEX
from sft.train import train
from sft.training.loss import token_loss, trained_token_loss
from sft.training.module import SFTModule

M = IGNORE_INDEX
# Position t scores class t highest (2.0 against 0.0) over a vocabulary of 3.
LOGITS = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]])
CE_HIT = -2.0 + math.log(math.exp(2.0) + 2.0)
CE_MISS = math.log(math.exp(2.0) + 2.0)


def test_weights_scale_each_term_its_count_and_its_accuracy():
    # Position 0 -> label 0 (a hit) with weight 0.5; position 1 -> label 2 (a miss) with weight 0.25.
    weights = torch.tensor([[1.0, 0.5, 0.25]])
    loss_sum, count, correct = token_loss(LOGITS, torch.tensor([[M, 0, 2]]), weights)
    assert loss_sum.item() == pytest.approx(0.5 * CE_HIT + 0.25 * CE_MISS, abs=1e-6)
    assert (count.item(), correct.item()) == (0.75, 0.5)
    # A weight on an unlabelled position counts for nothing.
    assert token_loss(LOGITS, torch.tensor([[M, M, 2]]), torch.tensor([[9.0, 9.0, 1.0]]))[1].item() == 1.0


def test_weight_one_everywhere_is_the_unweighted_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 17, 50)
    labels = torch.randint(0, 50, (3, 17))
    labels[:, :4] = M
    plain = token_loss(logits, labels)
    ones = token_loss(logits, labels, torch.ones(3, 17))
    assert plain[0].item() == pytest.approx(ones[0].item(), rel=1e-6)
    assert (plain[1].item(), plain[2].item()) == (ones[1].item(), ones[2].item())
    low = logits.to(torch.bfloat16)
    assert token_loss(low, labels)[0].item() == pytest.approx(
        token_loss(low, labels, torch.ones(3, 17))[0].item()
    )


def test_the_trained_positions_head_applies_the_weights_too():
    class Decoder(torch.nn.Module):
        def forward(self, input_ids, **kw):
            return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(input_ids, 3).float())

    head = torch.nn.Linear(3, 3, bias=False)
    batch = {
        "input_ids": torch.tensor([[0, 1, 2, 0]]),
        "labels": torch.tensor([[M, 1, 2, 0]]),
        "label_weights": torch.tensor([[1.0, 0.5, 0.0, 1.0]]),
    }
    logits = head(Decoder()(batch["input_ids"]).last_hidden_state)
    full = token_loss(logits, batch["labels"], batch["label_weights"])
    split = trained_token_loss(Decoder(), head, batch)
    assert [t.item() for t in split] == pytest.approx([t.item() for t in full])


# --- the optimizer step: one big batch against micro-batches on several devices -------------------

VOCAB = 11


class TinyLM(torch.nn.Module):
    """Embedding + linear head: enough for per-token losses with real gradients."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids, **kw):
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


def module(model, devices, accumulate, ranks):
    """An SFTModule on a stand-in trainer whose reduce sums the windows of all `ranks` (SFTModules)."""
    settings = SimpleNamespace(gradient_clip_val=None, max_nonfinite_steps=5, trained_logits_only=False)
    m = SFTModule(model, optimizer={}, scheduler=None, trainer=settings)
    m._head = None
    strategy = SimpleNamespace(
        handles_gradient_accumulation=False, reduce=lambda t, reduce_op: sum(r._window for r in ranks)
    )
    m.trainer = SimpleNamespace(
        strategy=strategy, accumulate_grad_batches=accumulate, world_size=devices, global_step=0
    )
    m.logged = {}
    m.log = lambda name, value, prog_bar=False: m.logged.__setitem__(name, float(value))
    return m


# Four rows of different lengths; the second carries no weights (all 1), the others fractions and zeros.
EXAMPLES = [
    {"input_ids": [1, 2, 3, 4, 5], "labels": [M, M, 3, 4, 5], "label_weights": [1, 1, 0.5, 0.5, 0.5]},
    {"input_ids": [6, 7, 8], "labels": [M, 7, 8], "label_weights": []},
    {
        "input_ids": [2, 9, 9, 1, 3, 4, 10],
        "labels": [M, M, 9, M, 3, 4, 10],
        "label_weights": [1, 1, 0.25, 0, 0.9, 0.9, 0.9],
    },
    {"input_ids": [5, 4], "labels": [M, 4], "label_weights": [1, 0.1]},
]


def by_hand(model) -> torch.Tensor:
    """sum(w x nll) / sum(w) over every trained token of the four rows, one row at a time."""
    total, weight = torch.zeros(()), torch.zeros(())
    for e in EXAMPLES:
        logits = model(torch.tensor([e["input_ids"]])).logits[0, :-1]
        weights = e["label_weights"] or [1.0] * len(e["input_ids"])
        for t, (label, w) in enumerate(zip(e["labels"][1:], weights[1:], strict=True)):
            if label != M:
                total = total + w * torch.nn.functional.cross_entropy(logits[t], torch.tensor(label))
                weight = weight + w
    return total / weight


def step(models_batches, devices, accumulate):
    """Run one optimizer step's micro-batches; return (logged loss, averaged gradients as DDP leaves them)."""
    modules = []
    for model, batches in models_batches:
        m = module(model, devices, accumulate, modules)
        modules.append(m)
        for batch in batches:
            (m.training_step(batch, 0) / accumulate).backward()  # Lightning divides by the accumulation
    for params in zip(*(list(m.model.parameters()) for m in modules), strict=True):
        mean = sum(p.grad for p in params) / devices  # DDP's all-reduce averages
        for p in params:
            p.grad = mean.clone()
    first = modules[0]
    first.on_before_optimizer_step(torch.optim.SGD(first.model.parameters(), lr=0.1))
    return first.logged["train/loss"], [p.grad.clone() for p in first.model.parameters()], first.logged


def test_one_large_batch_equals_its_rows_accumulated_over_micro_batches_and_devices():
    pad = PadCollator(pad_id=0, multiple=4)
    base = TinyLM()
    expected = by_hand(base).item()

    big_loss, big_grads, big_logged = step([(copy.deepcopy(base), [pad(EXAMPLES)])], devices=1, accumulate=1)
    assert big_loss == pytest.approx(expected, rel=1e-6)
    assert big_logged["train/window_tokens"] == pytest.approx(1.5 + 2 + 0.25 + 2.7 + 0.1)

    # Two devices, two micro-batches of one row each: the row without weights takes the unweighted path.
    ranks = [(copy.deepcopy(base), [pad(EXAMPLES[i : i + 1]) for i in (r, r + 2)]) for r in (0, 1)]
    assert "label_weights" not in ranks[1][1][0]
    small_loss, small_grads, _ = step(ranks, devices=2, accumulate=2)
    assert small_loss == pytest.approx(expected, rel=1e-6)
    for big, small in zip(big_grads, small_grads, strict=True):
        torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-7)

    # Reference gradients: backward of the hand-computed loss.
    reference = copy.deepcopy(base)
    by_hand(reference).backward()
    for big, p in zip(big_grads, reference.parameters(), strict=True):
        torch.testing.assert_close(big, p.grad, rtol=1e-5, atol=1e-7)


def test_explicit_ones_reproduce_the_unweighted_step():
    pad = PadCollator(pad_id=0, multiple=4)
    base = TinyLM()
    plain = [{k: v for k, v in e.items() if k != "label_weights"} for e in EXAMPLES]
    ones = [{**e, "label_weights": [1.0] * len(e["input_ids"])} for e in plain]
    loss, grads, _ = step([(copy.deepcopy(base), [pad(plain)])], 1, 1)
    loss_ones, grads_ones, _ = step([(copy.deepcopy(base), [pad(ones)])], 1, 1)
    assert loss_ones == pytest.approx(loss, rel=1e-6, abs=1e-6)
    for a, b in zip(grads, grads_ones, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --- end to end ---------------------------------------------------------------------------------


def weighted_rows(path, weight):
    """The first 48 short shared Alpaca rows (all fit cutoff_len) as messages rows, every answer with
    `weight` (None: no key)."""
    rows = []
    short = [r for _, r in read_source(SHARED_DATA / "alpaca_en_demo.json") if len(json.dumps(r)) < 240]
    for row in short[:48]:
        messages = to_conversation(row, "alpaca")["messages"]
        if weight is not None:
            messages[-1] = {**messages[-1], "loss_weight": weight}
        rows.append({"messages": messages})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_tiny_run_with_weights_trains_with_the_weighted_mean(make_cfg, tmp_path):
    # Every answer weighted 0.5: the weighted mean is the plain mean (the weights cancel), while the
    # logged weighted-token count halves, so the weights reach the step and divide out exactly.
    runs = {}
    for name, weight in (("plain", None), ("half", 0.5)):
        path = weighted_rows(tmp_path / f"{name}.jsonl", weight)
        overrides = [o for o in TINY if not o.startswith("data.datasets.builtin")]
        train(make_cfg(*overrides, "data=mix", f"data.datasets=[{path}]", run=name))
        runs[name] = tmp_path / name
        summary = json.loads((runs[name] / "summary.json").read_text())["data"]
        assert (summary["train"], summary["val"], summary["warnings"]) == (40, 8, [])
    plain, half = (logged_series(runs[n], "train/loss") for n in ("plain", "half"))
    assert len(plain) == 6 and plain.keys() == half.keys()
    for s in plain:
        assert half[s] == pytest.approx(plain[s], rel=1e-5)
    tokens = {n: logged_series(runs[n], "train/window_tokens") for n in runs}
    assert {s: 2 * v for s, v in tokens["half"].items()} == pytest.approx(tokens["plain"])
    val = {n: logged_series(runs[n], "val/loss") for n in runs}
    assert val["half"] == pytest.approx(val["plain"], rel=1e-5)
