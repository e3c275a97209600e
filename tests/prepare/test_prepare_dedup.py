"""Exact and near-duplicate detection (sft.prepare.dedup) on hand-made texts and on real Alpaca data."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft.prepare import dedup
from sft.prepare.dedup import (
    Duplicate,
    dedup_text,
    find_duplicates,
    jaccard,
    lsh_bands,
    normalise,
    shingles,
)
from sft.prepare.rows import PrepareError, Row, Tally, load_rows

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

PROMPT = (
    "Write a short story about a lighthouse keeper who finds a mysterious glass bottle washed up on the "
    "rocky shore after a violent winter storm, and describe what the letter inside it says."
)


def test_normalise_ignores_case_spacing_and_punctuation():
    assert normalise("  Hello,\tWORLD!!  What's   up? ") == "hello world whats up"
    assert normalise("ＦＵＬＬ-width") == "full width"  # NFKC folds full-width letters
    assert normalise("?!...") == ""


def test_shingles_word_and_char():
    assert shingles("a b c", 2, "word") == {"a b", "b c"}
    assert shingles("abcd", 3, "char") == {"abc", "bcd"}
    assert shingles("ab", 5, "char") == {"ab"}  # shorter than one n-gram: the text itself
    assert shingles("", 5, "char") == set()


def test_exact_duplicate_with_other_case_spacing_and_punctuation():
    texts = [
        "What is the capital of France?",
        "Name a fruit.",
        "what is the  capital of france",
        "Name a fruit",
    ]
    assert find_duplicates(texts) == [Duplicate(2, 0, "exact", 1.0), Duplicate(3, 1, "exact", 1.0)]


def test_paraphrase_with_one_word_changed_is_a_near_duplicate():
    changed = PROMPT.replace("violent", "fierce")
    [duplicate] = find_duplicates([PROMPT, "Explain photosynthesis.", changed])
    assert (duplicate.index, duplicate.of, duplicate.kind) == (2, 0, "near")
    # The reported similarity is the exact Jaccard of the character 5-gram sets, not an estimate.
    expected = jaccard(shingles(normalise(PROMPT), 5), shingles(normalise(changed), 5))
    assert duplicate.similarity == pytest.approx(expected)
    assert 0.8 <= duplicate.similarity < 1


def test_unrelated_and_merely_similar_texts_are_kept():
    texts = [
        PROMPT,
        "Explain how photosynthesis turns sunlight into chemical energy in plants.",
        "Write a short poem about a lighthouse.",
        "Write a short poem about the ocean.",
        "Sort these numbers from smallest to largest: 5, 3, 9.",
    ]
    assert find_duplicates(texts) == []


def test_threshold_means_exact_jaccard():
    # Word sets with known Jaccard: 19/21 = 0.905 (one word swapped) and 17/23 = 0.739 (three swapped).
    base = [f"w{i}" for i in range(20)]
    one = base[:-1] + ["x1"]
    three = base[:-3] + ["x1", "x2", "x3"]
    texts = [" ".join(base), " ".join(one), " ".join(three)]
    found = find_duplicates(texts, shingle="word", ngram=1)
    assert [(d.index, d.of, round(d.similarity, 3)) for d in found] == [(1, 0, 0.905)]
    assert [d.index for d in find_duplicates(texts, threshold=0.7, shingle="word", ngram=1)] == [1, 2]


def test_duplicates_point_at_kept_rows():
    # b repeats a; c repeats b (0.905) but not a (18/22 = 0.818 < 0.85): with b dropped, c stays.
    words = [f"w{i}" for i in range(22)]
    a, b, c = (" ".join(words[i : i + 20]) for i in range(3))
    found = find_duplicates([a, b, c], threshold=0.85, shingle="word", ngram=1)
    assert [(d.index, d.of) for d in found] == [(1, 0)]


def test_lsh_bands_catch_pairs_at_the_threshold():
    bands, rows = lsh_bands(0.8, 128)
    assert bands * rows <= 128
    assert 1 - (1 - 0.8**rows) ** bands >= 0.99


def test_texts_without_words_only_match_exactly():
    assert find_duplicates(["?!", "...", "ok"]) == [Duplicate(1, 0, "exact", 1.0)]


@pytest.mark.parametrize(
    ("option", "value"), [("shingle", "sentence"), ("threshold", 0.0), ("threshold", 1.5), ("ngram", 0)]
)
def test_bad_options_are_setting_errors(option, value):
    with pytest.raises(PrepareError, match=option):
        find_duplicates(["a", "b"], **{option: value})


def test_dedup_text_fields():
    conversation = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "What time is it in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "clock"}}]},
            {"role": "tool", "content": "14:00"},
            {"role": "assistant", "content": "It is 2 pm."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome."},
        ],
    }
    row = Row("mem:1", {}, conversation)
    assert dedup_text(row, "prompt") == "What time is it in Paris?\nThanks!"
    full = dedup_text(row, "prompt_response")
    assert full.startswith("What time is it in Paris?\n") and "clock" in full and "14:00" in full
    assert full.endswith("You're welcome.")
    with pytest.raises(PrepareError, match="fields"):
        dedup_text(row, "response")


def test_alpaca_duplicates_with_few_comparisons(monkeypatch):
    rows = load_rows(DATA / "alpaca_en_demo.json", Tally())
    texts = [dedup_text(row, "prompt") for row in rows]
    compared = []
    monkeypatch.setattr(dedup, "jaccard", lambda a, b: compared.append(1) or jaccard(a, b))
    found = find_duplicates(texts)
    print(
        f"\nalpaca_en_demo.json: {len(rows)} rows, {len(found)} duplicates "
        f"({sum(d.kind == 'near' for d in found)} near), {len(compared)} exact comparisons"
    )
    # The file holds 13 prompts twice or (one) three times, replies included; nothing else is near 0.8.
    assert [d.kind for d in found] == ["exact"] * 14
    assert all(normalise(texts[d.index]) == normalise(texts[d.of]) and d.of < d.index for d in found)
    # LSH compares only candidate pairs: a pairwise scan would make ~500,000 comparisons here.
    assert len(compared) <= len(texts)
    assert len(find_duplicates([dedup_text(row, "prompt_response") for row in rows])) == 14
