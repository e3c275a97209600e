"""Per-turn loss weights and reasoning traces from the canonical conversation to the batch: exact labels and
label weights, the reasoning templates, and the weights through collation, packing and preparation."""

from __future__ import annotations

import json

import pytest
import torch

from sft.data.collate import PackedCollator, PadCollator
from sft.data.datamodule import SFTDataModule
from sft.data.loading import apply_reasoning
from sft.data.packing import PackedDataset
from sft.data.preprocess import prepare
from sft.data.templates import Template, get_template, render, with_system
from sft.data.tokenize import IGNORE_INDEX, encode
from sft.errors import DataError
from sft.training.model import byte_tokenizer

M = IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def conv(*turns, system=None, tools=None):
    """A canonical conversation: strings alternate user / assistant; dicts are taken as they are."""
    messages = [
        t if isinstance(t, dict) else {"role": ("user", "assistant")[i % 2], "content": t}
        for i, t in enumerate(turns)
    ]
    return {"system": system, "tools": tools, "messages": messages}


def answer(text, **extra):
    return {"role": "assistant", "content": text, **extra}


def runs(tok, ids, values) -> list[tuple[str, object]]:
    """(decoded text, value) for each run of consecutive tokens sharing a value."""
    out, run, current = [], [], object()
    for token, value in [*zip(ids, values, strict=True), (None, object())]:
        if run and value != current:
            out.append((tok.decode(run), current))
            run = []
        run.append(token)
        current = value
    return out


def trained(tok, example) -> list[str]:
    """The text of each run of trained tokens."""
    flags = [label != M for label in example["labels"]]
    return [text for text, on in runs(tok, example["input_ids"], flags) if on]


WEIGHTED = conv("Hi", answer("Hello!", loss_weight=0.5), "2+2?", answer("4", loss_weight=0.0), system="S")


# --------------------------------------------------------------------------------------------- labels


def test_a_weighted_turn_carries_its_weight_and_a_zero_weight_turn_is_not_labelled(tok):
    example = encode(WEIGHTED, tok, get_template("chatml", tok), 4096)
    assert example["status"] == "ok"
    assert trained(tok, example) == ["Hello!<|im_end|>"]
    assert runs(tok, example["input_ids"], example["label_weights"]) == [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", 1.0),
        ("Hello!<|im_end|>", 0.5),
        ("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", 1.0),
        ("4<|im_end|>", 0.0),
        ("\n", 1.0),
    ]


def test_weight_one_everywhere_is_exactly_the_unweighted_row(tok):
    template = get_template("chatml", tok)
    plain = conv("Hi", "Hello!", "2+2?", "4", system="S")
    example = encode(plain, tok, template, 4096)
    assert example["label_weights"] == []  # "every weight is 1", stored as nothing
    half = conv("Hi", answer("Hello!", loss_weight=0.5), "2+2?", "4", system="S")
    weighted = encode(half, tok, template, 4096)
    assert weighted["input_ids"] == example["input_ids"] and weighted["labels"] == example["labels"]
    assert sorted(set(weighted["label_weights"])) == [0.5, 1.0]


def test_weights_under_mask_history_train_on_prompt_and_truncation(tok):
    template = get_template("chatml", tok)
    last_zero = encode(WEIGHTED, tok, template, 4096, mask_history=True)
    assert last_zero["status"] == "no_trained_token"
    last_half = conv("Hi", "Hello!", "2+2?", answer("4", loss_weight=0.25))
    example = encode(last_half, tok, template, 4096, mask_history=True)
    assert trained(tok, example) == ["4<|im_end|>"]
    prompt = encode(WEIGHTED, tok, template, 4096, train_on_prompt=True)
    assert [
        t for t, on in runs(tok, prompt["input_ids"], [lab != M for lab in prompt["labels"]]) if not on
    ] == ["4<|im_end|>"]
    # keep_response drops the first exchange; the kept turn keeps its weight.
    long = conv("x" * 60, answer("Hello!", loss_weight=0.0), "2+2?", answer("4", loss_weight=0.5))
    cut = encode(long, tok, template, 40)
    assert cut["status"] == "truncated" and trained(tok, cut) == ["4<|im_end|>"]
    assert {w for w, on in zip(cut["label_weights"], cut["labels"], strict=True) if on != M} == {0.5}
    assert (
        encode(conv("q", answer("a", loss_weight=0.0)), tok, template, 4096)["status"] == "no_trained_token"
    )


# ------------------------------------------------------------------------------------------ reasoning

REASONED = conv("2+2?", answer("4", reasoning_content="Add them."))
TWO_TURNS = conv("Hi", answer("Hello!", reasoning_content="Greet back."), "2+2?", answer("4"))


