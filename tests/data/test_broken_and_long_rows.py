"""Data in the wild: a mostly broken file stops the run (data.max_bad_fraction), too many long rows warn
with the cutoff that would keep 99% of them (data.long_rows_warning), and the preview shows both and the
weights of weighted turns. Real shared rows, mutated in a tmp dir."""

from __future__ import annotations

import json
import logging
import math

import pytest
from conftest import SHARED_DATA, preview_in_process

from sft.config import validate
from sft.data.formats import read_source, to_conversation
from sft.data.preprocess import prepare
from sft.data.templates import get_template
from sft.data.tokenize import encode
from sft.errors import DataError
from sft.training.model import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def shared_rows(n: int) -> list[dict]:
    """The first n rows of the shared Alpaca demo file."""
    return [row for _, row in list(read_source(SHARED_DATA / "alpaca_en_demo.json"))[:n]]


# A different way to break a row each time: bad JSON, no answer, an empty answer, an image, a bad weight.
BREAKS = [
    lambda row: json.dumps(row)[:-5],
    lambda row: json.dumps({k: v for k, v in row.items() if k != "output"}),
    lambda row: json.dumps({**row, "output": "  "}),
    lambda row: json.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": row["instruction"]}, {"type": "image"}],
                },
                {"role": "assistant", "content": row["output"]},
            ]
        }
    ),
    lambda row: json.dumps(
        {
            "messages": [
                {"role": "user", "content": row["instruction"]},
                {"role": "assistant", "content": "x", "weight": 2},
            ]
        }
    ),
]


def mutated(tmp_path, bad: int, total: int = 50):
    """The shared rows as JSON lines with `bad` of them (every fourth line from the second) broken."""
    lines, broken = [], []
    for i, row in enumerate(shared_rows(total)):
        if len(broken) < bad and i % 4 == 1 or total - i <= bad - len(broken):
            lines.append(BREAKS[len(broken) % len(BREAKS)](row))
            broken.append(i + 1)
        else:
            lines.append(json.dumps(row))
    path = tmp_path / "alpaca_mutated.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert len(broken) == bad
    return path, broken


def prepared(make_cfg, tok, path, *overrides):
    cfg = validate(
        make_cfg("model=tiny", "data=mix", f"data.datasets=[{path}]", "data.val_size=0", *overrides)
    ).data
    return prepare(cfg, tok, get_template(cfg.template, tok, cfg.system), 0, None)


def test_a_mostly_broken_file_stops_the_run_with_counts_and_the_first_reasons(make_cfg, tok, tmp_path):
    path, broken = mutated(tmp_path, bad=10)  # exactly 20%: not more than the default share
    ok = prepared(make_cfg, tok, path, "data.cutoff_len=4096")
    d = ok.stats.datasets["alpaca_mutated"]
    assert (d.rows, d.malformed, ok.stats.train) == (50, 10, 40)
    assert [p.split(": ")[0] for p in ok.stats.problems] == [f"{path}:{n}" for n in broken]

    path, broken = mutated(tmp_path, bad=11)  # one row more: 22%
    with pytest.raises(DataError) as stop:
        prepared(make_cfg, tok, path, "data.cutoff_len=4096")
    message = str(stop.value)
    assert message.startswith(
        "dataset 'alpaca_mutated': 11 of 50 rows (22.0%) are malformed, more than data.max_bad_fraction=0.2"
    )
    reasons = message.split("\n")[1:]
    assert [r.strip().split(": ")[0] for r in reasons[:5]] == [f"{path}:{n}" for n in broken[:5]]
    assert "invalid JSON" in reasons[0] and "missing field 'output'" in reasons[1]
    assert "empty assistant turn" in reasons[2] and "'image' part on a user turn" in reasons[3]
    assert "weight=2: a loss weight must be in [0, 1]" in reasons[4]
    assert reasons[5].strip() == "... and 6 more"
    # The share is configurable, and strict mode still stops at the first bad row.
    assert (
        prepared(make_cfg, tok, path, "data.cutoff_len=4096", "data.max_bad_fraction=0.25").stats.train == 39
    )
    with pytest.raises(DataError, match=f"{path}:{broken[0]}: invalid JSON"):
        prepared(make_cfg, tok, path, "data.strict=true", "data.max_bad_fraction=1")


@pytest.mark.parametrize("value", ["-0.1", "1.5", "lots"])
def test_the_new_keys_are_validated_by_name(make_cfg, value):
    from sft.config import ConfigError

    for key in ("max_bad_fraction", "long_rows_warning"):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            validate(make_cfg("model=tiny", f"data.{key}={value}"))
    with pytest.raises(ConfigError, match=r"data.reasoning='keep': one of \('train', 'drop'\)"):
        validate(make_cfg("model=tiny", "data.reasoning=keep"))


