"""The data mix (sft.prepare.balance) and the complexity score behind its difficulty bands
(sft.data.complexity), on synthetic label lists, the embedded set and real public data."""

from __future__ import annotations

import statistics
import warnings
from collections import Counter
from pathlib import Path

import pytest

from sft.data.builtin import builtin_conversations
from sft.data.complexity import DIFFICULTIES, THRESHOLDS, WEIGHTS, complexity, difficulty, features
from sft.prepare.balance import (
    CATEGORY_TARGETS,
    DIFFICULTY_TARGETS,
    allocate,
    classify,
    mix_report,
    resample,
)
from sft.prepare.rows import PrepareError, Row, Tally, load_rows

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _conversation(*texts: str, **extra) -> dict:
    """Alternating user/assistant turns from `texts`, plus any extra conversation keys."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return {"system": None, "tools": None, "messages": messages, "category": None, **extra}


def _row(*texts: str, **extra) -> Row:
    """A Row around `_conversation(*texts)`."""
    return Row("mem:1", {}, _conversation(*texts, **extra))


@pytest.fixture(scope="module")
def alpaca() -> list[Row]:
    return load_rows(DATA / "alpaca_en_demo.json", Tally())


# --- complexity -----------------------------------------------------------------------------------


def test_complexity_is_the_weighted_feature_sum():
    conversation = _conversation("Explain why the sky is blue in exactly three sentences.", "Because " * 15)
    values = features(conversation)
    assert set(values) == set(WEIGHTS)
    assert (
        values["reasoning"] == 1 and values["constraints"] == 2
    )  # "explain/why"; "three sentences", "exactly"
    assert complexity(conversation) == pytest.approx(sum(WEIGHTS[k] * v for k, v in values.items()))


def test_complexity_orders_by_demand():
    greeting = _conversation("hi", "Hello!")
    fact = _conversation("What is the capital of France?", "Paris is the capital of France.")
    code = _conversation(
        "Write a Python function that checks whether a number is prime, without using any library.",
        "```python\ndef is_prime(n):\n    return n > 1 and all(n % d for d in range(2, n))\n```",
    )
    scores = [complexity(c) for c in (greeting, fact, code)]
    assert scores == sorted(scores)
    assert difficulty(scores[0]) == "simple"
    # Tool use and extra exchanges each add to the same dialogue's score.
    chat = _conversation(
        "What is the weather in Oslo?", "Sunny.", "Thanks. And tomorrow?", "Rain, 4 degrees."
    )
    tools = {**chat, "tools": [{"type": "function", "function": {"name": "weather"}}]}
    assert complexity(tools) == pytest.approx(complexity(chat) + WEIGHTS["tool_use"])
    assert complexity(chat) > complexity(_conversation("What is the weather in Oslo?", "Sunny."))


def test_difficulty_bands():
    low, high = THRESHOLDS
    assert [difficulty(s) for s in (low - 0.01, low, high - 0.01, high)] == [
        "simple",
        "medium",
        "medium",
        "complex",
    ]
    assert difficulty(5.0, thresholds=(1.0, 2.0)) == "complex"
    with pytest.raises(ValueError, match="ascending"):
        difficulty(1.0, thresholds=(2.0, 1.0))


def test_alpaca_difficulty_split_is_calibrated(alpaca):
    levels = [difficulty(complexity(row.conversation)) for row in alpaca]
    counts = Counter(levels)
    print(f"\nalpaca difficulty: {dict(counts)}")
    # THRESHOLDS' comment states this split (~30/50/20); change both together.
    assert [counts[d] for d in DIFFICULTIES] == [300, 500, 199]
    # Deterministic: a second pass gives the same scores.
    assert levels == [difficulty(complexity(row.conversation)) for row in alpaca]


def test_tool_dialogues_score_above_self_cognition():
    tools = [complexity(r.conversation) for r in load_rows(DATA / "glaive_toolcall_en_demo.json", Tally())]
    identity = [complexity(r.conversation) for r in load_rows(DATA / "identity.json", Tally())]
    # Length counts too: the longest Chinese self-introductions (90 characters, a word each) reach the
    # shortest tool dialogues, so self-cognition is held below the typical one, which is never simple.
    assert max(identity) < statistics.median(tools)
    assert all(difficulty(score) != "simple" for score in tools)


# --- classify -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Who are you?", "conversational"),
        ("Hello, were you made by OpenAI?", "conversational"),
        ("你是谁？", "conversational"),
        ("Construct a for loop for printing out the values from 0 to 10", "code"),
        ("What does this print?\n```python\nprint(2 ** 3)\n```", "code"),
        ("Hi! Write a haiku about autumn rain.", "creative_writing"),
        ("Suggest three names for a bakery.", "creative_writing"),
        ("Write an article about the importance of teamwork.", "creative_writing"),
        ("Compare and contrast web 1.0 and web 2.0.", "analysis_reasoning"),
        ("Calculate the following: (2 * 3 + 4) / 5", "analysis_reasoning"),
        ("Why do cats purr?", "analysis_reasoning"),
        ("I'm feeling nervous about my exam tomorrow.", "conversational"),
        ("Good morning!", "conversational"),
        ("What is the capital of Japan?", "question_answering"),
        ("Hi! What is inflation?", "question_answering"),
        ("Describe the flavor of strawberries.", "question_answering"),
    ],
)
def test_classify_rules(prompt, expected):
    assert classify(_row(prompt, "...")) == expected


def test_classify_multi_turn_chat_and_own_category():
    assert (
        classify(_row("My sister is visiting.", "Lovely!", "She arrives Friday.", "Enjoy it."))
        == "conversational"
    )
    # A row's own category wins when it is a target name; any other is ignored.
    assert classify(_row("Who are you?", "...", category="code")) == "code"
    assert classify(_row("Who are you?", "...", category="self_cognition")) == "conversational"


def test_classify_accuracy_on_builtin():
    conversations = builtin_conversations(600)
    hits = 0
    for conversation in conversations:
        truth = conversation["category"]
        truth = "conversational" if truth == "self_cognition" else truth
        hits += classify(Row("builtin", {}, {**conversation, "category": None})) == truth
    accuracy = hits / len(conversations)
    print(f"\nclassify accuracy on builtin_conversations(600): {accuracy:.3f}")
    # Measured 0.962 (seeds 1-3: 0.940, 0.947, 0.960). Most misses are arithmetic word problems the
    # generator files under question_answering and the rules, by design, under analysis_reasoning.
    assert accuracy >= 0.95


# --- mix report -----------------------------------------------------------------------------------


def test_mix_report_orders_targets_first_and_reports_extras():
    report = mix_report(["a", "b", "b", "z", "b", "a", "y", "b"], {"b": 0.5, "a": 0.25, "c": 0.25})
    assert [r["name"] for r in report] == ["b", "a", "c", "y", "z"]
    assert report[0] == {"name": "b", "count": 4, "share": 0.5, "target": 0.5, "gap": 0.0}
    assert report[2] == {"name": "c", "count": 0, "share": 0.0, "target": 0.25, "gap": -0.25}
    assert report[4]["target"] == 0.0 and report[4]["gap"] == pytest.approx(0.125)
    assert mix_report([], {"a": 1.0})[0]["share"] == 0.0


def test_alpaca_mix_report(alpaca):
    categories = [classify(row) for row in alpaca]
    levels = [difficulty(complexity(row.conversation)) for row in alpaca]
    print("\nalpaca_en_demo.json category mix (name, count, share, target, gap):")
    for line in mix_report(categories, CATEGORY_TARGETS):
        name, count, share, target, gap = line.values()
        print(f"  {name:<20} {count:>4} {share:6.1%} {target:6.1%} {gap:+7.1%}")
    picked = resample(categories, levels, seed=0)
    print(f"  largest balanced sample without replacement: {len(picked)} rows")
    report = {line["name"]: line["count"] for line in mix_report(categories, CATEGORY_TARGETS)}
    assert sum(report.values()) == len(alpaca)
    # Alpaca is mostly questions and writing tasks, with almost no chit-chat.
    assert report["question_answering"] == max(report.values())
    assert report["conversational"] < 0.02 * len(alpaca)
    # The scarcest category bounds the balanced sample: its count / its target.
    assert len(picked) == int(report["conversational"] / CATEGORY_TARGETS["conversational"])


# --- allocate and resample ------------------------------------------------------------------------


def test_allocate_is_proportional_and_spills_over_caps():
    assert allocate(100, {"a": 0.3, "b": 0.5, "c": 0.2}, {"a": 100, "b": 100, "c": 100}) == {
        "a": 30,
        "b": 50,
        "c": 20,
    }
    # c holds only 5: its missing 15 go to a and b as 3 : 5.
    assert allocate(100, {"a": 0.3, "b": 0.5, "c": 0.2}, {"a": 100, "b": 100, "c": 5}) == {
        "a": 36,
        "b": 59,
        "c": 5,
    }
    # Names without a target fill only once every targeted one is full.
    assert allocate(7, {"a": 1.0}, {"a": 3, "b": 1, "c": 6}) == {"a": 3, "b": 1, "c": 3}
    assert sum(allocate(10, {"a": 1, "b": 1, "c": 1}, {"a": 9, "b": 9, "c": 9}).values()) == 10


def _labels(per_category: dict[str, int], levels: dict[str, float]) -> tuple[list[str], list[str]]:
    """Category and difficulty lists: each category's rows split over `levels` by share."""
    categories, difficulties = [], []
    for category, count in per_category.items():
        for level, share in levels.items():
            n = round(count * share)
            categories += [category] * n
            difficulties += [level] * n
    return categories, difficulties


