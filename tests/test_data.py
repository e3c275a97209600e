"""Formats, templates and loss masks on exact token lists."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from sft.config import DataConfig
from sft.data.datamodule import DataStats, PadCollator, fill_placeholders, load_conversations, split
from sft.data.formats import MalformedRow, read_rows, to_conversation
from sft.data.templates import get_template, render
from sft.data.tokenize import IGNORE_INDEX, TemplateError, encode, trained_spans
from sft.model import byte_tokenizer

CONV = {
    "system": "Be brief.",
    "messages": [
        {"role": "user", "content": "Hi é"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
}


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def trained_text(tok, example) -> list[str]:
    """Decode each contiguous run of trained tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_only_assistant_turns_and_their_end_token_are_trained(tok, name):
    template = get_template(name, tok)
    example = encode(CONV, tok, template, cutoff_len=4096)
    assert trained_text(tok, example) == [f"Hello!{template.stop}", f"4{template.stop}"]
    # Training sees exactly the ids a plain tokenization of the rendered text gives.
    text = render(tok, template, [{"role": "system", "content": "Be brief."}, *CONV["messages"]])
    assert example["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_chatml_rendering_is_exact(tok):
    text, spans = trained_spans(tok, get_template("chatml", tok), CONV["messages"][:2])
    assert text == "<|im_start|>user\nHi é<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert [text[a:b] for a, b in spans] == ["Hello!<|im_end|>"]


def test_default_system_prompt_is_used_when_a_row_has_none(tok):
    template = get_template("chatml", tok, default_system="You are Nova.")
    conv = {"system": None, "messages": CONV["messages"][:2]}
    text = tok.decode(encode(conv, tok, template, 4096)["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are Nova.<|im_end|>")


def test_cutoff_truncates_and_drops_rows_with_nothing_trainable(tok):
    template = get_template("chatml", tok)
    short = encode(CONV, tok, template, cutoff_len=60)
    assert len(short["input_ids"]) == 60
    assert encode(CONV, tok, template, cutoff_len=20) is None


def test_a_template_that_is_not_prefix_stable_is_refused(tok):
    from sft.data.templates import Template

    odd = Template("odd", "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}", "")
    with pytest.raises(TemplateError, match="prefix"):
        encode(CONV, tok, odd, 4096)


def test_formats_normalise_to_one_conversation():
    alpaca = {"instruction": "Add", "input": "2 and 2", "output": "4", "history": [["Hi", "Hello"]]}
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ]
    }
    messages = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert to_conversation(alpaca)["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Add\n2 and 2"},
        {"role": "assistant", "content": "4"},
    ]
    assert to_conversation(sharegpt) == {
        "system": "S",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    assert to_conversation(messages)["messages"][0] == {"role": "user", "content": "Hi"}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "Hi", "output": ""}, "output is missing or empty"),
        ({"conversations": [{"from": "human", "value": "Hi"}]}, "last turn must be an assistant"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
        ({"text": "plain"}, "cannot tell the format"),
        (["not", "a", "dict"], "expected an object"),
    ],
)
def test_malformed_rows_say_why(row, reason):
    with pytest.raises(MalformedRow, match=reason):
        to_conversation(row)


def test_malformed_rows_are_reported_with_file_and_line_and_counted(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = {"instruction": "Say hi", "output": "Hi"}
    path.write_text(
        "\n".join(
            [json.dumps(good), "{not json", json.dumps({"instruction": "x", "output": ""}), json.dumps(good)]
        )
        + "\n"
    )
    stats = DataStats()
    convs = load_conversations(DataConfig(source="file", path=str(path)), stats)
    assert len(convs) == 2
    assert (stats.rows, stats.malformed) == (4, 2)
    assert stats.problems[0].startswith(f"{path}:2: invalid JSON")
    assert stats.problems[1].startswith(f"{path}:3: output is missing")


def test_json_array_rows_carry_their_line_numbers(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n\n  {"instruction": "c", "output": "d"}\n]\n')
    assert [loc for loc, _ in read_rows(path)] == [f"{path}:2", f"{path}:4"]


def test_shared_alpaca_demo_loads_completely():
    stats = DataStats()
    convs = load_conversations(
        DataConfig(source="file", path=str(SHARED_DATA / "alpaca_en_demo.json"), format="alpaca"), stats
    )
    assert len(convs) == stats.rows == 999 and stats.malformed == 0


def test_placeholders_are_filled_everywhere():
    conv = {
        "system": "I am {{name}}.",
        "messages": [{"role": "assistant", "content": "{{name}} by {{author}}"}],
    }
    filled = fill_placeholders(conv, {"name": "Nova", "author": "us"})
    assert filled["system"] == "I am Nova." and filled["messages"][0]["content"] == "Nova by us"


def test_split_is_seeded_and_accepts_fractions_or_counts():
    items = list(range(100))
    train, val = split(items, 0.1, seed=1)
    assert len(val) == 10 and sorted(train + val) == items
    assert split(items, 0.1, seed=1) == (train, val)
    assert split(items, 0.1, seed=2)[1] != val
    assert len(split(items, 7, seed=1)[1]) == 7


def test_collator_pads_right_and_never_trains_padding():
    batch = PadCollator(pad_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [-100]}]
    )
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"][1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_length_grouping_sorts_within_each_step_and_keeps_the_step_contents():
    from sft.data.datamodule import EpochShuffleSampler

    lengths = [(i * 37) % 101 for i in range(50)]
    plain, grouped = EpochShuffleSampler(lengths, seed=3), EpochShuffleSampler(lengths, seed=3, group_size=8)
    a, b = list(plain), list(grouped)
    assert sorted(b) == list(range(50))
    for start in range(0, 50, 8):
        block = b[start : start + 8]
        assert set(block) == set(a[start : start + 8])  # same examples in each optimizer step
        assert [lengths[i] for i in block] == sorted((lengths[i] for i in block), reverse=True)
    grouped.set_epoch(1)
    assert list(grouped) != b and list(EpochShuffleSampler(lengths, seed=3, group_size=8)) == b
