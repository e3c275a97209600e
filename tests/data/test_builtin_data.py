"""The embedded default instruction set (sft/data/builtin.jsonl): reproducible, balanced, short, checkable."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from sft.data.builtin import (
    CATEGORIES,
    DATA_FILE,
    DEFAULT_ROWS,
    MAX_ROWS,
    SELF_COGNITION_PROBE,
    builtin_conversations,
    category_counts,
)

ROOT = Path(__file__).resolve().parents[2]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# Written out here rather than imported, so the conversions are checked against a second source.
UNIT_FACTORS = {
    ("metres", "kilometres"): 1000,
    ("grams", "kilograms"): 1000,
    ("minutes", "hours"): 60,
    ("seconds", "minutes"): 60,
    ("centimetres", "metres"): 100,
    ("millilitres", "litres"): 1000,
    ("hours", "days"): 24,
    ("days", "weeks"): 7,
    ("inches", "feet"): 12,
    ("feet", "yards"): 3,
    ("months", "years"): 12,
    ("millimetres", "centimetres"): 10,
}


@pytest.fixture(scope="module")
def rows():
    return builtin_conversations(DEFAULT_ROWS)


def _assistant_text(row: dict) -> str:
    return " ".join(m["content"] for m in row["messages"] if m["role"] == "assistant")


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_script_reproduces_the_shipped_file(tmp_path, hash_seed):
    out = tmp_path / "builtin.jsonl"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_builtin_data.py"), str(out)], env=env, check=True
    )
    assert out.read_bytes() == DATA_FILE.read_bytes()


def test_default_set_is_the_head_of_the_file(rows):
    with open(DATA_FILE, encoding="utf-8") as file:
        head = [json.loads(line) for line in file][:DEFAULT_ROWS]
    assert len(rows) == DEFAULT_ROWS and rows == head


def test_smaller_sets_are_subsets_and_callers_get_copies(rows):
    small = builtin_conversations(40)
    assert all(r in rows for r in small)
    small[0]["messages"][0]["content"] = "changed"
    assert builtin_conversations(40)[0]["messages"][0]["content"] != "changed"


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (
            600,
            {
                "creative_writing": 102,
                "question_answering": 128,
                "code": 76,
                "analysis_reasoning": 102,
                "conversational": 102,
                "self_cognition": 90,
            },
        ),
        (
            97,
            {
                "creative_writing": 17,
                "question_answering": 21,
                "code": 12,
                "analysis_reasoning": 16,
                "conversational": 16,
                "self_cognition": 15,
            },
        ),
    ],
)
def test_exact_category_counts(n, expected):
    assert category_counts(n) == expected
    assert Counter(r["category"] for r in builtin_conversations(n)) == Counter(expected)


@pytest.mark.parametrize("n", [0, 1, 7, 40, 97, 360, 601, 1000])
def test_counts_sum_exactly_and_follow_the_guide(n):
    counts = category_counts(n)
    assert sum(counts.values()) == n
    assert counts["self_cognition"] == pytest.approx(0.15 * n, abs=1)
    for category, share in [
        ("creative_writing", 0.20),
        ("question_answering", 0.25),
        ("code", 0.15),
        ("analysis_reasoning", 0.20),
        ("conversational", 0.20),
    ]:
        assert counts[category] == pytest.approx(0.85 * share * n, abs=1)
    assert len(builtin_conversations(n)) == n


def test_row_counts_outside_the_file_are_rejected():
    with pytest.raises(ValueError, match="num_rows"):
        builtin_conversations(-1)
    with pytest.raises(ValueError, match=f"at most {MAX_ROWS}"):
        builtin_conversations(MAX_ROWS + 1)


def test_schema(rows):
    assert [r["id"] for r in rows] == [f"builtin-{i:05d}" for i in range(len(rows))]
    for r in rows:
        assert set(r) == {"id", "category", "system", "messages", "answer"}
        assert r["category"] in CATEGORIES
        assert r["system"] is None or (isinstance(r["system"], str) and r["system"].strip())
        assert r["answer"] is None or (isinstance(r["answer"], str) and r["answer"].strip())
        roles = [m["role"] for m in r["messages"]]
        assert len(roles) >= 2 and roles == ["user", "assistant"] * (len(roles) // 2), r
        for m in r["messages"]:
            assert set(m) == {"role", "content"}
            assert isinstance(m["content"], str) and m["content"].strip() == m["content"] and m["content"]


def test_placeholders_only_and_always_in_self_cognition(rows):
    for r in rows:
        replies = _assistant_text(r)
        if r["category"] == "self_cognition":
            assert "{{name}}" in replies and "{{author}}" in replies, r
        else:
            everything = (r["system"] or "") + " ".join(m["content"] for m in r["messages"])
            assert "{{" not in everything and "}}" not in everything, r


def test_unique_ids_and_first_user_messages():
    everything = builtin_conversations(MAX_ROWS)
    assert len({r["id"] for r in everything}) == MAX_ROWS
    firsts = [r["messages"][0]["content"] for r in everything]
    assert len(set(firsts)) == len(firsts)


def test_probe_question_is_present(rows):
    assert SELF_COGNITION_PROBE == "Who are you?"
    firsts = [r["messages"][0]["content"] for r in rows]
    assert firsts.count(SELF_COGNITION_PROBE) == 1
    asked = [
        r
        for r in rows
        if any(m["role"] == "user" and m["content"] == SELF_COGNITION_PROBE for m in r["messages"])
    ]
    assert len(asked) >= 3
    assert all(r["category"] == "self_cognition" for r in asked)
    for n in (7, 10, 40):  # the exact probe row is in every set with a self-cognition row
        firsts = [r["messages"][0]["content"] for r in builtin_conversations(n)]
        assert SELF_COGNITION_PROBE in firsts


def test_turn_and_system_prompt_mix(rows):
    conversational = [r for r in rows if r["category"] == "conversational"]
    assert sum(len(r["messages"]) > 2 for r in conversational) >= 0.3 * len(conversational)
    assert any(len(r["messages"]) >= 6 for r in conversational)  # some with three user turns
    assert any(len(r["messages"]) > 2 for r in rows if r["category"] == "self_cognition")
    share = sum(r["system"] is not None for r in rows) / len(rows)
    assert 0.1 <= share <= 0.3
    assert len({r["system"] for r in rows if r["system"]}) >= 5
    for category in CATEGORIES:
        assert any(r["system"] for r in rows if r["category"] == category), category


def test_answers_respect_their_system_prompts(rows):
    for r in rows:
        replies = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        if r["system"] == "Answer in one sentence.":
            assert all("\n" not in t and len(re.findall(r"[.!?](?=\s|$)", t)) == 1 for t in replies), r
        if r["system"] == "Reply in 30 words or fewer.":
            assert all(len(t.split()) <= 30 for t in replies), r
        if r["system"] and "{{name}}" in r["system"]:
            assert r["category"] == "self_cognition"
        if r["system"] == "Show your working, then give the final answer.":
            assert r["answer"] is not None


def test_lengths_are_short(rows):
    user = [len(m["content"].split()) for r in rows for m in r["messages"] if m["role"] == "user"]
    assistant = [len(m["content"].split()) for r in rows for m in r["messages"] if m["role"] == "assistant"]
    assert 3 <= sum(user) / len(user) <= 30
    assert 10 <= sum(assistant) / len(assistant) <= 70
    assert max(assistant) <= 120
    assert sum(5 <= w <= 60 for w in assistant) >= 0.8 * len(assistant)


def test_category_content_shapes(rows):
    by = {c: [r for r in rows if r["category"] == c] for c in CATEGORIES}
    assert sum("```python" in _assistant_text(r) for r in by["code"]) >= 10
    assert sum("haiku" in r["messages"][0]["content"] for r in by["creative_writing"]) >= 5
    unverifiable = by["creative_writing"] + by["conversational"] + by["self_cognition"]
    assert all(r["answer"] is None for r in unverifiable)
    # Near-duplicate guard: final replies are mostly distinct even where pools are small.
    for category in ("creative_writing", "question_answering", "analysis_reasoning", "code"):
        finals = [r["messages"][-1]["content"] for r in by[category]]
        assert len(set(finals)) >= 0.7 * len(finals), category


# --- independent re-verification of computed answers ------------------------------------------


def _run_snippet(question: str) -> str | None:
    m = re.search(r"```python\n(.*?)```", question, re.S)
    if not m:
        return None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(m.group(1), {})  # noqa: S102 - snippets generated by the project itself
    return out.getvalue().strip()


def _order_extreme(question: str) -> str | None:
    clues = re.findall(r"(\w+) is (\w+) than (\w+)\.", question)
    ask = re.search(r"Who is the (\w+)\?", question)
    if not clues or not ask:
        return None
    greater = {a for a, _, _ in clues}
    lesser = {b for _, _, b in clues}
    superlative = ask.group(1)
    top_words = {"tallest", "oldest", "fastest"}
    return (greater - lesser if superlative in top_words else lesser - greater).pop()


def _expected(question: str) -> str | None:
    """Recompute the answer of a verifiable question from its text alone, or None if unrecognised."""
    if "```python" in question:
        return _run_snippet(question)
    patterns = [
        (r"has (\d+) \w+, buys (\d+) more and gives away (\d+)", lambda a, b, c: int(a) + int(b) - int(c)),
        (r"Each box holds (\d+) \w+\. How many \w+ are in (\d+) boxes", lambda a, b: int(a) * int(b)),
        (r"What is (\d+)% of (\d+)\?", lambda p, n: int(p) * int(n) // 100),
        (r"letter '(\w)' appear in '(\w+)'", lambda ch, w: w.count(ch)),
        (r"Reverse the word '(\w+)'", lambda w: w[::-1]),
        (r"Write the word '(\w+)' in capital letters", lambda w: w.upper()),
        (r"(\d+) metres wide and (\d+) metres long", lambda w, h: int(w) * int(h)),
        (r'How many words are in this sentence: "(.+)"', lambda s: len(s.split())),
        (r"How many (\w+) are in (\d+) (\w+)\?", lambda s, n, big: int(n) * UNIT_FACTORS[(s, big)]),
        (r"Convert (\d+) (\w+) to (\w+)\.", lambda n, big, s: int(n) * UNIT_FACTORS[(s, big)]),
        (
            r"today is (\w+), what day of the week will it be in (\d+) days",
            lambda d, k: DAYS[(DAYS.index(d) + int(k)) % 7],
        ),
        (
            r"Sort these numbers from smallest to largest: ([\d, ]+)\.",
            lambda s: ", ".join(map(str, sorted(int(x) for x in s.split(", ")))),
        ),
        (r"Which is larger, (\d+/\d+) or (\d+/\d+)\?", lambda a, b: str(max(Fraction(a), Fraction(b)))),
        (
            r"is (\d+) years older than (\w+)\. \w+ is (\d+)\. How old will \w+ be in (\d+) years",
            lambda d, _, age, k: int(age) + int(d) + int(k),
        ),
        (r"travels at (\d+) km/h for (\d+) hours", lambda v, t: f"{int(v) * int(t)} km"),
        (
            r"If (\d+) \w+ cost (\d+) dollars, how much do (\d+) \w+ cost",
            lambda n1, c1, n2: f"{int(c1) // int(n1) * int(n2)} dollars",
        ),
        (
            r"Is (\d+) a prime number\?",
            lambda n: "yes" if all(int(n) % d for d in range(2, int(n))) else "no",
        ),
    ]
    for pattern, compute in patterns:
        if m := re.search(pattern, question, re.I):  # rewording for uniqueness may lower-case a letter
            return str(compute(*m.groups()))
    if m := re.search(r"comes next in the sequence ([\d, ]+)\?", question):
        seq = [int(x) for x in m.group(1).split(", ")]
        if len({b - a for a, b in zip(seq, seq[1:], strict=False)}) == 1:
            return str(seq[-1] + seq[1] - seq[0])
        return str(seq[-1] * seq[1] // seq[0])
    return _order_extreme(question)


@pytest.mark.parametrize("n", [DEFAULT_ROWS, MAX_ROWS])
def test_every_answer_is_stated_and_independently_correct(n):
    rows = builtin_conversations(n)
    checkable = [r for r in rows if r["category"] in ("question_answering", "code", "analysis_reasoning")]
    verified = [r for r in checkable if r["answer"] is not None]
    assert len(verified) >= 0.3 * len(checkable)
    for r in verified:
        final = r["messages"][-1]["content"]
        assert r["answer"] in final, r
        assert _expected(r["messages"][0]["content"]) == r["answer"], r
    kinds = Counter(r["category"] for r in verified)
    assert all(kinds[c] >= 5 for c in ("question_answering", "code", "analysis_reasoning")), kinds
