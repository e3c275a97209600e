"""Quality scores: the heuristic rules on real public data and on crafted rows, and the LLM judge's prompt
and reply parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft.data.formats import to_conversation
from sft.prepare.quality import (
    CRITERIA,
    exchanges,
    heuristic_scores,
    judge_messages,
    parse_judge,
    passes,
    split_code,
)
from sft.prepare.rows import Row, Tally, read_rows

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def alpaca(instruction: str, output: str, input: str = "") -> Row:
    """A crafted Alpaca row."""
    raw = {"instruction": instruction, "input": input, "output": output}
    return Row("crafted:1", raw, to_conversation(raw))


def unchecked(*turns: tuple[str, str]) -> Row:
    """A row built without the loader's checks (which reject empty answers), as a caller may hand one in."""
    chat = [
        m
        for user, answer in turns
        for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})
    ]
    return Row("crafted:1", {}, {"system": None, "tools": None, "messages": chat, "category": None})


def messages(*turns: dict, tools: list | None = None) -> Row:
    """A crafted OpenAI-messages row."""
    raw = {"messages": list(turns), **({"tools": tools} if tools else {})}
    return Row("crafted:1", raw, to_conversation(raw))


def has_reason(scores: dict, text: str) -> bool:
    return any(text in reason for reason in scores["reasons"])


@pytest.fixture(scope="module")
def alpaca_rows() -> list[Row]:
    return list(read_rows(SHARED / "alpaca_en_demo.json", Tally()))


@pytest.fixture(scope="module")
def alpaca_scored(alpaca_rows) -> list[dict]:
    """Scores of the 999 real Alpaca rows."""
    return [heuristic_scores(row) for row in alpaca_rows]


@pytest.fixture(scope="module")
def glaive_rows() -> list[Row]:
    return list(read_rows(SHARED / "glaive_toolcall_en_demo.json", Tally()))


# ------------------------------------------------------------------------------------------ real data


def test_real_alpaca_rows_mostly_pass(alpaca_scored):
    scores = alpaca_scored
    assert len(scores) == 999
    for s in scores:
        assert set(s) == {*CRITERIA, "score", "reasons", "by"} and s["by"] == "heuristic"
        assert all(1 <= s[c] <= 5 for c in CRITERIA)
        assert s["score"] == round(sum(s[c] for c in CRITERIA) / 3, 2)
        assert all(reason.split(":")[0] in CRITERIA for reason in s["reasons"])
        assert (s["score"] == 5) == (not s["reasons"])
    fraction = sum(passes(s, 4.0) for s in scores) / len(scores)
    assert fraction >= 0.9, fraction  # measured 0.981: GPT-4 answers, a few refusals and cut-off ones


def test_real_alpaca_problems_are_found(alpaca_rows, alpaca_scored):
    by_instruction = {row.instruction: s for row, s in zip(alpaca_rows, alpaca_scored, strict=True)}
    # No input was given for "this sentence"; the model answered something else.
    homophone = by_instruction["Complete this sentence with an example of a homophone."]
    assert homophone["clarity"] == 1 and has_reason(homophone, "clarity: refers to 'this sentence'")
    # The answer stops inside its code block, mid-table.
    table = by_instruction["Create a multiplication table from 2 to 10."]
    assert has_reason(table, "formatting: unbalanced code fence") and not passes(table, 4.0)
    # Opens by declining and offers nothing else.
    house = by_instruction["Write a short description of your house"]
    assert house["helpfulness"] == 1 and has_reason(house, "helpfulness: refusal")
    # Cut off mid-sentence.
    article = by_instruction["Create a scientific article about the extinct species, Resplendent Quetzal."]
    assert has_reason(article, "helpfulness: answer ends mid-sentence") and not passes(article, 4.0)
    # A "````" line closes a "```" block (CommonMark), so this answer's code is balanced.
    forest = next(s for i, s in by_instruction.items() if i.startswith("Build a random forest regression"))
    assert not has_reason(forest, "fence") and not has_reason(forest, "ends")