def full_lengths(tok, rows) -> list[int]:
    """Each row's untruncated token count under chatml (no system prompt)."""
    template = get_template("chatml", tok)
    return [len(encode(to_conversation(r), tok, template, 1 << 20)["input_ids"]) for r in rows]


def test_too_many_long_rows_warn_with_the_cutoff_that_keeps_99_percent(make_cfg, tok, tmp_path, caplog):
    rows = shared_rows(100)
    path = tmp_path / "alpaca_long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = sorted(full_lengths(tok, rows))
    p99 = lengths[math.ceil(0.99 * len(lengths)) - 1]
    # Cutoffs with exactly 5 (5%: no warning) and exactly 6 (6%: a warning) rows longer than them.
    at_five = next(c for c in lengths if sum(n > c for n in lengths) == 5)
    at_six = next(c for c in lengths if sum(n > c for n in lengths) == 6)

    quiet = prepared(make_cfg, tok, path, f"data.cutoff_len={at_five}")
    d = quiet.stats.datasets["alpaca_long"]
    assert d.truncated + d.too_long == 5 and quiet.stats.warnings == []

    with caplog.at_level(logging.WARNING, logger="sft.data.stats"):
        loud = prepared(make_cfg, tok, path, f"data.cutoff_len={at_six}")
        loud.stats.log(at_six)
    d = loud.stats.datasets["alpaca_long"]
    assert d.truncated + d.too_long == 6
    assert loud.stats.warnings == [
        f"dataset 'alpaca_long': 6 of 100 rows (6.0%) are longer than data.cutoff_len={at_six} "
        f"({d.truncated} truncated, {d.too_long} dropped), more than data.long_rows_warning=0.05; "
        f"data.cutoff_len={p99} would keep 99% of them whole (the 99th percentile of their token lengths)"
    ]
    assert loud.stats.warnings[0] in caplog.text
    # Dropped rows count as much as truncated ones; the share is configurable.
    dropped = prepared(make_cfg, tok, path, f"data.cutoff_len={at_six}", "data.truncation=drop")
    assert (
        dropped.stats.datasets["alpaca_long"].too_long == 6
        and "(0 truncated, 6 dropped)" in dropped.stats.warnings[0]
    )
    assert (
        prepared(
            make_cfg, tok, path, f"data.cutoff_len={at_six}", "data.long_rows_warning=0.06"
        ).stats.warnings
        == []
    )


def test_the_preview_shows_weighted_turns_and_the_long_row_warning(tmp_path, cache_dir):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Say hi"},
                {"role": "assistant", "content": "Hi", "loss_weight": 0.5},
                {"role": "user", "content": "Again"},
                {"role": "assistant", "content": "Hi again", "weight": 0},
                {"role": "user", "content": "Once more"},
                {"role": "assistant", "content": "Hi!"},
            ]
        },
        {"messages": [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "long"}]},
    ]
    path = tmp_path / "weighted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = preview_in_process(
        tmp_path,
        cache_dir,
        "model=tiny",
        "data=mix",
        f"data.datasets=[{path}]",
        "data.val_size=0",
        "data.cutoff_len=128",
        "data.truncation=drop",
        "preview.rows=1",
    )
    assert (
        "<|im_start|>assistant\n«Hi<|im_end|>»[weight 0.5]\n<|im_start|>user\nAgain<|im_end|>\n"
        "<|im_start|>assistant\nHi again<|im_end|>[weight 0]\n"
        "<|im_start|>user\nOnce more<|im_end|>\n<|im_start|>assistant\n«Hi!<|im_end|>»\n"
    ) in text
    assert "warning: dataset 'weighted': 1 of 2 rows (50.0%) are longer than data.cutoff_len=128" in text


def test_the_run_summary_prints_the_data_warnings(capsys):
    from sft.training.summary import print_summary

    summary = {
        "global_step": 1,
        "wall_seconds": 1.0,
        "train_loss": 1.0,
        "initial_val_loss": None,
        "val_loss": None,
        "val_ppl": None,
        "val_token_accuracy": None,
        "saved": "adapter",
        "output_dir": "run",
        "data": {"warnings": ["dataset 'd': 6 of 100 rows (6.0%) are longer than data.cutoff_len=64"]},
    }
    print_summary(summary)
    assert "data warning: dataset 'd': 6 of 100 rows (6.0%) are longer" in capsys.readouterr().out
