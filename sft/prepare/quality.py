"""Quality scores for SFT rows on the guide's three criteria: instruction clarity, response helpfulness and
formatting correctness, each 1-5, with `score` their mean; the `filter` step keeps rows that `passes`.

Two scorers give the same fields:

- `heuristic_scores`: transparent rules, fast enough for every row. Each criterion starts at 5 and loses
  points for the named problems in `RULES`; every deduction leaves a reason ("clarity: instruction has 2
  words"). A problem that makes a row unusable by itself costs SEVERE (4: with the mean of three criteria,
  one is enough to fall below the default threshold of 4.0), a clear fault MAJOR (2: two fail a row), a
  blemish MINOR (1). A multi-turn row is scored per exchange (a user turn and everything the assistant did
  until the next one) and averaged per criterion.
- `judge_messages` / `parse_judge`: the prompt for an LLM judge and the parse of its reply, for the driver
  that sends it to an OpenAI-compatible endpoint or a local model.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from ..text import asks_for_code, code_lines, number_value, number_words, paragraphs, sentences, tokens, words
from .backends import reply_objects
from .rows import Row

CRITERIA = ("clarity", "helpfulness", "formatting")
SEVERE, MAJOR, MINOR = 4, 2, 1
DEFAULT_THRESHOLD = 4.0

Problem = tuple[int, str]  # (points deducted, reason without the criterion prefix)

# ------------------------------------------------------------------------------------------- patterns

FENCE = re.compile(r"(`{3,}(?=[^`]*$)|~{3,})")  # an opening fence line, once stripped
INLINE_CODE = re.compile(r"`[^`\n]+`")
NUMBER = r"\d{1,2}|" + number_words()  # not 2020: a year is no count of items

# Words that refer to material the user should have supplied ("Classify the following sentence.").
REFERENCE = re.compile(
    r"\b(?:the following|below|(?:the|this|these) given (?:text|sentence|paragraph|passage|article|"
    r"list|data|words?|code|poem|story|email|document|statement|quote|table|input|items|numbers)|"
    r"(?:this|these|the provided|the above) (?:text|sentences?|paragraph|passage|article|list|data|"
    r"words?|code|poem|story|email|document|statement|quote|table|input|items|numbers))\b",
    re.I,
)
# Material after the ask: another line, a quotation, or text after a colon.
MATERIAL = re.compile(r"\n\s*\S|\s[-–—]\s+\w|[\"“«'‘][^\"”»'’\n]*\w[^\"”»'’\n]*[\"”»'’]|:\s*\S", re.S)
PLACEHOLDER_TEXT = re.compile(
    r"<\s*no\s*-?\s*(?:input|output)\s*>|\blorem ipsum\b|^\s*(?:n/?a|none|null|nan|tbd|todo|xxx+|"
    r"\.\.\.|<\s*input\s*>)\s*$",
    re.I | re.M,
)
TEMPLATE = re.compile(
    r"\{\{\s*[\w.]+\s*\}\}|\$\{\w+\}|\{[a-z]+_[a-z_]+\}|"
    r"\{(?:name|input|text|question|instruction|query|topic|context|sentence|word|product|company|city|"
    r"country|date|number|user|item|language)\}|\[(?:insert|enter|add|fill in)\b[^\]\n]{0,40}\]",
    re.I,
)
ASK_VERBS = (
    "add analyze analyse answer arrange assess brainstorm build calculate categorize change check choose "
    "classify compare compose compute construct convert correct count create debug define delete describe "
    "design detect determine develop discuss draft edit estimate evaluate explain extract fill find fix "
    "format generate give help identify implement improve indicate list make match name outline paraphrase "
    "predict produce propose provide rank rate recommend reorder rephrase replace rewrite select solve sort "
    "state suggest summarize summarise tell translate turn use verify write"
).split()
ASK = re.compile(
    r"\?|\b(?:please|can you|could you|would you|help me|i need|i want|i'd like|tell me)\b|"
    rf"(?:^|[.!\n]\s*)(?:{'|'.join(ASK_VERBS)})\b",
    re.I | re.M,
)
# Refusals and AI disclaimers: a sentence that apologises or says "as an AI" and then declines.
APOLOGY = re.compile(r"\b(?:sorry|unfortunately|i apologi[sz]e|regrettably)\b", re.I)
AI_SELF = re.compile(
    r"\b(?:as an? (?:ai|artificial intelligence|(?:large )?language model|virtual assistant|ai assistant|"
    r"ai language model)|i(?: am|'m|’m) (?:just |only )?an? (?:ai|artificial intelligence|"
    r"(?:large )?language model|virtual assistant|ai assistant|ai language model))\b",
    re.I,
)
DECLINE = re.compile(
    r"\b(?:can ?not|can't|can’t|unable|not able|not capable|don't have|don’t have|do not have|"
    r"doesn't have|does not have|(?:do not|don't|don’t) possess|lack the (?:ability|capability)|"
    r"didn't provide|did not provide|haven't provided|have not provided|"
    r"(?:was|were|is|are) not provided|need (?:more|additional|further)|please provide|not possible|"
    r"won't be able|will not be able|not allowed|not permitted)\b",
    re.I,
)
OPEN_ASK = re.compile(
    r"^\W*(?:(?:please|can you|could you|would you)\s+)?(?:explain|describe|discuss|elaborate|analy[sz]e|"
    r"compare|contrast|tell me about|why\b|how (?:does|do|can|could|would|should|is|are|to)\b|"
    r"write (?:an? |the )?(?:\w+ )?(?:essay|story|article|blog post|paragraph|poem|letter|speech|report|"
    r"review|description))",
    re.I,
)
LENGTH_LIMIT = re.compile(
    rf"\b(?:in (?:(?:{NUMBER}|one|a|a single|few|a few) )?(?:words?|sentences?|lines?|phrases?)|"
    r"briefly|brief|short|shortly|concise(?:ly)?|one-sentence|one sentence|single sentence|one word|tweet|"
    r"headline|title|slogan|tagline|haiku|limerick|caption|\d+ words?|yes or no|yes/no|which|whether)\b",
    re.I,
)
LIST_ASK = re.compile(
    r"^\W*(?:(?:please|can you|could you)\s+)?(?:list|enumerate|"
    r"(?:make|create|give|provide|write|generate|compile|prepare) (?:me |us )?(?:an? |the )?"
    r"(?:\w+ )?(?:list|checklist|bullet points|bulleted list))\b",
    re.I,
)
UNITS = (
    r"words?|sentences?|paragraphs?|lines?|characters?|letters?|syllables?|minutes?|seconds?|hours?|days?|"
    r"weeks?|months?|years?|pages?|times?|digits?|decimal|percent|stanzas?|verses?|numbers? (?:between|from)"
)
COUNT_ASK = re.compile(
    r"\b(?:list|name|give|provide|generate|suggest|write|create|come up with|brainstorm|outline|enumerate|"
    r"identify|mention|state|offer|share|recommend|propose|compose|describe|explain|select|choose|pick|"
    r"find|produce|develop|think of|tell me|what are)\s+(?:(?:me|us|at least|exactly|the|top|some|up to|"
    rf"about|only|your)\s+)*({NUMBER})\s+(?!(?:{UNITS})\b)[a-z]",
    re.I,
)
MORE_COUNTS = re.compile(rf"\band\s+({NUMBER})\s+(?!(?:{UNITS})\b)[a-z]", re.I)
GIVEN_CODE = re.compile(r"\b(?:this|the following|the given|given|above|output|result)\b", re.I)
JSON_ASK = re.compile(
    r"\b(?:in|as|into|to|output|outputs|return|returns|respond with|produce|generate|create|write|give|"
    r"provide|construct|build|format(?:ted)?(?: it)? as)\s+(?:(?:a|an|the|valid|proper|well-formed|"
    r"structured|single)\s+)*json\b",
    re.I,
)
SPECIAL_TOKEN = re.compile(
    r"<\|[\w.-]+\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<(?:eos|bos|pad|unk)>|"
    r"<\|?endoftext\|?>|\bassistant<\|",
    re.I,
)
LITERAL_ESCAPE = re.compile(r"\\[ntr](?![a-z])|\\u[0-9a-fA-F]{4}")
HTML_TAG = re.compile(
    r"</?(?:p|br|div|span|b|i|u|strong|em|ul|ol|li|h[1-6]|table|tr|td|th|a|img|code|pre|font|hr)\b[^>\n]*>",
    re.I,
)
MARKUP_ASK = re.compile(r"\b(?:html|xml|markup|tags?|web ?page|website|svg|jsx|markdown)\b", re.I)
# Text damaged on the way: the Unicode replacement character, control characters, UTF-8 read as Latin-1.
ODD_CHARACTERS = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|Ã[\x80-\xbf©¨¤¶§]|â€[™œ˜\x9d“”]")
# Endings no finished sentence has: a comma, an opening bracket, a conjunction, an article, "of", "the".
DANGLING = re.compile(
    r"(?:[,;:(\-–]|\b(?:and|or|but|nor|the|a|an|of|to|with|from|because|than|into|their|its|our|your|"
    r"whose|whereas|although))\s*$",
    re.I,
)
CLOSED = re.compile(r"[.!?:;)\]\"'”’*`。！？）」]\s*$")  # a line that ends as sentences and markup do
BARE_WORD_END = re.compile(r"(?:^|\s)[^\W\d_]+\s*$")  # a plain word: not a URL, number or file name
ATTRIBUTION = re.compile(r"[\"”'’]\s*[-–—]+\s*[^\"”]{1,60}$")  # '"... true." - Mark Twain'
LIST_ITEM = re.compile(r"^\s{0,3}(?:#+\s*)?(?:\*\*)?(?:\d{1,2}[.)]|step \d+:?|[a-z][.)]\s)\s*\S", re.I)
BULLET = re.compile(r"^\s{0,3}[-*•+]\s+\S")
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
HEADING = re.compile(r"^\s*#{1,6}\s")


# ----------------------------------------------------------------------------------------- exchanges


@dataclass
class Markdown:
    """A text split at its code fences: the prose, each fenced block's contents, whether one is unclosed."""

    prose: str
    blocks: list[str]
    unclosed: bool