def test_real_glaive_multi_turn_tool_rows_score(glaive_rows):
    assert len(glaive_rows) == 300
    scores = [heuristic_scores(row) for row in glaive_rows]
    # A function-call turn's empty text is not an empty answer: the call, and the reply after its result, are.
    assert not any(has_reason(s, "answer is empty") for s in scores)
    assert not any(has_reason(s, "calls tool") for s in scores)  # every call names an offered tool
    multi = [s for row, s in zip(glaive_rows, scores, strict=True) if len(exchanges(row)) > 1]
    assert len(multi) > 150
    assert all(" (exchange " in reason for s in multi for reason in s["reasons"])
    fraction = sum(passes(s, 4.0) for s in scores) / len(scores)
    assert fraction >= 0.9, fraction  # measured 0.997; declining what no tool can do costs only MAJOR


def test_tool_call_exchange_joins_the_reply_after_the_tool_result(glaive_rows):
    row = next(r for r in glaive_rows if r.instruction.startswith("Hi, I have some ingredients"))
    found = exchanges(row)
    assert [ex.calls for ex in found] == [[], ["search_recipes"], []]
    assert found[1].answer.startswith("I found two recipes")  # not "" as the call turn's own text is


# ------------------------------------------------------------------------------------------ bad rows


BAD_ROWS = [
    (unchecked(("Explain how photosynthesis works.", "")), "helpfulness", "helpfulness: answer is empty"),
    (
        alpaca("Explain how photosynthesis works.", "..."),
        "helpfulness",
        "helpfulness: answer has no words",
    ),
    (
        alpaca("Write a poem about the sea.", "I'm sorry, but as an AI language model I cannot write poems."),
        "helpfulness",
        "helpfulness: refusal",
    ),
    (
        alpaca("Describe the water cycle in detail.", "Describe the water cycle in detail."),
        "helpfulness",
        "helpfulness: answer repeats the instruction",
    ),
    (
        alpaca("Tell me a story about a dragon.", "The dragon flew over the hills. " * 12),
        "formatting",
        "formatting: repetitive text",
    ),
    (
        alpaca("Tell me a story about a dragon.", "Once upon a time.\n" + "The dragon flew away.\n" * 6),
        "formatting",
        "formatting: line repeated 6 times",
    ),
    (
        alpaca("Translate the following sentence into French.", "Le chat est sur la table."),
        "clarity",
        "clarity: refers to 'the following'",
    ),
    (
        alpaca("Rewrite this paragraph in the passive voice.", "The ball was thrown by John."),
        "clarity",
        "clarity: refers to 'this paragraph'",
    ),
    (
        alpaca(
            "Return the capitals of France and Spain as JSON.",
            "The capital of France is Paris and the capital of Spain is Madrid.",
        ),
        "formatting",
        "formatting: asked for JSON, answer has none",
    ),
    (
        alpaca("Return the capitals of France and Spain as JSON.", '{"France": "Paris", "Spain": "Madrid",}'),
        "formatting",
        "formatting: asked for JSON, answer's JSON does not parse",
    ),
    (
        alpaca(
            "Write a Python function that adds two numbers.",
            "Here it is:\n\n```python\ndef add(a, b):\n    return a + b\n",
        ),
        "formatting",
        "formatting: unbalanced code fence",
    ),
    (
        alpaca(
            "List 5 fruits.", "Fruits are sweet and healthy, and many people enjoy eating them every day."
        ),
        "helpfulness",
        "helpfulness: asked for 5 items, answer has no list of 5",
    ),
    (
        alpaca("Name five planets.", "1. Mercury\n2. Venus\n3. Earth"),
        "helpfulness",
        "helpfulness: asked for 5 items, answer lists 3",
    ),
    (
        alpaca("Make a list of things to pack for a beach trip.", "Sunscreen is the most important thing."),
        "helpfulness",
        "helpfulness: asked for a list, answer has none",
    ),
    (
        alpaca(
            "Explain why the sky is blue.",
            "Sunlight reaches the atmosphere and is scattered by the gas molecules in the air. Blue "
            "light is scattered more than red light because of the",
        ),
        "helpfulness",
        "helpfulness: answer ends mid-sentence",
    ),
    (alpaca("Explain how vaccines work.", "They help you."), "helpfulness", "helpfulness: 3-word answer"),
    (
        alpaca("Write a Python function that reverses a string.", "You reverse it by reading it backwards."),
        "formatting",
        "formatting: asked for code, answer has none",
    ),
    (
        alpaca("Say hello to the user.", "Hello! How can I help you today?<|im_end|>"),
        "formatting",
        "formatting: special token '<|im_end|>'",
    ),
    (
        alpaca("Name five technology companies.", "Apple, Google, Microsoft, Amazon and IBM.", "<noinput>"),
        "clarity",
        "clarity: placeholder text '<noinput>'",
    ),
    (
        alpaca("@@## $$%% ^^&& **((", "I am not sure what you mean."),
        "clarity",
        "clarity: instruction is mostly",
    ),
    (
        alpaca("Write a greeting for {customer_name}.", "Dear customer, welcome to our store!"),
        "clarity",
        "clarity: unfilled template slot '{customer_name}'",
    ),
    (
        alpaca("Write two lines about rain.", "Rain falls softly.\\nThe streets shine at night."),
        "formatting",
        "formatting: literal escape",
    ),
    (
        alpaca(
            "Describe a sunset.", "The sky turns orange and pink as the sun sinks. Caf\ufffd lights glow."
        ),
        "formatting",
        "formatting: damaged characters",
    ),
    (
        messages(
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "get_news", "arguments": {}}}],
            },
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        ),
        "helpfulness",
        "helpfulness: calls tool 'get_news'",
    ),
]


