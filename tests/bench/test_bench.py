"""`python -m sft.bench`: the arithmetic of rates, MFU, the TRL search and the table. The tiny end-to-end
comparison with TRL runs through scripts/gpu_bench.sh (tests/bench/test_gpu_bench.py), which calls this
command."""

from __future__ import annotations

import pytest
import torch

from sft.bench.__main__ import cells, markdown
from sft.bench.clock import rates
from sft.bench.flops import flops_per_token, mean_context, parameter_counts
from sft.bench.search import coordinate_search, trl_spec
from sft.training.precision import matmul_peak


def steps(times, tokens, trained, slots):
    """Cumulative step records as the clocks write them."""
    return [
        {"start": 0.0, "time": t, "tokens": a, "trained": b, "slots": c, "loss": 2.0 - i / 10}
        for i, (t, a, b, c) in enumerate(zip(times, tokens, trained, slots, strict=True))
    ]


def test_rates_leave_out_the_warm_up_steps():
    records = steps(
        [10.0, 12.0, 14.0, 16.0], [100, 300, 500, 700], [50, 150, 250, 350], [200, 500, 800, 1100]
    )
    timed = rates(records, warmup=1)
    assert timed["timed_steps"] == 3 and timed["seconds"] == pytest.approx(6.0)
    assert timed["tokens_per_sec"] == pytest.approx(600 / 6)
    assert timed["trained_tokens_per_sec"] == pytest.approx(300 / 6)
    assert timed["padding_fraction"] == pytest.approx(1 - 600 / 900)
    assert timed["loss"] == pytest.approx(1.7)
    assert rates(records, warmup=0)["tokens_per_sec"] == pytest.approx(700 / 16)
    with pytest.raises(ValueError, match="not more than the 4 warm-up steps"):
        rates(records, warmup=4)


def test_flops_per_token_counts_frozen_trainable_and_attention():
    assert mean_context([1]) == 1 and mean_context([3]) == pytest.approx((1 + 2 + 3) / 3)
    assert mean_context([3, 1]) == pytest.approx((6 + 1) / 4)
    # 4 per frozen weight, 6 per trainable one, 12 * layers * width per attended position.
    assert flops_per_token(1000, 10, 2, 8, 5.0) == 4000 + 60 + 12 * 2 * 8 * 5.0
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    model.config = type("Config", (), {"num_hidden_layers": 2, "hidden_size": 4})()
    assert parameter_counts(model) == {"frozen_matmul": 12, "trainable": 3 + 6 + 2, "layers": 2, "width": 4}
    assert matmul_peak(torch.float32, n=128, seconds=0.05) > 0


def test_trl_search_keeps_the_fastest_value_of_each_setting_in_turn():
    """Each setting's best value is kept for the next (even when it is not the start's), every point is
    measured once, and a failed run never wins."""
    # The fastest dtype comes before a slower one, so keeping the last value tried would fail.
    space = {"dtype": ["bf16_weights", "fp32"], "packing": [False, True], "micro_batch": [8, 4, 2]}
    start = {"dtype": "fp32", "packing": False, "gradient_checkpointing": True, "micro_batch": 8}
    factor = {"bf16_weights": 2.0, "fp32": 1.0, True: 1.5, False: 1.0, 8: 1.0, 4: 1.2}
    seen = []

    def measure(point):
        seen.append(point)
        if point["micro_batch"] == 2:
            return None  # out of memory, say
        return 100 * factor[point["dtype"]] * factor[point["packing"]] * factor[point["micro_batch"]]

    best, trials = coordinate_search(space, start, measure)
    assert best == {
        "dtype": "bf16_weights",
        "packing": True,
        "gradient_checkpointing": True,
        "micro_batch": 4,
    }
    assert len(seen) == len({tuple(p.values()) for p in seen}) == len(trials) == 5
    assert max(trials, key=lambda t: t[1] or 0) == (best, 100 * 2.0 * 1.5 * 1.2)
    spec = trl_spec(best, 8)
    assert spec["bf16"] is True and spec["trl_args"]["bf16"] is True
    assert (
        spec["trl_args"]["per_device_train_batch_size"],
        spec["trl_args"]["gradient_accumulation_steps"],
    ) == (4, 2)
    assert trl_spec({**best, "dtype": "bf16_autocast"}, 8)["bf16"] is False  # fp32 weights, bf16 compute


def test_table_cells_show_ratios_and_failures():
    row = {
        "tokens_per_sec": 100.0,
        "trained_tokens_per_sec": 50.0,
        "padding_fraction": 0.25,
        "peak_rss_gb": 1.5,
        "seconds": 20.0,
        "loss": 1.234,
        "mfu": 0.3,
        "prep_seconds": 2.0,
        "prep_cached_seconds": None,
    }
    rows = {
        "trl": row,
        "sft": {**row, "tokens_per_sec": 250.0, "prep_cached_seconds": 0.01},
        "bad": {"error": "x"},
    }
    lines = {line[0]: line for line in cells(rows, "sft")}
    assert lines["trl"][-1] == "2.50x" and lines["sft"][-1] == ""
    assert lines["sft"][8] == "2.00 (0.01 cached)" and lines["bad"][1] == "failed: see bad/log.txt"
    assert (
        markdown(rows, "sft")
        .splitlines()[2]
        .startswith("| trl | 100.0 | 50.0 | 25.0% | 1.50 | 20.0 | 1.234 |")
    )