def split_code(text: str) -> Markdown:
    """`text` split at its code fences the CommonMark way (a fence closes on a run at least as long)."""
    # LLM answers close "```" with "````" often enough that counting fence lines would misjudge them.
    prose, blocks, fence, block = [], [], None, []
    for line in text.split("\n"):
        stripped = line.strip()
        if fence is None:
            opening = FENCE.match(stripped)
            if opening:
                fence, block = opening.group(1), []
            else:
                prose.append(line)
        elif stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            blocks.append("\n".join(block))
            fence = None
            prose.append("")
        else:
            block.append(line)
    if fence is not None:
        blocks.append("\n".join(block))
    # Inline code becomes a word, so "The regex is `a+`" does not look like a sentence cut off at "is".
    return Markdown(INLINE_CODE.sub("code", "\n".join(prose)), blocks, fence is not None)


def strip_code(text: str) -> str:
    """`text` without its fenced blocks (an unclosed fence runs to the end); inline code reads "code"."""
    return split_code(text).prose


def _normal(text: str) -> str:
    return " ".join(tokens(text))


@dataclass
class Exchange:
    """One user turn and all the assistant did until the next one, with the row facts the rules need."""

    user: str
    texts: list[str] = field(default_factory=list)  # the assistant's text replies, in order
    calls: list[str] = field(default_factory=list)  # names of the tools it called
    tools: frozenset[str] | None = None  # names the row offers; None when it offers none
    first: bool = True

    @cached_property
    def answer(self) -> str:
        """All the assistant's text in this exchange, the reply after a tool result included."""
        return "\n\n".join(self.texts)

    @cached_property
    def ask(self) -> str:
        """The user turn's first and last lines, where instructions state what they want."""
        # An Alpaca instruction comes first and its input after; a chat user often pastes text, then asks.
        lines = [line for line in self.user.strip().splitlines() if line.strip()]
        return "\n".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""

    @cached_property
    def user_words(self) -> list[str]:
        """The words of the user turn."""
        return words(self.user)

    @cached_property
    def answer_words(self) -> list[str]:
        """The words of the answer."""
        return words(self.answer)

    @cached_property
    def markdown(self) -> Markdown:
        """The answer split at its code fences."""
        return split_code(self.answer)

    @property
    def prose(self) -> str:
        """The answer without code, where prose rules apply."""
        return self.markdown.prose

    @property
    def only_calls(self) -> bool:
        """The assistant answered with tool calls and no text (a call is an answer, not an empty one)."""
        return bool(self.calls) and not self.answer.strip()


