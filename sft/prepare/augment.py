"""The `augment` step's transformations: constraint variants of a row, and model rephrasings of its request.

Constraint variants (`VARIANTS`, `constraint_variant`) need no model. Each adds an instruction constraint
and changes the answer to obey it: "(Be concise)", "Answer in one sentence." and "Answer in under N words."
keep the answer's first whole sentences, so the new answer is a prefix of the original, written by the
same author and true wherever the original was; "Respond in all lowercase." lowercases it. A variant
that does not apply raises `Skip`, whose `reason` is a short key the driver counts skips by.

When a variant does not apply:

- Only single-exchange rows (one user turn, one plain assistant reply, no tool schemas): in a multi-turn
  or tool row the constraint would sit on one turn while the others still show the unconstrained style.
- Length cuts only cut prose (see `text_kind`): every line a sentence, no list items, headings, tables,
  verse or code. In a list the items are the answer and a cut keeps the lead-in ("Here are five tips:")
  without them; a heading would be kept as if it were a sentence; cut code does not run.
- Length cuts skip requests whose whole answer is the product (rewrite, translate, a poem, story, essay,
  letter, recipe ...), requests for a count of things ("three reasons", "list"), code requests, and
  requests that already state a length: a prefix would be a wrong answer to them, not a shorter one.
- A cut must end on a complete statement: ". " or "!" (closing quotes allowed), not a question and not a
  lead-in that announces what follows ("There are several ways to do this.").
- A variant that would change nothing (an answer already within the budget, already one sentence, already
  lowercase) is skipped: it would teach nothing.
- Lowercase skips code (keywords and identifiers are case-sensitive) and requests about letter case.

Rephrasing needs a model: `rephrase_messages` builds the request, `parse_rephrase` (or `judge_rephrase`,
which also says why) vets the reply, and `rephrased_row` writes the row with its instruction replaced.

Raw rows keep their format: the functions edit a copy of the row as read (Alpaca fields, ShareGPT or
OpenAI turns) and add `augmented: {"kind", "from", ...}`. Pass the `fmt`, `columns` and `tags` the rows
were read with when a dataset renames fields.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping

from ..data.formats import COLUMNS, MESSAGES_ROLES, ROLE_TAGS, SHAREGPT_ALIASES, TAGS, detect_format
from ..eval.rouge import rouge_l
from ..text import is_code_task, looks_like_code, number_words, sentence_ends, sentences, tokens, words
from .rows import Row


class Skip(Exception):
    """A transformation that does not apply to a row; `reason` is a short key to count skips by."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ------------------------------------------------------------------------------------------- sentences

# Whole-line structure: list items, and a line ending as a sentence does.
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•–]\s+|\d+[.)]\s+|[a-z][.)]\s+|[A-Z]\)\s+|\(\w{1,3}\)\s+)\S")
_LINE_ENDS_SENTENCE = re.compile(r"[.!?][\"'”’)\]]*\s*\Z")
_ORDINAL = re.compile(
    r"(?:^|[.!?]\s+)(?:first|second|third|fourth|fifth|finally|lastly)(?:ly)?,", re.I | re.M
)


_LEAD_IN = re.compile(
    r"^(?:sure|certainly|of course|absolutely|great question|good question|okay|ok)\b|"
    r"^(?:here(?:'s|’s| is| are)|below|the following|as an ai|i'm sorry|i am sorry|i’m sorry)\b|"
    r"^there (?:are|is|were) (?:many|several|a few|various|numerous|some|multiple|different|a number of)\b",
    re.I,
)


def _complete(sentence: str) -> bool:
    """A sentence a cut may end on: a statement ending in . or !, not a lead-in to what follows."""
    statement = sentence.rstrip("\"'”’)]").endswith((".", "!")) and not sentence.endswith("...")
    return statement and not _LEAD_IN.match(sentence.lstrip("\"'“‘(")) and bool(words(sentence))


def cut_to_words(text: str, limit: int) -> str:
    """The longest whole-sentence prefix of `text` within `limit` words ending on a statement, else ""."""
    best = ""
    for end in sentence_ends(text):
        prefix = text[:end].rstrip()
        if len(words(prefix)) > limit:
            break
        last = sentences(prefix)[-1:]  # none, or one that is not at the end, when "..." alone ends it
        if last and prefix.endswith(last[0]) and _complete(last[0]):
            best = prefix
    return best


