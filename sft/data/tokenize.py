"""Token ids and labels: the one place that decides which tokens carry loss.

The trained character spans are found by rendering growing prefixes of the conversation with
the same template: the text an assistant turn adds after the generation prompt (its content and
end-of-turn token, not the whitespace after it) is trained, everything else is not. The full text
is then tokenized once, so training sees exactly the ids generation will see, and a token is
trained when it overlaps a span: the rule `apply_chat_template(return_assistant_tokens_mask=True)`
applies to `{% generation %}` blocks, so both agree token for token on the built-in templates.

`encode` runs inside `datasets.map` (possibly in worker processes), so it is a module-level
function that reports row-level problems as a status instead of raising.
"""

from __future__ import annotations

from jinja2 import TemplateError as JinjaTemplateError

from ..errors import ConfigError, TemplateError
from .templates import Template, render, with_system

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


def _length(tokenizer, template: Template, messages: list[dict], tools: list[dict] | None) -> int:
    """Number of tokens the rendered conversation takes."""
    text = render(tokenizer, template, messages, tools)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def template_overhead(tokenizer, template: Template) -> int:
    """Tokens an exchange with empty user and assistant turns takes: markup plus the default system prompt."""
    return _length(tokenizer, template, with_system({"messages": EMPTY_EXCHANGE}, template), None)


def _labelled(tokenizer, template, messages, tools, train_on_prompt: bool, mask_history: bool) -> dict:
    """Ids and labels of the full rendering under the masking options."""
    text, spans = trained_spans(tokenizer, template, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if train_on_prompt:
        return {"input_ids": ids, "labels": list(ids)}
    trained = spans[-1:] if mask_history else spans
    return {"input_ids": ids, "labels": overlap_labels(ids, enc["offset_mapping"], trained)}


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


def _rejected(status: str) -> dict:
    """A row that yields no example, with the reason."""
    return {"input_ids": [], "labels": [], "status": status}


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
    """Token ids, labels and a status for one conversation; never raises for a problem with the row.

    "ok" and "truncated" carry the example; "too_long", "no_trained_token" and "invalid: <reason>"
    come with empty ids and labels. Only a bad `truncation` value (a config error) raises.
    """
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation={truncation!r}: unknown; available: {', '.join(TRUNCATION)}")
    try:
        if not template.supports_tools and _uses_tools(conversation):
            return _rejected(f"invalid: template {template.name!r} cannot render tools or tool calls")
        tools = conversation.get("tools") or None
        messages = with_system(conversation, template)
        example = _labelled(tokenizer, template, messages, tools, train_on_prompt, mask_history)
        status = "ok"
        if len(example["input_ids"]) > cutoff_len:
            fitted = None
            if truncation == "keep_response":
                fitted = _keep_response(tokenizer, template, messages, tools, cutoff_len)
            if fitted is None:
                return _rejected("too_long")
            example = _labelled(tokenizer, template, fitted, tools, train_on_prompt, mask_history)
            status = "truncated"
    except _RENDER_ERRORS as err:
        return _rejected(f"invalid: {type(err).__name__}: {err}")
    # The first label is never a target once labels are shifted against the logits.
    if all(label == IGNORE_INDEX for label in example["labels"][1:]):
        return _rejected("no_trained_token")
    return {**example, "status": status}


def check_cutoff(cutoff_len: int, tokenizer, template: Template) -> None:
    """A cutoff that the template's markup alone fills would leave no room for any text."""
    overhead = template_overhead(tokenizer, template)
    if cutoff_len <= overhead:
        raise ConfigError(
            f"Invalid config:\n  data.cutoff_len={cutoff_len}: must exceed {overhead} tokens, "
            f"which the {template.name} template's markup and default system prompt take with no text at all"
        )
