"""Token ids and labels of preference records: both sides of a pair, a KTO completion and its KL row.

A side is the prompt rendered with the template's generation prompt, followed by the response as the
template renders it (content, end-of-turn token, trailing markup). The two pieces are tokenized apart
and joined, so both sides of a pair share the exact same prompt token prefix (a merge can never cross
from the prompt into one side's response and not the other's), and a KL row can join one row's prompt
to another row's completion token for token. Labels cover the final assistant turn only, found as in
SFT (`trained_spans`); train_on_prompt and mask_history do not apply.

Like `encode`, these never raise for a problem with a row: they return a status.
"""

from __future__ import annotations

from .templates import Template, with_system
from .tokenize import (
    _RENDER_ERRORS,
    IGNORE_INDEX,
    TRUNCATION,
    _keep_response,
    cannot_render,
    overlap_labels,
    trained_spans,
)

SIDES = ("chosen", "rejected")


def encode_side(tokenizer, template: Template, prompt: list[dict], response: dict, tools) -> dict:
    """{"input_ids", "labels", "prompt_len"} of prompt + response, labels on the response only."""
    text, spans = trained_spans(tokenizer, template, [*prompt, response], tools)
    start, end = spans[-1]
    prompt_ids = tokenizer(text[:start], add_special_tokens=False)["input_ids"]
    rest = tokenizer(text[start:], add_special_tokens=False, return_offsets_mapping=True)
    labels = overlap_labels(rest["input_ids"], rest["offset_mapping"], [(0, end - start)])
    return {
        "input_ids": [*prompt_ids, *rest["input_ids"]],
        "labels": [IGNORE_INDEX] * len(prompt_ids) + labels,
        "prompt_len": len(prompt_ids),
    }


def _untrained(labels: list[int]) -> bool:
    # The first label is never a target once labels are shifted against the logits.
    return all(label == IGNORE_INDEX for label in labels[1:])


def _fit_prompt(tokenizer, template, prompt, response, tools, cutoff_len, truncation) -> list[dict] | None:
    """The prompt shortened (oldest exchanges, then the last user message) so prompt + response fits."""
    if truncation != "keep_response":
        return None
    fitted = _keep_response(tokenizer, template, [*prompt, response], tools, cutoff_len)
    return None if fitted is None else fitted[:-1]


def _check(truncation: str) -> None:
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation={truncation!r}: unknown; available: {', '.join(TRUNCATION)}")


def _unrenderable(record: dict, template: Template, responses: list[dict]) -> str | None:
    """Why the template cannot render the record: tools or reasoning the template refuses."""
    return cannot_render({**record, "messages": [*record["messages"], *responses]}, template)


def encode_pair(
    record: dict, tokenizer, template: Template, cutoff_len: int, truncation: str = "keep_response"
) -> dict:
    """chosen_/rejected_ input_ids and labels plus a status for one canonical pair; never raises for the row.

    Both sides are cut together: when either is over cutoff_len, keep_response shortens the shared
    prompt until the longer side fits and re-encodes both with it; drop and error reject the pair.
    `full_length` is the longer side's untruncated token count (0 when the pair cannot be rendered).
    """
    _check(truncation)
    empty = {f"{side}_{key}": [] for side in SIDES for key in ("input_ids", "labels")}
    if why := _unrenderable(record, template, [record["chosen"], record["rejected"]]):
        return {**empty, "status": why, "full_length": 0}
    tools = record.get("tools") or None
    prompt = with_system(record, template)
    full = 0
    try:
        sides = {s: encode_side(tokenizer, template, prompt, record[s], tools) for s in SIDES}
        status = "ok"
        longest = max(SIDES, key=lambda s: len(sides[s]["input_ids"]))
        full = len(sides[longest]["input_ids"])
        if full > cutoff_len:
            prompt = _fit_prompt(tokenizer, template, prompt, record[longest], tools, cutoff_len, truncation)
            if prompt is None:
                return {**empty, "status": "too_long", "full_length": full}
            sides = {s: encode_side(tokenizer, template, prompt, record[s], tools) for s in SIDES}
            if any(len(sides[s]["input_ids"]) > cutoff_len for s in SIDES):
                return {**empty, "status": "too_long", "full_length": full}
            status = "truncated"
    except _RENDER_ERRORS as err:
        return {**empty, "status": f"invalid: {type(err).__name__}: {err}", "full_length": full}
    if any(_untrained(sides[s]["labels"]) for s in SIDES):
        return {**empty, "status": "no_trained_token", "full_length": full}
    out = {f"{s}_{key}": sides[s][key] for s in SIDES for key in ("input_ids", "labels")}
    return {**out, "status": status, "full_length": full}


def encode_feedback(
    record: dict, tokenizer, template: Template, cutoff_len: int, truncation: str = "keep_response"
) -> dict:
    """input_ids, labels (final assistant turn), prompt_len, a status and the untruncated full_length."""
    _check(truncation)
    empty = {"input_ids": [], "labels": [], "prompt_len": 0}
    if why := _unrenderable(record, template, []):
        return {**empty, "status": why, "full_length": 0}
    tools = record.get("tools") or None
    messages = with_system(record, template)
    prompt, response = messages[:-1], messages[-1]
    full = 0
    try:
        example, status = encode_side(tokenizer, template, prompt, response, tools), "ok"
        full = len(example["input_ids"])
        if full > cutoff_len:
            prompt = _fit_prompt(tokenizer, template, prompt, response, tools, cutoff_len, truncation)
            if prompt is None:
                return {**empty, "status": "too_long", "full_length": full}
            example, status = encode_side(tokenizer, template, prompt, response, tools), "truncated"
            if len(example["input_ids"]) > cutoff_len:
                return {**empty, "status": "too_long", "full_length": full}
    except _RENDER_ERRORS as err:
        return {**empty, "status": f"invalid: {type(err).__name__}: {err}", "full_length": full}
    if _untrained(example["labels"]):
        return {**empty, "status": "no_trained_token", "full_length": full}
    return {**example, "status": status, "full_length": full}


def kl_rows(
    input_ids: list[list[int]], labels: list[list[int]], prompt_lens: list[int], cutoff_len: int
) -> tuple[list[list[int]], list[list[int]]]:
    """KTO's mismatched rows: row i's prompt with the completion of row (i + 1) mod n, cut at cutoff_len.

    TRL estimates KTO's KL term from such pairs; the shift by one is deterministic and, taken after
    filtering, gives every kept row a partner (a dataset of one row pairs with itself).
    """
    n = len(input_ids)
    kl_ids, kl_labels = [], []
    for i in range(n):
        j = (i + 1) % n
        p, q = prompt_lens[i], prompt_lens[j]
        kl_ids.append([*input_ids[i][:p], *input_ids[j][q:]][:cutoff_len])
        kl_labels.append([*[IGNORE_INDEX] * p, *labels[j][q:]][:cutoff_len])
    return kl_ids, kl_labels
