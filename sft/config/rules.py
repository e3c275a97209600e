"""A schema field's allowed values live in its metadata; one checker reads them for every schema.

`setting(choices=...)`, `setting(ge=1)`, `setting(gt=0, lt=1)` or `setting(check=(predicate, text))`
declare a field with no default of its own (omegaconf's MISSING): the YAML under conf/ gives every value.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from dataclasses import field
from typing import Any, Union, get_args, get_origin, get_type_hints

from omegaconf import MISSING

BOUNDS = ("ge", "gt", "le", "lt")


def setting(
    *,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: tuple[Callable[[Any], bool], str] | None = None,
) -> Any:
    """A dataclass field whose value comes from YAML, with what it may hold as metadata."""
    rules = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "check": check}
    return field(default=MISSING, metadata={k: v for k, v in rules.items() if v is not None})


def _number(kind: type) -> str:
    return "an integer" if kind is int else "a number"


def allowed(rules: dict, kind: type, nullable: bool) -> str:
    """What a field's rules allow, in words: "one of (...)", "a positive integer", "a number in [0, 1)"."""
    if "check" in rules:
        text = rules["check"][1]
    elif "choices" in rules:
        text = f"one of {rules['choices']}"
    else:
        low = next(((b, rules[b]) for b in ("ge", "gt") if b in rules), None)
        high = next(((b, rules[b]) for b in ("le", "lt") if b in rules), None)
        noun = _number(kind)
        if low and high:
            left, right = "[" if low[0] == "ge" else "(", "]" if high[0] == "le" else ")"
            text = f"{noun} in {left}{low[1]}, {high[1]}{right}"
        elif low == ("gt", 0):
            text = f"a positive {noun.split()[-1]}"
        elif low:
            text = f"{noun} {'>=' if low[0] == 'ge' else '>'} {low[1]}"
        else:
            text = f"{noun} {'<=' if high[0] == 'le' else '<'} {high[1]}"
    return f"null or {text}" if nullable else text


def breaks(rules: dict, value: Any) -> bool:
    """Whether a (non-null) value breaks the rules."""
    if "check" in rules:
        return not rules["check"][0](value)
    if "choices" in rules:
        return value not in rules["choices"]
    limits = {
        "ge": lambda v, b: v >= b,
        "gt": lambda v, b: v > b,
        "le": lambda v, b: v <= b,
        "lt": lambda v, b: v < b,
    }
    return any(not limits[b](value, rules[b]) for b in BOUNDS if b in rules)


@functools.cache
def hints(schema: type) -> dict[str, tuple[Any, bool]]:
    """Each field's type with `| None` taken off, and whether null is allowed."""
    out = {}
    for name, hint in get_type_hints(schema).items():
        args = get_args(hint)
        nullable = get_origin(hint) in (Union, types.UnionType) and type(None) in args
        if nullable:
            rest = [a for a in args if a is not type(None)]
            hint = rest[0] if len(rest) == 1 else Any
        out[name] = (hint, nullable)
    return out
