"""Token ids and labels: the one place that decides which tokens carry loss.

The trained character spans are found by rendering growing prefixes of the conversation with
the same template: the text an assistant turn adds after the generation prompt (its content and
end-of-turn token, not the whitespace after it) is trained, everything else is not. The full text
is then tokenized once, so training sees exactly the ids generation will see, and a token is
trained when it overlaps a span: the rule `apply_chat_template(return_assistant_tokens_mask=True)`
applies to `{% generation %}` blocks, so both agree token for token on the built-in templates.

Per-turn loss weights (`loss_weight` on assistant messages, see formats.py) become a per-token
`label_weights` list beside the labels: each token carries the weight of the assistant turn it
belongs to (1 elsewhere); a weight-0 turn is not labelled at all. A row with no weighted turn gets
an empty list, read as "every weight is 1", so unweighted data costs nothing and trains exactly as before.

`encode` runs inside `datasets.map` (possibly in worker processes), so it is a module-level
function that reports row-level problems as a status instead of raising.
"""

from __future__ import annotations

from jinja2 import TemplateError as JinjaTemplateError

from ..errors import ConfigError, TemplateError
from .templates import THINKING, Template, render, with_system

IGNORE_INDEX = -100
TRUNCATION = ("keep_response", "drop", "error")
EMPTY_EXCHANGE = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]

# Errors a template may raise while rendering one row (a refused role, a missing field, ...).
_RENDER_ERRORS = (JinjaTemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)


def trained_spans(
    tokenizer, template: Template, messages: list[dict], tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return (text, character span of every assistant turn)."""
    text = render(tokenizer, template, messages, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, template, messages[:i], tools, add_generation_prompt=True)
        # The prefix through the last message is the whole conversation, already rendered.
        upto = text if i + 1 == len(messages) else render(tokenizer, template, messages[: i + 1], tools)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise TemplateError(
                f"template {template.name!r} does not render turn {i} as a prefix of the conversation; "
                "loss masks cannot be derived from it"
            )
        # Whitespace after the end-of-turn token is formatting, not something the model must say.
        spans.append((len(prompt), len(upto.rstrip())))
    return text, spans


def overlap_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels that keep every token overlapping a span (HF's generation-mask rule; spans sorted)."""
    labels, k = [], 0
    for token, (start, end) in zip(ids, offsets, strict=True):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        labels.append(token if k < len(spans) and end > spans[k][0] else IGNORE_INDEX)
    return labels


def span_values(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], values: list, default) -> list:
    """Each token's value: that of the span it overlaps (the `overlap_labels` rule), else `default`."""
    out, k = [], 0
    for start, end in offsets:
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        out.append(values[k] if k < len(spans) and end > spans[k][0] else default)
    return out


def _length(tokenizer, template: Template, messages: list[dict], tools: list[dict] | None) -> int:
    """Number of tokens the rendered conversation takes."""
    text = render(tokenizer, template, messages, tools)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def template_overhead(tokenizer, template: Template) -> int:
    """Tokens an exchange with empty user and assistant turns takes: markup plus the default system prompt."""
    return _length(tokenizer, template, with_system({"messages": EMPTY_EXCHANGE}, template), None)


