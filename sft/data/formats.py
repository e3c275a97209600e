"""Read data files and normalise Alpaca, ShareGPT and OpenAI-messages rows to one conversation shape.

Canonical conversation (docs: the data contract): {"system": str | None, "tools": list | None,
"messages": [...], "category": str | None}. Messages hold user / assistant / tool turns, start on a
user turn and end on an assistant turn; a function call is an assistant turn with HF-style
`tool_calls`. Column and role-tag names follow LLaMA-Factory's dataset_info.json (`columns`, `tags`).

Two optional keys ride on assistant messages, present only when the row gives them:
`reasoning_content` (the reasoning trace, the key DeepSeek's API and Qwen3's chat template use) and
`loss_weight` (a weight in [0, 1) for the turn's tokens; 1, the default, is never stored).
Turn content may be a string or a list of parts; only text (and, on assistant turns, reasoning and
tool-call) parts are accepted: this framework trains text-only models, so a row with an image,
audio, video or file part is refused with a reason, never trained on with the part silently left out.
"""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataFileError, MalformedRow
from .hub import load_split

FORMATS = ("auto", "alpaca", "sharegpt", "messages")
# .txt holds raw text (one document per non-empty line) and is read only for continued pre-training.
SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt")

# Preference columns (LLaMA-Factory's names): the two sides of a ranking pair, a KTO row's label.
PREFERENCE_COLUMNS = {"chosen": "chosen", "rejected": "rejected", "kto_tag": "label"}
# LLaMA-Factory column names, per format, with the row keys they default to.
COLUMNS = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
        "tools": "tools",
        **PREFERENCE_COLUMNS,
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools", **PREFERENCE_COLUMNS},
    "messages": {"messages": "messages", "system": "system", "tools": "tools", **PREFERENCE_COLUMNS},
}
REQUIRED_COLUMNS = {"prompt", "response", "messages"}
# LLaMA-Factory ShareGPT tags with their defaults.
TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
ROLE_TAGS = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}
# ShareGPT files in the wild also use OpenAI role names; accepted unless a configured tag claims them.
SHAREGPT_ALIASES = {"user": "user", "assistant": "assistant", "tool": "tool"}
# Keys that mark a lone JSON object as a row itself rather than a wrapper around a list of rows.
ROW_KEYS = ("instruction", "output", "conversations", "messages")
MESSAGES_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}

# Per-turn loss weights: `loss_weight` (LLaMA-Factory's messages format, ms-swift), `weight` (OpenAI
# fine-tuning files and axolotl; ShareGPT rows use it as 0/1).
WEIGHT_KEYS = ("loss_weight", "weight")
# A reasoning trace beside the answer: `reasoning_content` (DeepSeek's API, Qwen3), `reasoning` (vLLM,
# OpenRouter), `thinking` (Anthropic-style exports).
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
# Keys a content part may keep its text under: OpenAI's `text`, LLaMA-Factory's and others' `value`.
TEXT_KEYS = ("text", "value")
# Content-part types that hold a reasoning trace, and the keys their text may sit under.
REASONING_PARTS = ("reasoning", "thinking")
REASONING_PART_KEYS = ("text", "value", "reasoning", "thinking")
# Non-text part types of OpenAI, Anthropic, LLaMA-Factory and TRL/HF rows, and LLaMA-Factory's media columns.
MEDIA_PARTS = (
    "image",
    "image_url",
    "input_image",
    "image_file",
    "audio",
    "audio_url",
    "input_audio",
    "video",
    "video_url",
    "file",
    "input_file",
    "document",
)
MEDIA_COLUMNS = ("images", "videos", "audios")
TEXT_ONLY = "this framework trains text-only models; drop the row or its non-text parts"
# A reasoning trace written into the answer text itself (DeepSeek-R1 and Qwen3 outputs).
THINK = re.compile(r"\s*<think>(.*?)</think>\s*", re.DOTALL)


# ---------------------------------------------------------------------------------------------- readers


def source_files(path: str | Path) -> list[Path]:
    """The data files a path names: the file itself, a directory's data files, or a glob's matches."""
    given = str(path)
    p = Path(given).expanduser()
    if p.is_file():
        if p.suffix.lower() not in SUFFIXES:
            raise _unsupported(p)
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if _is_data_file(f))
        if not files:
            raise FileNotFoundError(f"{p}: directory holds no {'/'.join(SUFFIXES)} files")
        return files
    if any(c in given for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if _is_data_file(Path(f)))
        if not files:
            raise FileNotFoundError(f"{given}: pattern matches no {'/'.join(SUFFIXES)} files")
        return files
    raise FileNotFoundError(f"{given}: no such file or directory")