def exchanges(row: Row) -> list[Exchange]:
    """The row's exchanges: each user turn with the assistant's texts and tool calls up to the next one."""
    # A tool call and the reply after its result belong to one exchange: the reply is what gets scored.
    tools = row.conversation.get("tools")
    names = frozenset(t["function"]["name"] for t in tools) if tools else None
    found: list[Exchange] = []
    for message in row.conversation["messages"]:
        role, content = message["role"], message.get("content") or ""
        if role == "user":
            if found and not (found[-1].texts or found[-1].calls):
                found[-1].user += "\n" + content
            else:
                found.append(Exchange(content, tools=names, first=not found))
        elif role == "assistant" and found:
            if content.strip():
                found[-1].texts.append(content)
            found[-1].calls += [call["function"]["name"] for call in message.get("tool_calls") or []]
    return found


# ------------------------------------------------------------------------------------------ clarity
# Clarity is about the user turn. Rules that need the whole task in one turn (length, missing input) run
# on the first exchange only: a later turn ("Yes, please", "Explain this sentence") leans on the dialogue.


def short_instruction(ex: Exchange) -> Problem | None:
    """A first instruction of fewer than 3 words."""
    # Rarely a whole task; but "Define photosynthesis." is one, so 2 words cost less than 1.
    n = len(ex.user_words)
    if ex.first and 0 < n < 3:
        return (MAJOR if n == 1 else MINOR), f"instruction has {n} word{'s' * (n != 1)}"
    return None


