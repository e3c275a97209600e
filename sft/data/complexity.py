"""How demanding a conversation is to learn: one transparent score, and three difficulty bands cut from it.

The score is a weighted sum of features read off the conversation (see `features` and `WEIGHTS`):

    complexity = 0.5 * log2(1 + prompt words)      all user turns
               + 0.5 * log2(1 + response words)    all assistant turns
               + 0.75 * extra exchanges            user turns after the first
               + 0.5 * constraints (at most 4)     explicit demands in the prompt: counts, limits, format
               + 0.5 * reasoning (at most 3)       why / compare / calculate ... markers and arithmetic
               + 1.0 * code                        a programming task (`sft.text.is_code_task`)
               + 1.0 * tool use (at most 3)        tools offered, plus each tool call made

Lengths are log-scaled so that doubling a reply adds the same amount whether it is 50 or 500 words long,
and no single long answer swamps the other signals. The score is used by the `balance` preparation step
and by curriculum training, which call `complexity` and `difficulty` directly.
"""

from __future__ import annotations

import math
import re

from ..text import is_code_task, number_words, words

DIFFICULTIES = ("simple", "medium", "complex")

WEIGHTS = {
    "prompt_words": 0.5,
    "response_words": 0.5,
    "extra_exchanges": 0.75,
    "constraints": 0.5,
    "reasoning": 0.5,
    "code": 1.0,
    "tool_use": 1.0,
}
# Caps keep a prompt that repeats one kind of marker from outscoring a genuinely harder one.
MAX_CONSTRAINTS, MAX_REASONING, MAX_TOOL_USE = 4, 3, 3

# The 30th and 80th percentiles of `complexity` over shared/data/alpaca_en_demo.json (999 Alpaca-GPT4
# rows), so that file splits 30/50/20 simple/medium/complex: measured 300 / 500 / 199 rows
# (30.0% / 50.1% / 19.9%). Recalibrate after changing a weight, a pattern or a `sft.text` heuristic.
THRESHOLDS: tuple[float, float] = (4.472, 5.935)

_NUMBER = rf"(?:\d+|{number_words()})"
_UNIT = (
    r"(?:words?|sentences?|paragraphs?|lines?|items?|steps?|examples?|points?|ways|reasons|tips|ideas"
    r"|questions|characters|syllables|stanzas?|verses?|bullets?|options|names|adjectives)"
)
_CONSTRAINTS = [
    re.compile(rf"\b{_NUMBER}[- ](?:\w+[- ])?{_UNIT}\b", re.I),  # "5-step", "three short sentences"
    re.compile(
        r"\b(?:at (?:least|most)|no (?:more|less|fewer) than|fewer than|up to|exactly|maximum|minimum)\b",
        re.I,
    ),
    re.compile(r"\b(?:must|only|without|avoid|do not|don't|make sure|ensure|limit(?:ed)? to)\b", re.I),
    re.compile(
        r"\b(?:format(?:ted)?|style of|tone|bullet(?:ed)?|numbered|table|json|markdown|headings?"
        r"|in (?:english|french|spanish|german|chinese|one sentence|one word|(?:the )?past tense))\b",
        re.I,
    ),
    re.compile(r"\b(?:include|including|using|based on|in the form of|as a list)\b", re.I),
]
_REASONING = [
    re.compile(r"\b(?:why|how come|explain|justify|reason(?:ing)?|because)\b", re.I),
    re.compile(
        r"\b(?:analy[sz]e|analysis|compare|contrast|evaluate|assess|critique|pros and cons"
        r"|advantages|disadvantages|trade-?offs?|implications?|differences?)\b",
        re.I,
    ),
    re.compile(
        r"\b(?:calculate|compute|solve|estimate|prove|derive|deduce|infer|probability|equation"
        r"|percent(?:age)?|average|step[- ]by[- ]step|logic(?:al)?)\b",
        re.I,
    ),
    re.compile(r"\d\s*[-+*/×÷^=<>]\s*\(?\d"),  # an arithmetic expression: "(2 * 3 + 4) / 5"
]


def role_text(messages: list[dict], role: str) -> str:
    """The contents of every `role` turn, joined by newlines."""
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") == role)


def _matches(patterns: list[re.Pattern], text: str) -> int:
    """How many of `patterns` occur in `text` (each counts once however often it occurs)."""
    return sum(1 for pattern in patterns if pattern.search(text))


def features(conversation: dict) -> dict[str, float]:
    """The feature values `complexity` weighs, keyed like `WEIGHTS`, for a canonical conversation."""
    messages = conversation.get("messages") or []
    prompt, response = role_text(messages, "user"), role_text(messages, "assistant")
    tool_calls = sum(len(m.get("tool_calls") or []) for m in messages)
    # Some formats keep a call's output only as a tool turn: count those when no calls are recorded.
    tool_calls = tool_calls or sum(1 for m in messages if m.get("role") == "tool")
    return {
        "prompt_words": math.log2(1 + len(words(prompt))),
        "response_words": math.log2(1 + len(words(response))),
        "extra_exchanges": max(0, sum(1 for m in messages if m.get("role") == "user") - 1),
        "constraints": min(MAX_CONSTRAINTS, _matches(_CONSTRAINTS, prompt)),
        "reasoning": min(MAX_REASONING, _matches(_REASONING, prompt)),
        "code": 1.0 if is_code_task(prompt, response) else 0.0,
        "tool_use": min(MAX_TOOL_USE, (1 if conversation.get("tools") else 0) + tool_calls),
    }


def complexity(conversation: dict) -> float:
    """The weighted feature sum of a canonical conversation (higher is harder); see the module docstring."""
    return sum(WEIGHTS[name] * value for name, value in features(conversation).items())


def difficulty(score: float, thresholds: tuple[float, float] = THRESHOLDS) -> str:
    """The band of a complexity score: below the first threshold simple, from the second on complex."""
    low, high = thresholds
    if low > high:
        raise ValueError(f"thresholds must be ascending, got {thresholds}")
    return DIFFICULTIES[0] if score < low else DIFFICULTIES[1] if score < high else DIFFICULTIES[2]