def _unsupported(path: Path) -> DataFileError:
    return DataFileError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")


def _is_data_file(path: Path) -> bool:
    # dataset_info.json is LLaMA-Factory's registry, kept beside the data but holding no rows.
    return (
        path.is_file()
        and path.suffix.lower() in SUFFIXES
        and not path.name.startswith(".")
        and path.name != "dataset_info.json"
    )


def read_source(path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield (location, row) for every row of a file, directory or glob; a missing path fails at once."""
    files = source_files(path)  # resolved now, so a bad path fails before the first row is asked for
    return (item for file in files for item in read_file(file))


def read_file(path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield (location, row) for every row of one .json, .jsonl, .parquet, .csv or .txt file."""
    path = Path(path)
    readers = {
        ".json": _read_json,
        ".jsonl": _read_jsonl,
        ".parquet": _read_parquet,
        ".csv": _read_csv,
        ".txt": _read_txt,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise _unsupported(path)
    return reader(path)


def read_hub(
    name: str, subset: str | None = None, split: str = "train", entry: str | None = None
) -> Iterator[tuple[str, object]]:
    """Yield ("hub:name[:subset][split]#index", row) for every row of a Hugging Face hub dataset.

    A hub that cannot be reached (or an id it does not serve) raises a HubError naming the dataset entry
    (`entry`, as data.datasets names it) and how to point it at a local copy.
    """
    where = f"hub:{name}{f':{subset}' if subset else ''}[{split}]"
    for index, row in enumerate(load_split(name, subset, split, entry)):
        yield f"{where}#{index}", row


def _read_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    return _json_lines(path, path.read_text(encoding="utf-8-sig"))


def _json_lines(path: Path, text: str) -> Iterator[tuple[str, object]]:
    # split("\n"), not splitlines(): U+2028 and friends may sit unescaped inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield f"{path}:{lineno}", parse_json_line(line)


def parse_json_line(line: str) -> object:
    """Parse one JSON line, keeping a bad line as a marker so it is reported, not fatal."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return MalformedRow(f"invalid JSON ({err.msg} at column {err.colno})")


def _read_json(path: Path) -> Iterator[tuple[str, object]]:
    text = path.read_text(encoding="utf-8-sig")
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return
    if text[start] == "[":
        yield from _json_array(path, text, start + 1)
    elif text[start] == "{" and not isinstance(parse_json_line(text[start:].split("\n", 1)[0]), MalformedRow):
        yield from _json_lines(path, text)  # JSON lines in a .json file, as Hugging Face datasets reads
    elif text[start] == "{":
        yield from _json_object(path, text)
    else:
        raise DataFileError(f"{path}: expected a JSON array of rows, JSON lines, or an object holding a list")


def _json_array(path: Path, text: str, pos: int) -> Iterator[tuple[str, object]]:
    """Stream the rows of a JSON array, tracking line numbers incrementally."""
    decoder, line, counted = json.JSONDecoder(), 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line, counted = line + text.count("\n", counted, pos), pos
        if pos >= len(text):
            raise DataFileError(f"{path}:{line}: the JSON array is not closed (is the file truncated?)")
        if text[pos] == "]":
            return
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataFileError(
                f"{path}:{err.lineno}: invalid JSON ({err.msg}); the rest of the file cannot be read"
            ) from None
        yield f"{path}:{line}", row


def _json_object(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """A pretty-printed object: the rows of its only list of objects, or the object as one row."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    lists = [k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    row_like = any(key in obj for key in ROW_KEYS)
    if len(lists) == 1 and not row_like:
        key = lists[0]
        for index, row in enumerate(obj[key]):
            yield f"{path}:{key}[{index}]", row
    else:
        yield f"{path}:1", obj


def _read_parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{path}: cannot read parquet ({err})") from None
    count = 0
    for batch in batches:
        for row in batch.to_pylist():
            count += 1
            yield f"{path}:row {count}", row


def _read_csv(path: Path) -> Iterator[tuple[str, object]]:
    """Rows of a CSV file with a header; every cell a string ("" when empty), rows counted from 1."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Quoted cells may hold newlines (multi-line answers); every column is read as text so that
    # "007" or "4" stay strings and an empty cell is "" rather than a null.
    parse = pacsv.ParseOptions(newlines_in_values=True)
    try:
        with pacsv.open_csv(path, parse_options=parse) as reader:
            names = reader.schema.names
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names})
        table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{path}: cannot read CSV ({err})") from None
    for index, row in enumerate(table.to_pylist(), 1):
        yield f"{path}:row {index}", row


def _read_txt(path: Path) -> Iterator[tuple[str, object]]:
    """One {"text": line} row per non-empty line, as Hugging Face datasets' text loader reads documents."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip():
            yield f"{path}:{lineno}", {"text": line}


# -------------------------------------------------------------------------------------- normalisation


def mapping_problems(fmt: str, columns: Mapping | None = None, tags: Mapping | None = None) -> list[str]:
    """Problems with a format's column and tag mapping, each naming the bad key and the allowed ones."""
    problems = []
    allowed_columns = sorted(COLUMNS[fmt] if fmt in COLUMNS else {k for c in COLUMNS.values() for k in c})
    for key, value in (columns or {}).items():
        if key not in allowed_columns:
            problems.append(
                f"columns.{key}: not a column of the {fmt} format; allowed: {', '.join(allowed_columns)}"
            )
        elif not (isinstance(value, str) and value) and not (value is None and key not in REQUIRED_COLUMNS):
            problems.append(f"columns.{key}={value!r}: must name a field of the rows")
    allowed_tags = sorted(TAGS) if fmt in ("auto", "sharegpt") else []
    for key, value in (tags or {}).items():
        if key not in allowed_tags:
            allowed = (
                f"allowed: {', '.join(allowed_tags)}" if allowed_tags else "tags apply to sharegpt rows only"
            )
            problems.append(f"tags.{key}: not a tag of the {fmt} format; {allowed}")
        elif not (isinstance(value, str) and value):
            problems.append(f"tags.{key}={value!r}: must be a non-empty string")
    if not problems:
        values = [{**TAGS, **(tags or {})}[key] for key in ROLE_TAGS]
        if len(set(values)) < len(values):
            problems.append(f"tags: two roles share one tag value ({', '.join(values)})")
    return problems


def detect_format(row: Mapping, columns: Mapping | None = None, tags: Mapping | None = None) -> str:
    """Guess a row's format from its keys and, for a list of turns, from the keys of its first turn."""
    columns = columns or {}
    role_tag = (tags or {}).get("role_tag", TAGS["role_tag"])
    for key in [columns["messages"]] if columns.get("messages") else ["messages", "conversations"]:
        if key in row:
            turns = row[key]
            first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], Mapping) else {}
            if role_tag in first:
                return "sharegpt"
            if "role" in first:
                return "messages"
            return "sharegpt" if key == "conversations" else "messages"
    alpaca = {**COLUMNS["alpaca"], **columns}
    if alpaca["prompt"] in row or alpaca["response"] in row:
        return "alpaca"
    raise MalformedRow(f"cannot tell the format from keys {sorted(row)}; set the dataset's format")