def empty_instruction(ex: Exchange) -> Problem | None:
    """An empty instruction."""
    return (SEVERE, "instruction is empty") if not ex.user_words and not ex.user.strip() else None


def rambling_instruction(ex: Exchange) -> Problem | None:
    """Over 250 words without a question, request or imperative anywhere."""
    # Long inputs are fine when something asks for a thing; without an ask the task is guesswork.
    n = len(ex.user_words)
    if n > 250 and not ASK.search(ex.user):
        return MAJOR, f"instruction has {n} words and no clear ask"
    return None


def missing_input(ex: Exchange) -> Problem | None:
    """A first instruction that refers to material ("the following sentence", "below") it does not hold."""
    # The answer to such a row is invented or a refusal; Alpaca-style data has many with an empty input.
    if not ex.first:
        return None
    match = REFERENCE.search(ex.user)
    if not match:
        return None
    rest = ex.user[match.end() :]
    end = re.search(r"[.?!](?:\s|$)", rest)
    after = rest[end.end() :] if end else ""
    if words(after) or MATERIAL.search(ex.user.strip()):
        return None
    return SEVERE, f"refers to '{match.group(0)}' but no input is given"


def placeholder_instruction(ex: Exchange) -> Problem | None:
    """Placeholder junk in the instruction: "<noinput>", a bare "N/A" or "TODO" line, "lorem ipsum"."""
    # Left over from a dataset's template; the model would learn to expect it.
    text = strip_code(ex.user)
    match = PLACEHOLDER_TEXT.search(text)
    if not match:
        return None
    whole = not words(PLACEHOLDER_TEXT.sub(" ", text))
    return (SEVERE if whole else MAJOR), f"placeholder text {match.group(0).strip()!r}"


def garbage_instruction(ex: Exchange) -> Problem | None:
    """An instruction under 40% letters or digits among its visible characters."""
    # Real instructions, matrices and code inputs included, stay above 60%.
    visible = [c for c in ex.user if not c.isspace()]
    if len(visible) < 4:
        return None
    share = sum(c.isalnum() for c in visible) / len(visible)
    return (SEVERE, f"instruction is mostly symbols ({share:.0%} letters or digits)") if share < 0.4 else None


def shouting_instruction(ex: Exchange) -> Problem | None:
    """An instruction in capitals (over 90% of at least 12 letters)."""
    letters = [c for c in strip_code(ex.user) if c.isalpha() and c.lower() != c.upper()]
    if len(letters) >= 12 and sum(c.isupper() for c in letters) > 0.9 * len(letters):
        return MINOR, "instruction is in capitals"
    return None


def damaged_instruction(ex: Exchange) -> Problem | None:
    """Replacement or control characters, or mojibake ("Ã©", "â€™") in the instruction."""
    match = ODD_CHARACTERS.search(ex.user)
    return (MAJOR, f"damaged characters ({match.group(0)!r})") if match else None


def template_instruction(ex: Exchange) -> Problem | None:
    """Unfilled template slots in the instruction ("{{name}}", "{product_name}", "[insert topic]")."""
    match = TEMPLATE.search(strip_code(ex.user))
    return (MAJOR, f"unfilled template slot {match.group(0)!r}") if match else None


