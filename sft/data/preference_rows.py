"""Normalise preference rows (pairs for DPO-style training, labelled feedback for KTO) to canonical shapes.

Canonical pair: {"system", "tools", "messages": [prompt turns ending on a user turn],
"chosen": {"role": "assistant", "content": ...}, "rejected": {...}, "category"}.
Canonical feedback: the canonical conversation plus "label": bool (True: a desirable response).

Each side is checked by normalising prompt + response as an ordinary conversation (`to_conversation`),
so roles, tags, tool calls and system turns follow exactly the rules of SFT rows. Accepted forms:
LLaMA-Factory `ranking: true` rows (alpaca: instruction/input/chosen/rejected strings; sharegpt:
`conversations` prompt turns with single chosen/rejected turn objects), OpenAI/TRL `messages` or
`prompt` lists with chosen/rejected as a message, a list holding one message, or a string; TRL's implicit
prompt (chosen/rejected as whole conversations sharing all but their last turn, as UltraFeedback writes them);
and LLaMA-Factory `kto_tag` rows (a conversation with a boolean label column).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import MalformedRow
from .formats import COLUMNS, TAGS, as_row, detect_format, to_conversation

# Accepted spellings of a KTO label (1 and 0 are the keys True and False); anything else is malformed.
_LABELS = {True: True, False: False, "true": True, "false": False}


def _pair_format(row: Mapping, fmt: str, columns: Mapping, tags: Mapping | None) -> tuple[str, dict]:
    """The row's format and column mapping; TRL's `prompt` (a list of turns or a string) is understood too."""
    columns = dict(columns)
    if fmt != "auto":
        return fmt, columns
    if not columns.get("messages") and "messages" not in row and "conversations" not in row:
        prompt = row.get("prompt")
        if isinstance(prompt, list):  # TRL conversational: the prompt turns under `prompt`
            columns["messages"] = "prompt"
        elif isinstance(prompt, str) and "instruction" not in row:  # TRL standard: a prompt string
            return "alpaca", {"prompt": "prompt", **columns}
        sides = row.get(columns.get("chosen") or "chosen")
        if prompt is None and isinstance(sides, list) and len(sides) > 1 and isinstance(sides[0], Mapping):
            return detect_format({"messages": sides}, None, tags), columns  # TRL's implicit prompt
    probe = {**row, "output": ""} if "output" not in row else row  # a pair row has no response column
    return detect_format(probe, columns, tags), columns


def _response(value: object, key: str, fmt: str, tags: Mapping | None) -> object:
    """One side of a pair as the format's assistant turn (or alpaca's response string)."""
    if value is None:
        raise MalformedRow(f"missing {key!r}: a preference pair needs both a chosen and a rejected response")
    if isinstance(value, list):
        if len(value) != 1:
            raise MalformedRow(f"{key!r} must hold one assistant turn, got {len(value)}")
        value = value[0]
    resolved = {**TAGS, **(tags or {})}
    content_key = "content" if fmt == "messages" else resolved["content_tag"]
    text = value if isinstance(value, str) else value.get(content_key) if isinstance(value, Mapping) else None
    if isinstance(text, str) and not text.strip():
        raise MalformedRow(f"{key!r} is an empty response")
    if fmt == "alpaca":
        return value
    # A side is the assistant's answer by definition: a bare string or a turn without a role is one.
    role_key, assistant = (
        ("role", "assistant") if fmt == "messages" else (resolved["role_tag"], resolved["assistant_tag"])
    )
    if isinstance(value, str):
        return {role_key: assistant, content_key: value}
    if isinstance(value, Mapping) and role_key not in value:
        return {role_key: assistant, **value}
    return value


def _implicit_prompt(row: Mapping, fmt: str, cols: Mapping) -> Mapping:
    """TRL's implicit-prompt pairs (HuggingFaceH4/ultrafeedback_binarized): `chosen` and `rejected` are whole
    conversations that share every turn but the last; the shared turns become the prompt.

    Only when the row's prompt column is absent or repeats them (UltraFeedback's `messages` holds the chosen
    conversation): a row with a prompt of its own keeps it, and its multi-turn sides stay malformed.
    """
    chosen, rejected = row.get(cols["chosen"]), row.get(cols["rejected"])
    if fmt == "alpaca" or not all(isinstance(s, list) and len(s) > 1 for s in (chosen, rejected)):
        return row
    prompt = row.get(cols["messages"])
    if prompt is not None and prompt not in (chosen, chosen[:-1]):
        return row
    if chosen[:-1] != rejected[:-1]:
        raise MalformedRow(
            f"{cols['chosen']!r} and {cols['rejected']!r} are whole conversations that differ before their "
            "last turn; a preference pair needs one prompt"
        )
    return {**row, cols["messages"]: chosen[:-1], cols["chosen"]: chosen[-1], cols["rejected"]: rejected[-1]}


def _with_response(row: Mapping, fmt: str, cols: Mapping, turn: object) -> dict:
    """The row as an ordinary conversation row that ends on `turn`."""
    if fmt == "alpaca":
        return {**row, cols["response"]: turn}
    turns = row.get(cols["messages"])
    if not isinstance(turns, list):
        return dict(row)  # to_conversation reports the missing or malformed prompt
    return {**row, cols["messages"]: [*turns, turn]}


def to_pair(
    row: object, fmt: str = "auto", columns: Mapping | None = None, tags: Mapping | None = None
) -> dict:
    """Normalise one preference row to the canonical pair, or raise MalformedRow saying why."""
    row = as_row(row)
    fmt, columns = _pair_format(row, fmt, columns or {}, tags)
    cols = {**COLUMNS[fmt], **{k: v for k, v in columns.items() if v}}
    row = _implicit_prompt(row, fmt, cols)
    sides = {}
    for side in ("chosen", "rejected"):
        turn = _response(row.get(cols[side]), cols[side], fmt, tags)
        rest = {k: v for k, v in columns.items() if k not in ("chosen", "rejected")}
        sides[side] = to_conversation(_with_response(row, fmt, cols, turn), fmt, rest, tags)
    chosen, rejected = sides["chosen"], sides["rejected"]
    _no_loss_weights([*chosen["messages"], rejected["messages"][-1]])
    prompt = chosen["messages"][:-1]
    if not prompt or prompt[-1]["role"] != "user":
        got = prompt[-1]["role"] if prompt else "nothing"
        raise MalformedRow(f"the prompt must end on a user turn, got {got}")
    if chosen["messages"][-1] == rejected["messages"][-1]:
        raise MalformedRow(f"{cols['chosen']!r} and {cols['rejected']!r} are identical")
    return {
        "system": chosen["system"],
        "tools": chosen["tools"],
        "messages": prompt,
        "chosen": chosen["messages"][-1],
        "rejected": rejected["messages"][-1],
        "category": chosen["category"],
    }


def parse_label(value: object, key: str) -> bool:
    """A KTO label from true/false, "true"/"false" (any case) or 1/0."""
    lookup = value.strip().lower() if isinstance(value, str) else value
    if value is None:
        raise MalformedRow(f"missing {key!r}: a feedback row needs a true/false label")
    try:
        return _LABELS[lookup]
    except (KeyError, TypeError):
        raise MalformedRow(f"{key!r} must be true or false (or 1/0), got {value!r}") from None


def to_feedback(
    row: object, fmt: str = "auto", columns: Mapping | None = None, tags: Mapping | None = None
) -> dict:
    """Normalise one KTO row to a canonical conversation with its boolean `label`."""
    row = as_row(row)
    key = (columns or {}).get("kto_tag") or COLUMNS["alpaca"]["kto_tag"]
    label = parse_label(row.get(key), key)
    conversation = to_conversation(row, fmt, columns, tags)
    _no_loss_weights(conversation["messages"])
    return {**conversation, "label": label}


def _no_loss_weights(messages: list[dict]) -> None:
    """Preference losses score whole responses: a per-turn loss weight below 1 has no meaning there."""
    if any("loss_weight" in m for m in messages):
        raise MalformedRow("a turn with a loss weight below 1: per-turn loss weights apply to SFT rows only")
