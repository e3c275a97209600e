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
        "label_weights": [],
        "status": "ok",
        "full_length": 2,
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
        "label_weights": [],
        "status": "too_long",
        "full_length": n,
    }


def test_train_on_prompt_labels_every_token_of_an_ok_row():
    tok = byte_tokenizer()
    example = encode(conversation("ab", "cd"), tok, BARE, 16, train_on_prompt=True)
    assert example == {
        "input_ids": example["input_ids"],
        "labels": example["input_ids"],
        "label_weights": [],
        "status": "ok",
        "full_length": 4,
    }
    assert len(example["input_ids"]) == 4


def test_a_truncated_row_keeps_the_masking_options():
    tok = byte_tokenizer()
    conv = conversation("aa", "bb", "cc", "dd", "ee", "ff")
    kept = encode(conversation("cc", "dd", "ee", "ff"), tok, BARE, 16, train_on_prompt=True)
    truncated = {**kept, "status": "truncated", "full_length": 12}
    assert encode(conv, tok, BARE, 8, train_on_prompt=True) == truncated
    last = encode(conv, tok, BARE, 8, mask_history=True)
    assert last["status"] == "truncated" and last["labels"] == [M] * 6 + last["input_ids"][6:]


def test_truncation_counts_the_tool_schemas():
    # With the schemas counted, only the last exchange fits; without them, two would (they are longer
    # than an exchange), so a truncation blind to tools would keep a row over the cutoff.
    tok = byte_tokenizer()
    template = get_template("qwen", tok)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    conv = {**conversation("a", "b", "c", "d", "e", "f"), "tools": tools}
    last = {**conversation("e", "f"), "tools": tools}
    cutoff = len(encode(last, tok, template, 4096)["input_ids"])
    full = len(encode(conv, tok, template, 4096)["input_ids"])
    truncated = {**encode(last, tok, template, 4096), "status": "truncated", "full_length": full}
    assert encode(conv, tok, template, cutoff) == truncated


def test_a_tokenizer_that_adds_a_bos_token_adds_none_to_the_rendered_text():
    # The template writes any BOS itself; the tokenizer's own would double it (Llama's adds one).
    from tokenizers import processors

    tok = byte_tokenizer()
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    ids = tok("ab", add_special_tokens=False)["input_ids"]
    assert encode(conversation("a", "b"), tok, BARE, 16) == {
        "input_ids": ids,
        "labels": [M, ids[1]],
        "label_weights": [],
        "status": "ok",
        "full_length": 2,
    }


def test_a_generation_prompt_the_answer_does_not_extend_is_refused():
    # The turn is a prefix of the conversation, but the generation prompt ("a>") is not one of the turn.
    tok = byte_tokenizer()
    marked = Template(
        "marked",
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}",
        "",
    )
    assert encode(conversation("a", "b"), tok, marked, 16) == {
        "input_ids": [],
        "labels": [],
        "label_weights": [],
        "status": "invalid: TemplateError: template 'marked' does not render turn 1 as a prefix of the "
        "conversation; loss masks cannot be derived from it",
        "full_length": 0,
    }