# -------------------------------------------------------------------------------------- helpfulness
# Helpfulness is about the answer against the ask. An exchange the assistant answered with tool calls only
# is judged by those calls: text rules do not apply to it.


def empty_answer(ex: Exchange) -> Problem | None:
    """No answer, or one without a letter or digit."""
    if ex.only_calls:
        return None
    if not ex.answer.strip():
        return SEVERE, "answer is empty"
    if not any(c.isalnum() for c in ex.answer):
        return SEVERE, f"answer has no words ({ex.answer.strip()[:20]!r})"
    return None


def placeholder_answer(ex: Exchange) -> Problem | None:
    """A placeholder ("<nooutput>", "TODO", "lorem ipsum") in the answer."""
    if not ex.answer.strip():
        return None
    match = PLACEHOLDER_TEXT.search(strip_code(ex.answer))
    if not match or match.group(0).strip().lower() in ("none", "n/a", "na", "null", "nan", "..."):
        return None  # "None" or "N/A" can be the right answer to a question
    whole = not words(PLACEHOLDER_TEXT.sub(" ", ex.answer))
    return (SEVERE if whole else MAJOR), f"answer holds placeholder {match.group(0).strip()!r}"


def refusal(ex: Exchange) -> Problem | None:
    """An answer whose first sentence declines ("I'm sorry, but I cannot", "As an AI, I don't have")."""
    # Under 60 words it is no answer at all; a longer one answers but still teaches the disclaimer. In a row
    # with tools, declining what no tool can do is the behaviour the data teaches, so it costs less there.
    first_line = ex.prose.strip().split("\n", 1)[0]  # a line break ends the opening too
    opening = next(iter(sentences(first_line)), "")
    if not opening or not ((APOLOGY.search(opening) or AI_SELF.search(opening)) and DECLINE.search(opening)):
        return None
    n = len(ex.answer_words)
    if n < 60 and ex.tools is None:
        return SEVERE, f"refusal ({n} words, opens {opening[:40]!r})"
    return MAJOR, f"opens with a refusal or AI disclaimer ({opening[:40]!r})"


def disclaimer(ex: Exchange) -> Problem | None:
    """ "As an AI" / "I am a language model" boilerplate in an answer that does not decline."""
    match = AI_SELF.search(ex.prose)
    if match and not refusal(ex):
        return MINOR, f"AI disclaimer ({match.group(0)!r})"
    return None


def echo(ex: Exchange) -> Problem | None:
    """An answer that repeats the instruction (or its first line, the task) instead of doing it."""
    answer = _normal(ex.answer)
    if len(answer.split()) < 3:
        return None
    task = _normal(ex.user.strip().splitlines()[0]) if ex.user.strip() else ""
    if answer in (_normal(ex.user), task):
        return SEVERE, "answer repeats the instruction"
    return None


def too_short(ex: Exchange) -> Problem | None:
    """Under 10 words for an open-ended ask (explain, describe, why, write an essay) that sets no length."""
    # Short answers to classification, yes/no, one-word or math asks are right, so only open asks count.
    n = len(ex.answer_words)
    if ex.only_calls or n == 0 or n >= 10:
        return None
    if OPEN_ASK.search(ex.ask) and not LENGTH_LIMIT.search(ex.user):
        return MAJOR, f"{n}-word answer to an open-ended ask"
    return None


def item_counts(text: str) -> dict[str, int]:
    """How many items `text` holds, counted each sensible way: list markers, lines, sentences, commas."""
    lines = [line for line in text.splitlines() if line.strip()]
    content = [line for line in lines if not line.rstrip().endswith(":")]  # "Here are five tips:" is no item
    single = " ".join(content)
    return {
        "numbered": sum(bool(LIST_ITEM.match(line)) for line in lines),
        "bullets": sum(bool(BULLET.match(line)) for line in lines),
        "lines": len(content),
        "paragraphs": len([p for p in paragraphs(text) if not p.endswith(":")]),
        "sentences": len(sentences(single)),
        "commas": len([p for p in re.split(r",|;|\band\b|\bor\b", single) if words(p)]),
    }


