"""Rows as other tools write them: content parts under any text key, media parts, per-turn loss weights
and reasoning traces, normalised to the canonical conversation (sft/data/formats.py)."""

from __future__ import annotations

import json

import pytest

from sft.data.formats import MalformedRow, to_conversation
from sft.data.kinds import normaliser
from sft.data.loading import apply_reasoning, fill_placeholders


def user(text):
    return {"role": "user", "content": text}


def assistant(text, **extra):
    return {"role": "assistant", "content": text, **extra}


def messages_of(row, fmt="auto"):
    return to_conversation(row, fmt)["messages"]


def sharegpt(*turns, **row):
    return {"conversations": [{"from": who, "value": value, **extra} for who, value, extra in turns], **row}


# ------------------------------------------------------------------------------------- content parts


@pytest.mark.parametrize("key", ["text", "value"])
def test_text_parts_are_read_under_either_key_for_every_role_and_format(key):
    def parts(*texts):
        return [{"type": "text", key: t} for t in texts]

    messages = {
        "messages": [
            {"role": "system", "content": parts("Be ", "brief.")},
            {"role": "user", "content": parts("Weather?")},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "w", "arguments": {}}]},
            {"role": "tool", "content": parts("3C")},
            {"role": "assistant", "content": parts("Cold.")},
        ]
    }
    conv = to_conversation(messages)
    assert conv["system"] == "Be brief."
    assert [m["content"] for m in conv["messages"]] == ["Weather?", "", "3C", "Cold."]
    turns = sharegpt(
        ("system", parts("S"), {}), ("human", parts("Hi ", "there"), {}), ("gpt", parts("Hello"), {})
    )
    assert to_conversation(turns) == to_conversation(
        {"conversations": [{"from": "system", "value": "S"}, *turns["conversations"][1:]]}
    )
    assert messages_of(turns) == [user("Hi there"), assistant("Hello")]
    # One part given as an object rather than a list reads the same.
    assert messages_of({"messages": [user(parts("q")[0]), assistant(parts("a")[0])]}) == [
        user("q"),
        assistant("a"),
    ]


def test_llama_factory_messages_rows_read_as_written():
    # LLaMA-Factory's own messages format: `value` parts and loss_weight 0.0 on every prompt turn.
    row = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "value": "S"}], "loss_weight": 0.0},
            {"role": "user", "content": [{"type": "text", "value": "Hi"}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Hello"}], "loss_weight": 1.0},
            {"role": "user", "content": [{"type": "text", "value": "6*8?"}], "loss_weight": 0.0},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_call", "value": json.dumps({"name": "mul", "arguments": {"a": 6}})}
                ],
                "loss_weight": 0.0,
            },
        ]
    }
    conv = to_conversation(row)
    assert conv["system"] == "S"
    call = {"type": "function", "function": {"name": "mul", "arguments": {"a": 6}}}
    assert conv["messages"] == [
        user("Hi"),
        assistant("Hello"),
        user("6*8?"),
        assistant("", tool_calls=[call], loss_weight=0.0),
    ]


