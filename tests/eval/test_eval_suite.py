"""Evaluation suites: checkers, suite files and their validation, scoring, ROUGE-L, compare and Markdown."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sft.eval import constraints
from sft.eval.answers import is_correct, normalise
from sft.eval.constraints import CHECKERS, CheckerError, check
from sft.eval.rouge import lcs_length, rouge_l
from sft.eval.suite import (
    CATEGORIES,
    SuiteError,
    compare,
    load_suite,
    score_exact,
    score_ifeval,
    score_rouge,
    to_markdown,
)

# ------------------------------------------------------------------------------------------ checkers

# (checker, kwargs, response, expected)
CASES = [
    ("lowercase", {}, "all quiet here, 42 times.", True),
    ("lowercase", {}, "all quiet here.\n\n   ", True),
    ("lowercase", {}, "All quiet here.", False),
    ("lowercase", {}, "123 456", False),  # no letters at all is not "lowercase"
    ("lowercase", {}, "café ñandú", True),
    ("lowercase", {}, "café Ñandú", False),
    ("uppercase", {}, "STOP! 3 TIMES.", True),
    ("uppercase", {}, "STOP! 3 times.", False),
    ("uppercase", {}, "!!!", False),
    ("max_words", {"n": 3}, "one two three", True),
    ("max_words", {"n": 3}, "one two three four", False),
    ("max_words", {"n": 3}, "one — two - three", True),  # dashes alone are not words
    ("max_words", {"n": 2}, "don't well-known", True),
    ("min_words", {"n": 3}, "  one\ntwo\tthree  ", True),
    ("min_words", {"n": 3}, "one two", False),
    ("exact_bullets", {"n": 2}, "Intro\n- one\n- two", True),
    ("exact_bullets", {"n": 2}, "* one\n* two\n", True),
    ("exact_bullets", {"n": 2}, "- one\n  * nested\n- two", False),  # nested bullets count too: 3
    ("exact_bullets", {"n": 2}, "- one\n---\n**bold** line\n- two", True),  # rules and bold are not bullets
    ("exact_bullets", {"n": 2}, "-one\n- two", False),  # a bullet needs the space
    ("exact_bullets", {"n": 1}, "1. one", False),
    ("numbered_items", {"n": 3}, "1. a\n2. b\n3) c", True),
    ("numbered_items", {"n": 3}, "1. a\n2. b", False),
    ("numbered_items", {"n": 1}, "In 2024. we left\n1. only", True),  # a number mid-line is not an item
    ("json_keys", {"keys": ["a", "b"]}, '{"b": 2, "a": 1}', True),
    ("json_keys", {"keys": ["a", "b"]}, '```json\n{"a": 1, "b": [1, 2]}\n```\n', True),
    ("json_keys", {"keys": ["a", "b"]}, '```\n{"a": 1, "b": 2}\n```', True),
    ("json_keys", {"keys": ["a", "b"]}, '```python\n{"a": 1, "b": 2}\n```', False),
    ("json_keys", {"keys": ["a", "b"]}, 'Here you go:\n```json\n{"a": 1, "b": 2}\n```', False),
    ("json_keys", {"keys": ["a", "b"]}, '{"a": 1}', False),  # missing key
    ("json_keys", {"keys": ["a"]}, '{"a": 1, "b": 2}', False),  # extra key: exactly these keys
    ("json_keys", {"keys": ["a"]}, '[{"a": 1}]', False),
    ("json_keys", {"keys": ["a"]}, "{'a': 1}", False),
    ("must_include", {"words": ["cat", "red hat"]}, "The CAT wore a red\nhat.", True),
    ("must_include", {"words": ["cat"]}, "Two cats.", False),
    ("must_include", {"words": ["16"]}, "It costs $16.", True),
    ("must_include", {"words": ["16"]}, "It costs $160.", False),
    ("must_exclude", {"words": ["loop"]}, "It calls itself; loops are not needed.", True),
    ("must_exclude", {"words": ["loop"]}, "No Loop here.", False),
    ("starts_with", {"text": "Dear Grandpa,"}, "  dear grandpa, happy birthday", True),
    ("starts_with", {"text": "Dear Grandpa,"}, "Hi! Dear Grandpa,", False),
    ("ends_with", {"text": "Wish you were here."}, "Lovely city. Wish you were here.  \n", True),
    ("ends_with", {"text": "Wish you were here."}, "Wish you were here. Bye", False),
    ("ends_with", {"text": "?"}, "How are you?", True),
    ("paragraphs", {"n": 2}, "One.\n\nTwo.", True),
    ("paragraphs", {"n": 2}, "One.\n  \n\n\nTwo.\nStill two.\n\n", True),
    ("paragraphs", {"n": 2}, "One.\nTwo.", False),
    ("paragraphs", {"n": 1}, "One.\r\n\r\nTwo.", False),  # Windows blank lines separate too
    ("no_commas", {}, "No commas here.", True),
    ("no_commas", {}, "One, two.", False),
    ("no_commas", {}, "全角，逗号", False),
    ("quoted", {}, '  "Grow together."\n', True),
    ("quoted", {}, "“Grow together.”", True),
    ("quoted", {}, '"Grow" together', False),
    ("quoted", {}, '""', False),
    ("title", {}, "<<Ode to Rain>>\nIt rains.", True),
    ("title", {}, "<< >> nothing", False),
    ("title", {}, "<Single brackets>", False),
    ("title", {}, "<<Split\ntitle>>", False),
    ("sentences_max", {"n": 2}, "It costs 3.5 dollars. That is cheap!", True),
    ("sentences_max", {"n": 2}, "One. Two? Three!", False),
    ("sentences_max", {"n": 1}, 'He said "stop." Then left.', False),
    (
        "sentences_max",
        {"n": 1},
        "morning fog\nwraps the quiet hill\nbirds wait",
        True,
    ),  # lines are not sentences
    ("sentences_max", {"n": 1}, "first thought\n\nsecond thought", False),  # blank lines are
    ("ascii_only", {}, "plain text - ok", True),
    ("ascii_only", {}, "curly “quotes”", False),
    ("ascii_only", {}, "an em dash —", False),
]


@pytest.mark.parametrize(("name", "kwargs", "response", "expected"), CASES)
def test_checker(name, kwargs, response, expected):
    assert CHECKERS[name](response, **kwargs) is expected


def test_every_checker_has_passing_and_failing_cases():
    outcomes = {(name, expected) for name, _, _, expected in CASES}
    assert {name for name, _ in outcomes} == set(CHECKERS)
    assert all((name, True) in outcomes and (name, False) in outcomes for name in CHECKERS)


def test_every_checker_has_a_one_line_docstring():
    for name, fn in CHECKERS.items():
        assert fn.__doc__ and "\n" not in fn.__doc__.strip(), name


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_empty_response_fails_every_checker(name):
    kwargs = {key: _sample(kind) for key, kind in constraints.PARAMS[name].items()}
    assert CHECKERS[name](" \n\t", **kwargs) is False


def _sample(kind):
    return {constraints._count: 1, constraints._text: "x", constraints._texts: ["x"]}[kind]


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("max_words", {}, "max_words: missing keyword argument 'n'"),
        ("max_words", {"n": 3, "m": 1}, "max_words: unexpected keyword argument 'm' (takes: n)"),
        ("lowercase", {"n": 3}, "lowercase: unexpected keyword argument 'n' (takes none)"),
        ("max_words", {"n": "3"}, "max_words: 'n' must be a positive integer"),
        ("max_words", {"n": True}, "max_words: 'n' must be a positive integer"),
        ("exact_bullets", {"n": 0}, "exact_bullets: 'n' must be a positive integer"),
        ("must_include", {"words": "cat"}, "must_include: 'words' must be a non-empty list"),
        ("json_keys", {"keys": []}, "json_keys: 'keys' must be a non-empty list"),
        ("starts_with", {"text": "  "}, "starts_with: 'text' must be a non-empty string"),
        ("shout", {}, "unknown checker 'shout'"),
    ],
)
def test_wrong_kwargs_raise_naming_the_checker(name, kwargs, message):
    with pytest.raises(CheckerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(name, "some text", kwargs)
    if name in CHECKERS:  # calling the registered function directly gives the same error
        with pytest.raises(CheckerError, match=name):
            CHECKERS[name]("some text", **kwargs)


def test_positional_parameters_are_refused():
    with pytest.raises(CheckerError, match="max_words: pass parameters by keyword"):
        CHECKERS["max_words"]("one two", 3)


# --------------------------------------------------------------------------------------- suite files


def test_ifeval_suite_loads_and_covers_every_checker():
    rows = load_suite("ifeval")
    assert len(rows) >= 40
    assert len({row["id"] for row in rows}) == len(rows)
    assert {row["category"] for row in rows} == set(CATEGORIES)
    assert all(1 <= len(row["constraints"]) <= 3 for row in rows)
    used = Counter(c["name"] for row in rows for c in row["constraints"])
    assert set(used) == set(CHECKERS)
    assert min(used.values()) >= 3


def test_exact_suite_loads():
    rows = load_suite("exact")
    assert len(rows) >= 30
    assert len({row["id"] for row in rows}) == len(rows)
    assert {row["category"] for row in rows} >= {
        "arithmetic",
        "unit_conversion",
        "capitals",
        "logic",
        "string",
    }
    # Each task's own answer and aliases pass the scorer, stated plainly or in a sentence.
    for row in rows:
        for target in [row["answer"], *row["aliases"]]:
            assert is_correct(target, row["answer"], row["aliases"]), row["id"]
            assert is_correct(f"The answer is {target}.", row["answer"], row["aliases"]), row["id"]


def test_load_suite_accepts_a_path(tmp_path):
    path = _write(tmp_path, [_ifeval_row("a"), _ifeval_row("b")])
    rows = load_suite(path)
    assert [row["id"] for row in rows] == ["a", "b"]
    assert rows[0]["location"] == f"{path}:1"


def test_malformed_suite_reports_every_problem_with_file_and_line(tmp_path):
    rows = [
        _ifeval_row("ok"),
        _ifeval_row("unknown", [{"name": "lowercse"}]),
        _ifeval_row("missing", [{"name": "max_words", "kwargs": {}}]),
        _ifeval_row("ok"),  # duplicate id
        {"id": "neither", "category": "code", "prompt": "p"},
    ]
    path = _write(tmp_path, rows, extra_line="{not json")
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert "5 problem(s)" in message
    assert f"{path}:2: constraints[0]: unknown checker 'lowercse'" in message
    assert "did you mean 'lowercase'?" in message
    assert f"{path}:3: constraints[0]: max_words: missing keyword argument 'n'" in message
    assert f"{path}:4: duplicate id 'ok' (first at {path}:1)" in message
    assert f"{path}:5: a row needs `constraints`" in message
    assert f"{path}:6: invalid JSON" in message


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "x", "category": "c", "prompt": "p", "answer": 42}, "`answer` must be a non-empty string"),
        ({"id": "x", "category": "c", "prompt": "p", "answer": "4", "alias": []}, "unknown field(s) alias"),
        ({"id": "x", "category": "c", "answer": "4"}, "missing field(s) prompt"),
        ({"id": "", "category": "c", "prompt": "p", "answer": "4"}, "`id` must be a non-empty string"),
        (
            {"id": "x", "category": "c", "prompt": "p", "constraints": []},
            "`constraints` must be a non-empty list",
        ),
    ],
)
def test_malformed_rows(tmp_path, row, message):
    with pytest.raises(SuiteError, match=":1: " + message.replace("(", r"\(").replace(")", r"\)")):
        load_suite(_write(tmp_path, [row]))


def test_missing_suite_names_the_built_in_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="built-in suites: ifeval, exact"):
        load_suite(tmp_path / "nope.jsonl")


def _ifeval_row(row_id, constraints_=None, category="code"):
    return {
        "id": row_id,
        "category": category,
        "prompt": "Say something.",
        "constraints": constraints_ or [{"name": "lowercase"}],
    }


def _write(tmp_path, rows, extra_line=None):
    path = tmp_path / "suite.jsonl"
    lines = [json.dumps(row) for row in rows] + ([extra_line] if extra_line else [])
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------- scoring


IFEVAL_ROWS = [
    {
        "id": "p1",
        "category": "code",
        "prompt": "",
        "constraints": [{"name": "lowercase"}, {"name": "no_commas"}],
    },
    {
        "id": "p2",
        "category": "code",
        "prompt": "",
        "constraints": [{"name": "max_words", "kwargs": {"n": 3}}, {"name": "lowercase"}],
    },
    {"id": "p3", "category": "conversational", "prompt": "", "constraints": [{"name": "quoted"}]},
]
# p1 passes both; p2 is too long (fails max_words, passes lowercase); p3 passes.
IFEVAL_RESPONSES = ["all good here", "far too many words here", '"Hi there."']


def test_score_ifeval_known_numbers():
    scores = score_ifeval(IFEVAL_ROWS, IFEVAL_RESPONSES)
    assert (scores["prompts"], scores["instructions"]) == (3, 5)
    assert scores["prompt_level"] == pytest.approx(2 / 3)
    assert scores["instruction_level"] == pytest.approx(4 / 5)
    assert scores["per_checker"] == {
        "lowercase": {"total": 2, "passed": 2, "accuracy": 1.0},
        "max_words": {"total": 1, "passed": 0, "accuracy": 0.0},
        "no_commas": {"total": 1, "passed": 1, "accuracy": 1.0},
        "quoted": {"total": 1, "passed": 1, "accuracy": 1.0},
    }
    code = scores["per_category"]["code"]
    assert (code["prompt_level"], code["instruction_level"]) == (0.5, 0.75)
    assert scores["per_category"]["conversational"]["prompt_level"] == 1.0
    assert [(r["id"], r["failed"]) for r in scores["rows"]] == [("p1", []), ("p2", ["max_words"]), ("p3", [])]


def test_responses_by_id_and_misaligned_responses():
    by_id = dict(zip(["p3", "p1", "p2"], [IFEVAL_RESPONSES[2], *IFEVAL_RESPONSES[:2]], strict=True))
    assert score_ifeval(IFEVAL_ROWS, by_id)["prompt_level"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 rows but 2 responses"):
        score_ifeval(IFEVAL_ROWS, IFEVAL_RESPONSES[:2])
    with pytest.raises(ValueError, match=r"missing ids \['p3'\], unknown ids \['p4'\]"):
        score_ifeval(IFEVAL_ROWS, {"p1": "", "p2": "", "p4": ""})
    with pytest.raises(TypeError, match=r"not for ids \['p2'\]"):
        score_ifeval(IFEVAL_ROWS, ["a", None, "b"])


EXACT_ROWS = [
    {"id": "e1", "category": "arithmetic", "prompt": "17 + 25?", "answer": "42", "aliases": ["forty-two"]},
    {"id": "e2", "category": "arithmetic", "prompt": "6 * 2?", "answer": "12", "aliases": []},
    {"id": "e3", "category": "capitals", "prompt": "Capital of Brazil?", "answer": "Brasília", "aliases": []},
    {"id": "e4", "category": "logic", "prompt": "Is 17 prime?", "answer": "yes", "aliases": []},
]


def test_score_exact_known_numbers():
    responses = ["Forty-two!", "The answer is not 12.", "The capital of Brazil is BRASILIA.", "Yes, it is."]
    scores = score_exact(EXACT_ROWS, responses)
    assert scores["n"] == 4 and scores["accuracy"] == 0.75
    assert scores["per_category"] == {
        "arithmetic": {"n": 2, "accuracy": 0.5},
        "capitals": {"n": 1, "accuracy": 1.0},
        "logic": {"n": 1, "accuracy": 1.0},
    }
    assert [r["correct"] for r in scores["rows"]] == [True, False, True, True]
    assert scores["rows"][1]["final"] == "The answer is not 12."


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("42", True),
        ("The answer is 42.", True),
        ("**42**", True),
        ("17 + 25 = 42", True),
        ("Answer: 42", True),
        ("Let me add.\n17 + 25 makes forty-two.\nSo the answer is 42.\n", True),
        ("1,000 - 958 = 42.0", True),
        ("forty two", True),  # hyphen is punctuation: "forty-two" and "forty two" normalise alike
        ("The answer is not 42.", False),
        ("42 is not the answer.", False),
        ("It is 42 or 43.", False),
        ("The answer is 42. Hope this helps!", False),  # the final sentence must state it
        ("I think 42 apples", False),
        ("The answer is 420.", False),
        ("", False),
    ],
)
def test_exact_answer_rule(response, expected):
    assert is_correct(response, "42", ["forty-two"]) is expected


def test_normalise():
    assert normalise("  **São Paulo!** ") == "sao paulo"
    assert normalise("1,024.50 and .5 and -3 and 007") == "1024.5 and 0.5 and -3 and 7"
    assert normalise("5-3") == "5 3"


def test_yes_no_may_lead_the_response_but_must_match():
    assert is_correct("Yes, 17 is prime.", "yes")
    assert is_correct("No. 21 = 3 × 7.", "no")
    assert not is_correct("No, 17 is prime.", "yes")
    assert not is_correct("Yesterday it was.", "yes")


# ------------------------------------------------------------------------------------------- rouge


def test_rouge_l_known_values():
    assert rouge_l("The cat sat", "the  cat sat") == 1.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0
    assert rouge_l("", "anything") == 0.0 and rouge_l("", "") == 0.0
    # LCS "the cat on mat" = 4 of 6 tokens each way: P = R = F = 2/3.
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 / 3)
    # LCS "a c" = 2: P = 2/2, R = 2/4, F = 2 * 1 * 0.5 / 1.5 = 2/3.
    assert rouge_l("a c", "a b c d") == pytest.approx(2 / 3)
    assert lcs_length("abcbdab", "bdcaba") == 4


def test_score_rouge():
    scores = score_rouge(["a b", "c d"], ["a b", "x y"])
    assert scores["n"] == 2 and scores["rouge_l"] == 0.5
    assert score_rouge({"q1": "a b"}, {"q1": "a b"})["rows"] == [{"id": "q1", "rouge_l": 1.0}]


# ---------------------------------------------------------------------------------- compare, report


def test_compare_deltas():
    before = score_ifeval(IFEVAL_ROWS, ["all good here", "far too many words here", "no quotes"])
    after = score_ifeval(IFEVAL_ROWS, IFEVAL_RESPONSES)
    result = compare({"ifeval": before}, {"ifeval": after})
    metrics = result["metrics"]
    assert metrics["ifeval.prompt_level"]["before"] == pytest.approx(1 / 3)
    assert metrics["ifeval.prompt_level"]["delta"] == pytest.approx(1 / 3)
    assert metrics["ifeval.instruction_level"]["delta"] == pytest.approx(1 / 5)
    assert metrics["ifeval.per_checker.quoted.accuracy"] == {"before": 0.0, "after": 1.0, "delta": 1.0}
    assert not any("rows" in key or key.endswith("prompts") for key in metrics)
    assert result["worse"] == []
    reverse = compare(after, before, tolerance=0.1)
    assert "prompt_level" in reverse["worse"] and "per_checker.lowercase.accuracy" not in reverse["worse"]


def test_compare_keys_present_on_one_side_only():
    result = compare({"accuracy": 0.5}, {"accuracy": 0.5, "rouge_l": 0.2})
    assert result["metrics"]["rouge_l"] == {"before": None, "after": 0.2, "delta": None}
    assert result["metrics"]["accuracy"]["delta"] == 0.0


def test_to_markdown():
    ifeval = score_ifeval(IFEVAL_ROWS, IFEVAL_RESPONSES)
    exact = score_exact(EXACT_ROWS, ["42", "The answer is not 12.", "Brasília", "yes"])
    text = to_markdown({"ifeval": ifeval, "exact": exact, "rouge": score_rouge(["a"], ["a"])})
    assert "prompt-level 66.7%, instruction-level 80.0% (3 prompts, 5 instructions)" in text
    assert "| max_words | 0/1 | 0.0% |" in text
    assert "- `p2`: max_words" in text
    assert "- `e2`: expected `12`, ended with `The answer is not 12.`" in text
    assert "**ROUGE-L F1**: 100.0% (1 responses)" in text
    diff = to_markdown(compare(ifeval, score_ifeval(IFEVAL_ROWS, ["A", "B", "C"])))
    assert "| prompt_level | 66.7% | 0.0% | -66.7 pt |" in diff
    assert "Worse after: `prompt_level`" in diff


def test_failure_list_is_capped():
    rows = [_ifeval_row(f"r{i}") for i in range(5)]
    text = to_markdown(score_ifeval(rows, ["UPPER"] * 5), max_failures=2)
    assert "- `r1`: lowercase" in text and "- `r2`" not in text and "… and 3 more" in text