def list_request(ex: Exchange) -> Problem | None:
    """Asked for N items ("List 5 fruits") or for a list, and the answer has another count or no list."""
    # Lenient: list markers decide when there are any; otherwise any count that matches is accepted, as
    # "Name three colours." is well answered by "Red, blue and yellow."
    if ex.only_calls or not ex.answer.strip():
        return None
    counts = item_counts(ex.prose)
    marked = [n for n in (counts["numbered"], counts["bullets"]) if n >= 2]
    match = COUNT_ASK.search(ex.ask)
    if match:
        # "2 goods and 2 services" asks for two lists or four items: either count is right.
        more = [number_value(n) for n in MORE_COUNTS.findall(ex.ask[match.end() :].split("\n")[0])]
        want = number_value(match.group(1))
        if want < 2 or {want, want + sum(more)} & set(marked or counts.values()):
            return None
        if marked:
            return MAJOR, f"asked for {want} items, answer lists {marked[0]}"
        return MAJOR, f"asked for {want} items, answer has no list of {want}"
    if LIST_ASK.search(ex.ask) and not marked and counts["lines"] < 2 and counts["commas"] < 2:
        return MAJOR, "asked for a list, answer has none"
    return None


def truncated(ex: Exchange) -> Problem | None:
    """A 20+ word answer whose last prose line stops mid-sentence ("... the importance of")."""
    # A dangling word ("of", "and", a comma) is certain; a bare word ending an 8+ word line nearly so in
    # prose. Verse, list items, headings, table rows, quote attributions and lines ending in a URL or a
    # number end without punctuation by design and are left alone.
    if ex.only_calls or len(ex.answer_words) < 20 or ex.markdown.unclosed:
        return None  # an unclosed fence is charged as such
    if ex.markdown.blocks and not ex.answer.rstrip().splitlines()[-1].strip().strip("`~"):
        return None  # ends on a closed code block
    lines = [line.strip() for line in ex.prose.splitlines() if line.strip()]
    if not lines or (len(lines) >= 4 and sum(not CLOSED.search(line) for line in lines) >= len(lines) / 2):
        return None  # verse
    last, n = lines[-1], len(words(lines[-1]))
    if n >= 4 and DANGLING.search(last):
        return SEVERE, f"answer ends mid-sentence ({last[-30:]!r})"
    structured = LIST_ITEM.match(last) or BULLET.match(last) or TABLE_ROW.match(last) or HEADING.match(last)
    if not (structured or ATTRIBUTION.search(last)) and n >= 8 and BARE_WORD_END.search(last):
        return SEVERE, f"answer ends without closing punctuation ({last[-30:]!r})"
    return None


def unknown_tool(ex: Exchange) -> Problem | None:
    """A tool call to a function the row does not offer (the model would learn to invent tools)."""
    unknown = [name for name in ex.calls if ex.tools is not None and name not in ex.tools]
    return (MAJOR, f"calls tool {unknown[0]!r}, which the row does not offer") if unknown else None


# --------------------------------------------------------------------------------------- formatting


def unbalanced_fence(ex: Exchange) -> Problem | None:
    """A code fence that is never closed: the rest renders as code, and the answer was often cut off."""
    return (SEVERE, "unbalanced code fence (opened, never closed)") if ex.markdown.unclosed else None


def code_request(ex: Exchange) -> Problem | None:
    """Asked for code ("Write a Python function") and got none, or got it outside a fenced block."""
    # Asks about code the user gave ("the output of this code") are not asks for code.
    ask = asks_for_code(ex.ask)
    if ex.only_calls or not ex.answer.strip() or not ask or GIVEN_CODE.search(ask.group(0)):
        return None
    if ex.markdown.blocks or INLINE_CODE.search(ex.answer):
        return None  # short code (a regex, a one-liner) is fine inline
    lines = code_lines(ex.answer)
    if lines >= 2 or (lines and len(ex.answer_words) < 30):
        return MINOR, "code is not in a fenced block"
    return MAJOR, "asked for code, answer has none"


def repetition(ex: Exchange) -> Problem | None:
    """Degenerate repetition: a line repeated 3+ times, a word 10+ times in a row, or few distinct 4-grams."""
    # A line must also make up a third of the lines, so a refrain passes. Under 60% distinct 4-grams is
    # degenerate: the GPT-4 Alpaca answers, songs and code explanations included, stay above 70%.
    lines = [line.strip().lower() for line in ex.prose.splitlines() if len(words(line)) >= 3]
    if lines:
        line, times = Counter(lines).most_common(1)[0]
        if times >= 3 and times * 3 >= len(lines):
            return SEVERE, f"line repeated {times} times ({line[:30]!r})"
    run = re.search(r"\b(\w+)(?:\W+\1\b){9,}", ex.prose, re.I)
    if run:
        return SEVERE, f"word repeated in a run ({run.group(0)[:30]!r})"
    plain = tokens(ex.prose)
    grams = [tuple(plain[i : i + 4]) for i in range(len(plain) - 3)]
    if len(grams) >= 30:
        distinct = len(set(grams)) / len(grams)
        if distinct < 0.6:
            return (SEVERE if distinct < 0.4 else MAJOR), f"repetitive text ({distinct:.0%} distinct 4-grams)"
    return None