# ------------------------------------------------------------------------------------------ text kinds


def text_kind(text: str) -> str:
    """The answer's shape: code, list, structured (a line that is no sentence) or prose; only prose is cut."""
    # "structured": headings, tables, verse, a "...:" lead-in; "prose": every line ends as a sentence.
    if looks_like_code(text):
        return "code"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if any(_LIST_ITEM.match(line) for line in lines) or len(_ORDINAL.findall(text)) >= 2:
        return "list"  # "Firstly, ... Secondly, ..." is a list written as paragraphs
    if not lines or any(not _LINE_ENDS_SENTENCE.search(line) for line in lines):
        return "structured"
    return "prose"


# ------------------------------------------------------------------------------------ request filters

_NUMBER = rf"(?:\d+|{number_words(least=2)})"
# A request for a count of things, or for a list or steps: dropping sentences drops some of them.
_COUNTED = re.compile(
    rf"\b(?:{_NUMBER}|several|a few|a couple of|multiple|a number of|a list of)[\s-]+(?:[\w'-]+\s+){{0,3}}?"
    r"[a-z]+s\b|\b(?:list|enumerate|steps?|step-by-step|bullet|bulleted|numbered|compare|contrast)\b",
    re.I,
)
# Requests with several parts ("explain X and give an example", "differentiate A and B"): the first
# sentences answer only the first part.
_MULTI_PART = re.compile(
    r"\b(?:examples?|for instance|differentiate|distinguish|differences?|similarit(?:y|ies)|versus|vs\.?|"
    r"pros and cons|advantages and disadvantages|"
    r"and (?:give|provide|explain|describe|include|suggest|name|state|discuss|identify|justify|why|how))\b",
    re.I,
)
# Requests whose whole answer is the product: a prefix of a rewrite, poem or letter is a wrong answer.
_WHOLE_ANSWER = re.compile(
    r"\b(?:rewrite|re-write|rephrase|paraphrase|reword|translate|edit|correct|proofread|convert|transform|"
    r"reverse|sort|arrange|rearrange|reorder|format|capitali[sz]e|punctuate|fill in|complete the|poem|haiku|"
    r"limerick|sonnet|song|lyrics|verse|rap|story|tale|fable|narrative|dialogue|conversation|script|"
    r"screenplay|letter|email|e-mail|speech|essay|article|blog|recipe|menu|itinerary|schedule|agenda|"
    r"outline|resume|profile|table|quiz|riddle|joke)\b",
    re.I,
)
_LENGTH_ASKED = re.compile(
    r"\b(?:concise|concisely|brief|briefly|short|shorter|shortest|succinct|succinctly|"
    r"(?:one|single|a) (?:sentence|word|line|paragraph|phrase)|under \d+|word limit|words? or (?:less|fewer)|"
    rf"(?:{_NUMBER}|a few) (?:words|sentences|lines|paragraphs|characters))\b",
    re.I,
)
_CASE_ASKED = re.compile(
    r"\b(?:lower-?case|upper-?case|capital\w*|title case|camel ?case|all caps|acronym\w*|abbreviat\w*|"
    r"spell\w*|case-sensitive|letters?)\b",
    re.I,
)


def _cuttable(instruction: str, output: str) -> None:
    """Raise Skip unless a prefix of `output` can answer `instruction` with a length constraint."""
    if is_code_task(instruction, output):
        raise Skip("code", "a code request")
    kind = text_kind(output)
    if kind != "prose":
        raise Skip(kind, f"the answer is {kind}, not prose")
    if _LENGTH_ASKED.search(instruction):
        raise Skip("length asked", "the request already states a length")
    if _COUNTED.search(instruction):
        raise Skip("counted", "the request asks for a number of things or a list")
    if _MULTI_PART.search(instruction):
        raise Skip("multi-part", "the request has parts a prefix would leave unanswered")
    if _WHOLE_ANSWER.search(instruction):
        raise Skip("whole answer", "the request's answer is a whole product (rewrite, story, letter ...)")


# --------------------------------------------------------------------------------------------- variants

Variant = Callable[..., tuple[str, str]]
VARIANTS: dict[str, Variant] = {}