def as_row(row: object) -> Mapping:
    """The row as a mapping, or raise MalformedRow: the reader's own marker, or why it is not an object."""
    if isinstance(row, MalformedRow):
        raise row
    if not isinstance(row, Mapping):
        raise MalformedRow(f"expected an object, got {type(row).__name__}")
    return row


def to_conversation(
    row: object, fmt: str = "auto", columns: Mapping | None = None, tags: Mapping | None = None
) -> dict:
    """Normalise one row to the canonical conversation, or raise MalformedRow saying why."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if problems := mapping_problems(fmt, columns, tags):
        raise ValueError("; ".join(problems))
    row = as_row(row)
    for key in MEDIA_COLUMNS:
        if row.get(key):  # an empty list or "" (a CSV cell) holds no media
            raise MalformedRow(f"{key!r} column holds media: {TEXT_ONLY}")
    if fmt == "auto":
        fmt = detect_format(row, columns, tags)
    cols = {**COLUMNS[fmt], **{k: v for k, v in (columns or {}).items() if k in COLUMNS[fmt]}}
    if fmt == "alpaca":
        system, messages, labels = _from_alpaca(row, cols)
    else:
        roles, role_key, content_key = _roles(fmt, tags)
        turns = _json_list(_required(row, cols["messages"]), cols["messages"])
        system, messages, labels = _from_turns(turns, cols["messages"], roles, role_key, content_key, fmt)
        column_system = _optional_text(row, cols["system"])
        system = system if system is not None else column_system  # a system turn wins, as in LLaMA-Factory
    _check_order(messages, labels)
    category = row.get("category")
    return {
        "system": system or None,
        "tools": _tools(row.get(cols["tools"]) if cols["tools"] else None),
        "messages": messages,
        "category": category if isinstance(category, str) else None,
    }


def _required(row: Mapping, key: str) -> object:
    value = row.get(key)
    if value is None:
        raise MalformedRow(f"missing field {key!r}")
    return value


def _optional_text(row: Mapping, key: str | None) -> str:
    """A text field that may be absent; absent, null and "" (an empty CSV cell) all read as ""."""
    value = row.get(key) if key else None
    return "" if value is None else _text(value, repr(key))


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedRow(f"{what} must be a string, got {type(value).__name__}")
    return value


def _json_list(value: object, what: str) -> list:
    """A list, also when it arrives as JSON text (list columns of a CSV file)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise MalformedRow(f"{what!r} is text but not valid JSON ({err.msg})") from None
    if not isinstance(value, list):
        raise MalformedRow(f"{what!r} must be a list, got {type(value).__name__}")
    return value


