"""The shared text heuristics (sft.text) on clear positive and negative examples."""

from __future__ import annotations

import re

import pytest

from sft.text import (
    NUMBER_WORDS,
    asks_for_code,
    code_lines,
    has_code_block,
    is_code_task,
    looks_like_code,
    mentions_code,
    number_value,
    number_words,
    paragraphs,
    sentence_ends,
    sentences,
    tokens,
    words,
)

# ----------------------------------------------------------------------------------------------- words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A state-of-the-art design, e.g. 3.5 times faster.", 7),  # hyphenated, abbreviated, decimal
        ("Pros - cheap * fast — light", 4),  # a lone dash or star is no word
        ("我是AI助手。", 5),  # CJK characters one each; "AI" between them is one word
        ("  \n\t ", 0),
    ],
)
def test_words_are_whitespace_tokens_with_a_letter_or_digit(text, expected):
    assert len(words(text)) == expected


def test_tokens_are_lowercased_words_without_punctuation():
    assert tokens("Don't STOP, e.g. now!") == ["don't", "stop", "e", "g", "now"]
    assert tokens("你好 world") == ["你", "好", "world"]
    assert tokens("-- ... !!") == []


# --------------------------------------------------------------------------------------------- numbers


def test_number_words():
    every, several = number_words(), number_words(least=2)
    assert re.fullmatch(every, "one") and not re.fullmatch(several, "one")
    assert re.fullmatch(several, "twenty") and not re.fullmatch(every, "twentyfive")
    # Longest first: "fourteen" is not read as "four" followed by "teen".
    assert re.match(every, "fourteen").group() == "fourteen"
    assert all(re.fullmatch(every, word) for word in NUMBER_WORDS)
    assert number_value("Twelve") == 12 and number_value("12") == 12 and number_value("hundred") == 100


# --------------------------------------------------------------------------------- sentences, paragraphs


def test_sentences_split_at_real_ends_only():
    text = (
        'Dr. Smith paid $3.5 million, e.g. for the U.S. office. He said "Stop." Then he left! '
        "Apples, pears, etc. The end came at 5 p.m. sharp... or so. Why? no idea."
    )
    assert sentences(text) == [
        "Dr. Smith paid $3.5 million, e.g. for the U.S. office.",
        'He said "Stop."',
        "Then he left!",
        "Apples, pears, etc.",
        "The end came at 5 p.m. sharp... or so.",
        "Why? no idea.",
    ]
    # A list marker is not a sentence end; the item's own end is.
    assert sentences("Steps:\n1. Mix it. Stir.\n2. Bake") == ["Steps:\n1. Mix it.", "Stir.", "2. Bake"]
    assert sentences("1. Preheat.\n2. Bake.") == ["1. Preheat.", "2. Bake."]
    assert sentence_ends("No end here") == []


def test_a_blank_line_ends_a_sentence_without_punctuation():
    assert sentences("A heading\n\nThe text. More text.") == ["A heading", "The text.", "More text."]
    assert sentences("One.\n\nTwo.") == ["One.", "Two."]  # the blank line adds no empty sentence
    assert sentences("morning fog\nwraps the hill\nbirds wait") == ["morning fog\nwraps the hill\nbirds wait"]
    assert sentences("Well. ... — !") == ["Well."]  # pieces without a letter or digit are no sentences


def test_paragraphs():
    assert paragraphs("One.\n  \n\n\nTwo.\nStill two.\n\n") == ["One.", "Two.\nStill two."]
    assert paragraphs("One line\nanother line") == ["One line\nanother line"]
    assert paragraphs(" \n\n ") == []


# ------------------------------------------------------------------------------------------------ code


@pytest.mark.parametrize(
    "text",
    [
        "Use this:\n```python\nprint(1)\n```",
        "def f(x):\n    return x + 1",
        "SELECT name FROM users WHERE age > 30;",
        '{"name": "Tim"}',
        "for item in items:\n    total += item;",
        "body {\n  color: red;\n}",
    ],
)
def test_looks_like_code(text):
    assert looks_like_code(text)


@pytest.mark.parametrize(
    "text",
    [
        "The sky is blue.",
        "Return the book to the library. Then go home.",
        "E = mc^2 relates mass and energy.",
        "Here are three:\n- one\n- two",
        "Select the best option from the list.",
        "Print it like this:\nprint(total)\nThat shows the sum.",  # one code line among prose lines
    ],
)
def test_prose_does_not_look_like_code(text):
    assert not looks_like_code(text)


def test_code_lines_and_blocks():
    assert code_lines("Some prose.\nimport os\nx = compute(1);\nMore prose.") == 2
    assert code_lines("Plain text.\nMore plain text.") == 0
    assert has_code_block("Try:\n~~~\nls\n~~~") and has_code_block("```\nx\n```")
    assert not has_code_block("Three backticks ``` mid-line are no fence.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write a Python script that renames files.", True),
        ("What does range(5) return?", True),
        ("Explain recursion with an example.", True),
        ("How do I write a for loop in C#?", True),
        ("What is the difference between append and extend on a list?", True),
        ("Append a short conclusion to the essay.", False),
        ("Summarize the article at https://example.com/cats-vs-dogs.html", False),
        ("Write a script for a school play.", False),
        ("What is the function of the heart?", False),
        ("Create a training program for a marathon.", False),
        ("What is the zip code of Paris?", False),
    ],
)
def test_mentions_code(text, expected):
    assert mentions_code(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write a function that reverses a string.", True),
        ("Please implement a class for a bank account.", True),
        ("Generate an SQL query to count the users.", True),
        ("Write a program to sort numbers in Python", True),
        ("Create a training program for runners.", False),
        ("Explain what the following code does.", False),
        ("Describe how a compiler works.", False),
    ],
)
def test_asks_for_code(text, expected):
    assert bool(asks_for_code(text)) is expected


def test_is_code_task():
    assert is_code_task("Write a function that adds two numbers.")
    assert is_code_task("Show me an example.", "Sure:\n```python\nprint(1)\n```")
    assert is_code_task("Explain arrays.", "An array holds items.")
    assert not is_code_task("Tell me a joke.", "Why did the chicken cross the road?")
    assert not is_code_task("Write a poem about the sea.", "The waves roll in.")
