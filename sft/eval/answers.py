"""Exact-answer matching: normalise text, find where a response states its final answer, compare.

The rule (strict on purpose, so "the answer is not 12" never counts as 12):

1. Normalise both sides: Unicode NFKD with accents dropped, casefolded, digit-group commas removed
   ("1,000" → "1000"), then reduced to its words and numbers, all punctuation and markdown dropped
   ("**Paris.**" → "paris"). Numbers compare by value ("12.50" = "12.5", "0.75" = ".75").
2. A response is correct when the normalised form of one of these equals the answer or one of its aliases:
   - the whole response;
   - its last non-empty line, or the last sentence of that line;
   - the rest of that last sentence after any "is", "are", "was", "were", "equals", "=", ":", "->" or "→"
     ("So the answer is 42." → "42"; "5 + 7 = 12" → "12"; "The answer is not 12." → "not 12", no match);
   - for a yes/no answer only, a leading "Yes" or "No" followed by punctuation ("Yes, 17 is prime.").
3. Nothing else counts: not the last number anywhere ("12 is not the answer" fails), not an answer followed
   by more words ("12 apples" only matches if "12 apples" is an alias), not an answer buried mid-text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from decimal import Decimal

from ..text import sentences

_DIGIT_GROUP = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A sign only when it does not join two words ("5-3" is two numbers); then the number; or a run of letters.
_TOKEN = re.compile(r"(?:(?<![\w.])-)?(?:\d+(?:\.\d+)?|\.\d+)|[^\W\d_]+")
_MARKER = re.compile(r"\b(?:is|are|was|were|equals)\b|=|:|->|→", re.I)
_LEADING_YES_NO = re.compile(r"\s*[*_]*(yes|no)[*_]*\s*[,.!;:]", re.I)


def _canon_number(token: str) -> str:
    value = Decimal(token)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalise(text: str) -> str:
    """Casefolded, accent-free words and canonical numbers of `text`, joined by single spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    tokens = _TOKEN.findall(_DIGIT_GROUP.sub("", plain))
    return " ".join(_canon_number(t) if t[-1].isdigit() else t for t in tokens)


def last_sentence(text: str) -> str:
    """The last sentence of the last non-empty line of `text` (empty when `text` is blank)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    pieces = [p for p in sentences(lines[-1]) if normalise(p)]
    return pieces[-1] if pieces else lines[-1].strip()


def candidates(response: str) -> list[str]:
    """The spans of `response` that may state its final answer, by the rule in this module's docstring."""
    lines = [line for line in response.splitlines() if line.strip()]
    final = last_sentence(response)
    tails = [final[m.end() :] for m in _MARKER.finditer(final)]
    return [response, lines[-1] if lines else "", final, *tails]


def is_correct(response: str, answer: str, aliases: Iterable[str] = ()) -> bool:
    """Whether `response` states `answer` (or an alias) as its final answer, by this module's rule."""
    targets = {normalise(t) for t in (answer, *aliases)} - {""}
    if any(normalise(span) in targets for span in candidates(response)):
        return True
    lead = _LEADING_YES_NO.match(response)
    return lead is not None and lead.group(1).casefold() in targets & {"yes", "no"}