@pytest.mark.parametrize(
    ("part", "role"),
    [
        ({"type": "image_url", "image_url": {"url": "http://x/cat.png"}}, "user"),
        ({"type": "image", "image": "cat.png"}, "user"),
        ({"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}}, "user"),
        ({"type": "audio", "value": "a.wav"}, "assistant"),
        ({"type": "video", "video": "v.mp4"}, "user"),
        ({"type": "video_url", "value": "v.mp4"}, "user"),
        ({"type": "file", "file": {"file_id": "f"}}, "user"),
    ],
)
def test_media_parts_refuse_the_row_naming_the_part_and_why(part, role):
    content = [{"type": "text", "text": "Look:"}, part]
    turns = [user(content), assistant("A cat.")] if role == "user" else [user("Draw"), assistant(content)]
    index = 1 if role == "user" else 3
    for row in (
        {"messages": turns},
        sharegpt(("human", turns[0]["content"], {}), ("gpt", turns[1]["content"], {})),
    ):
        with pytest.raises(MalformedRow) as refused:
            to_conversation(row)
        message = str(refused.value)
        assert f"a {part['type']!r} part on a {role} turn" in message and "text-only models" in message
        assert f"[{index - 1 if role == 'user' else 1}]" in message  # the turn that holds it


def test_media_columns_and_unknown_parts_are_refused_too():
    with pytest.raises(MalformedRow, match="'images' column holds media: this framework trains text-only"):
        to_conversation({"messages": [user("<image>What is it?"), assistant("A cat.")], "images": ["c.png"]})
    assert messages_of({"messages": [user("q"), assistant("a")], "images": []}) == [user("q"), assistant("a")]
    with pytest.raises(MalformedRow, match=r"unsupported 'hologram' part on a user turn; allowed: text"):
        to_conversation({"messages": [user([{"type": "hologram", "text": "x"}]), assistant("a")]})
    with pytest.raises(MalformedRow, match=r"a 'text' part holds no text or value text"):
        to_conversation({"messages": [user([{"type": "text", "content": "x"}]), assistant("a")]})
    with pytest.raises(MalformedRow, match=r"unsupported 'reasoning' part on a user turn"):
        to_conversation({"messages": [user([{"type": "reasoning", "text": "x"}]), assistant("a")]})


# ------------------------------------------------------------------------------------------ weights


def test_loss_weights_are_read_under_either_key_and_only_fractions_are_stored():
    row = {
        "messages": [
            user("a"),
            assistant("b", loss_weight=0.5),
            user("c"),
            assistant("d", weight=0),
            user("e"),
            assistant("f", weight=1),
        ]
    }
    assert messages_of(row) == [
        user("a"),
        assistant("b", loss_weight=0.5),
        user("c"),
        assistant("d", loss_weight=0.0),
        user("e"),
        assistant("f"),  # 1 is every turn's weight: the canonical form leaves it out
    ]
    # ShareGPT's 0/1 `weight`, and alpaca (which has no turns to weigh) is untouched.
    assert messages_of(
        sharegpt(("human", "q", {}), ("gpt", "a", {"weight": 0}), ("human", "r", {}), ("gpt", "b", {}))
    ) == [
        user("q"),
        assistant("a", loss_weight=0.0),
        user("r"),
        assistant("b"),
    ]


@pytest.mark.parametrize(
    ("turn", "reason"),
    [
        (
            user("q") | {"loss_weight": 0.5},
            r"messages\[0\] loss_weight=0.5: only assistant turns are trained",
        ),
        (assistant("a") | {"loss_weight": -0.1}, r"loss_weight=-0.1: a loss weight must be in \[0, 1\]"),
        (assistant("a") | {"weight": 1.5}, r"weight=1.5: a loss weight must be in \[0, 1\]"),
        (assistant("a") | {"weight": "1"}, r"weight='1': a loss weight must be a number in \[0, 1\]"),
        (assistant("a") | {"weight": True}, r"weight=True: a loss weight must be a number"),
        (assistant("a") | {"weight": float("nan")}, r"weight=nan: a loss weight must be a number"),
        (assistant("a") | {"weight": 1, "loss_weight": 1}, "both 'loss_weight' and 'weight' given"),
    ],
)
def test_bad_loss_weights_are_malformed_rows_with_a_reason(turn, reason):
    turns = [turn, assistant("x")] if turn["role"] == "user" else [user("q"), turn]
    with pytest.raises(MalformedRow, match=reason):
        to_conversation({"messages": turns})


def test_a_system_turn_with_a_weight_is_refused_but_a_zero_is_accepted():
    system = {"role": "system", "content": "S"}
    with pytest.raises(MalformedRow, match=r"messages\[0\] weight=1: only assistant turns are trained"):
        to_conversation({"messages": [system | {"weight": 1}, user("q"), assistant("a")]})
    assert to_conversation({"messages": [system | {"weight": 0}, user("q"), assistant("a")]})["system"] == "S"


def test_preference_rows_refuse_per_turn_weights():
    q = [user("q")]
    with pytest.raises(MalformedRow, match="per-turn loss weights apply to SFT rows only"):
        normaliser("pairs")(
            {"messages": q, "chosen": assistant("A", weight=0.5), "rejected": "B"}, "auto", {}, None
        )
    with pytest.raises(MalformedRow, match="per-turn loss weights apply to SFT rows only"):
        normaliser("feedback")(
            {"messages": [*q, assistant("A", loss_weight=0)], "label": True}, "auto", {}, None
        )


# ---------------------------------------------------------------------------------------- reasoning

CANONICAL = [user("2+2?"), assistant("4", reasoning_content="Add two and two.")]


@pytest.mark.parametrize(
    "answer",
    [
        assistant("4", reasoning_content="Add two and two."),
        assistant("4", reasoning="Add two and two."),
        assistant("4", thinking="Add two and two."),
        assistant("<think>\nAdd two and two.\n</think>\n\n4"),
        assistant("  <think>Add two and two.</think>4"),
        assistant([{"type": "reasoning", "value": "Add two and two."}, {"type": "text", "value": "4"}]),
        assistant(
            [
                {"type": "thinking", "thinking": "Add two and two.", "signature": "x"},
                {"type": "text", "text": "4"},
            ]
        ),
        assistant([{"type": "text", "text": "<think>Add two and two.</think>\n4"}]),
    ],
)
def test_every_spelling_of_reasoning_lands_in_reasoning_content(answer):
    assert messages_of({"messages": [user("2+2?"), answer]}) == CANONICAL


def test_reasoning_in_sharegpt_and_alpaca_rows_too():
    turns = sharegpt(("human", "2+2?", {}), ("gpt", "4", {"reasoning_content": "Add two and two."}))
    assert messages_of(turns) == CANONICAL
    alpaca = {"instruction": "2+2?", "output": "<think>Add two and two.</think>\n\n4"}
    assert messages_of(alpaca) == CANONICAL
    # A blank trace is no trace, and a <think> in a user's text is just text.
    assert messages_of({"messages": [user("<think>x</think>"), assistant("<think>\n\n</think>\n\n4")]}) == [
        user("<think>x</think>"),
        assistant("4"),
    ]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (assistant("<think>never closed"), "<think> is never closed by </think>"),
        (
            assistant("<think>a</think>4", reasoning_content="b"),
            "reasoning given twice",
        ),
        (
            assistant([{"type": "text", "text": "4"}, {"type": "reasoning", "text": "late"}]),
            "a 'reasoning' part after the answer text; reasoning comes first",
        ),
        (
            assistant("4", reasoning_content="a", thinking="b"),
            "both 'reasoning_content' and 'thinking' given",
        ),
        (assistant("4", reasoning_content=3), "reasoning_content must be a string"),
    ],
)
def test_bad_reasoning_is_a_malformed_row(answer, reason):
    with pytest.raises(MalformedRow, match=reason):
        to_conversation({"messages": [user("q"), answer]})
    with pytest.raises(MalformedRow, match="'reasoning_content' on a non-assistant turn"):
        to_conversation({"messages": [user("q") | {"reasoning_content": "r"}, assistant("a")]})


def test_the_reasoning_option_keeps_or_drops_every_trace_and_placeholders_reach_it():
    pair = {
        "messages": [user("q")],
        "chosen": assistant("a", reasoning_content="r"),
        "rejected": assistant("b", reasoning_content="s"),
    }
    assert apply_reasoning(pair, "train") is pair
    assert apply_reasoning(pair, "drop") == {**pair, "chosen": assistant("a"), "rejected": assistant("b")}
    conv = {"system": None, "messages": [user("q"), assistant("a", reasoning_content="I am {{name}}")]}
    assert apply_reasoning(conv, "drop")["messages"] == [user("q"), assistant("a")]
    filled = fill_placeholders(conv, {"name": "Nova"})
    assert filled["messages"][1]["reasoning_content"] == "I am Nova"
    assert apply_reasoning({"text": "raw"}, "drop") == {"text": "raw"}
