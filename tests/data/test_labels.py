"""Label building at its edges: one trained token, the last of several turns, spans at token edges."""

from __future__ import annotations

from sft.data.templates import Template, get_template
from sft.data.tokenize import IGNORE_INDEX, encode
from sft.training.model import byte_tokenizer

M = IGNORE_INDEX
# Bare concatenation: each message's content, nothing else, so one byte is one token and one character.
BARE = Template("bare", "{% for m in messages %}{{ m['content'] }}{% endfor %}", "")


def conversation(*contents: str) -> dict:
    messages = [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(contents)]
    return {"system": None, "messages": messages}


def test_a_single_trained_token_right_after_the_first_is_kept():
    tok = byte_tokenizer()
    ids = tok("ab", add_special_tokens=False)["input_ids"]
    assert encode(conversation("a", "b"), tok, BARE, 16) == {
        "input_ids": ids,
        "labels": [M, ids[1]],
        "status": "ok",
    }


def test_mask_history_keeps_only_the_last_of_three_answers():
    tok = byte_tokenizer()
    example = encode(conversation("a", "b", "c", "d", "e", "f"), tok, BARE, 16, mask_history=True)
    assert example["labels"] == [M, M, M, M, M, example["input_ids"][5]]
    assert encode(conversation("a", "b", "c", "d", "e", "f"), tok, BARE, 16)["labels"] == [
        M if i % 2 == 0 else t for i, t in enumerate(example["input_ids"])
    ]


def test_a_conversation_exactly_at_the_cutoff_is_kept_whole():
    tok = byte_tokenizer()
    example = encode(conversation("ab", "cd"), tok, get_template("chatml", tok), 4096)
    n = len(example["input_ids"])
    assert encode(conversation("ab", "cd"), tok, get_template("chatml", tok), n) == example
    assert encode(conversation("ab", "cd"), tok, get_template("chatml", tok), n - 1, truncation="drop") == {
        "input_ids": [],
        "labels": [],
        "status": "too_long",
    }