@pytest.mark.parametrize("row, criterion, reason", BAD_ROWS, ids=[reason for _, _, reason in BAD_ROWS])
def test_bad_rows_lose_points_on_the_right_criterion(row, criterion, reason):
    scores = heuristic_scores(row)
    assert scores[criterion] < 4.0, scores
    assert has_reason(scores, reason), scores["reasons"]


@pytest.mark.parametrize(
    "row",
    [
        unchecked(("Explain how photosynthesis works.", " ")),
        alpaca("Tell me a story about a dragon.", "The dragon flew over the hills. " * 12),
        alpaca("Translate the following sentence into French.", "Le chat est sur la table."),
        alpaca("Say hello to the user.", "Hello! How can I help you today?<|im_end|>"),
    ],
)
def test_severe_problems_fail_the_default_threshold_alone(row):
    assert not passes(heuristic_scores(row), 4.0)


def test_one_major_problem_passes_two_fail():
    one = heuristic_scores(
        alpaca("List 5 fruits.", "Fruits are sweet and healthy, and many enjoy them daily.")
    )
    assert one["helpfulness"] == 3 and passes(one, 4.0)
    two = heuristic_scores(
        alpaca(
            "Name five technology companies.", "Companies make many useful things for people.", "<noinput>"
        )
    )
    assert two["clarity"] == 3 and two["helpfulness"] == 3 and not passes(two, 4.0)


def test_refusal_before_a_real_answer_costs_less_than_a_bare_refusal():
    answer = "As an AI, I don't have personal preferences. However, here are popular sights in Rome: " + (
        "the Colosseum, the Forum, the Pantheon, the Vatican Museums and the Trevi Fountain are all worth "
        "seeing, and each tells part of the city's long history. " * 3
    )
    ask = "What would be your favourite sights in Rome?"
    scores = heuristic_scores(alpaca(ask, answer))
    assert scores["helpfulness"] == 3 and has_reason(scores, "opens with a refusal or AI disclaimer")
    bare = heuristic_scores(alpaca(ask, "As an AI, I don't have personal preferences, so I cannot say."))
    assert bare["helpfulness"] == 1 and has_reason(bare, "helpfulness: refusal")
    # With tools on offer, declining what none of them can do is what the row teaches: it costs less.
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    decline = "I'm sorry, but I can't book flights. I can only check the weather for you."
    with_tools = messages(
        {"role": "user", "content": "Book me a flight to Rome."},
        {"role": "assistant", "content": decline},
        tools=tools,
    )
    assert heuristic_scores(with_tools)["helpfulness"] == 3


