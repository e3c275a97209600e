"""Exact and near-duplicate rows: which to drop, and which earlier row each one repeats.

Texts are normalised first (Unicode NFKC, case folded, apostrophes removed, other punctuation as spaces,
whitespace collapsed), so "Hello,  World!" and "hello world" are exact duplicates: equal hashes of
the normalised text. Near duplicates are found with MinHash signatures over word or character n-gram
shingles, indexed by locality-sensitive hashing (datasketch `MinHashLSH`). The LSH bands are chosen so
that a pair at the threshold becomes a candidate with probability >= 0.99, and every candidate pair is
then checked with the exact Jaccard similarity of its shingle sets, so a reported near duplicate always
shares at least `threshold` of its shingles and the threshold means what it says (the LSH only decides
which pairs are worth checking).

The first occurrence is kept. Rows are compared only with rows already kept, so each duplicate points
at a kept row and the kept rows have no pair above the threshold (up to the LSH's small miss rate).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from ..config.commands import FIELDS, SHINGLES
from ..errors import PrepareError
from .rows import Row

# Character 5-grams suit short instructions: a one-word edit in a 20-word prompt keeps them above 0.8
# Jaccard, while prompts sharing only a template ("Name three ... of X") stay below it. Word n-grams
# of a 10-word prompt move in steps of ~10%, too coarse for a 0.8 threshold.
DEFAULT_NGRAM = {"char": 5, "word": 1}
# A pair at the threshold is a candidate with at least this probability (see `lsh_bands`).
RECALL = 0.99

_APOSTROPHES = re.compile(r"['’`]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Duplicate:
    """Row `index` repeats kept row `of`: "exact" (normalised) or "near" (shingle Jaccard `similarity`)."""

    index: int
    of: int
    kind: str
    similarity: float


def normalise(text: str) -> str:
    """Text as compared: NFKC, case folded, apostrophes dropped, other punctuation and spaces as one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PUNCTUATION.sub(" ", _APOSTROPHES.sub("", text))
    return _SPACE.sub(" ", text).strip()


def shingles(normalised: str, ngram: int, shingle: str = "char") -> set[str]:
    """The word or character n-grams of a normalised text; a text shorter than one n-gram is its own."""
    if shingle == "word":
        words = normalised.split()
        grams = {" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}
    else:
        grams = {normalised[i : i + ngram] for i in range(len(normalised) - ngram + 1)}
    return grams or ({normalised} if normalised else set())


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (0 for two empty sets, which carry nothing to compare)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def lsh_bands(threshold: float, num_perm: int, recall: float = RECALL) -> tuple[int, int]:
    """(bands, rows per band): the longest bands (fewest needless candidates) that still catch a pair of
    Jaccard `threshold` with probability `recall`; datasketch's own choice catches only ~40% at 0.8."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def find_duplicates(
    texts: list[str],
    threshold: float = 0.8,
    ngram: int | None = None,
    shingle: str = "char",
    num_perm: int = 128,
    seed: int = 1,
) -> list[Duplicate]:
    """Texts repeating an earlier kept one: exactly once normalised, or with shingle Jaccard >= threshold."""
    if shingle not in SHINGLES:
        raise PrepareError(f"shingle={shingle!r}: expected one of {', '.join(SHINGLES)}")
    if not 0 < threshold <= 1:
        raise PrepareError(f"threshold={threshold}: expected a Jaccard similarity in (0, 1]")
    ngram = DEFAULT_NGRAM[shingle] if ngram is None else ngram
    if ngram < 1:
        raise PrepareError(f"ngram={ngram}: expected a positive n-gram length")

    normalised = [normalise(text) for text in texts]
    signatures = MinHash.generator(
        ([g.encode("utf-8") for g in shingles(text, ngram, shingle)] for text in normalised),
        num_perm=num_perm,
        seed=seed,
    )
    lsh = MinHashLSH(num_perm=num_perm, params=lsh_bands(threshold, num_perm))
    first: dict[bytes, int] = {}
    found: list[Duplicate] = []
    for index, (text, signature) in enumerate(zip(normalised, signatures, strict=True)):
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if key in first:
            found.append(Duplicate(index, first[key], "exact", 1.0))
            continue
        first[key] = index
        if not text:
            continue  # nothing but punctuation: only an exact match can repeat it
        # Shingles are rebuilt for the few candidates rather than kept for every row, to bound memory.
        grams = shingles(text, ngram, shingle)
        best = None
        for candidate in sorted(lsh.query(signature)):
            similarity = jaccard(grams, shingles(normalised[candidate], ngram, shingle))
            if similarity >= threshold and (best is None or similarity > best.similarity):
                best = Duplicate(index, candidate, "near", similarity)
        if best is None:
            lsh.insert(index, signature)
        else:
            found.append(best)
    return found


def dedup_text(row: Row, fields: str = "prompt") -> str:
    """The text a row is compared by: its user turns ("prompt") or every turn ("prompt_response")."""
    if fields not in FIELDS:
        raise PrepareError(f"fields={fields!r}: expected one of {', '.join(FIELDS)}")
    messages = row.conversation["messages"]
    if fields == "prompt":
        return "\n".join(m.get("content") or "" for m in messages if m["role"] == "user")
    # Tool calls count too, so two rows differing only in a call's arguments are not taken as one.
    return "\n".join(filter(None, (_message_text(m) for m in messages)))


def _message_text(message: dict) -> str:
    """A message's content followed by its tool calls as JSON, if it has any."""
    calls = message.get("tool_calls")
    content = message.get("content") or ""
    return content + ("\n" + json.dumps(calls, sort_keys=True, ensure_ascii=False) if calls else "")