def variant(fn: Variant) -> Variant:
    """Register a variant `(instruction, output, **opts) -> (constraint, new output)` under its name."""
    VARIANTS[fn.__name__] = fn
    return fn


@variant
def concise(instruction: str, output: str, budget: int = 50, max_share: float = 0.75) -> tuple[str, str]:
    """Adds "(Be concise)": the first whole sentences within `budget` words and `max_share` of the answer."""
    count = len(words(output))
    if count <= budget:
        raise Skip("already short", f"{count} words, within the {budget}-word budget")
    _cuttable(instruction, output)
    limit = min(budget, int(count * max_share))  # a cut of a few words off the end would teach nothing
    short = cut_to_words(output, limit)
    if not short:
        raise Skip("long first sentence", f"no complete statement within {limit} words")
    return "(Be concise)", short


@variant
def one_sentence(instruction: str, output: str) -> tuple[str, str]:
    """Adds "Answer in one sentence.": the answer's first sentence, when it is a complete statement."""
    _cuttable(instruction, output)
    ends = sentence_ends(output)
    if len(sentences(output)) < 2:
        raise Skip("already short", "the answer is one sentence")
    first = output[: ends[0]].strip()
    if not _complete(first):
        raise Skip("no sentence", f"the first sentence is not a complete statement: {first[:60]!r}")
    return "Answer in one sentence.", first


@variant
def lowercase(instruction: str, output: str) -> tuple[str, str]:
    """Adds "Respond in all lowercase.": the answer lowercased (not code, not a request about case)."""
    if not any(c.isupper() for c in output):
        raise Skip("unchanged", "the answer has no uppercase letter")  # nothing would change
    if looks_like_code(output) or is_code_task(instruction, output):
        raise Skip("code", "case matters in code")
    if _CASE_ASKED.search(instruction):
        raise Skip("case asked", "the request is about letter case")
    return "Respond in all lowercase.", output.lower()


@variant
def word_limit(instruction: str, output: str, n: int | None = None, share: float = 0.5) -> tuple[str, str]:
    """Adds "Answer in under N words.": the whole sentences that fit; N defaults to half the answer."""
    # Round numbers read like a person's request: N is a multiple of 5 from 10 words up.
    count = len(words(output))
    if n is None:
        target = count * share
        n = 5 * round(target / 5) if target >= 10 else round(target)
    if n < 3 or count < n:
        raise Skip("already short", f"{count} words: too short for an under-{n}-words variant")
    _cuttable(instruction, output)
    short = cut_to_words(output, n - 1)
    if not short:
        raise Skip("long first sentence", f"no complete statement in under {n} words")
    return f"Answer in under {n} words.", short


def with_constraint(instruction: str, constraint: str) -> str:
    """`instruction` with `constraint` appended so that it reads as part of the request."""
    text = instruction.rstrip()
    if "\n" in text:
        return f"{text}\n\n{constraint}"  # after pasted text or a block: on its own line
    if constraint.startswith("("):
        return f"{text[:-1]} {constraint}:" if text.endswith(":") else f"{text} {constraint}"
    if text.endswith(":"):
        return f"{constraint} {text}"  # "Classify the animal:" introduces the input that follows it
    return f"{text} {constraint}" if _LINE_ENDS_SENTENCE.search(text) else f"{text}. {constraint}"


# --------------------------------------------------------------------------------------------- raw rows


def _layout(row: Row, fmt: str, columns: Mapping | None, tags: Mapping | None) -> tuple[str, dict, dict]:
    """The row's format, its column names, and (for turns) role values → canonical roles plus turn keys."""
    fmt = detect_format(row.data, columns, tags) if fmt == "auto" else fmt
    cols = {**COLUMNS[fmt], **{k: v for k, v in (columns or {}).items() if k in COLUMNS[fmt]}}
    if fmt == "messages":
        return fmt, cols, {"roles": MESSAGES_ROLES, "role": "role", "content": "content"}
    resolved = {**TAGS, **(tags or {})}
    roles = {**SHAREGPT_ALIASES, **{resolved[key]: role for key, role in ROLE_TAGS.items()}}
    return fmt, cols, {"roles": roles, "role": resolved["role_tag"], "content": resolved["content_tag"]}


def _turn(data: dict, cols: dict, turns: dict, role: str, last: bool = False) -> dict:
    """The first (or last) raw turn of `role` in a ShareGPT or messages row."""
    matching = [t for t in data[cols["messages"]] if turns["roles"].get(t.get(turns["role"])) == role]
    return matching[-1] if last else matching[0]


