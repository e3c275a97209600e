"""The data of stages pt, dpo and kto through the public entry points: reading the shared LLaMA-Factory
demos, bad rows, kind mismatches, and the token ids and labels of text chunks, pairs and feedback."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from sft.config import ConfigError, validate
from sft.data.preprocess import prepare
from sft.data.templates import get_template
from sft.data.tokenize import IGNORE_INDEX
from sft.training.model import byte_tokenizer

INFO = f"data.dataset_info={SHARED_DATA}/dataset_info.json"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def data_cfg(make_cfg, *overrides: str):
    return validate(make_cfg("model=tiny", *overrides)).data


def run(make_cfg, tok, *overrides: str):
    """Prepare the data of a composed config with the byte tokenizer (no cache)."""
    cfg = data_cfg(make_cfg, *overrides)
    return prepare(cfg, tok, get_template(cfg.template, tok, cfg.system), 42, None)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def trained(labels: list[int]) -> list[int]:
    return [t for t in labels if t != IGNORE_INDEX]


def prompt_len(labels: list[int]) -> int:
    return next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)


# ------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize(
    "overrides",
    [
        ["stage=dpo", "data=llamafactory", INFO, "data.datasets=[dpo_en_demo]"],
        ["stage=dpo", "data=dpo_en"],
    ],
    ids=["dataset_info", "conf"],
)
def test_pairs_read_from_the_shared_demo_share_their_prompt_tokens(make_cfg, tok, overrides):
    prepared = run(make_cfg, tok, *overrides, "data.cutoff_len=8192", "data.val_size=0")
    (d,) = prepared.stats.datasets.values()
    assert (d.rows, d.malformed, d.too_long, prepared.stats.train) == (300, 0, 0, 300)
    rows = prepared.train.select(range(40))
    for row in rows:
        cut = prompt_len(row["chosen_labels"])
        assert cut == prompt_len(row["rejected_labels"])
        assert row["chosen_input_ids"][:cut] == row["rejected_input_ids"][:cut]
        assert tok.decode(row["chosen_input_ids"][:cut]).endswith("<|im_start|>assistant\n")
        # Only the final assistant turn is trained, up to and including its end-of-turn token.
        for side in ("chosen", "rejected"):
            answer = tok.decode(trained(row[f"{side}_labels"]))
            assert answer.endswith("<|im_end|>") and "<|im_start|>" not in answer
        assert row["length"] == len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])
    first = json.loads(open(SHARED_DATA / "dpo_en_demo.json").read())[0]
    row = prepared.train.filter(lambda r: r["location"].endswith("dpo_en_demo.json:2"))[0]
    assert tok.decode(trained(row["chosen_labels"])) == first["chosen"]["value"] + "<|im_end|>"
    assert tok.decode(trained(row["rejected_labels"])) == first["rejected"]["value"] + "<|im_end|>"


@pytest.mark.parametrize(
    "overrides",
    [["stage=kto", "data=llamafactory", INFO, "data.datasets=[kto_en_demo]"], ["stage=kto", "data=kto_en"]],
    ids=["dataset_info", "conf"],
)
def test_feedback_rows_carry_their_label_and_a_kl_row_from_the_next_row(make_cfg, tok, overrides):
    prepared = run(make_cfg, tok, *overrides, "data.cutoff_len=8192", "data.val_size=0")
    (d,) = prepared.stats.datasets.values()
    assert (d.rows, d.malformed, d.too_long) == (300, 0, 0)
    rows = prepared.train[:]
    assert sum(rows["label"]) == 150 and set(rows["label"]) == {True, False}
    n = len(rows["input_ids"])
    for i in range(n):
        j = (i + 1) % n
        p, q = prompt_len(rows["labels"][i]), prompt_len(rows["labels"][j])
        # The KL row is cut at cutoff_len like any other sequence.
        assert rows["kl_input_ids"][i] == (rows["input_ids"][i][:p] + rows["input_ids"][j][q:])[:8192]
        assert rows["kl_labels"][i] == ([IGNORE_INDEX] * p + rows["labels"][j][q:])[:8192]
        assert rows["length"][i] == len(rows["input_ids"][i]) + len(rows["kl_input_ids"][i])
    assert rows["kl_input_ids"][0] != rows["input_ids"][0]


@pytest.mark.parametrize(
    "overrides",
    [["stage=pt", "data=llamafactory", INFO, "data.datasets=[c4_demo]"], ["stage=pt", "data=c4"]],
    ids=["dataset_info", "conf"],
)
def test_text_is_cut_into_chunks_every_token_trained_each_document_ending_on_eos(make_cfg, tok, overrides):
    prepared = run(make_cfg, tok, *overrides, "data.cutoff_len=512", "data.val_size=0")
    (d,) = prepared.stats.datasets.values()
    rows = prepared.train[:]
    assert (d.rows, d.malformed, d.used) == (300, 0, 300)
    assert all(ids == labels for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True))
    assert max(rows["length"]) == 512 and all(n >= 2 for n in rows["length"])
    documents = [json.loads(line)["text"] for line in open(SHARED_DATA / "c4_demo.jsonl")]
    by_location: dict[str, list[int]] = {}
    for location, ids in zip(rows["location"], rows["input_ids"], strict=True):
        by_location.setdefault(location, []).extend(ids)
    assert len(by_location) == 300
    for lineno in (1, 2, 150, 300):
        joined = by_location[f"{SHARED_DATA}/c4_demo.jsonl:{lineno}"]
        whole = tok(documents[lineno - 1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # A lone eos left over after the last full chunk is dropped; everything else is kept in order.
        assert joined == whole or joined == whole[:-1] and len(whole) % 512 == 1
    assert d.split == sum(1 for loc in rows["location"] if rows["location"].count(loc) > 1)


def test_a_txt_file_is_one_document_per_line_for_pt_and_refused_elsewhere(make_cfg, tok, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first document\n\n  \nsecond document\r\n")
    prepared = run(make_cfg, tok, "stage=pt", "data=mix", f"data.datasets=[{path}]", "data.val_size=0")
    texts = sorted(tok.decode(r["input_ids"]) for r in prepared.train)
    assert texts == ["first document<|im_end|>", "second document<|im_end|>"]
    with pytest.raises(ConfigError, match=r"'notes' holds raw text \(a .txt file\).*use stage=pt"):
        data_cfg(make_cfg, "data=mix", f"data.datasets=[{path}]")


# ----------------------------------------------------------------------------------------------- bad rows

Q = [{"role": "user", "content": "Pick one"}]


def test_bad_pairs_are_reported_with_file_and_line_counted_and_skipped(make_cfg, tok, tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"messages": Q, "chosen": "A", "rejected": "B"},
            {"messages": Q, "chosen": "A", "rejected": "A"},
            {"messages": Q, "chosen": {"role": "assistant", "content": "A"}},
            {"messages": Q, "chosen": [{"role": "assistant", "content": "A"}], "rejected": "  "},
            {"messages": [*Q, {"role": "assistant", "content": "x"}], "chosen": "A", "rejected": "B"},
            {"instruction": "Pick", "input": "", "chosen": "A", "rejected": "B"},
            {"prompt": Q, "chosen": [{"role": "assistant", "content": "A"}], "rejected": {"content": "B"}},
        ],
    )
    prepared = run(
        make_cfg,
        tok,
        "stage=dpo",
        "data=mix",
        f"data.datasets={{prefs: {{path: {path}, kind: pairs}}}}",
        "data.val_size=0",
        "data.max_bad_fraction=1",  # a file of edge cases: mostly bad on purpose
    )
    d = prepared.stats.datasets["prefs"]
    assert (d.rows, d.malformed, prepared.stats.train) == (7, 4, 3)
    problems = prepared.stats.problems
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "'chosen' and 'rejected' are identical" in problems[0]
    assert "missing 'rejected'" in problems[1]
    assert "'rejected' is an empty response" in problems[2]
    assert "the prompt must end on a user turn, got assistant" in problems[3]
    answers = {tok.decode(trained(r["rejected_labels"])) for r in prepared.train}
    assert answers == {"B<|im_end|>"}


def test_bad_feedback_labels_and_empty_text_are_skipped(make_cfg, tok, tmp_path):
    turns = [*Q, {"role": "assistant", "content": "A"}]
    feedback = write_jsonl(
        tmp_path / "fb.jsonl",
        [{"messages": turns, "label": v} for v in (True, "false", 1, 0, "maybe", None, 2)],
    )
    prepared = run(
        make_cfg,
        tok,
        "stage=kto",
        "data=mix",
        f"data.datasets={{fb: {{path: {feedback}, kind: feedback}}}}",
        "data.val_size=0",
        "data.max_bad_fraction=1",
    )
    d = prepared.stats.datasets["fb"]
    assert (d.rows, d.malformed) == (7, 3)
    assert sorted(prepared.train["label"]) == [False, False, True, True]
    problems = prepared.stats.problems
    assert [p.split(": ")[0] for p in problems] == [f"{feedback}:{n}" for n in (5, 6, 7)]
    assert "'label' must be true or false (or 1/0), got 'maybe'" in problems[0]
    assert "missing 'label'" in problems[1]

    text = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one"}, {"text": " "}, {"text": 3}, {"body": "x"}])
    prepared = run(
        make_cfg,
        tok,
        "stage=pt",
        "data=mix",
        f"data.datasets={{docs: {{path: {text}, kind: text}}}}",
        "data.val_size=0",
        "data.max_bad_fraction=1",
    )
    assert (prepared.stats.datasets["docs"].malformed, prepared.stats.train) == (3, 1)
    assert [p.split(": ", 1) for p in prepared.stats.problems] == [
        [f"{text}:2", "'text' is empty"],
        [f"{text}:3", "'text' must be a string, got int"],
        [f"{text}:4", "missing field 'text'"],
    ]


# ------------------------------------------------------------------------------------------ kind mismatch


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["stage=dpo"],
            "stage=dpo trains on pairs; dataset 'builtin' holds conversations; "
            "pick pair data, e.g. data=dpo_en",
        ),
        (
            ["data=llamafactory", INFO, "data.datasets=[dpo_en_demo]"],
            "data.datasets: 'dpo_en_demo' holds preference pairs "
            "(kind: pairs, LLaMA-Factory's ranking: true) but stage=sft trains on conversations; "
            "use stage=dpo",
        ),
        (["stage=dpo", "data=kto_en"], "'kto_en' holds KTO feedback"),
        (["data=llamafactory", INFO, "data.datasets=[c4_demo]"], "'c4_demo' holds raw text"),
        (["stage=kto", "data=alpaca_en"], "pick feedback data, e.g. data=kto_en, or mark it: "),
        (["stage=pt", "data=dpo_en"], "use stage=dpo"),
    ],
)
def test_a_dataset_of_another_kind_is_a_config_error_naming_the_fix(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match="Invalid config") as err:
        data_cfg(make_cfg, *overrides)
    assert message in str(err.value)


# ----------------------------------------------------------------------------------------- pair truncation


def test_long_pairs_shorten_their_shared_prompt_together(make_cfg, tok, tmp_path):
    long_prompt = "word " * 200
    path = write_jsonl(
        tmp_path / "long.jsonl",
        [{"messages": [{"role": "user", "content": long_prompt}], "chosen": "A" * 60, "rejected": "B" * 20}],
    )
    common = ["stage=dpo", "data=mix", f"data.datasets={{long: {{path: {path}, kind: pairs}}}}"]
    prepared = run(make_cfg, tok, *common, "data.val_size=0", "data.cutoff_len=128")
    assert prepared.stats.datasets["long"].truncated == 1
    (row,) = prepared.train
    cut = prompt_len(row["chosen_labels"])
    assert row["chosen_input_ids"][:cut] == row["rejected_input_ids"][:cut]
    assert len(row["chosen_input_ids"]) == 128 and len(row["rejected_input_ids"]) == 128 - 40
    assert tok.decode(trained(row["chosen_labels"])) == "A" * 60 + "<|im_end|>"
    assert tok.decode(trained(row["rejected_labels"])) == "B" * 20 + "<|im_end|>"
    assert "word word" in tok.decode(row["chosen_input_ids"][:cut])  # shortened, not emptied

    with pytest.raises(Exception, match="no training examples left"):
        run(make_cfg, tok, *common, "data.val_size=0", "data.cutoff_len=128", "data.truncation=drop")
