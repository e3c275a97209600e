"""Per-token gradient scaling on hand-set gradients: the divisor, scaling, clipping and the window."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy

from sft.data.tokenize import IGNORE_INDEX
from sft.training.callbacks import batch_counts
from sft.training.module import SFTModule
from sft.training.resilience import Diverged
from sft.training.strategy import at_step_boundary, finish_gradients, gradient_divisor


class DeepSpeedStrategy:
    """Recognised by name, as the real one is (DeepSpeed need not be installed)."""

    handles_gradient_accumulation = True


def plain(**kw):
    return SimpleNamespace(handles_gradient_accumulation=False, **kw)


def with_grads(*grads):
    """A module whose parameters hold the given gradients (None: a parameter that got none)."""
    model = torch.nn.Module()
    for i, g in enumerate(grads):
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = None if g is None else torch.tensor(g)
        model.register_parameter(f"p{i}", p)
    return model


def test_gradient_divisor_is_accumulation_times_devices_and_once_more_under_deepspeed():
    assert gradient_divisor(SimpleNamespace(accumulate_grad_batches=3, world_size=2, strategy=plain())) == 6
    assert (
        gradient_divisor(
            SimpleNamespace(accumulate_grad_batches=3, world_size=2, strategy=DeepSpeedStrategy())
        )
        == 18
    )


def test_the_step_boundary_is_the_engines_when_it_accumulates():
    assert at_step_boundary(SimpleNamespace(strategy=plain())) is True
    for boundary in (True, False):
        engine = SimpleNamespace(is_gradient_accumulation_boundary=lambda b=boundary: b)
        assert at_step_boundary(SimpleNamespace(strategy=DeepSpeedStrategy(), model=engine)) is boundary


def test_gradients_are_scaled_and_their_norm_returned_without_clipping():
    model = with_grads([6.0, 0.0], None, [0.0, 8.0])
    norm = finish_gradients(SimpleNamespace(strategy=plain()), model, torch.tensor(0.5), None)
    assert norm.item() == 5.0
    assert [None if p.grad is None else p.grad.tolist() for p in model.parameters()] == [
        [3.0, 0.0],
        None,
        [0.0, 4.0],
    ]


def test_clipping_follows_scaling_and_returns_the_norm_before_it():
    model = with_grads([6.0, 0.0], [0.0, 8.0])
    norm = finish_gradients(SimpleNamespace(strategy=plain()), model, torch.tensor(0.5), 1.0)
    assert norm.item() == 5.0
    assert [p.grad.tolist() for p in model.parameters()] == [
        pytest.approx([0.6, 0.0]),
        pytest.approx([0.0, 0.8]),
    ]


def test_no_gradient_at_all_gives_a_zero_norm():
    assert (
        finish_gradients(SimpleNamespace(strategy=plain()), with_grads(None), torch.tensor(2.0), 1.0).item()
        == 0.0
    )


def test_deepspeed_gradients_are_scaled_through_its_accessors(monkeypatch):
    # DeepSpeed keeps gradients in its partitions; a stand-in for its accessors keeps them in a dict.
    model = with_grads([6.0, 0.0], [1.0, 1.0], None, [0.0, 8.0])
    model.p1.requires_grad_(False)  # frozen: never read nor written
    full = {id(p): p.grad for p in model.parameters()}
    utils = SimpleNamespace(
        safe_get_full_grad=lambda p: full.get(id(p)),
        safe_set_full_grad=lambda p, g: full.__setitem__(id(p), g),
    )
    monkeypatch.setitem(sys.modules, "deepspeed", SimpleNamespace(utils=utils))
    monkeypatch.setitem(sys.modules, "deepspeed.utils", utils)
    norm = finish_gradients(SimpleNamespace(strategy=DeepSpeedStrategy()), model, torch.tensor(0.5), 1.0)
    assert norm.item() == 5.0  # DeepSpeed's engine clips (gradient_clipping), not this
    assert [None if g is None else g.tolist() for g in full.values()] == [
        [3.0, 0.0],
        [1.0, 1.0],
        None,
        [0.0, 4.0],
    ]
    empty = with_grads(None)
    assert (
        finish_gradients(SimpleNamespace(strategy=DeepSpeedStrategy()), empty, torch.tensor(0.5), 1.0).item()
        == 0.0
    )


class Root(torch.nn.Module):
    """FSDP's root unit: clips over all shards itself; records the bound it was given."""

    def __init__(self, grad):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.w.grad = torch.tensor(grad)
        self.bounds = []

    def clip_grad_norm_(self, max_norm):
        self.bounds.append(max_norm)
        return torch.tensor(7.0)


def test_fsdp_gradients_are_scaled_then_clipped_by_the_root_unit():
    fsdp = object.__new__(FSDPStrategy)  # isinstance is all finish_gradients asks of it
    root = Root([2.0, 4.0])
    assert finish_gradients(SimpleNamespace(strategy=fsdp), root, torch.tensor(0.25), 3.0).item() == 7.0
    assert root.w.grad.tolist() == [0.5, 1.0]
    unbounded = Root([1.0, 1.0])
    finish_gradients(SimpleNamespace(strategy=fsdp), unbounded, torch.tensor(1.0), None)
    assert root.bounds == [3.0] and unbounded.bounds == [math.inf]


# --- the module's window ---------------------------------------------------------------------------

M = IGNORE_INDEX
# Position t scores class t highest (2.0 against 0.0) over a vocabulary of 3.
LOGITS = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]])
CE_HIT = -2.0 + math.log(math.exp(2.0) + 2.0)