def _single_exchange(row: Row) -> None:
    messages = row.conversation["messages"]
    if [m["role"] for m in messages] != ["user", "assistant"] or messages[1].get("tool_calls"):
        raise Skip("multi-turn", f"{len(messages)} turns; variants apply to one user turn and one reply")
    if row.conversation.get("tools"):
        raise Skip("tools", "the row offers tools")


def instruction_text(
    row: Row, fmt: str = "auto", columns: Mapping | None = None, tags: Mapping | None = None
) -> str:
    """The text to rephrase: an Alpaca row's instruction field (not its input), else the first user turn."""
    fmt, cols, _ = _layout(row, fmt, columns, tags)
    text = row.data.get(cols["prompt"]) if fmt == "alpaca" else row.instruction
    if not isinstance(text, str) or not text.strip():
        raise Skip("no instruction", "the instruction field is empty")
    return text


def _edited(
    row: Row,
    fmt: str,
    columns: Mapping | None,
    tags: Mapping | None,
    user: Callable[[str], str],
    answer: str | None,
) -> dict:
    """A copy of the raw row with its instruction passed through `user` and (if given) its reply replaced."""
    fmt, cols, turns = _layout(row, fmt, columns, tags)
    data = copy.deepcopy(row.data)
    if fmt == "alpaca":
        # An Alpaca row with only an input holds its request there.
        key = cols["prompt"] if (data.get(cols["prompt"]) or "").strip() else cols["query"]
        data[key] = user(data[key])
        if answer is not None:
            data[cols["response"]] = answer
    else:
        first = _turn(data, cols, turns, "user")
        first[turns["content"]] = user(row.instruction)  # content parts become one text
        if answer is not None:
            _turn(data, cols, turns, "assistant", last=True)[turns["content"]] = answer
    return data


def constraint_variant(
    row: Row,
    name: str,
    *,
    fmt: str = "auto",
    columns: Mapping | None = None,
    tags: Mapping | None = None,
    **opts,
) -> dict:
    """The raw row with variant `name` applied, or Skip; `opts` go to the variant (budget=, n=, share=)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    _single_exchange(row)
    constraint, answer = VARIANTS[name](row.instruction, row.response, **opts)
    data = _edited(row, fmt, columns, tags, lambda text: with_constraint(text, constraint), answer)
    return {**data, "augmented": {"kind": name, "from": row.location, "constraint": constraint}}


# ------------------------------------------------------------------------------------------- rephrasing

REPHRASE_PROMPT = """\
Rewrite the instruction below in different words. It must ask for exactly the same thing: same meaning, \
same task, same constraints (lengths, counts, formats), and the same names, numbers and quoted or pasted \
text, copied as they are. Do not answer it and do not explain. Reply with only the rewritten instruction.

