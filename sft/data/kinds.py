"""What a dataset holds (conversations, text, pairs or feedback), checked against what the stage trains.

`data.kind` follows the stage (STAGE_KIND). A dataset's kind is its `kind` field when given, else derived
the way LLaMA-Factory's dataset_info.json marks it: `ranking: true` (registry translation sets kind:
pairs), a `kto_tag` column → feedback, `columns: {prompt: text}` without a response column or a .txt
path → text, anything else → conversations. A mismatch is a config error naming the fix, before any
row is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .formats import to_conversation
from .preference_rows import to_feedback, to_pair
from .raw_text import to_text

# What each stage trains on (`data.kind` follows `stage.name`), the one place that says it.
STAGE_KIND = {"sft": "conversations", "pt": "text", "dpo": "pairs", "kto": "feedback"}
# The stage that trains on each kind, and a data config holding it (the fixes error messages name).
STAGE_OF = {kind: stage for stage, kind in STAGE_KIND.items()}
EXAMPLE_DATA = {"conversations": "alpaca_en", "text": "c4", "pairs": "dpo_en", "feedback": "kto_en"}
NOUN = {"conversations": "conversation", "text": "text", "pairs": "pair", "feedback": "feedback"}
DESCRIBED = {
    "conversations": "conversations",
    "text": "raw text",
    "pairs": "preference pairs",
    "feedback": "KTO feedback (labelled responses)",
}


def dataset_kind(spec) -> tuple[str, str]:
    """(kind, the evidence for it) of one dataset entry (a DatasetConfig or a plain dict)."""
    get = spec.get if isinstance(spec, Mapping) else lambda key, default=None: getattr(spec, key, default)
    columns = get("columns") or {}
    if get("kind"):
        # kind: pairs is also how the registry translates dataset_info.json's ranking: true
        return get("kind"), f"kind: {get('kind')}" + (
            ", LLaMA-Factory's ranking: true" if get("kind") == "pairs" else ""
        )
    if columns.get("kto_tag"):
        return "feedback", f"kto_tag column {columns['kto_tag']!r}"
    if columns.get("prompt") == "text" and not (columns.get("response") or columns.get("messages")):
        return "text", "columns: {prompt: text}"
    if get("source") == "file" and str(get("path") or "").lower().endswith(".txt"):
        return "text", "a .txt file"
    return "conversations", "no ranking, kto_tag or text column"


def kind_problems(datasets: Mapping, kind: str, stage: str) -> list[str]:
    """One message per dataset whose kind differs from the run's `data.kind`, each with the fix."""
    problems = []
    for name, spec in datasets.items():
        held, why = dataset_kind(spec)
        if held == kind:
            continue
        if held != "conversations":
            problems.append(
                f"data.datasets: {name!r} holds {DESCRIBED[held]} ({why}) but stage={stage} trains on "
                f"{kind}; use stage={STAGE_OF[held]}"
            )
        else:
            source = spec.get("source") if isinstance(spec, Mapping) else getattr(spec, "source", None)
            # A file of unmarked rows may well hold the kind (TRL-style pairs): say how to mark it.
            mark = f", or mark it: data.datasets.{name}.kind={kind}" if source != "builtin" else ""
            problems.append(
                f"stage={stage} trains on {kind}; dataset {name!r} holds conversations; pick {NOUN[kind]} "
                f"data, e.g. data={EXAMPLE_DATA[kind]}{mark}"
            )
    return problems


def normaliser(kind: str) -> Callable[..., dict]:
    """The function that turns a raw row into the kind's canonical record: f(row, fmt, columns, tags)."""
    if kind == "text":
        return lambda row, fmt, columns, tags: to_text(row, columns)
    return {"conversations": to_conversation, "pairs": to_pair, "feedback": to_feedback}[kind]


def as_conversation(record: dict) -> dict:
    """A conversation view of any kind's record (pairs: the chosen side; text: one answer), for scoring."""
    if "text" in record:
        return {"messages": [{"role": "assistant", "content": record["text"]}]}
    if "chosen" in record:
        return {**record, "messages": [*record["messages"], record["chosen"]]}
    return record