def _from_alpaca(row: Mapping, cols: Mapping) -> tuple[str, list[dict], list[str]]:
    messages, labels = [], []
    history = row.get(cols["history"]) if cols["history"] else None
    for i, pair in enumerate(_json_list(history, cols["history"]) if history else []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise MalformedRow(f"{cols['history']}[{i}] must be an [instruction, output] pair")
        where = f"{cols['history']}[{i}]"
        messages += [
            {"role": "user", "content": _text(pair[0], f"{where} instruction")},
            _answer(_text(pair[1], f"{where} output"), f"{where} output"),
        ]
        labels += [f"{where} instruction", f"{where} output"]
    prompt = _text(_required(row, cols["prompt"]), repr(cols["prompt"]))
    query = _optional_text(row, cols["query"])
    content = "\n".join(part for part in (prompt, query) if part.strip())
    if not content:
        raise MalformedRow(f"{cols['prompt']!r} and {cols['query']!r} are both empty")
    response = _text(_required(row, cols["response"]), repr(cols["response"]))
    messages += [{"role": "user", "content": content}, _answer(response, repr(cols["response"]))]
    labels += [repr(cols["prompt"]), repr(cols["response"])]
    return _optional_text(row, cols["system"]), messages, labels


def _roles(fmt: str, tags: Mapping | None) -> tuple[dict[str, str], str, str]:
    """The role-value → canonical-role map and the role and content keys of a turn."""
    if fmt == "messages":
        return MESSAGES_ROLES, "role", "content"
    resolved = {**TAGS, **(tags or {})}
    roles = {**SHAREGPT_ALIASES, **{resolved[key]: role for key, role in ROLE_TAGS.items()}}
    return roles, resolved["role_tag"], resolved["content_tag"]


def _answer(text: str, what: str) -> dict:
    """An assistant message from answer text, with a leading <think> block moved to `reasoning_content`."""
    text, reasoning = _split_think(text, what)
    return _with_reasoning({"role": "assistant", "content": text}, reasoning)


def _with_reasoning(message: dict, reasoning: str | None) -> dict:
    """The message with its reasoning trace, when there is one that is not blank."""
    if reasoning and reasoning.strip():
        message["reasoning_content"] = reasoning.strip()
    return message


def _split_think(text: str, what: str) -> tuple[str, str | None]:
    """(answer, reasoning) of text that may open with a <think>...</think> block."""
    found = THINK.match(text)
    if found:
        return text[found.end() :], found.group(1)
    if text.lstrip().startswith("<think>"):
        raise MalformedRow(f"{what}: <think> is never closed by </think>")
    return text, None


def _from_turns(
    turns: list, column: str, roles: Mapping, role_key: str, content_key: str, fmt: str
) -> tuple[str | None, list[dict], list[str]]:
    system, messages, labels = None, [], []
    for i, turn in enumerate(turns):
        where = f"{column}[{i}]"
        if not isinstance(turn, Mapping):
            raise MalformedRow(f"{where} must be an object, got {type(turn).__name__}")
        if turn.get(role_key) not in roles:
            allowed = ", ".join(sorted(roles))
            raise MalformedRow(
                f"{where}: unknown role {turn.get(role_key)!r}; allowed {role_key!r} values: {allowed}"
            )
        role, value = roles[turn[role_key]], turn.get(content_key)
        answers = role in ("assistant", "function_call")
        weight = _loss_weight(turn, where, answers)
        reasoning = _reasoning_field(turn, where, answers)
        if role == "system":
            if i:
                raise MalformedRow(f"{where}: a system turn may only come first")
            system = _content(value, f"{where} {content_key}", role).text
            continue
        if role == "function_call":
            message = {"role": "assistant", "content": "", "tool_calls": _tool_calls(value, where)}
        else:
            calls = []
            if fmt == "messages" and role == "assistant" and turn.get("tool_calls"):
                calls = [
                    _tool_call(c, f"{where} tool_calls") for c in _json_list(turn["tool_calls"], "tool_calls")
                ]
            parsed = Content("", None, [])
            if value is not None or not calls:  # a tool-call turn may leave its content out
                parsed = _content(value, f"{where} {content_key}", role)
            if parsed.reasoning is not None and reasoning is not None:
                raise MalformedRow(f"{where}: reasoning given twice (a reasoning field and in the content)")
            reasoning = reasoning if reasoning is not None else parsed.reasoning
            message = {"role": role, "content": parsed.text}
            if calls or parsed.calls:
                message["tool_calls"] = [*parsed.calls, *calls]
        if weight is not None and weight != 1:  # 1 is every turn's weight: stored, it would change nothing
            message["loss_weight"] = weight
        messages.append(_with_reasoning(message, reasoning))
        labels.append(where)
    return system, messages, labels


def _loss_weight(turn: Mapping, where: str, answers: bool) -> float | None:
    """The turn's loss weight in [0, 1], None when it gives none; only an answer may carry a non-zero one."""
    given = [key for key in WEIGHT_KEYS if turn.get(key) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise MalformedRow(f"{where}: both {given[0]!r} and {given[1]!r} given; keep one")
    key, value = given[0], turn[given[0]]
    what = f"{where} {key}={value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedRow(f"{what}: a loss weight must be a number in [0, 1]")
    if not 0 <= value <= 1:
        raise MalformedRow(f"{what}: a loss weight must be in [0, 1] (0: not trained, 1: fully trained)")
    # LLaMA-Factory's messages format marks every prompt turn loss_weight 0.0: what happens anyway.
    if not answers and value != 0:
        raise MalformedRow(f"{what}: only assistant turns are trained, so only they may carry a loss weight")
    return float(value) if answers else None


def _reasoning_field(turn: Mapping, where: str, answers: bool) -> str | None:
    """The turn's reasoning trace given as a field beside its content (None when there is none)."""
    given = [key for key in REASONING_KEYS if turn.get(key) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise MalformedRow(f"{where}: both {given[0]!r} and {given[1]!r} given; keep one")
    if not answers:
        raise MalformedRow(f"{where}: {given[0]!r} on a non-assistant turn; only answers carry reasoning")
    return _text(turn[given[0]], f"{where} {given[0]}")


@dataclass
class Content:
    """A turn's content read from a string or a list of parts: its text, reasoning and tool calls."""

    text: str
    reasoning: str | None
    calls: list[dict]


def _content(value: object, what: str, role: str) -> Content:
    """Turn content from a string, one part, or a list of parts (OpenAI `text`, others' `value` key).

    An answer's reasoning may come as reasoning/thinking parts before its text or as a leading
    <think> block in the text; a media part refuses the row.
    """
    if value is None:
        raise MalformedRow(f"{what} is missing")
    answers = role in ("assistant", "function_call")
    if isinstance(value, str):
        text, reasoning = _split_think(value, what) if answers else (value, None)
        return Content(text, reasoning, [])
    parts = [value] if isinstance(value, Mapping) else value
    if not isinstance(parts, list):
        raise MalformedRow(f"{what} must be a string or a list of content parts, got {type(value).__name__}")
    texts, reasonings, calls = [], [], []
    for j, part in enumerate(parts):
        where = f"{what}[{j}]"
        if not isinstance(part, Mapping):
            raise MalformedRow(f"{where}: a content part must be an object, got {type(part).__name__}")
        kind = part.get("type", "text")
        if kind in MEDIA_PARTS:
            raise MalformedRow(f"{where}: a {kind!r} part on a {role} turn: {TEXT_ONLY}")
        if kind == "text":
            texts.append(_part_text(part, TEXT_KEYS, where))
        elif kind in REASONING_PARTS and answers:
            if texts:
                raise MalformedRow(f"{where}: a {kind!r} part after the answer text; reasoning comes first")
            reasonings.append(_part_text(part, REASONING_PART_KEYS, where))
        elif kind == "tool_call" and answers:  # LLaMA-Factory: the call as JSON text under `value`
            calls += _tool_calls(_part_text(part, TEXT_KEYS, where), where)
        else:
            allowed = "text, reasoning, thinking, tool_call" if answers else "text"
            raise MalformedRow(f"{where}: unsupported {kind!r} part on a {role} turn; allowed: {allowed}")
    text, reasoning = "".join(texts), "".join(reasonings) if reasonings else None
    if answers and reasoning is None:
        text, reasoning = _split_think(text, what)
    return Content(text, reasoning, calls)


def _part_text(part: Mapping, keys: tuple[str, ...], where: str) -> str:
    """The text of a content part, under the first of `keys` it has."""
    for key in keys:
        if part.get(key) is not None:
            return _text(part[key], f"{where} {key}")
    raise MalformedRow(f"{where}: a {part.get('type', 'text')!r} part holds no {' or '.join(keys)} text")


def _tool_calls(value: object, where: str) -> list[dict]:
    """The calls of a ShareGPT function-call turn: one JSON call object or a list of them."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise MalformedRow(f"{where}: function call is not valid JSON ({err.msg})") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise MalformedRow(f"{where}: function call turn holds no calls")
    return [_tool_call(call, where) for call in calls]


def _tool_call(call: object, where: str) -> dict:
    """One call in the HF convention, from {"name", "arguments"} or the OpenAI {"function": {...}} shape."""
    if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
        call = call["function"]
    if not (isinstance(call, Mapping) and "name" in call and "arguments" in call):
        raise MalformedRow(f'{where}: a function call must be a JSON object with "name" and "arguments"')
    name, arguments = call["name"], call["arguments"]
    if not (isinstance(name, str) and name):
        raise MalformedRow(f"{where}: function call name must be a non-empty string")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise MalformedRow(f"{where}: arguments of {name!r} are not valid JSON ({err.msg})") from None
    if not isinstance(arguments, Mapping):
        raise MalformedRow(f"{where}: arguments of {name!r} must be a JSON object")
    return {"type": "function", "function": {"name": name, "arguments": dict(arguments)}}


def _tools(value: object) -> list[dict] | None:
    """Tool schemas in the HF convention, from a list or JSON text of plain or wrapped schemas."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise MalformedRow(f"tools is not valid JSON ({err.msg})") from None
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise MalformedRow(f"tools must be a list of function schemas, got {type(value).__name__}")
    tools = []
    for i, tool in enumerate(value):
        schema = tool.get("function") if isinstance(tool, Mapping) and "function" in tool else tool
        if not (isinstance(schema, Mapping) and isinstance(schema.get("name"), str)):
            raise MalformedRow(f"tools[{i}] must be a function schema with a name")
        tools.append({"type": "function", "function": dict(schema)})
    return tools or None


def _check_order(messages: list[dict], labels: list[str]) -> None:
    """The contract's invariants: user first, assistant last, answers non-empty, tool results after calls."""
    if not any(m["role"] == "assistant" for m in messages):
        raise MalformedRow("the conversation has no assistant turn")
    if messages[0]["role"] != "user":
        raise MalformedRow(f"{labels[0]}: the first turn must be a user turn, got {messages[0]['role']}")
    for i, message in enumerate(messages):
        plain_answer = message["role"] == "assistant" and not message.get("tool_calls")
        if plain_answer and not message["content"].strip():
            raise MalformedRow(f"{labels[i]}: empty assistant turn")
        if message["role"] == "tool":
            before = messages[i - 1]
            if not (before["role"] == "tool" or before.get("tool_calls")):
                raise MalformedRow(f"{labels[i]}: a tool result must follow a function call")
    if messages[-1]["role"] != "assistant":
        raise MalformedRow(f"{labels[-1]}: the conversation must end on an assistant turn")