def _mix(indices, labels) -> Counter:
    return Counter(labels[i] for i in indices)


def test_resample_hits_the_targets_exactly():
    categories, difficulties = _labels(
        {c: 1000 for c in CATEGORY_TARGETS}, {"simple": 0.3, "medium": 0.5, "complex": 0.2}
    )
    picked = resample(categories, difficulties, seed=0)
    # question_answering (1000 rows at 25%) bounds the sample: 4000 rows.
    assert len(picked) == len(set(picked)) == 4000
    assert _mix(picked, categories) == {c: round(4000 * t) for c, t in CATEGORY_TARGETS.items()}
    assert _mix(picked, difficulties) == {d: round(4000 * t) for d, t in DIFFICULTY_TARGETS.items()}
    for category in CATEGORY_TARGETS:  # and within every category
        mine = [i for i in picked if categories[i] == category]
        assert _mix(mine, difficulties) == {d: round(len(mine) * t) for d, t in DIFFICULTY_TARGETS.items()}


def test_resample_size_when_feasible_else_largest():
    categories, difficulties = _labels({c: 100 for c in CATEGORY_TARGETS}, {"simple": 0.3, "medium": 0.7})
    picked = resample(categories, difficulties, size=200, seed=1)
    assert _mix(picked, categories) == {c: round(200 * t) for c, t in CATEGORY_TARGETS.items()}
    with pytest.warns(UserWarning, match="size=1000"):
        assert len(resample(categories, difficulties, size=1000, seed=1)) == 400