def _labelled(tokenizer, template, messages, tools, train_on_prompt: bool, mask_history: bool) -> dict:
    """Ids, labels and label weights of the full rendering under the masking options."""
    text, spans = trained_spans(tokenizer, template, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    weights = [float(m.get("loss_weight", 1.0)) for m in messages if m["role"] == "assistant"]
    token_weights = span_values(offsets, spans, weights, 1.0) if any(w != 1 for w in weights) else []
    if train_on_prompt:
        per_token = token_weights or [1.0] * len(ids)
        labels = [IGNORE_INDEX if w == 0 else t for t, w in zip(ids, per_token, strict=True)]
        return {"input_ids": ids, "labels": labels, "label_weights": token_weights}
    turns = list(zip(spans, weights, strict=True))
    trained = [span for span, w in (turns[-1:] if mask_history else turns) if w > 0]
    return {"input_ids": ids, "labels": overlap_labels(ids, offsets, trained), "label_weights": token_weights}


def _with_content(messages: list[dict], at: int, content: str) -> list[dict]:
    """A copy of `messages` with message `at` holding `content`."""
    return [*messages[:at], {**messages[at], "content": content}, *messages[at + 1 :]]


def _shorten_last_user(tokenizer, template, messages, tools, cutoff_len: int) -> list[dict] | None:
    """Cut the last user message's content at a token boundary until the rendering fits, or None."""
    at = max(i for i, m in enumerate(messages) if m["role"] == "user")
    content = messages[at]["content"]
    offsets = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep, shorter = len(offsets), messages
    excess = _length(tokenizer, template, messages, tools) - cutoff_len
    while excess > 0:
        if keep == 0:
            return None
        # Merges across the cut can shift the count by a token or two; step again by what is still over.
        keep = max(0, keep - excess)
        shorter = _with_content(messages, at, content[: offsets[keep][0]] if keep else "")
        excess = _length(tokenizer, template, shorter, tools) - cutoff_len
    return shorter


def _keep_response(tokenizer, template, messages, tools, cutoff_len: int) -> list[dict] | None:
    """Drop the oldest exchanges after the system prompt, then shorten the last user message."""
    head = 1 if messages and messages[0]["role"] == "system" else 0
    exchanges = [i for i in range(head, len(messages)) if messages[i]["role"] == "user"]
    if not exchanges:
        return None
    for start in exchanges[1:]:
        fewer = [*messages[:head], *messages[start:]]
        if _length(tokenizer, template, fewer, tools) <= cutoff_len:
            return fewer
    last = [*messages[:head], *messages[exchanges[-1] :]]
    return _shorten_last_user(tokenizer, template, last, tools, cutoff_len)


def _uses_tools(conversation: dict) -> bool:
    """Whether the conversation carries tool schemas, tool calls or tool results."""
    return bool(conversation.get("tools")) or any(
        m.get("tool_calls") or m["role"] == "tool" for m in conversation["messages"]
    )


def reasoning_key(conversation: dict) -> str | None:
    """Where the conversation's first reasoning trace sits (`messages[i].reasoning_content`), or None."""
    for i, message in enumerate(conversation["messages"]):
        if message.get("reasoning_content") is not None:
            return f"messages[{i}].reasoning_content"
    return None


def cannot_render(conversation: dict, template: Template) -> str | None:
    """Why the template cannot render the conversation's tools or reasoning, as an `invalid` status."""
    if not template.supports_tools and _uses_tools(conversation):
        return f"invalid: template {template.name!r} cannot render tools or tool calls"
    if not template.supports_reasoning and (key := reasoning_key(conversation)):
        # Rendering the answer without its reasoning would train on text the row never held.
        return (
            f"invalid: template {template.name!r} cannot render reasoning ({key}); "
            f"use data.template={' or '.join(THINKING)}, or data.reasoning=drop to train on the answers alone"
        )
    return None


def _rejected(status: str, full_length: int = 0) -> dict:
    """A row that yields no example, with the reason (and its untruncated length, when it was rendered)."""
    return {"input_ids": [], "labels": [], "label_weights": [], "status": status, "full_length": full_length}


def encode(
    conversation: dict,
    tokenizer,
    template: Template,
    cutoff_len: int,
    *,
    truncation: str = "keep_response",
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> dict:
    """Token ids, labels, label weights and a status for one conversation; never raises for the row.

    "ok" and "truncated" carry the example; "too_long", "no_trained_token" and "invalid: <reason>"
    come with empty lists. `full_length` is the untruncated rendering's token count (0 when the row
    cannot be rendered). Only a bad `truncation` value (a config error) raises.
    """
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation={truncation!r}: unknown; available: {', '.join(TRUNCATION)}")
    full_length = 0
    try:
        if why := cannot_render(conversation, template):
            return _rejected(why)
        tools = conversation.get("tools") or None
        messages = with_system(conversation, template)
        example = _labelled(tokenizer, template, messages, tools, train_on_prompt, mask_history)
        status, full_length = "ok", len(example["input_ids"])
        if full_length > cutoff_len:
            fitted = None
            if truncation == "keep_response":
                fitted = _keep_response(tokenizer, template, messages, tools, cutoff_len)
            if fitted is None:
                return _rejected("too_long", full_length)
            example = _labelled(tokenizer, template, fitted, tools, train_on_prompt, mask_history)
            status = "truncated"
    except _RENDER_ERRORS as err:
        return _rejected(f"invalid: {type(err).__name__}: {err}", full_length)
    # The first label is never a target once labels are shifted against the logits.
    if all(label == IGNORE_INDEX for label in example["labels"][1:]):
        return _rejected("no_trained_token", full_length)
    return {**example, "status": status, "full_length": full_length}


def check_cutoff(cutoff_len: int, tokenizer, template: Template) -> None:
    """A cutoff that the template's markup alone fills would leave no room for any text."""
    overhead = template_overhead(tokenizer, template)
    if cutoff_len <= overhead:
        raise ConfigError(
            f"Invalid config:\n  data.cutoff_len={cutoff_len}: must exceed {overhead} tokens, "
            f"which the {template.name} template's markup and default system prompt take with no text at all"
        )
