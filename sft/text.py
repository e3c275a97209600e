"""Text heuristics on natural-language and code strings: one definition of each, for prepare, data and eval.

- Words: `words` counts them (whitespace tokens holding a letter or digit; a CJK character is a word on
  its own, as such text has no spaces); `tokens` gives lowercased words without punctuation, to compare
  texts with.
- Numbers: `NUMBER_WORDS`, `number_words` (a regex alternation of them) and `number_value`.
- Sentences and paragraphs: `sentence_ends` / `sentences` (a sentence ends at . ! ? before whitespace or
  the end, closing quotes or brackets allowed, or at a blank line; "Dr.", "e.g.", "3.5" and a "1." list
  marker do not end one) and `paragraphs` (blocks between blank lines).
- Code: `has_code_block` (a fenced block), `code_lines` / `looks_like_code` (the text is code),
  `mentions_code` (the text is about programming), `asks_for_code` (a request to write code) and
  `is_code_task`, the one test of whether a request and its reply make a programming task.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------- words

_CJK = "\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff"  # kana and CJK ideographs
_WORD_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_PLAIN_WORD = re.compile(rf"[{_CJK}]|[^\W_]+(?:['’][^\W_]+)*")


def words(text: str) -> list[str]:
    """The words of `text`: whitespace tokens holding a letter or digit; a CJK character is one word."""
    # "state-of-the-art", "3.5" and "e.g." are one word each, as a reader counts them; "-" is none.
    return [token for token in _WORD_TOKEN.findall(text) if any(c.isalnum() for c in token)]


def tokens(text: str) -> list[str]:
    """The lowercased words of `text` without punctuation ("Don't stop!" -> don't, stop), for comparisons."""
    return _PLAIN_WORD.findall(text.lower())


# -------------------------------------------------------------------------------------------- numbers

NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "hundred": 100,
}  # fmt: skip


def number_words(least: int = 1) -> str:
    """A regex alternation of the number words worth at least `least`, longest first."""
    # "one of the reasons" is no count of things: callers asking for several pass least=2.
    return "|".join(sorted((w for w, n in NUMBER_WORDS.items() if n >= least), key=lambda w: (-len(w), w)))


def number_value(token: str) -> int:
    """The value of a number written in digits or as one of `NUMBER_WORDS` ("12", "Twelve")."""
    return int(token) if token.isdigit() else NUMBER_WORDS[token.lower()]


# ------------------------------------------------------------------------------- sentences, paragraphs

# A sentence ends at . ! ? (closing quotes or brackets may follow) before whitespace or the end.
_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|\Z)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# Never end a sentence: titles before a name, and abbreviations that a lowercase word or number follows.
_TITLES = "mr mrs ms dr prof rev gen sen rep st mt ft"
_NEVER_END = frozenset(f"{_TITLES} vs cf al approx fig figs eq no nos vol pp p ca est dept".split())
# End a sentence when a capitalised word follows ("... and so on, etc. The next point").
_MAYBE_END = frozenset("etc inc ltd co corp jr sr".split())
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]\Z")  # e.g / i.e / U.S / a.m (the final "." is the match)
_MARKER = re.compile(r"(?:\d+|[A-Za-z]|[ivxlc]+|[IVXLC]+)\Z")  # "1." / "a." / "iv." starting a line


def _is_end(text: str, match: re.Match) -> bool:
    """Whether the punctuation `match` ends a sentence, judged by the word before it and the text after."""
    after = text[match.end() :].lstrip(" \t")
    line_end = not after or after[0] in "\r\n"
    if match.group().startswith(("!", "?")) or match.group().startswith(".."):
        return line_end or not after[0].islower()
    line_start = text.rfind("\n", 0, match.start()) + 1
    token = text[line_start : match.start()].split()
    word = token[-1].lstrip("\"'“‘([") if token else ""
    if _MARKER.match(word) and len(token) == 1:
        return False  # "1." or "a." alone before the item text: a list marker
    if line_end:
        return True
    if word.lower() in _NEVER_END or _DOTTED.search(word) or (len(word) == 1 and word.isupper()):
        return False  # "Dr. Smith", "e.g. Paris", "J. K. Rowling"
    if word.lower() in _MAYBE_END:
        return after[0].isupper()
    return not after[0].islower()  # "approx. five" style abbreviations we do not list stay joined


def sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence end in `text`: its end punctuation, else a blank line after it."""
    ends = [m.end() for m in _END.finditer(text) if _is_end(text, m)]
    # A blank line ends a sentence that has no end punctuation: a heading, a line of verse.
    for blank in _BLANK_LINE.finditer(text):
        before = max((end for end in ends if end <= blank.start()), default=0)
        if text[before : blank.start()].strip():
            ends.append(blank.start())
    return sorted(ends)


def sentences(text: str) -> list[str]:
    """The sentences of `text`, whitespace-trimmed; a tail without end punctuation is the last one."""
    pieces, start = [], 0
    for end in [*sentence_ends(text), len(text)]:
        piece = text[start:end].strip()
        if any(c.isalnum() for c in piece):  # "..." or "—" alone is no sentence
            pieces.append(piece)
        start = end
    return pieces


def paragraphs(text: str) -> list[str]:
    """The blocks of `text` between blank (or whitespace-only) lines, stripped."""
    return [block.strip() for block in _BLANK_LINE.split(text) if block.strip()]


# ----------------------------------------------------------------------------------------------- code

_FENCE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})", re.M)
_CODE_LINE = re.compile(
    r"^\s*(?:def \w+\s*\(|class \w+\s*[(:{]|import [\w.]+|from [\w.]+ import |#include\b|function\s*\w*\s*\("
    r"|(?:public|private|static|void|int|float|double|const|let|var)\s+[\w<>\[\]]+\s*[=;(]"
    r"|(?:SELECT|INSERT INTO|UPDATE|DELETE FROM|CREATE TABLE)\b.*\b(?:FROM|VALUES|SET|WHERE|\()"
    r"|<(?:!DOCTYPE|html|head|body|div|span|script|style|table|form|p|h[1-6])\b"
    r"|print\s*\(|console\.log\s*\(|System\.out\.|return\b|(?:if|for|while)\s*\(.*\)\s*\{?\s*$"
    r"|for \w+ in .+:\s*$|[.#]?[\w-]+\s*\{\s*$"
    r"|[\w.\[\]]+\s*(?:=|\+=|-=|==)\s*[\w\"'(\[{].*[;)\]}]\s*$|[{}]\s*$|.*[=(].*;\s*$)"
)
# Unambiguous language and format names ("Rust", "Swift" and "Shell" are also plain words).
_PLAIN_LANGUAGES = (
    r"python|javascript|typescript|java|php|ruby|golang|kotlin|haskell|matlab|powershell|sql|mysql"
    r"|postgresql|html|css|jquery|json|xml|yaml|bash"
)
_MENTIONS_CODE = re.compile(
    rf"```|\bc(?:\+\+|#)(?!\w)|(?<![./-])\b(?:{_PLAIN_LANGUAGES}"  # not a file name's "page.html"
    r"|regex|regular expression|source code|code snippet|coding|(?:write|the|this|some|in|of) code"
    r"|pseudo-?code|programming|programmer|(?:a|the) program|algorithm|for loop|while loop|compiler?|debug\w*"
    r"|syntax|variables?|arrays?|recursion|recursive|data structure|linked list|hash ?(?:map|table)|docstring"
    r"|list comprehension|return statement|function (?:that|to|which|in)|(?:a|this) function"
    r"|append\w*\b[^.?!\n]{0,20}?\b(?:to|on|onto) (?:a|an|the) (?:list|array)"  # not "append a sentence"
    r"|web ?page|database|api)\b"
    r"|\b[a-z_]\w{2,}\([\w\s,'\"]*\)"  # a call such as range(5) or sorted()
    r"|^\s*(?:def|class|import|return|print|for|while|var|let|const)\b.*[:;{(=]",
    re.I | re.M,
)
# Languages named in "... in Python"; C, R and Go are left out there ("in C major", "in go") but count in
# "a C program".
LANGUAGES = (
    r"python|java|javascript|typescript|c\+\+|c#|golang|rust|ruby|php|swift|kotlin|scala|perl|matlab|bash|"
    r"shell|powershell|sql|mysql|postgresql|html|css|jquery|react|haskell|lua|julia"
)
_MAKE = r"write|create|generate|implement|construct|develop|build|provide|output|give|produce|compose|code"
# An imperative ask for code at the start: "Write a function", "Generate an SQL query", "... in Python".
# "program" and "class" are code only after write/code/implement ("Create a training program").
_ASKS_FOR_CODE = re.compile(
    r"^\W*(?:(?:please|can you|could you|would you)\s+)?(?:"
    r"(?:write|code|implement)\b[^.?!\n]{0,40}?\b(?:program|class)\b|"
    rf"(?:{_MAKE})\b[^.?!\n]{{0,40}}?\b(?:code|function|snippet|subroutine|regex|regular expression|"
    rf"pseudo-?code|for loop|while loop|css rule|"
    rf"(?:{LANGUAGES}|c|r|go) (?:script|query|statement|program))\b|"
    rf"(?:{_MAKE})\b[^.?!\n]{{0,60}}?\bin (?:{LANGUAGES})(?![\w+#]))",
    re.I | re.M,
)


def has_code_block(text: str) -> bool:
    """Whether `text` has a fenced code block (a line opening with ``` or ~~~)."""
    return _FENCE.search(text) is not None


def code_lines(text: str) -> int:
    """How many lines of `text` read as source code (a definition, import, statement, tag or brace)."""
    return sum(1 for line in text.splitlines() if line.strip() and _CODE_LINE.match(line))


def looks_like_code(text: str) -> bool:
    """A fenced block, JSON, or at least two lines (one for a one-line text) that read as source code."""
    stripped = text.strip()
    if has_code_block(text) or stripped[:1] in "{[" and stripped[-1:] in "}]":
        return True
    lines = sum(1 for line in stripped.splitlines() if line.strip())
    return code_lines(stripped) >= min(2, lines)


def mentions_code(text: str) -> bool:
    """Whether `text` is about programming: a language, a programming term, a code call or statement."""
    return _MENTIONS_CODE.search(text) is not None


def asks_for_code(text: str) -> re.Match | None:
    """The ask for code `text` opens with ("Write a function", "Sort a list in Python"), or None."""
    return _ASKS_FOR_CODE.search(text)


def is_code_task(request: str, reply: str = "") -> bool:
    """Whether a request mentions or asks for code, or either it or its reply holds a fenced block."""
    return mentions_code(request) or bool(asks_for_code(request)) or has_code_block(reply)