def json_candidates(text: str) -> list[str]:
    """Where JSON could be in an answer: the whole text, each fenced block, the outermost {...} or [...]."""
    found = [text.strip()]
    found += split_code(text).blocks
    for open_, close in ("{}", "[]"):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            found.append(text[start : end + 1])
    return found


def json_request(ex: Exchange) -> Problem | None:
    """Asked for JSON ("return it as JSON") and the answer holds none that parses."""
    # No bracket at all is a plain failure to follow the format; broken JSON (a trailing comma) is less bad.
    if ex.only_calls or not ex.answer.strip() or not JSON_ASK.search(ex.ask):
        return None
    candidates = json_candidates(ex.answer)
    errors = []
    for candidate in candidates:
        try:
            json.loads(candidate)
            return None
        except json.JSONDecodeError as err:
            errors.append(err.msg)
        except RecursionError:  # nested deeper than the decoder can follow: no usable JSON either
            errors.append("nested too deeply")
    if len(candidates) == 1:  # only the whole text: no brackets anywhere
        return SEVERE, "asked for JSON, answer has none"
    return MAJOR, f"asked for JSON, answer's JSON does not parse ({errors[-1]})"


def special_tokens(ex: Exchange) -> Problem | None:
    """Chat-template tokens in the answer ("<|im_end|>", "</s>", "[INST]"): the model would learn them."""
    match = SPECIAL_TOKEN.search(ex.answer)
    return (SEVERE, f"special token {match.group(0)!r} in the answer") if match else None


def escape_junk(ex: Exchange) -> Problem | None:
    """Literal escapes in the answer's prose ("\\n", "\\u00e9"): text that was serialised twice."""
    match = LITERAL_ESCAPE.search(ex.prose)
    return (MAJOR, f"literal escape {match.group(0)!r} in the text") if match else None


def html_tags(ex: Exchange) -> Problem | None:
    """HTML tags in the answer's prose when the user asked for no markup (scraped text left in)."""
    match = HTML_TAG.search(ex.prose)
    if match and not MARKUP_ASK.search(ex.user):
        return MINOR, f"HTML tag {match.group(0)[:20]!r} in the answer"
    return None


def wall_of_text(ex: Exchange) -> Problem | None:
    """A paragraph of over 250 words in the answer."""
    longest = max((len(words(p)) for p in paragraphs(ex.prose)), default=0)
    return (MINOR, f"{longest}-word paragraph") if longest > 250 else None


def odd_characters(ex: Exchange) -> Problem | None:
    """Replacement or control characters, or mojibake ("Ã©", "â€™") in the answer."""
    match = ODD_CHARACTERS.search(ex.answer)
    return (MAJOR, f"damaged characters ({match.group(0)!r})") if match else None


def stray_whitespace(ex: Exchange) -> Problem | None:
    """Leading or trailing whitespace around the answer (the model would learn to emit it)."""
    if ex.answer and ex.answer != ex.answer.strip():
        return MINOR, "answer has leading or trailing whitespace"
    return None


Rule = Callable[[Exchange], Problem | None]
# Every rule by criterion, in the order reasons are listed; each says what it looks for, and a comment why.
RULES: dict[str, tuple[Rule, ...]] = {
    "clarity": (
        empty_instruction,
        short_instruction,
        rambling_instruction,
        missing_input,
        placeholder_instruction,
        garbage_instruction,
        shouting_instruction,
        template_instruction,
        damaged_instruction,
    ),
    "helpfulness": (
        empty_answer,
        placeholder_answer,
        refusal,
        disclaimer,
        echo,
        too_short,
        list_request,
        truncated,
        unknown_tool,
    ),
    "formatting": (
        unbalanced_fence,
        code_request,
        repetition,
        json_request,
        special_tokens,
        escape_junk,
        html_tags,
        wall_of_text,
        odd_characters,
        stray_whitespace,
    ),
}