# ----------------------------------------------------------------------------------------- good rows


@pytest.mark.parametrize(
    "row",
    [
        alpaca("What is 12 * 12?", "144"),
        alpaca("Is the Earth round? Answer yes or no.", "Yes."),
        alpaca("Classify the sentiment of this review: 'I loved every minute of it.'", "Positive"),
        alpaca("Classify the following sentence as a fact or an opinion.", "Fact.", "Water boils at 100 °C."),
        alpaca(
            "Write a Python function that returns the square of a number.",
            "```python\ndef square(x):\n    return x * x\n```",
        ),
        alpaca("List 5 fruits.", "1. Apple\n2. Banana\n3. Cherry\n4. Mango\n5. Orange"),
        alpaca("Give three tips for staying healthy.", "- Eat vegetables.\n- Sleep well.\n- Exercise daily."),
        alpaca("Name three primary colors.", "Red, blue and yellow."),
        alpaca("Describe the color yellow in 3 words.", "Bright, cheerful, warm."),
        alpaca(
            "Return the capitals of France and Spain as JSON.",
            '```json\n{"France": "Paris", "Spain": "Madrid"}\n```',
        ),
        alpaca(
            "Explain the difference between JSON and XML.",
            "JSON stores values as key-value pairs in braces and lists in brackets, while XML wraps every "
            "value in named opening and closing tags.",
        ),
        alpaca(
            "Provide the output when this code is run.",
            'It prints "orange".',
            'print(["apple", "orange"][1])',
        ),
        alpaca(
            "Write a regular expression that matches digits.", "Use `\\d+`, which matches one or more digits."
        ),
        alpaca("请解释什么是光合作用。", "光合作用是植物利用阳光、水和二氧化碳制造葡萄糖并释放氧气的过程。"),
        messages(
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {}}}],
            },
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        ),
    ],
)
def test_good_rows_keep_full_marks(row):
    scores = heuristic_scores(row)
    assert scores["score"] == 5.0 and scores["reasons"] == [], scores


def test_good_code_and_list_rows_keep_5_on_what_they_satisfy():
    code = heuristic_scores(
        alpaca(
            "Write a function in Python that checks whether a number is even.",
            "Here is a simple function:\n\n```python\ndef is_even(n):\n    return n % 2 == 0\n```\n\n"
            "It returns True when `n` is divisible by two.",
        )
    )
    assert code["formatting"] == 5 and code["helpfulness"] == 5
    steps = "\n".join(f"{i}. Step number {i} of the recipe, done carefully." for i in range(1, 6))
    listed = heuristic_scores(alpaca("Give 5 steps to bake bread.", "Here are the steps:\n\n" + steps))
    assert listed["helpfulness"] == 5 and listed["formatting"] == 5