def test_qwen3_renders_the_reasoning_inside_the_trained_answer(tok):
    template = get_template("qwen3", tok)
    assert template.supports_reasoning and template.stop == "<|im_end|>" and template.default_system is None
    example = encode(REASONED, tok, template, 4096)
    assert tok.decode(example["input_ids"]) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        "<think>\nAdd them.\n</think>\n\n4<|im_end|>\n"
    )
    assert trained(tok, example) == ["<think>\nAdd them.\n</think>\n\n4<|im_end|>"]
    # Every turn renders its own trace (earlier turns too), and a turn without one renders no think block.
    assert trained(tok, encode(TWO_TURNS, tok, template, 4096)) == [
        "<think>\nGreet back.\n</think>\n\nHello!<|im_end|>",
        "4<|im_end|>",
    ]


def test_drop_removes_the_reasoning_from_the_text_entirely(tok):
    template = get_template("qwen3", tok)
    example = encode(apply_reasoning(REASONED, "drop"), tok, template, 4096)
    assert "think" not in tok.decode(example["input_ids"])
    assert trained(tok, example) == ["4<|im_end|>"]
    assert example == encode(conv("2+2?", "4"), tok, get_template("chatml", tok), 4096)


def test_deepseek_r1_renders_its_markup_with_the_reasoning(tok):
    template = get_template("deepseek_r1", tok)
    assert template.stop == "<｜end▁of▁sentence｜>" and not template.supports_tools
    example = encode({**REASONED, "system": "S"}, tok, template, 4096)
    # The byte tokenizer's bos_token (<|im_start|>) goes first, as a DeepSeek tokenizer's would.
    assert tok.decode(example["input_ids"]) == (
        "<|im_start|>S<｜User｜>2+2?<｜Assistant｜><think>\nAdd them.\n</think>\n\n4<｜end▁of▁sentence｜>"
    )
    assert trained(tok, example) == ["<think>\nAdd them.\n</think>\n\n4<｜end▁of▁sentence｜>"]
    assert render(tok, template, REASONED["messages"][:1], add_generation_prompt=True).endswith(
        "<｜Assistant｜>"
    )


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "alpaca"])
def test_a_template_without_reasoning_refuses_the_row_naming_the_key_and_the_fixes(tok, name):
    status = encode(TWO_TURNS, tok, get_template(name, tok), 4096)["status"]
    assert status == (
        f"invalid: template {name!r} cannot render reasoning (messages[1].reasoning_content); use "
        "data.template=qwen3 or deepseek_r1, or data.reasoning=drop to train on the answers alone"
    )


def test_an_auto_template_supports_reasoning_when_it_reads_reasoning_content(tok):
    own = byte_tokenizer()
    assert not get_template("auto", own).supports_reasoning
    own.chat_template = get_template("qwen3", own).jinja
    assert get_template("auto", own).supports_reasoning


def hf_mask(tokenizer, template: Template, conversation: dict) -> dict:
    return tokenizer.apply_chat_template(
        with_system(conversation, template),
        tools=conversation.get("tools"),
        chat_template=template.jinja,
        return_assistant_tokens_mask=True,
        return_dict=True,
        tokenize=True,
    )


CALLING = conv(
    "Weather in Oslo?",
    answer(
        "",
        reasoning_content="Use the tool.",
        tool_calls=[{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
    ),
    {"role": "tool", "content": "-3C"},
    answer("Cold.", reasoning_content="Report it."),
    tools=[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
)


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1"])
def test_reasoning_template_labels_match_hf_generation_masks(tok, name):
    template = get_template(name, tok)
    cases = [REASONED, TWO_TURNS, conv("Hi", "Hello", system="S")] + (
        [CALLING] if template.supports_tools else []
    )
    for case in cases:
        ours, hf = encode(case, tok, template, 4096), hf_mask(tok, template, case)
        assert ours["input_ids"] == hf["input_ids"]
        assert [label != M for label in ours["labels"]] == [bool(m) for m in hf["assistant_masks"]]
    if name == "qwen3":
        assert trained(tok, encode(CALLING, tok, template, 4096)) == [
            "<think>\nUse the tool.\n</think>\n\n"
            '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>',
            "<think>\nReport it.\n</think>\n\nCold.<|im_end|>",
        ]


# --------------------------------------------------------------------------------- batches and packing


def test_collation_carries_weights_only_when_an_example_has_them():
    plain = {"input_ids": [1, 2, 3], "labels": [M, 2, 3], "label_weights": []}
    weighted = {"input_ids": [4, 5], "labels": [M, 5], "label_weights": [1.0, 0.5]}
    assert "label_weights" not in PadCollator(pad_id=0, multiple=4)([plain, plain])
    batch = PadCollator(pad_id=0, multiple=4)([plain, weighted])
    assert batch["label_weights"].dtype == torch.float32
    assert batch["label_weights"].tolist() == [[1.0, 1.0, 1.0, 0.0], [1.0, 0.5, 0.0, 0.0]]


@pytest.mark.parametrize("flatten", [False, True])
def test_packing_keeps_each_samples_weights_beside_its_labels(flatten):
    examples = [
        {"input_ids": [1, 2, 3], "labels": [M, 2, 3], "label_weights": []},
        {"input_ids": [4, 5], "labels": [M, 5], "label_weights": [1.0, 0.25]},
        {"input_ids": [6, 7], "labels": [6, 7], "label_weights": []},
    ]
    packed = PackedDataset(examples, [[0, 1], [2]])
    assert packed[0]["label_weights"] == [1.0, 1.0, 1.0, 1.0, 0.25] and "label_weights" not in packed[1]
    batch = PackedCollator(pad_id=0, multiple=4, flatten=flatten)([packed[0], packed[1]])
    expected = [1.0, 1.0, 1.0, 1.0, 0.25, 1.0, 1.0]
    if flatten:
        assert batch["label_weights"].tolist() == [expected + [0.0]]
    else:
        assert batch["label_weights"].tolist() == [expected[:5] + [0.0] * 3, expected[5:] + [0.0] * 6]
    assert batch["labels"].shape == batch["label_weights"].shape


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


WEIGHTED_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": f"a{i}", "weight": w},
        ]
    }
    for i, w in enumerate([1, 0.5, 0.25, 1, 0.5, 1])
] + [{"messages": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "none", "weight": 0}]}]


