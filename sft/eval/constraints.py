"""Instruction constraints a program can verify, in the spirit of IFEval, registered by name in `CHECKERS`.

Every checker is a pure function `(response: str, **kwargs) -> bool`. Conventions they all share:

- The response is normalised first: Windows/old-Mac line endings become "\\n" and surrounding whitespace is
  stripped, so a trailing newline or indentation never decides a result.
- An empty or whitespace-only response fails every checker: otherwise a model that says nothing would
  score on "no commas", "at most N words", "must not mention X", and so on.
- Parameters are keyword-only and validated on every call; a missing, unexpected or ill-typed one raises
  `CheckerError` naming the checker (`validate` does the same check without a response, for suite files).

Counting rules are `sft.text`'s, shared with data preparation: a *word* is a whitespace-separated token
holding a letter or digit (a CJK character is one on its own); a *sentence* ends at `.`, `!` or `?`
(closing quotes/brackets may follow) before whitespace or the end, or at a blank line, but not after an
abbreviation ("Dr.", "e.g.") or a "1." list marker; a *paragraph* is a block between blank lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from ..errors import CheckerError
from ..text import paragraphs as paragraph_blocks  # the `paragraphs` checker takes the plain name
from ..text import sentences, words

Kind = Callable[[object], "str | None"]  # returns why a value does not fit, or None when it does


CHECKERS: dict[str, Callable[..., bool]] = {}
PARAMS: dict[str, dict[str, Kind]] = {}


# ----------------------------------------------------------------------------------- parameter kinds


def _count(value: object) -> str | None:
    # bool is an int subclass; `n: true` in a suite file is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"a positive integer, got {value!r}"
    return None


def _text(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"a non-empty string, got {value!r}"
    return None


def _texts(value: object) -> str | None:
    # A bare string would otherwise be iterated character by character.
    ok = isinstance(value, (list, tuple)) and value and all(isinstance(w, str) and w.strip() for w in value)
    return None if ok else f"a non-empty list of non-empty strings, got {value!r}"


# ---------------------------------------------------------------------------------------- registry


def validate(name: str, kwargs: Mapping[str, object]) -> None:
    """Raise CheckerError unless `name` is a registered checker and `kwargs` fit its parameters."""
    if name not in CHECKERS:
        raise CheckerError(f"unknown checker {name!r}; known: {', '.join(sorted(CHECKERS))}")
    if not isinstance(kwargs, Mapping):
        raise CheckerError(f"{name}: kwargs must be an object, got {kwargs!r}")
    params = PARAMS[name]
    takes = f"takes: {', '.join(params)}" if params else "takes none"
    for key in kwargs:
        if key not in params:
            raise CheckerError(f"{name}: unexpected keyword argument {key!r} ({takes})")
    for key, kind in params.items():
        if key not in kwargs:
            raise CheckerError(f"{name}: missing keyword argument {key!r} ({takes})")
        problem = kind(kwargs[key])
        if problem:
            raise CheckerError(f"{name}: {key!r} must be {problem}")


def check(name: str, response: str, kwargs: Mapping[str, object] | None = None) -> bool:
    """Run the checker `name` on `response` with `kwargs`; CheckerError if either does not fit."""
    validate(name, kwargs or {})
    return CHECKERS[name](response, **(kwargs or {}))


def checker(**params: Kind) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    """Register a checker under its function name, with parameter validation and the shared conventions."""

    def register(fn: Callable[..., bool]) -> Callable[..., bool]:
        name = fn.__name__

        def run(response: str, *args: object, **kwargs: object) -> bool:
            if args:
                raise CheckerError(f"{name}: pass parameters by keyword ({', '.join(params) or 'none'})")
            validate(name, kwargs)
            if not isinstance(response, str):
                raise CheckerError(f"{name}: response must be a string, got {type(response).__name__}")
            text = response.replace("\r\n", "\n").replace("\r", "\n").strip()
            return bool(text) and fn(text, **kwargs)

        run.__name__, run.__qualname__, run.__doc__ = name, name, fn.__doc__
        run.__wrapped__ = fn
        CHECKERS[name], PARAMS[name] = run, params
        return run

    return register


# ----------------------------------------------------------------------------------------- helpers


_BULLET = re.compile(r"^[ \t]*[-*][ \t]+\S", re.M)
_NUMBERED = re.compile(r"^[ \t]*\d+[.)][ \t]+\S", re.M)
_FENCE = re.compile(r"\A```[ \t]*(?:json)?[ \t]*\n(.*?)\n?[ \t]*```\Z", re.S | re.I)
_TITLE = re.compile(r"<<[^<>\n]*[^\s<>][^<>\n]*>>")


def json_object(text: str) -> dict | None:
    """`text` parsed as a JSON object, bare or as one ```json (or plain ```) fence; None if it is not one."""
    fenced = _FENCE.match(text.strip())
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _contains(text: str, phrase: str) -> bool:
    # Whole words: not preceded or followed by a word character; any whitespace may separate phrase words.
    pattern = r"\s+".join(re.escape(part) for part in phrase.split())
    return re.search(rf"(?<!\w){pattern}(?!\w)", text, re.I) is not None


# ---------------------------------------------------------------------------------------- checkers


@checker()
def lowercase(text: str) -> bool:
    """At least one lowercase letter and no uppercase letter anywhere (digits and symbols are free)."""
    return any(c.islower() for c in text) and not any(c.isupper() for c in text)


@checker()
def uppercase(text: str) -> bool:
    """At least one uppercase letter and no lowercase letter anywhere (digits and symbols are free)."""
    return any(c.isupper() for c in text) and not any(c.islower() for c in text)


@checker(n=_count)
def max_words(text: str, n: int) -> bool:
    """At most `n` words (whitespace-separated tokens holding a letter or digit; CJK characters one each)."""
    return len(words(text)) <= n


@checker(n=_count)
def min_words(text: str, n: int) -> bool:
    """At least `n` words (whitespace-separated tokens holding a letter or digit; CJK characters one each)."""
    return len(words(text)) >= n


@checker(n=_count)
def exact_bullets(text: str, n: int) -> bool:
    """Exactly `n` markdown bullets: lines starting (after indentation) with "- " or "* " and some text."""
    return len(_BULLET.findall(text)) == n


@checker(n=_count)
def numbered_items(text: str, n: int) -> bool:
    """Exactly `n` numbered items: lines starting (after indentation) with "1." or "1)", a space and text."""
    return len(_NUMBERED.findall(text)) == n


@checker(keys=_texts)
def json_keys(text: str, keys: list[str]) -> bool:
    """The response (or one ```json fence spanning it) is a JSON object with exactly the top-level `keys`."""
    value = json_object(text)
    return value is not None and set(value) == set(keys)


@checker(words=_texts)
def must_include(text: str, words: list[str]) -> bool:
    """Every word or phrase in `words` occurs as a whole word, case-insensitively ("cat" is not in "cats")."""
    return all(_contains(text, word) for word in words)


@checker(words=_texts)
def must_exclude(text: str, words: list[str]) -> bool:
    """No word or phrase in `words` occurs as a whole word, case-insensitively ("cats" is not "cat")."""
    return not any(_contains(text, word) for word in words)


@checker(text=_text)
def starts_with(response: str, text: str) -> bool:
    """The stripped response starts with `text` (itself stripped), compared case-insensitively."""
    return response.casefold().startswith(text.strip().casefold())


@checker(text=_text)
def ends_with(response: str, text: str) -> bool:
    """The stripped response ends with `text` (itself stripped), compared case-insensitively."""
    return response.casefold().endswith(text.strip().casefold())


@checker(n=_count)
def paragraphs(text: str, n: int) -> bool:
    """Exactly `n` paragraphs: non-empty blocks separated by one or more blank lines."""
    return len(paragraph_blocks(text)) == n


@checker()
def no_commas(text: str) -> bool:
    """No comma anywhere: neither "," nor the full-width "，"."""
    return "," not in text and "，" not in text


@checker()
def quoted(text: str) -> bool:
    """The whole response is wrapped in double quotes ("..." or “...”) with something inside."""
    pairs = (('"', '"'), ("“", "”"))
    wrapped = any(text.startswith(a) and text.endswith(b) for a, b in pairs)
    return wrapped and len(text) > 2 and bool(text[1:-1].strip())


@checker()
def title(text: str) -> bool:
    """Contains a non-blank title in double angular brackets on one line, like <<Ode to Rain>>."""
    return _TITLE.search(text) is not None


@checker(n=_count)
def sentences_max(text: str, n: int) -> bool:
    """At most `n` sentences: each ends at . ! ? before whitespace, or at a blank line ("e.g. x" does not)."""
    return len(sentences(text)) <= n


@checker()
def ascii_only(text: str) -> bool:
    """Only ASCII characters: no curly quotes, em dashes, accented letters or emoji."""
    return text.isascii()