def test_resample_spreads_a_missing_category_over_the_rest():
    counts = {"creative_writing": 500, "question_answering": 500, "code": 500, "analysis_reasoning": 500}
    categories, difficulties = _labels(counts, {"simple": 0.3, "medium": 0.5, "complex": 0.2})
    categories += ["other"] * 50  # no target: never drawn
    difficulties += ["simple"] * 50
    with pytest.warns(UserWarning, match="no rows for conversational"):
        picked = resample(categories, difficulties, seed=0)
    # Without conversational (20%), the rest keep their ratios: 20/80, 25/80, 15/80, 20/80 of 1600.
    assert _mix(picked, categories) == {
        "creative_writing": 400,
        "question_answering": 500,
        "code": 300,
        "analysis_reasoning": 400,
    }


def test_resample_difficulty_spills_when_one_runs_short():
    categories = ["code"] * 100
    difficulties = ["simple"] * 45 + ["medium"] * 50 + ["complex"] * 5
    picked = resample(categories, difficulties, {"code": 1.0}, size=50, seed=0)
    # Targets 15/25/10; complex has 5, its other 5 go to simple and medium as 3 : 5 (rounded).
    assert _mix(picked, difficulties) == {"simple": 17, "medium": 28, "complex": 5}


def test_resample_with_replacement_gives_exact_counts():
    categories = ["code"] * 3 + ["question_answering"] * 10 + ["conversational"] * 2
    difficulties = ["simple", "medium", "complex"] * 5
    targets = {"code": 0.5, "question_answering": 0.3, "conversational": 0.2}
    picked = resample(categories, difficulties, targets, size=1000, replace=True, seed=0)
    assert len(picked) == 1000
    assert _mix(picked, categories) == {"code": 500, "question_answering": 300, "conversational": 200}
    code = [i for i in picked if categories[i] == "code"]
    assert _mix(code, difficulties) == {"simple": 150, "medium": 250, "complex": 100}
    # Repeats are spread evenly: each row of a (category, difficulty) bucket appears n or n + 1 times.
    uses = Counter(i for i in picked if categories[i] == "question_answering" and difficulties[i] == "simple")
    assert max(uses.values()) - min(uses.values()) <= 1


def test_resample_is_seeded_and_shuffled():
    categories, difficulties = _labels({c: 50 for c in CATEGORY_TARGETS}, {"simple": 0.5, "medium": 0.5})
    first = resample(categories, difficulties, seed=3)
    assert first == resample(categories, difficulties, seed=3)
    assert first != resample(categories, difficulties, seed=4)
    assert first != sorted(first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a feasible request warns about nothing
        resample(categories, difficulties, size=100, replace=True, seed=3)


def test_resample_rejects_bad_settings():
    with pytest.raises(PrepareError, match="2 categories but 1"):
        resample(["code", "code"], ["simple"], seed=0)
    with pytest.raises(PrepareError, match="category targets"):
        resample(["code"], ["simple"], {"code": -1.0}, seed=0)
    with pytest.raises(PrepareError, match="no rows in any category"):
        with pytest.warns(UserWarning):
            resample(["other"], ["simple"], {"code": 1.0}, seed=0)
