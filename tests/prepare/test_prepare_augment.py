"""The augment step's transformations (sft/prepare/augment.py) and the report step's charts (charts.py)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from sft.data.formats import to_conversation
from sft.eval.constraints import check
from sft.prepare.augment import (
    VARIANTS,
    Skip,
    constraint_variant,
    cut_to_words,
    instruction_text,
    judge_rephrase,
    parse_rephrase,
    rephrase_messages,
    rephrased_row,
    text_kind,
    with_constraint,
)
from sft.prepare.charts import MAX_BARS, draw_report, share_rows
from sft.prepare.rows import Row, Tally, read_rows
from sft.text import sentences, words

CUTS = ("concise", "one_sentence", "word_limit")
CONSTRAINT = {
    "concise": "(Be concise)",
    "one_sentence": "Answer in one sentence.",
    "lowercase": "Respond in all lowercase.",
}
ENDS_STATEMENT = re.compile(r"[.!][\"'”’)\]]*\Z")


@pytest.fixture(scope="module")
def alpaca() -> list[Row]:
    return list(read_rows(SHARED_DATA / "alpaca_en_demo.json", Tally()))


@pytest.fixture(scope="module")
def variants(alpaca) -> dict[str, list[tuple[Row, dict]]]:
    """Every variant of every Alpaca row that gets one, with the row it came from."""
    made = {name: [] for name in VARIANTS}
    for row in alpaca:
        for name in VARIANTS:
            try:
                made[name].append((row, constraint_variant(row, name)))
            except Skip:
                pass
    return made


def row(data: dict, location: str = "test.jsonl:1") -> Row:
    return Row(location, data, to_conversation(data))


def squash(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------- sentences


def test_cut_keeps_whole_sentences_within_the_budget():
    text = "One two three. Four five six seven. Here are the options. Eight nine ten eleven twelve."
    assert cut_to_words(text, 3) == "One two three."
    assert cut_to_words(text, 7) == "One two three. Four five six seven."
    # A cut never ends on a lead-in that announces what it then leaves out.
    assert cut_to_words(text, 11) == "One two three. Four five six seven."
    assert cut_to_words(text, 2) == ""
    assert cut_to_words("Is it? Yes it is.", 2) == ""  # a question is not a statement to end on


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("The sky is blue. It scatters light.\n\nSo it is blue.", "prose"),
        ('"A quoted sentence."', "prose"),
        ("Here are three:\n- one\n- two\n- three", "list"),
        ("Steps:\n\n1. Mix.\n2. Bake.", "list"),
        ("Firstly, it is cheap. Secondly, it is fast.", "list"),
        ("Chili Con Carne\n\nIngredients are cheap.", "structured"),
        ("Roses are red\nViolets are blue", "structured"),
        ("Use this:\n```python\nprint(1)\n```", "code"),
        ("def f(x):\n    return x + 1", "code"),
        ("SELECT name FROM users WHERE age > 30;", "code"),
        ('{"name": "Tim"}', "code"),
    ],
)
def test_text_kind(text, kind):
    assert text_kind(text) == kind


@pytest.mark.parametrize(
    ("instruction", "constraint", "expected"),
    [
        ("Describe X.", "(Be concise)", "Describe X. (Be concise)"),
        ("Describe X", "Answer in one sentence.", "Describe X. Answer in one sentence."),
        ('Define "timid"', "Answer in one sentence.", 'Define "timid". Answer in one sentence.'),
        ("Is it safe?", "Answer in one sentence.", "Is it safe? Answer in one sentence."),
        ("Classify the animal:", "Answer in one sentence.", "Answer in one sentence. Classify the animal:"),
        ("Classify the animal:", "(Be concise)", "Classify the animal (Be concise):"),
        ("Explain this:\nx = 1", "(Be concise)", "Explain this:\nx = 1\n\n(Be concise)"),
    ],
)
def test_constraint_reads_as_part_of_the_request(instruction, constraint, expected):
    assert with_constraint(instruction, constraint) == expected


# ------------------------------------------------------------------------------- variants on real rows


def test_length_variants_on_real_alpaca_rows(alpaca, variants):
    counts = {name: len(made) for name, made in variants.items()}
    # 999 rows: about 130-180 get each cut (prose answers to requests a prefix can answer), nearly all
    # get lowercase. Bounds wide enough for tuning, tight enough to catch a variant that stopped working.
    for name in CUTS:
        assert 100 <= counts[name] <= 300, counts
    assert counts["lowercase"] >= 850, counts
    for name in CUTS:
        for source, out in variants[name]:
            original, short = source.response, out["output"]
            assert len(words(short)) < len(words(original)), (name, source.location)
            assert ENDS_STATEMENT.search(short), (name, short[-40:])
            assert squash(original).startswith(squash(short)), (name, source.location)
            assert text_kind(original) == "prose"
            constraint = out["augmented"]["constraint"]
            assert out["instruction"] == with_constraint(source.data["instruction"], constraint)
            assert out["input"] == source.data["input"]
            assert out["augmented"]["kind"] == name and out["augmented"]["from"] == source.location
            assert to_conversation(out)["messages"][1]["content"] == short  # the row still reads
    for source, out in variants["concise"]:
        assert "(Be concise)" in out["instruction"]
        assert len(words(out["output"])) <= 50
        assert len(words(out["output"])) <= 0.75 * len(words(source.response))
    for _, out in variants["one_sentence"]:
        assert "Answer in one sentence." in out["instruction"]
        assert len(sentences(out["output"])) == 1
        assert not out["output"].rstrip('"').endswith(":")
    for source, out in variants["word_limit"]:
        n = int(re.search(r"Answer in under (\d+) words\.", out["instruction"]).group(1))
        assert n % 5 == 0 and n <= 0.5 * len(words(source.response)) + 2.5
        assert check("max_words", out["output"], {"n": n - 1})  # the eval's own word count agrees


def test_already_short_answers_get_no_length_variant(alpaca):
    short = next(r for r in alpaca if text_kind(r.response) == "prose" and len(words(r.response)) < 20)
    for name in ("concise", "word_limit"):
        with pytest.raises(Skip) as skip:
            constraint_variant(short, name)
        assert skip.value.reason == "already short"
    one = row({"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."})
    with pytest.raises(Skip, match="one sentence"):
        constraint_variant(one, "one_sentence")


def test_code_and_list_answers_are_never_cut(alpaca, variants):
    cut = {source.location for name in CUTS for source, _ in variants[name]}
    code = [r for r in alpaca if "```" in r.response or text_kind(r.response) == "code"]
    lists = [r for r in alpaca if text_kind(r.response) == "list"]
    assert len(code) >= 30 and len(lists) >= 200
    assert not cut & {r.location for r in code + lists}
    fenced = next(r for r in code if "```" in r.response)
    for name in (*CUTS, "lowercase"):
        with pytest.raises(Skip) as skip:
            constraint_variant(fenced, name)
        assert skip.value.reason in ("code", "already short")
    # A code request is not cut even when its answer is prose about the code.
    prose_code = row(
        {
            "instruction": "Write a Python function that adds two numbers.",
            "input": "",
            "output": "You can add them with the plus operator. " * 20,
        }
    )
    for name in (*CUTS, "lowercase"):
        with pytest.raises(Skip, match="code"):
            constraint_variant(prose_code, name)


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("Rewrite the following paragraph in the passive voice.", "whole answer"),
        ("Write a short story about a dragon.", "length asked"),
        ("Write a story about a dragon.", "whole answer"),
        ("Give three reasons to exercise.", "counted"),
        ("Explain photosynthesis and give an example.", "multi-part"),
        ("Describe the water cycle in 50 words.", "length asked"),
    ],
)
def test_requests_a_prefix_cannot_answer_are_not_cut(instruction, reason):
    long_prose = "The water cycle moves water between the sea, the air and the land. " * 12
    source = row({"instruction": instruction, "input": "", "output": long_prose})
    for name in CUTS:
        with pytest.raises(Skip) as skip:
            constraint_variant(source, name)
        assert skip.value.reason == reason


def test_lowercase_variant(variants):
    for source, out in variants["lowercase"]:
        assert out["output"] == source.response.lower()
        assert check("lowercase", out["output"])
        assert out["instruction"].endswith("Respond in all lowercase.") or out["instruction"].startswith(
            "Respond in all lowercase."
        )
    request = {"instruction": "Capitalize every word of the title.", "input": "a tale", "output": "A Tale"}
    with pytest.raises(Skip, match="case asked"):
        constraint_variant(row(request), "lowercase")
    with pytest.raises(Skip, match="unchanged"):
        constraint_variant(row({"instruction": "Say hi.", "output": "hi there."}), "lowercase")


def test_multi_turn_and_tool_rows_get_no_variant():
    rows = list(read_rows(SHARED_DATA / "glaive_toolcall_en_demo.json", Tally()))
    reasons = Counter()
    for source in rows:
        for name in VARIANTS:
            with pytest.raises(Skip) as skip:
                constraint_variant(source, name)
            reasons[skip.value.reason] += 1
    # 261 multi-turn rows, 38 single exchanges offering tools, and one single exchange without tools
    # whose request is Go code: skipped on its merits.
    assert reasons == {"multi-turn": 261 * 4, "tools": 38 * 4, "code": 4}
    history = {
        "instruction": "And in French?",
        "input": "",
        "output": "Bonjour is hello in French. It is used all day. " * 10,
        "history": [["Say hello.", "Hello."]],
    }
    with pytest.raises(Skip, match="multi-turn"):
        constraint_variant(row(history), "concise")


def test_sharegpt_and_messages_single_exchange_rows(alpaca, variants):
    source, expected = variants["one_sentence"][0]
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "You are helpful."},
            {"from": "human", "value": source.instruction},
            {"from": "gpt", "value": source.response},
        ],
        "id": 7,
    }
    messages = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": source.instruction}]},
            {"role": "assistant", "content": source.response},
        ]
    }
    for data in (sharegpt, messages):
        before = json.dumps(data)
        out = constraint_variant(row(data), "one_sentence")
        assert json.dumps(data) == before  # the row as read is left as it was
        conversation = to_conversation(out)
        assert [m["content"] for m in conversation["messages"]] == [
            with_constraint(source.instruction, "Answer in one sentence."),
            expected["output"],
        ]
        assert out["augmented"] == {
            "kind": "one_sentence",
            "from": "test.jsonl:1",
            **{"constraint": "Answer in one sentence."},
        }
    assert constraint_variant(row(sharegpt), "one_sentence")["id"] == 7
    assert to_conversation(constraint_variant(row(sharegpt), "one_sentence"))["system"] == "You are helpful."


def test_renamed_columns_and_tags_are_followed():
    data = {
        "question": "Describe the moon.",
        "answer": "The Moon orbits Earth. " + "It is grey and dusty. " * 30,
    }
    columns = {"prompt": "question", "response": "answer"}
    source = Row("a.jsonl:1", data, to_conversation(data, "alpaca", columns))
    out = constraint_variant(source, "concise", fmt="alpaca", columns=columns)
    assert out["question"] == "Describe the moon. (Be concise)"
    assert out["answer"] == "The Moon orbits Earth. " + " ".join(["It is grey and dusty."] * 9)  # 49 words
    assert "instruction" not in out and "output" not in out
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}
    turns = {"conversations": [{"speaker": "me", "text": "Say hi."}, {"speaker": "bot", "text": "Hi There."}]}
    source = Row("b.jsonl:1", turns, to_conversation(turns, "sharegpt", tags=tags))
    out = constraint_variant(source, "lowercase", fmt="sharegpt", tags=tags)
    assert out["conversations"][1] == {"speaker": "bot", "text": "hi there."}


def test_unknown_variant_names_the_known_ones(alpaca):
    with pytest.raises(ValueError, match="concise"):
        constraint_variant(alpaca[0], "shout")


# ------------------------------------------------------------------------------------------- rephrasing


def test_rephrase_messages_ask_for_the_instruction_only():
    messages = rephrase_messages("  Describe the paperclip maximizer problem.\n")
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert content.endswith("Instruction:\nDescribe the paperclip maximizer problem.")
    assert "only the rewritten instruction" in content and "same meaning" in content


ORIGINAL = "Describe the paperclip maximizer problem."


@pytest.mark.parametrize(
    "reply",
    [
        "Explain the thought experiment known as the paperclip maximizer.",
        '"Explain the thought experiment known as the paperclip maximizer."',
        "Rewritten instruction: Explain the thought experiment known as the paperclip maximizer.",
        "Sure! Here is the rewritten instruction:\n\nExplain the thought experiment known as the paperclip"
        " maximizer.",
        "```\nExplain the thought experiment known as the paperclip maximizer.\n```",
        "**Rephrased:** “Explain the thought experiment known as the paperclip maximizer.”",
    ],
)
def test_parse_rephrase_strips_wrappers(reply):
    expected = "Explain the thought experiment known as the paperclip maximizer."
    assert parse_rephrase(ORIGINAL, reply) == expected


@pytest.mark.parametrize(
    ("original", "reply", "reason"),
    [
        (ORIGINAL, "", "empty"),
        (ORIGINAL, '  "  "  ', "empty"),
        (ORIGINAL, "describe the Paperclip Maximizer problem", "identical"),
        (ORIGINAL, "I'm sorry, but I can't help with rewriting that.", "refusal"),
        (
            ORIGINAL,
            "Explain the paperclip maximizer.\n\nThis version keeps the meaning but is shorter.",
            "chatter",
        ),
        (ORIGINAL, "Explain the paperclip maximizer problem. " * 4, "too long"),
        (ORIGINAL, "The weather in Paris is mild in spring and tourists enjoy its parks.", "unrelated"),
        (
            "Find the area of a circle with radius 5.",
            "Find the area of a circle with radius 7.",
            "lost number",
        ),
        (
            'Rewrite this sentence:\n"Online learning is efficient."',
            'Reword this sentence:\n"Learning online is efficient."',
            "lost text",
        ),
    ],
)
def test_parse_rephrase_rejects(original, reply, reason):
    assert parse_rephrase(original, reply) is None
    assert judge_rephrase(original, reply) == (None, reason)


def test_parse_rephrase_accepts_free_rewordings():
    seasons = "Could you tell me what causes seasons on Earth?"
    assert parse_rephrase("Explain why the Earth has seasons.", seasons) == seasons
    free = "What does the paperclip maximizer thought experiment warn about?"
    assert parse_rephrase(ORIGINAL, free) == free
    assert judge_rephrase(ORIGINAL, free + " It should cover the risks, the history and the critics.") == (
        None,
        "too long",
    )
    # A poem written instead of a rewording shares no content words with the request.
    poem = "The waves roll in beneath a silver moon, the tide sings softly its eternal tune."
    assert judge_rephrase("Write a poem about the sea.", poem) == (None, "unrelated")
    pasted = 'Rewrite this sentence:\n"Online learning is efficient."'
    assert parse_rephrase(pasted, 'Reword the sentence below:\n"Online learning is efficient."')


def test_rephrased_rows_replace_the_instruction_only(alpaca):
    source = next(r for r in alpaca if r.data["input"].strip())
    assert instruction_text(source) == source.data["instruction"]
    out = rephrased_row(source, "Please do this.")
    assert out["instruction"] == "Please do this." and out["input"] == source.data["input"]
    assert out["output"] == source.response
    assert out["augmented"] == {"kind": "rephrase", "from": source.location}
    glaive = next(iter(read_rows(SHARED_DATA / "glaive_toolcall_en_demo.json", Tally())))
    out = rephrased_row(glaive, "Could you help me cook with what I have?")
    before, after = to_conversation(glaive.data), to_conversation(out)
    assert after["messages"][0]["content"] == "Could you help me cook with what I have?"
    assert after["messages"][1:] == before["messages"][1:] and after["tools"] == before["tools"]
    messages = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    assert rephrased_row(row(messages), "Hello?")["messages"][0] == {"role": "user", "content": "Hello?"}
    with pytest.raises(Skip, match="no instruction"):
        rephrased_row(row({"instruction": "", "input": "Some text.", "output": "Fine."}), "Do it.")


# ----------------------------------------------------------------------------------------------- charts


def test_share_rows_normalise_targets_and_order():
    labels = ["b", "a", "a", None, "a", "b"]
    rows = share_rows(labels, {"a": 50, "b": 30, "c": 20})
    assert [(r[0], r[1]) for r in rows] == [("a", 3), ("b", 2), ("(none)", 1), ("c", 0)]
    assert rows[0][2:] == (0.5, 0.5) and rows[2][3] is None and rows[3][3] == pytest.approx(0.2)
    # Shares summing to at most 1 are taken as given; order="targets" keeps the targets' order.
    rows = share_rows(["hard", "easy"], {"easy": 0.2, "medium": 0.3, "hard": 0.1}, order="targets")
    assert [(r[0], r[3]) for r in rows] == [("easy", 0.2), ("medium", 0.3), ("hard", 0.1)]
    many = share_rows([f"label{i}" for i in range(40) for _ in range(i + 1)], {})
    assert len(many) == MAX_BARS and many[-1][0] == f"other ({40 - MAX_BARS + 1} labels)"
    assert sum(r[1] for r in many) == sum(range(1, 41))


def _report_inputs(alpaca):
    first = {"write": "writing", "generate": "writing", "explain": "explanation", "describe": "explanation"}
    categories = [first.get(r.instruction.split()[0].lower(), "other") for r in alpaca]
    prompt = [len(words(r.instruction)) for r in alpaca]
    response = [len(words(r.response)) for r in alpaca]
    difficulties = ["easy" if w < 40 else "medium" if w < 150 else "hard" for w in response]
    scores = list(np.clip(np.random.default_rng(0).normal(4.0, 0.6, len(alpaca)), 1, 5))
    return categories, difficulties, prompt, response, scores


def _pixels(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _has_colour(pixels, rgb, tolerance=12):
    return bool((np.abs(pixels - np.array(rgb)).max(axis=2) <= tolerance).any())


BLUE, ORANGE, RED = (31, 119, 180), (255, 127, 14), (214, 39, 40)  # tab:blue, tab:orange, tab:red


def test_report_charts_are_pngs_that_show_the_data(alpaca, tmp_path):
    categories, difficulties, prompt, response, scores = _report_inputs(alpaca)
    targets = {"writing": 0.3, "explanation": 0.2, "other": 0.5}
    paths = draw_report(
        tmp_path / "report",
        categories,
        difficulties,
        prompt,
        response,
        targets,
        {"easy": 1, "medium": 1},
        scores,
    )
    names = ["categories.png", "difficulty.png", "lengths.png", "quality.png"]
    assert [p.name for p in paths] == names and all(p.parent == tmp_path / "report" for p in paths)
    for path in paths:
        pixels = _pixels(path)
        height, width, _ = pixels.shape
        assert 600 <= width <= 2000 and 250 <= height <= 1500, (path.name, width, height)
        assert pixels.std() > 20  # not a blank canvas
        assert _has_colour(pixels, BLUE) or _has_colour(pixels, ORANGE), path.name  # bars drawn
    # Categories are far off these targets (orange bars); the difficulty targets omit "hard".
    assert _has_colour(_pixels(paths[0]), ORANGE)
    assert _has_colour(_pixels(paths[2]), RED)  # the median lines
    assert _has_colour(_pixels(paths[3]), RED)  # the threshold line
    # Without scores there is no quality chart; with matching targets no bar is marked off target.
    shares = {c: categories.count(c) for c in set(categories)}
    again = draw_report(tmp_path / "again", categories, [], prompt, response, shares, {})
    assert [p.name for p in again] == names[:3] and not (tmp_path / "again" / "quality.png").exists()
    assert not _has_colour(_pixels(again[0]), ORANGE)


def test_report_charts_survive_empty_inputs(tmp_path):
    paths = draw_report(tmp_path, [], [], [], [], {"a": 1.0}, {}, [])
    assert len(paths) == 4 and all(_pixels(p).std() > 0 for p in paths)