@pytest.mark.parametrize("packing", [False, True])
def test_prepared_rows_and_their_batches_carry_the_weights(make_cfg, tok, tmp_path, packing):
    from sft.config import validate

    path = write_jsonl(tmp_path / "weighted.jsonl", WEIGHTED_ROWS)
    typed = validate(make_cfg("model=tiny", "data=mix", f"data.datasets=[{path}]", "data.val_size=0"))
    cfg = typed.data
    cfg.packing = packing
    template = get_template(cfg.template, tok)
    prepared = prepare(cfg, tok, template, 0, None)
    # The weight-0 row has no trained token: reported, not trained.
    assert prepared.stats.train == 6 and prepared.stats.datasets["weighted"].no_trained_token == 1
    stored = {
        tok.decode([t for t in r["labels"] if t != M]): sorted(set(r["label_weights"]))
        for r in prepared.train
    }
    assert stored == {
        "a0<|im_end|>": [],
        "a1<|im_end|>": [0.5, 1.0],
        "a2<|im_end|>": [0.25, 1.0],
        "a3<|im_end|>": [],
        "a4<|im_end|>": [0.5, 1.0],
        "a5<|im_end|>": [],
    }
    module = SFTDataModule(cfg, tok, template, micro_batch_size=6, seed=0, cache_dir=None)
    module.prepared = prepared
    module.setup()
    batch = next(iter(module.train_dataloader()))
    kept = batch["labels"][:, 1:] != M
    assert sorted(batch["label_weights"][:, 1:][kept].unique().tolist()) == [0.25, 0.5, 1.0]
    assert (batch["label_weights"] > 0).sum() >= kept.sum()


def test_reasoning_options_through_the_config(make_cfg, tok, tmp_path):
    from sft.config import validate

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"<think>r{i}</think>a{i}"},
            ]
        }
        for i in range(5)
    ]
    path = write_jsonl(tmp_path / "thoughts.jsonl", rows)

    def prepared(*overrides):
        cfg = validate(
            make_cfg("model=tiny", "data=mix", f"data.datasets=[{path}]", "data.val_size=0", *overrides)
        ).data
        return prepare(cfg, tok, get_template(cfg.template, tok), 0, None)

    def answers(p):
        return sorted(tok.decode([t for t in r["labels"] if t != M]) for r in p.train)

    assert answers(prepared("data.template=qwen3")) == [
        f"<think>\nr{i}\n</think>\n\na{i}<|im_end|>" for i in range(5)
    ]
    assert answers(prepared("data.template=qwen3", "data.reasoning=drop")) == [
        f"a{i}<|im_end|>" for i in range(5)
    ]
    assert answers(prepared("data.reasoning=drop")) == [f"a{i}<|im_end|>" for i in range(5)]
    # chatml cannot render the traces: every row is refused, the dataset is mostly broken: the run stops.
    with pytest.raises(
        DataError, match=r"5 of 5 rows \(100.0%\) are malformed or cannot be rendered"
    ) as stop:
        prepared()
    assert "cannot render reasoning (messages[1].reasoning_content)" in str(stop.value)
    assert f"{path}:1: invalid: template 'chatml'" in str(stop.value)
