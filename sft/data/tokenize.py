"""Token ids and labels: the one place that decides which tokens carry loss.

The trained character spans are found by rendering growing prefixes of the conversation with
the same template: the text an assistant turn adds after the generation prompt (its content
and end-of-turn token) is trained, everything else is not. The full text is then tokenized
once, so training sees exactly the ids generation will see.
"""

from __future__ import annotations

from .templates import Template, render, with_system

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The template does not render a conversation as a growing prefix, so masks cannot be derived."""


def trained_spans(tokenizer, template: Template, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return (text, character spans of every assistant turn)."""
    text = render(tokenizer, template, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, template, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, template, messages[: i + 1])
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise TemplateError(
                f"template {template.name!r} does not render turn {i} as a prefix of the conversation; "
                "loss masks cannot be derived from it"
            )
        # Whitespace after the end-of-turn token is formatting, not something the model must say.
        spans.append((len(prompt), len(upto.rstrip())))
    return text, spans


def encode(conversation: dict, tokenizer, template: Template, cutoff_len: int) -> dict | None:
    """Token ids and labels for one conversation; None when nothing trainable survives the cutoff."""
    messages = with_system(conversation, template)
    text, spans = trained_spans(tokenizer, template, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:cutoff_len]
    labels = [
        tok if any(lo <= start < hi for lo, hi in spans) else IGNORE_INDEX
        for tok, (start, _end) in zip(ids, enc["offset_mapping"], strict=False)
    ]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": ids, "labels": labels}