class Logits(torch.nn.Module):
    """A model whose logits are fixed; its one parameter's gradient is set by the test."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))

    def forward(self, **kw):
        return SimpleNamespace(logits=LOGITS)


def module(devices=1, accumulate=2, clip=None, max_bad=5):
    """An SFTModule on a stand-in trainer whose reduce sums over `devices` identical ranks."""
    settings = SimpleNamespace(gradient_clip_val=clip, max_nonfinite_steps=max_bad, trained_logits_only=False)
    m = SFTModule(Logits(), optimizer={}, scheduler=None, trainer=settings)
    m._head = None  # full logits
    m.trainer = SimpleNamespace(
        strategy=plain(reduce=lambda t, reduce_op: t * devices if reduce_op == "sum" else None),
        accumulate_grad_batches=accumulate,
        world_size=devices,
        global_step=4,
    )
    m.logged, m.bars = {}, set()

    def log(name, value, prog_bar=False):
        m.logged[name] = float(value)
        if prog_bar:
            m.bars.add(name)

    m.log = log
    return m


def test_a_micro_batch_adds_its_summed_loss_and_tokens_to_the_window():
    m = module()
    batch = {
        "input_ids": torch.tensor([[0, 1, 2]]),
        "labels": torch.tensor([[M, 0, 1]]),
        "num_tokens": torch.tensor(3),
    }
    for _ in range(2):
        loss = m.training_step(batch, 0)
    assert loss.item() == pytest.approx(2 * CE_HIT, abs=1e-6)
    assert m._window.tolist() == pytest.approx([4 * CE_HIT, 4.0, 4.0], abs=1e-6)  # both targets hit
    assert batch_counts(batch).tolist() == [3, 2, 3]  # what the throughput callback adds per micro-batch


def optimizer(m, lr=0.1):
    return torch.optim.SGD(m.model.parameters(), lr=lr)


def test_the_step_rescales_to_a_per_token_mean_over_the_window_and_all_devices():
    # 2 devices, each with 10.0 summed over 4 tokens: 8 tokens; Lightning and DDP divided by 2 x 2.
    m = module(devices=2, accumulate=2)
    m._window = torch.tensor([10.0, 4.0, 0.0])
    m.model.w.grad = torch.tensor([6.0, 8.0])
    opt = optimizer(m)
    m.on_before_optimizer_step(opt)
    assert m.model.w.grad.tolist() == [3.0, 4.0]  # x 4 / 8
    assert m.logged == {
        "train/loss": 2.5,
        "train/grad_norm": 5.0,
        "train/lr": 0.1,
        "train/window_tokens": 8.0,
        "train/skipped_steps": 0.0,
    }
    assert m.bars == {"train/loss", "train/lr"}
    assert m._window.tolist() == [0.0, 0.0, 0.0]
    assert m._since_eval.tolist() == [2.5, 1.0]
    assert m.guard.empty == 0


def test_clipping_uses_the_configured_bound():
    m = module(devices=1, accumulate=1, clip=1.0)
    m._window = torch.tensor([3.0, 1.0, 0.0])
    m.model.w.grad = torch.tensor([3.0, 4.0])
    m.on_before_optimizer_step(optimizer(m))
    assert m.model.w.grad.tolist() == pytest.approx([0.6, 0.8])
    assert (m.logged["train/loss"], m.logged["train/grad_norm"]) == (3.0, 5.0)


def test_a_window_without_trained_tokens_is_counted_and_divides_by_one():
    m = module(devices=1, accumulate=1)
    m._window = torch.tensor([0.0, 0.0, 0.0])
    m.model.w.grad = torch.tensor([1.0, 0.0])
    m.on_before_optimizer_step(optimizer(m))
    assert m.guard.empty == 1
    assert m.model.w.grad.tolist() == [1.0, 0.0]
    assert m.logged["train/loss"] == 0.0


def test_a_non_finite_step_drops_the_gradients_and_counts_the_skip():
    m = module(max_bad=2)
    m._window = torch.tensor([float("nan"), 2.0, 0.0])
    m.model.w.grad = torch.tensor([1.0, 1.0])
    m.on_before_optimizer_step(optimizer(m))
    assert m.model.w.grad is None
    assert m.logged["train/skipped_steps"] == 1.0
    m._window = torch.tensor([float("inf"), 2.0, 0.0])
    with pytest.raises(
        Diverged, match=r"for 2 optimizer steps in a row \(at step 4\).*optimizer.lr \(now 0.1\)"
    ):
        m.on_before_optimizer_step(optimizer(m))


def test_between_deepspeed_micro_batches_nothing_happens():
    m = module()
    m.trainer.strategy = DeepSpeedStrategy()
    m.trainer.model = SimpleNamespace(is_gradient_accumulation_boundary=lambda: False)
    m._window = torch.tensor([10.0, 4.0, 0.0])
    m.model.w.grad = torch.tensor([6.0, 8.0])
    m.on_before_optimizer_step(optimizer(m))
    assert m.model.w.grad.tolist() == [6.0, 8.0] and m.logged == {} and m._window.tolist() == [10.0, 4.0, 0.0]


def test_the_window_follows_the_loss_onto_its_device():
    # The meta device stands in for a GPU: a window left on the CPU cannot add a loss row there.
    m = module()
    meta = torch.device("meta")
    m.token_loss = lambda batch: (
        torch.zeros((), device=meta),
        torch.zeros((), dtype=torch.long, device=meta),
        torch.zeros((), dtype=torch.long, device=meta),
    )
    m.training_step({"input_ids": torch.zeros(1, 3, dtype=torch.long), "num_tokens": torch.tensor(3)}, 0)
    assert m._window.device == meta
