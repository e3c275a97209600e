"""Read data files and normalise Alpaca, ShareGPT and OpenAI-messages rows to one conversation shape.

Canonical conversation: {"system": str | None, "messages": [{"role", "content"}, ...]} where
roles are user / assistant / tool and the last message is an assistant turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


class MalformedRow(ValueError):
    """A data row that cannot be turned into a conversation; the message says why."""


def read_rows(path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield (location "file:line", row) for every row of a .json array or .jsonl file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"{path}:{lineno}", _loads(line, f"{path}:{lineno}")
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1 if text.lstrip().startswith("[") else None
    if pos is None:
        raise MalformedRow(f"{path}: expected a JSON array of rows (or use a .jsonl file)")
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        location = f"{path}:{text.count(chr(10), 0, pos) + 1}"
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise MalformedRow(
                f"{location}: invalid JSON ({err.msg}); the rest of the file cannot be read"
            ) from None
        yield location, row


def _loads(line: str, location: str) -> object:
    """Parse one JSON line, keeping a bad line as a marker so it is reported, not fatal."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return MalformedRow(f"invalid JSON ({err.msg})")


def detect_format(row: dict) -> str:
    """Guess a row's format from its keys."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    raise MalformedRow(f"cannot tell the format from keys {sorted(row)}; set data.format")


def _text(value: object, what: str) -> str:
    """A non-empty string, or a MalformedRow naming the field."""
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text", "") for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        value = "".join(parts)
    if not isinstance(value, str) or not value.strip():
        raise MalformedRow(f"{what} is missing or empty")
    return value


def _from_alpaca(row: dict) -> dict:
    messages = []
    for turn in row.get("history") or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise MalformedRow("history must be a list of [instruction, output] pairs")
        messages += [
            {"role": "user", "content": _text(turn[0], "history instruction")},
            {"role": "assistant", "content": _text(turn[1], "history output")},
        ]
    prompt = _text(row.get("instruction"), "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise MalformedRow("input must be a string")
    messages.append({"role": "user", "content": f"{prompt}\n{extra}" if extra.strip() else prompt})
    messages.append({"role": "assistant", "content": _text(row.get("output"), "output")})
    return {"system": row.get("system") or None, "messages": messages}


def _from_turns(turns: object, role_key: str, content_key: str, roles: dict[str, str]) -> dict:
    if not isinstance(turns, list) or not turns:
        raise MalformedRow("conversation must be a non-empty list of turns")
    system, messages = None, []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(role_key) not in roles:
            raise MalformedRow(f"turn {i}: role must be one of {sorted(roles)}")
        role = roles[turn[role_key]]
        content = _text(turn.get(content_key), f"turn {i} {content_key}")
        if role == "system":
            if i:
                raise MalformedRow(f"turn {i}: a system message may only come first")
            system = content
        else:
            messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "assistant":
        raise MalformedRow("the last turn must be an assistant turn")
    return {"system": system, "messages": messages}


def to_conversation(row: object, fmt: str = "auto") -> dict:
    """Normalise one row to the canonical conversation, or raise MalformedRow."""
    if isinstance(row, MalformedRow):
        raise row
    if not isinstance(row, dict):
        raise MalformedRow(f"expected an object, got {type(row).__name__}")
    fmt = detect_format(row) if fmt == "auto" else fmt
    if fmt == "alpaca":
        return _from_alpaca(row)
    if fmt == "sharegpt":
        conv = _from_turns(row.get("conversations"), "from", "value", SHAREGPT_ROLES)
        conv["system"] = row.get("system") or conv["system"]
        return conv
    if fmt == "messages":
        roles = {r: r for r in ("system", "user", "assistant", "tool")}
        conv = _from_turns(row.get("messages"), "role", "content", roles)
        conv["system"] = row.get("system") or conv["system"]
        return conv
    raise MalformedRow(f"unknown format {fmt!r}")