Instruction:
{instruction}"""

# ROUGE-L F1 over content words (lowercased, punctuation and `_FUNCTION_WORDS` removed) below which a reply
# is about something else: shared "the", "of", "is" would otherwise lift unrelated text over any low bound.
# Measured on hand-written replies: close rewordings score 0.3-0.9, free ones 0.14-0.3 ("Describe the
# paperclip maximizer problem." → "Give an account of the thought experiment in which an AI pursues
# paperclip production without limits.": 0.14), text on another subject and a poem written instead of
# "Write a poem about the sea." 0.0. An answer that repeats the request's words ("Paris is the capital of
# France.") passes: overlap with the row's answer does not tell it apart either, as a faithful rewording
# shares the answer's words too (measured), so that is left to the score step.
MIN_ROUGE = 0.1
_FUNCTION_WORDS = frozenset(
    "a an the of to in on at for by with from and or but is are was were be been being do does did this that "
    "these those it its as into about what which who whom how why when where can could would should will "
    "shall may might must please you your me my i we our us they them their he she his her there here some "
    "any so than then very just also if not no".split()
)
# Longer than this many times the original's words (at least 4 words counted) is an answer or chatter.
MAX_GROWTH = 3

_REPLY_FENCE = re.compile(r"\A```[\w-]*[ \t]*\n(.*?)\n?```\Z", re.S)
_LABEL = re.compile(
    r"\A\s*(?:(?:sure|certainly|of course|okay|ok)\b[^\n:]{0,20}?[,.!]\s*)?"
    r"(?:here(?:'s|’s| is| are)\b[^\n:]{0,60}:"
    r"|\**(?:the\s+)?(?:rewritten|rephrased|reworded|paraphrased|revised|new|alternative)"
    r"(?:\s+(?:instruction|version|request|prompt|wording|text))?\**\s*:\**"
    r"|\**(?:instruction|rewrite|rephrased?|answer|output)\**\s*:\**)\s*",
    re.I,
)
_TAG = re.compile(r"\A<(\w+)>\s*(.*?)\s*</\1>\Z", re.S)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`", "**": "**"}
_REFUSAL = re.compile(r"\A(?:i'm sorry|i’m sorry|i am sorry|i cannot|i can't|i can’t|as an ai)\b", re.I)
_QUOTED = re.compile(r"\"([^\"\n]{3,})\"|“([^”\n]{3,})”")
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")


def rephrase_messages(instruction: str) -> list[dict]:
    """OpenAI chat messages asking a model for `instruction` in other words, same meaning, reply only."""
    # One user turn: some chat templates (Gemma's) reject a system turn.
    return [{"role": "user", "content": REPHRASE_PROMPT.format(instruction=instruction.strip())}]


def _normal(text: str) -> str:
    return " ".join(tokens(text))


def _content(text: str) -> str:
    """The content words of `text` (all its words when it has nothing but function words)."""
    plain = tokens(text)
    return " ".join([w for w in plain if w not in _FUNCTION_WORDS] or plain)


def _unwrap(reply: str) -> str:
    """The reply without fences, tags, labels and wrapping quotes, which models add around the text."""
    text = reply.strip()
    for _ in range(3):  # wrappers nest: "Rewritten instruction: "..."" inside a fence
        before = text
        if fenced := _REPLY_FENCE.match(text):
            text = fenced.group(1).strip()
        if tagged := _TAG.match(text):
            text = tagged.group(2)
        text = _LABEL.sub("", text, count=1).strip()
        for left, right in _QUOTES.items():
            inner = text[len(left) : -len(right)]
            if (
                len(text) > 2 * len(left)
                and text.startswith(left)
                and text.endswith(right)
                and left not in inner
            ):
                text = inner.strip()
        if text == before:
            break
    return text


def judge_rephrase(original: str, reply: str) -> tuple[str | None, str]:
    """(the rewritten instruction, "ok") from a model's reply, or (None, why it was rejected)."""
    text = _unwrap(reply)
    original = original.strip()
    if not text:
        return None, "empty"
    if _REFUSAL.match(text):
        return None, "refusal"
    lines = lambda s: sum(1 for line in s.splitlines() if line.strip())  # noqa: E731
    if lines(text) > lines(original):
        return None, "chatter"  # an added line is an explanation, a note or a second option
    if _normal(text) == _normal(original):
        return None, "identical"
    if len(text.split()) > MAX_GROWTH * max(len(original.split()), 4):
        return None, "too long"
    if rouge_l(_content(text), _content(original)) < MIN_ROUGE:
        return None, "unrelated"
    kept = _normal(text)
    must_keep = [a or b for a, b in _QUOTED.findall(original)] + original.splitlines()[1:]
    if any(_normal(part) and _normal(part) not in kept for part in must_keep):
        return None, "lost text"  # pasted or quoted text must stay as it was
    if set(_NUMBERS.findall(original)) - set(_NUMBERS.findall(text)):
        return None, "lost number"
    return text, "ok"


def parse_rephrase(original: str, reply: str) -> str | None:
    """The rewritten instruction in a model's `reply`, or None when it is not a usable rephrasing."""
    return judge_rephrase(original, reply)[0]


def rephrased_row(
    row: Row,
    instruction: str,
    *,
    fmt: str = "auto",
    columns: Mapping | None = None,
    tags: Mapping | None = None,
) -> dict:
    """The raw row with its instruction (Alpaca field, else first user turn) replaced, marked augmented."""
    instruction_text(row, fmt, columns, tags)  # Skip for a row without one: the input is not a request
    data = _edited(row, fmt, columns, tags, lambda _: instruction, None)
    return {**data, "augmented": {"kind": "rephrase", "from": row.location}}