def test_multi_turn_rows_average_each_criterion_over_exchanges():
    row = unchecked(
        ("What is the capital of France?", "The capital of France is Paris."),
        ("And what is its population?", ""),
    )
    scores = heuristic_scores(row)
    assert scores["helpfulness"] == 3.0  # (5 + 1) / 2
    assert scores["reasons"] == ["helpfulness: answer is empty (exchange 2)"]
    # Later turns lean on the dialogue: a short follow-up is not an unclear instruction.
    follow_up = messages(
        {"role": "user", "content": "Recommend a book about the history of Rome."},
        {"role": "assistant", "content": "Try SPQR by Mary Beard, a readable history of ancient Rome."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome!"},
    )
    assert heuristic_scores(follow_up)["score"] == 5.0


def test_code_fences_follow_commonmark():
    text = "Intro\n```python\nx = 1\n````\nMiddle `y` end\n~~~\nz\n~~~\nOutro"
    split = split_code(text)
    assert split.blocks == ["x = 1", "z"] and not split.unclosed
    assert "Intro" in split.prose and "Outro" in split.prose and "x = 1" not in split.prose
    assert "Middle code end" in split.prose
    assert split_code("a\n````\ncode\n```\n").unclosed  # a shorter run does not close a longer fence


def test_passes_compares_the_mean_with_the_threshold():
    assert passes({"score": 4.0}, 4.0)
    assert not passes({"score": 3.99}, 4.0)
    assert passes({"score": 3.5}, 3.5)
    assert passes(heuristic_scores(alpaca("What is 2 + 2?", "4")), 4.0)


# ------------------------------------------------------------------------------------------ LLM judge


def test_judge_messages_show_the_conversation_and_ask_for_the_json_verdict(glaive_rows):
    row = alpaca("Summarise the text.", "Cats sleep a lot.", "Cats sleep up to sixteen hours a day.")
    msgs = judge_messages(row)
    assert [m["role"] for m in msgs] == ["system", "user"]
    prompt = msgs[1]["content"]
    for text in ("clarity", "helpfulness", "formatting", "1", "5", "Summarise the text.", "sixteen hours"):
        assert text in prompt
    assert '{"clarity": 4, "helpfulness": 5, "formatting": 4}' in prompt
    assert prompt.index("Summarise the text.") < prompt.index("Cats sleep a lot.")
    tool_prompt = judge_messages(glaive_rows[0])[1]["content"]
    assert "search_recipes" in tool_prompt and "[Tool result]" in tool_prompt


def test_parse_judge_reads_a_valid_reply():
    reply = 'The task is clear and the answer complete.\n{"clarity": 5, "helpfulness": 4, "formatting": 3}'
    assert parse_judge(reply) == {
        "clarity": 5.0,
        "helpfulness": 4.0,
        "formatting": 3.0,
        "score": 4.0,
        "by": "llm",
    }


def test_parse_judge_tolerates_code_fences_and_decimals():
    reply = 'Fine.\n```json\n{\n  "clarity": 4.5,\n  "helpfulness": 5,\n  "formatting": 4\n}\n```\n'
    assert parse_judge(reply) == {
        "clarity": 4.5,
        "helpfulness": 5.0,
        "formatting": 4.0,
        "score": 4.5,
        "by": "llm",
    }


def test_parse_judge_takes_the_last_object():
    reply = (
        'At first I thought {"clarity": 1, "helpfulness": 1, "formatting": 1}, but on reflection:\n'
        '{"clarity": 4, "helpfulness": 4, "formatting": 5, "notes": {"tone": "fine"}}'
    )
    assert parse_judge(reply)["score"] == 4.33


@pytest.mark.parametrize(
    "reply",
    [
        '{"clarity": 6, "helpfulness": 4, "formatting": 4}',  # out of range
        '{"clarity": 0, "helpfulness": 4, "formatting": 4}',
        '{"clarity": 4, "helpfulness": 4}',  # missing key
        '{"clarity": "4", "helpfulness": 4, "formatting": 4}',  # not a number
        '{"clarity": true, "helpfulness": 4, "formatting": 4}',
        '{"clarity": 4, "helpfulness": 4, "formatting": 4} and then {"clarity": 9}',  # the last one counts
        "The answer is good. Clarity 4, helpfulness 5, formatting 4.",  # no JSON
        "{not json at all",
        "",
        None,
    ],
)
def test_parse_judge_rejects_invalid_replies(reply):
    assert parse_judge(reply) is None


def test_parse_judge_skips_a_trailing_object_that_is_no_verdict():
    reply = '{"clarity": 5, "helpfulness": 5, "formatting": 4}\nExtra details: {"length": "ok"}'
    assert parse_judge(reply)["score"] == 4.67


def test_judge_reply_round_trip_through_json():
    verdict = {"clarity": 3, "helpfulness": 2, "formatting": 5}
    assert parse_judge("Reasons...\n" + json.dumps(verdict))["score"] == 3.33
