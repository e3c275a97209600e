"""The run summary's sections from callbacks: throughput totals (kept on resume), step counts, probes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sft.training.callbacks import OverfittingWatch, ThroughputMonitor, batch_counts
from sft.training.probe import ProbeAnswers
from sft.training.resilience import NonFiniteGuard

M = -100


def micro_batch(trained: int, padding: int) -> dict:
    """One row: a first (never trained) token, `trained` labelled tokens, then `padding` pad slots."""
    labels = [M] + [7] * trained + [M] * padding
    return {"labels": torch.tensor([labels]), "num_tokens": torch.tensor(1 + trained)}


class Logged(dict):
    def log(self, name, value):
        self[name] = float(value)


def fit(monitor: ThroughputMonitor, windows: list[list[dict]], first_step: int = 0) -> Logged:
    """Feed micro-batches as Lightning would: the step counter moves after each window's last one."""
    trainer, module = SimpleNamespace(global_step=first_step, training=True), Logged()
    monitor.on_train_start(trainer, module)
    for window in windows:
        for i, batch in enumerate(window):
            trainer.global_step += i == len(window) - 1
            monitor.on_train_batch_end(trainer, module, None, batch, 0)
    return module


def test_batch_counts_are_tokens_trained_tokens_and_slots():
    assert batch_counts(micro_batch(trained=3, padding=2)).tolist() == [4, 3, 6]


def test_throughput_counts_every_micro_batch_of_a_window_and_sums_the_fit():
    monitor = ThroughputMonitor()
    logged = fit(monitor, [[micro_batch(3, 2), micro_batch(1, 0)], [micro_batch(5, 0), micro_batch(5, 0)]])
    assert monitor.counts == [6 + 12, 4 + 10, 8 + 12]
    assert logged["train/padding_fraction"] == 0.0  # the last window had no padding
    assert logged["train/trained_tokens"] == 14
    assert monitor.summary_section()["padding_fraction"] == pytest.approx(1 - 18 / 20, abs=1e-4)


def test_throughput_totals_continue_after_a_resume():
    first = ThroughputMonitor()
    fit(first, [[micro_batch(3, 2), micro_batch(1, 0)]])
    resumed = ThroughputMonitor()
    resumed.load_state_dict(first.state_dict())
    fit(resumed, [[micro_batch(5, 0), micro_batch(5, 0)]], first_step=1)
    assert resumed.counts == [18, 14, 20]
    assert resumed.train_seconds >= first.train_seconds


def test_the_guard_counts_empty_and_skipped_steps_and_resumes_them():
    guard = NonFiniteGuard(max_in_row=3)
    assert guard.ok(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.0), 0, 1e-3)
    assert not guard.ok(torch.tensor(float("nan")), torch.tensor(1.0), torch.tensor(4.0), 1, 1e-3)
    assert guard.summary_section() == {"skipped_steps": 1, "empty_steps": 1}
    again = NonFiniteGuard(max_in_row=3)
    again.load_state_dict(guard.state_dict())
    assert again.summary_section() == guard.summary_section()


def test_the_overfitting_section_counts_warnings():
    watch = OverfittingWatch(patience=1)
    watch.observe(2.0, 1.0)
    assert watch.observe(1.5, 1.2) is not None
    watch.warnings += 1  # what on_validation_end does with a warning
    assert watch.summary_section() == {"overfitting_warnings": 1}


def test_probe_answers_before_at_the_first_setup_and_after_at_the_final_validation(monkeypatch):
    calls = []
    monkeypatch.setattr(
        "sft.training.probe.answer", lambda model, *a: calls.append(model) or [f"answer {len(calls)}"]
    )
    probes = ProbeAnswers(tokenizer=None, template=None, prompts=["Who are you?"], max_new_tokens=4)
    strategy = SimpleNamespace()  # not sharded
    trainer = SimpleNamespace(is_global_zero=True, strategy=strategy, num_val_batches=[2])
    module = SimpleNamespace(model="model")
    probes.setup(trainer, module, "validate")
    module.model = "wrapped"  # the first validation's configure_model may shard it (FSDP, ZeRO-3)
    probes.setup(trainer, module, "fit")  # the fit after the first validation: no second "before"
    assert calls == ["model"]
    trainer.state = SimpleNamespace(fn="validate")
    probes.on_validation_end(trainer, module)  # the validation before training: no "after" yet
    probes.on_fit_end(trainer, module)
    probes.on_validation_end(trainer, module)
    assert probes.summary_section() == {
        "probes": [{"prompt": "Who are you?", "before": "answer 1", "after": "answer 2"}]
    }


def test_probe_answers_after_the_fit_when_there_is_no_validation(monkeypatch):
    monkeypatch.setattr("sft.training.probe.answer", lambda *a: ["same"])
    probes = ProbeAnswers(tokenizer=None, template=None, prompts=["Hi"], max_new_tokens=4)
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(), num_val_batches=[])
    probes.setup(trainer, SimpleNamespace(model=None), "fit")
    probes.on_fit_end(trainer, SimpleNamespace(model=None))
    assert probes.summary_section()["probes"][0]["after"] == "same"