# ------------------------------------------------------------------------------------------- scoring


def score_exchange(ex: Exchange) -> tuple[dict[str, float], list[str]]:
    """One exchange's criteria (5 minus deductions, within 1-5) and the reasons for each deduction."""
    scores, reasons = {}, []
    for criterion, rules in RULES.items():
        points = 0
        for rule in rules:
            problem = rule(ex)
            if problem:
                points += problem[0]
                reasons.append(f"{criterion}: {problem[1]}")
        scores[criterion] = float(max(1, 5 - points))
    return scores, reasons


def heuristic_scores(row: Row) -> dict:
    """Clarity, helpfulness and formatting (1-5) by the rules in `RULES`, their mean and the reasons."""
    found = exchanges(row) or [Exchange("")]  # a row without a user turn has an empty instruction and answer
    per_exchange = [score_exchange(ex) for ex in found]
    result: dict = {}
    for criterion in CRITERIA:
        values = [scores[criterion] for scores, _ in per_exchange]
        result[criterion] = round(sum(values) / len(values), 2)
    result["score"] = round(sum(result[c] for c in CRITERIA) / len(CRITERIA), 2)
    reasons = []
    for index, (_, exchange_reasons) in enumerate(per_exchange, 1):
        suffix = f" (exchange {index})" if len(per_exchange) > 1 else ""
        reasons += [reason + suffix for reason in exchange_reasons]
    result["reasons"] = reasons
    result["by"] = "heuristic"
    return result


def passes(scores: dict, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether a row's scores reach `threshold` (the filter step keeps it)."""
    return scores["score"] >= threshold


# ------------------------------------------------------------------------------------------ LLM judge

JUDGE_SYSTEM = (
    "You are a careful reviewer of supervised fine-tuning data. You rate how good one conversation is as a "
    "training example for a helpful assistant."
)
JUDGE_PROMPT = (
    "Rate the conversation below on three criteria, each an integer from 1 (very poor) to 5 (excellent):\n"
    "- clarity: is the user's instruction clear, specific and answerable as written (any text it refers to "
    "is present)?\n"
    "- helpfulness: does the assistant's response do what was asked, correctly and completely, without "
    "needless refusals or disclaimers?\n"
    "- formatting: is the response well formatted for its content (lists, code blocks, JSON or other "
    "requested formats; no broken markup, repetition or leftover artefacts)?\n\n"
    "First explain your ratings in a few sentences. Then end your reply with a JSON object holding the "
    'three ratings and nothing after it, for example: {{"clarity": 4, "helpfulness": 5, "formatting": 4}}'
    "\n\n{transcript}"
)


def transcript(row: Row) -> str:
    """The conversation as the judge reads it: system prompt, offered tools, then every turn."""
    conversation = row.conversation
    parts = []
    if conversation.get("system"):
        parts.append(f"[System]\n{conversation['system']}")
    if conversation.get("tools"):
        names = ", ".join(t["function"]["name"] for t in conversation["tools"])
        parts.append(f"[Tools offered]\n{names}")
    for message in conversation["messages"]:
        role = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}.get(message["role"], "?")
        text = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            arguments = json.dumps(call["function"]["arguments"], ensure_ascii=False)
            text += f"\n(calls {call['function']['name']} with {arguments})"
        parts.append(f"[{role}]\n{text.strip()}")
    return "[Start of conversation]\n" + "\n\n".join(parts) + "\n[End of conversation]"


def judge_messages(row: Row) -> list[dict]:
    """The OpenAI chat messages asking a judge to rate `row` on the three criteria."""
    prompt = JUDGE_PROMPT.format(transcript=transcript(row))
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def parse_judge(reply: str) -> dict | None:
    """The ratings in the reply's last JSON object with a criterion key; None unless all three are in 1-5."""
    # A judge may add an object that is no verdict after the verdict ("notes: {}"), so those are skipped.
    objects = [o for o in reply_objects(reply or "") if isinstance(o, dict) and any(c in o for c in CRITERIA)]
    if not objects:
        return None
    last = objects[-1]
    scores = {}
    for criterion in CRITERIA:
        value = last.get(criterion)
        # bool is an int in Python; a judge writing `true` has not given a rating.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
            return None
        scores[criterion] = float(value)
    scores["score"] = round(sum(scores.values()) / len(CRITERIA), 2)
    scores["by"] = "llm"
    return scores
