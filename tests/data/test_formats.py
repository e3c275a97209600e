"""Data files → rows with locations → canonical conversations (sft/data/formats.py)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from sft.data.formats import (
    DataFileError,
    MalformedRow,
    detect_format,
    mapping_problems,
    read_hub,
    read_source,
    to_conversation,
)

WEATHER = {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object"}}
WEATHER_TOOL = {"type": "function", "function": WEATHER}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def call(name, arguments):
    return {"role": "assistant", "content": "", "tool_calls": [tool_call(name, arguments)]}


def tool_call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def tool(text):
    return {"role": "tool", "content": text}


def conversation(messages, system=None, tools=None, category=None):
    return {"system": system, "tools": tools, "messages": messages, "category": category}


def rows(path):
    return list(read_source(path))


# ------------------------------------------------------------------------------------------- formats


def test_formats_normalise_to_one_conversation():
    alpaca = {"instruction": "Add", "input": "2 and 2", "output": "4", "history": [["Hi", "Hello"]]}
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ]
    }
    messages = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert to_conversation(alpaca) == conversation(
        [user("Hi"), assistant("Hello"), user("Add\n2 and 2"), assistant("4")]
    )
    assert to_conversation(sharegpt) == conversation([user("Hi"), assistant("Hello")], system="S")
    assert to_conversation(messages) == conversation([user("Hi"), assistant("Hello")])


def test_alpaca_takes_system_tools_category_and_an_empty_or_absent_input():
    row = {
        "instruction": "Weather?",
        "input": "",
        "output": "Sunny.",
        "system": "Be brief.",
        "tools": json.dumps([WEATHER]),
        "category": "qa",
    }
    expected = conversation([user("Weather?"), assistant("Sunny.")], "Be brief.", [WEATHER_TOOL], "qa")
    assert to_conversation(row, "alpaca") == expected
    no_input = {k: v for k, v in row.items() if k != "input"}
    assert to_conversation(no_input, "alpaca") == expected
    assert to_conversation({**row, "input": None, "system": ""}, "alpaca")["system"] is None
    # Only the input given: no stray newline in front of it.
    assert to_conversation({"instruction": "", "input": "2+2?", "output": "4"})["messages"][0] == user("2+2?")


def test_alpaca_columns_are_renamed_with_llama_factory_names():
    row = {"q": "Add", "ctx": "1 and 2", "a": "3", "sys": "S", "past": [["Hi", "Hey"]], "fns": [WEATHER]}
    columns = {
        "prompt": "q",
        "query": "ctx",
        "response": "a",
        "system": "sys",
        "history": "past",
        "tools": "fns",
    }
    assert to_conversation(row, "alpaca", columns) == conversation(
        [user("Hi"), assistant("Hey"), user("Add\n1 and 2"), assistant("3")], "S", [WEATHER_TOOL]
    )
    # The same columns let `auto` recognise the row as Alpaca.
    assert detect_format(row, columns) == "alpaca"


def test_sharegpt_tool_calls_and_observations_become_tool_calls_and_tool_messages():
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"temp": 3}'},
            {"from": "gpt", "value": "It is 3 degrees."},
        ],
        "tools": json.dumps([WEATHER]),
        "system": "Use tools.",
    }
    assert to_conversation(row, "sharegpt") == conversation(
        [
            user("Weather in Oslo?"),
            call("get_weather", {"city": "Oslo"}),
            tool('{"temp": 3}'),
            assistant("It is 3 degrees."),
        ],
        "Use tools.",
        [WEATHER_TOOL],
    )


def test_function_call_arguments_as_json_text_and_lists_of_calls_are_parsed():
    calls = [
        {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
    ]
    row = {
        "conversations": [
            {"from": "human", "value": "Oslo and Rome?"},
            {"from": "function_call", "value": json.dumps(calls)},
            {"from": "observation", "value": "3"},
            {"from": "observation", "value": "20"},
            {"from": "gpt", "value": "3 and 20."},
        ]
    }
    turn = to_conversation(row)["messages"][1]
    assert turn == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            tool_call("get_weather", {"city": "Oslo"}),
            tool_call("get_weather", {"city": "Rome"}),
        ],
    }


def test_sharegpt_tags_and_messages_column_are_configurable_and_openai_role_names_are_accepted():
    row = {
        "dialog": [
            {"speaker": "sys", "text": "S"},
            {"speaker": "me", "text": "Hi"},
            {"speaker": "bot", "text": "Hello"},
            {"speaker": "user", "text": "Call it"},
            {"speaker": "call", "text": '{"name": "f", "arguments": {}}'},
            {"speaker": "result", "text": "ok"},
            {"speaker": "assistant", "text": "Done"},
        ]
    }
    tags = {
        "role_tag": "speaker",
        "content_tag": "text",
        "user_tag": "me",
        "assistant_tag": "bot",
        "observation_tag": "result",
        "function_tag": "call",
        "system_tag": "sys",
    }
    expected = conversation(
        [user("Hi"), assistant("Hello"), user("Call it"), call("f", {}), tool("ok"), assistant("Done")], "S"
    )
    assert to_conversation(row, "sharegpt", {"messages": "dialog"}, tags) == expected
    assert to_conversation(row, "auto", {"messages": "dialog"}, tags) == expected
    plain = {"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hey"}]}
    assert to_conversation(plain, "sharegpt")["messages"] == [user("Hi"), assistant("Hey")]


def test_a_system_turn_wins_over_the_system_column():
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]
    row = {"conversations": [{"from": "system", "value": "turn"}, *turns], "system": "column"}
    assert to_conversation(row)["system"] == "turn"
    assert to_conversation({"conversations": turns, "system": "column"})["system"] == "column"


def test_openai_messages_with_tool_calls_and_tool_results():
    row = {
        "messages": [
            {"role": "system", "content": "Use tools."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "Oslo?"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
            {"role": "assistant", "content": "3 degrees."},
        ],
        "tools": [WEATHER_TOOL],
        "category": "tools",
    }
    assert to_conversation(row, "messages") == conversation(
        [user("Weather Oslo?"), call("get_weather", {"city": "Oslo"}), tool("3"), assistant("3 degrees.")],
        "Use tools.",
        [WEATHER_TOOL],
        "tools",
    )


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"messages": [{"role": "user", "content": "a"}]}, "messages"),
        ({"messages": [{"from": "human", "value": "a"}]}, "sharegpt"),
        ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt"),
        ({"conversations": [{"role": "user", "content": "a"}]}, "messages"),
        ({"instruction": "a", "output": "b"}, "alpaca"),
    ],
)
def test_auto_detects_the_format_from_keys_and_turn_keys(row, fmt):
    assert detect_format(row) == fmt


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ("[]", None),
        ("", None),
        (None, None),
        ([], None),
        (json.dumps([WEATHER]), [WEATHER_TOOL]),
        ([WEATHER], [WEATHER_TOOL]),
        ([WEATHER_TOOL], [WEATHER_TOOL]),
        (json.dumps(WEATHER), [WEATHER_TOOL]),
    ],
)
def test_tools_are_normalised_to_the_hf_convention(tools, expected):
    row = {"instruction": "a", "output": "b", "tools": tools}
    assert to_conversation(row)["tools"] == expected


def test_category_passes_through_only_as_a_string():
    row = {"instruction": "a", "output": "b"}
    assert to_conversation({**row, "category": "math"})["category"] == "math"
    assert to_conversation({**row, "category": 3})["category"] is None


def _sharegpt(*turns, **extra):
    return {"conversations": [{"from": r, "value": v} for r, v in turns], **extra}


def _fc(value):
    return _sharegpt(("human", "q"), ("function_call", value), ("observation", "r"), ("gpt", "a"))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "Hi", "output": ""}, "'output': empty assistant turn"),
        ({"instruction": "Hi"}, "missing field 'output'"),
        ({"instruction": "Hi", "output": None}, "missing field 'output'"),
        ({"output": "Hi", "conversations": None}, "missing field 'conversations'"),
        ({"instruction": 3, "output": "x"}, "'instruction' must be a string, got int"),
        ({"instruction": "a", "input": ["x"], "output": "b"}, "'input' must be a string, got list"),
        ({"instruction": " ", "input": "", "output": "b"}, "'instruction' and 'input' are both empty"),
        (
            {"instruction": "a", "output": "b", "history": [["x"]]},
            r"history\[0\] must be an \[instruction, output\]",
        ),
        (
            {"instruction": "a", "output": "b", "history": [["x", ""]]},
            r"history\[0\] output: empty assistant",
        ),
        ({"instruction": "a", "output": "b", "system": 1}, "'system' must be a string"),
        (_sharegpt(("human", "Hi")), "no assistant turn"),
        (_sharegpt(("human", "Hi"), ("gpt", "Hey"), ("human", "More?")), "must end on an assistant turn"),
        (_sharegpt(("gpt", "Hey")), "first turn must be a user turn"),
        (_sharegpt(("human", "Hi"), ("gpt", " ")), r"conversations\[1\]: empty assistant turn"),
        (
            _sharegpt(("human", "Hi"), ("robot", "x")),
            "unknown role 'robot'; allowed 'from' values: assistant, "
            "function_call, gpt, human, observation, system, tool, user",
        ),
        (
            _sharegpt(("human", ["Hi"]), ("gpt", "x")),
            r"conversations\[0\] value\[0\]: a content part must be an object, got str",
        ),
        (_sharegpt(("human", "Hi"), ("system", "S"), ("gpt", "x")), "a system turn may only come first"),
        (
            _sharegpt(("human", "Hi"), ("observation", "r"), ("gpt", "x")),
            "tool result must follow a function call",
        ),
        ({"conversations": ["Hi"]}, r"conversations\[0\] must be an object, got str"),
        ({"conversations": "not json"}, "'conversations' is text but not valid JSON"),
        ({"conversations": {"from": "human"}}, "'conversations' must be a list"),
        (_fc("{not json"), r"conversations\[1\]: function call is not valid JSON"),
        (_fc('{"name": "f"}'), 'must be a JSON object with "name" and "arguments"'),
        (_fc('"f"'), 'must be a JSON object with "name" and "arguments"'),
        (_fc("[]"), "function call turn holds no calls"),
        (_fc('{"name": "", "arguments": {}}'), "name must be a non-empty string"),
        (_fc('{"name": "f", "arguments": "{oops"}'), "arguments of 'f' are not valid JSON"),
        (_fc('{"name": "f", "arguments": [1]}'), "arguments of 'f' must be a JSON object"),
        (_sharegpt(("human", "q"), ("gpt", "a"), tools="[{"), "tools is not valid JSON"),
        (
            _sharegpt(("human", "q"), ("gpt", "a"), tools='[{"description": "x"}]'),
            r"tools\[0\] must be a function",
        ),
        (_sharegpt(("human", "q"), ("gpt", "a"), tools="3"), "tools must be a list of function schemas"),
        (
            {"messages": [{"role": "robot", "content": "x"}]},
            "unknown role 'robot'; allowed 'role' values: assistant, system, tool, user",
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
            "must be a string or a list of content parts, got int",
        ),
        (
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
            r"messages\[0\] content is missing",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url"}]},
                    {"role": "assistant", "content": "x"},
                ]
            },
            r"messages\[0\] content\[0\]: a 'image_url' part on a user turn: this framework trains text-only",
        ),
        ({"text": "plain"}, "cannot tell the format"),
        (["not", "a", "dict"], "expected an object, got list"),
        (MalformedRow("invalid JSON (x)"), "invalid JSON"),
    ],
)
def test_malformed_rows_say_why(row, reason):
    with pytest.raises(MalformedRow, match=reason):
        to_conversation(row)


# ------------------------------------------------------------------------------------------- mapping


ALPACA_COLUMNS = "allowed: chosen, history, kto_tag, prompt, query, rejected, response, system, tools"


def test_mapping_problems_name_each_bad_key_and_the_allowed_ones():
    assert mapping_problems("alpaca", {"prompt": "q", "response": "a"}) == []
    assert mapping_problems("sharegpt", {"messages": "dialog"}, {"role_tag": "role"}) == []
    assert mapping_problems("auto", {"prompt": "q", "messages": "m"}, {"user_tag": "me"}) == []
    assert mapping_problems("alpaca", {"messages": "m"}) == [
        f"columns.messages: not a column of the alpaca format; {ALPACA_COLUMNS}"
    ]
    assert mapping_problems("sharegpt", {"prompt": "x"}) == [
        "columns.prompt: not a column of the sharegpt format; allowed: chosen, kto_tag, messages, rejected, "
        "system, tools"
    ]
    assert mapping_problems("sharegpt", {}, {"speaker": "x"}) == [
        "tags.speaker: not a tag of the sharegpt format; allowed: assistant_tag, content_tag, function_tag, "
        "observation_tag, role_tag, system_tag, user_tag"
    ]
    assert mapping_problems("messages", {}, {"role_tag": "r"}) == [
        "tags.role_tag: not a tag of the messages format; tags apply to sharegpt rows only"
    ]
    assert mapping_problems("alpaca", {"images": "img", "response": ""}) == [
        f"columns.images: not a column of the alpaca format; {ALPACA_COLUMNS}",
        "columns.response='': must name a field of the rows",
    ]
    assert mapping_problems("sharegpt", {"system": None}) == []  # an optional column switched off
    assert mapping_problems("sharegpt", {}, {"user_tag": "gpt"}) == [
        "tags: two roles share one tag value (gpt, gpt, observation, function_call, system)"
    ]


def test_a_bad_mapping_or_format_is_a_config_error_not_a_malformed_row():
    with pytest.raises(ValueError, match="columns.prompt: not a column of the sharegpt format") as err:
        to_conversation({"conversations": []}, "sharegpt", {"prompt": "x"})
    assert not isinstance(err.value, MalformedRow)
    with pytest.raises(ValueError, match="unknown format 'yaml'"):
        to_conversation({}, "yaml")


def test_a_switched_off_system_column_is_ignored():
    row = {"instruction": "a", "output": "b", "system": "S"}
    assert to_conversation(row, "alpaca", {"system": None})["system"] is None


# ------------------------------------------------------------------------------------------- readers

ALPACA = [
    {"instruction": "Say hi", "input": "", "output": "Hi"},
    {"instruction": "Add", "input": "2 and 2", "output": "4"},
]


def test_jsonl_rows_carry_line_numbers_and_a_bad_line_is_reported_not_fatal(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = {"instruction": "Say hi", "output": "Hi"}
    lines = [
        json.dumps(good),
        "{not json",
        "",
        json.dumps({"instruction": "x", "output": ""}),
        json.dumps(good),
    ]
    path.write_text("\n".join(lines) + "\n")
    found = rows(path)
    assert [loc for loc, _ in found] == [f"{path}:1", f"{path}:2", f"{path}:4", f"{path}:5"]
    problems = []
    for location, row in found:
        try:
            to_conversation(row)
        except MalformedRow as err:
            problems.append(f"{location}: {err}")
    assert problems == [
        f"{path}:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:4: 'output': empty assistant turn",
    ]


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"instruction": "a\u2028b", "output": "é"}, ensure_ascii=False) + "\n")
    assert rows(path) == [(f"{path}:1", {"instruction": "a\u2028b", "output": "é"})]


def test_json_array_rows_carry_their_line_numbers(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n\n  {"instruction": "c", "output": "d"}\n]\n')
    assert [loc for loc, _ in rows(path)] == [f"{path}:2", f"{path}:4"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[\n {"instruction": "a", "output": "b"},\n {"instruction": oops}\n]', r"rows.json:3: invalid JSON"),
        ('[\n {"instruction": "a", "output": "b"},\n', r"rows.json:3: the JSON array is not closed"),
        ("42", "expected a JSON array of rows"),
        ('{\n "rows": [\n', r"rows.json:3: invalid JSON"),
    ],
)
def test_a_broken_json_file_stops_with_file_and_line(tmp_path, text, reason):
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(DataFileError, match=reason):
        rows(path)


def test_json_files_may_hold_json_lines_or_an_object_wrapping_the_rows(tmp_path):
    lines, wrapped, single = tmp_path / "lines.json", tmp_path / "wrapped.json", tmp_path / "single.json"
    lines.write_text("\n".join(json.dumps(r) for r in ALPACA))
    wrapped.write_text(json.dumps({"version": 1, "data": ALPACA}, indent=2))
    single.write_text(json.dumps({"conversations": [{"from": "human", "value": "x"}]}, indent=2))
    assert rows(lines) == [(f"{lines}:1", ALPACA[0]), (f"{lines}:2", ALPACA[1])]
    assert rows(wrapped) == [(f"{wrapped}:data[0]", ALPACA[0]), (f"{wrapped}:data[1]", ALPACA[1])]
    assert [loc for loc, _ in rows(single)] == [f"{single}:1"]
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    assert rows(empty) == []


def test_parquet_rows_keep_nested_turns_and_are_numbered(tmp_path):
    from datasets import Dataset

    path = tmp_path / "rows.parquet"
    data = [_fc('{"name": "f", "arguments": {"x": 1}}'), _sharegpt(("human", "Hi"), ("gpt", "Hey"))]
    Dataset.from_list(data).to_parquet(str(path))
    found = rows(path)
    assert [loc for loc, _ in found] == [f"{path}:row 1", f"{path}:row 2"]
    convs = [to_conversation(row, "sharegpt") for _, row in found]
    assert convs[0]["messages"][1] == call("f", {"x": 1})
    assert convs[1]["messages"] == [user("Hi"), assistant("Hey")]


def test_openai_messages_survive_parquet_null_filled_fields(tmp_path):
    from datasets import Dataset

    # Parquet unifies the turn structs, so turns without tool calls come back with tool_calls=None.
    row = {
        "messages": [
            {"role": "user", "content": "q", "tool_calls": None},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "r", "tool_calls": None},
            {"role": "assistant", "content": "a", "tool_calls": None},
        ]
    }
    path = tmp_path / "rows.parquet"
    Dataset.from_list([row]).to_parquet(str(path))
    ((_, back),) = rows(path)
    assert to_conversation(back)["messages"] == [user("q"), call("f", {}), tool("r"), assistant("a")]


def test_csv_cells_are_text_and_an_empty_input_cell_is_an_empty_input(tmp_path):
    from datasets import Dataset

    data = [
        {"instruction": "Say hi", "input": "", "output": "Hi\nthere", "tools": "[]"},
        {"instruction": "Add", "input": "2 and 2", "output": "4", "tools": json.dumps([WEATHER])},
        {"instruction": "Pad", "input": "7", "output": "007", "tools": ""},
    ]
    path = tmp_path / "rows.csv"
    Dataset.from_list(data).to_csv(str(path))
    found = rows(path)
    assert [loc for loc, _ in found] == [f"{path}:row 1", f"{path}:row 2", f"{path}:row 3"]
    assert [row for _, row in found] == data
    convs = [to_conversation(row) for _, row in found]
    assert convs[0] == conversation([user("Say hi"), assistant("Hi\nthere")])
    assert convs[1]["tools"] == [WEATHER_TOOL]
    assert convs[2]["messages"] == [user("Pad\n7"), assistant("007")]


def test_csv_list_columns_may_hold_json(tmp_path):
    from datasets import Dataset

    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]
    path = tmp_path / "rows.csv"
    Dataset.from_list([{"conversations": json.dumps(turns)}]).to_csv(str(path))
    ((_, row),) = rows(path)
    assert to_conversation(row, "sharegpt")["messages"] == [user("Hi"), assistant("Hey")]


def test_a_directory_reads_its_data_files_sorted_and_skips_the_rest(tmp_path):
    from datasets import Dataset

    (tmp_path / "b.jsonl").write_text(json.dumps(ALPACA[1]) + "\n")
    (tmp_path / "a.json").write_text(json.dumps([ALPACA[0]]))
    Dataset.from_list(ALPACA).to_parquet(str(tmp_path / "c.parquet"))
    (tmp_path / "README.md").write_text("# not data")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"x": {"file_name": "a.json"}}))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "d.jsonl").write_text(json.dumps(ALPACA[0]) + "\n")
    found = rows(tmp_path)
    assert [loc for loc, _ in found] == [
        f"{tmp_path}/a.json:1",
        f"{tmp_path}/b.jsonl:1",
        f"{tmp_path}/c.parquet:row 1",
        f"{tmp_path}/c.parquet:row 2",
    ]
    assert [row for _, row in found] == [ALPACA[0], ALPACA[1], *ALPACA]


def test_a_glob_reads_the_matching_files_sorted(tmp_path):
    for name in ("part-2.jsonl", "part-1.jsonl", "other.jsonl"):
        (tmp_path / name).write_text(json.dumps({"instruction": name, "output": "x"}) + "\n")
    assert [row["instruction"] for _, row in rows(tmp_path / "part-*.jsonl")] == [
        "part-1.jsonl",
        "part-2.jsonl",
    ]


@pytest.mark.parametrize(
    ("name", "error", "reason"),
    [
        ("missing.jsonl", FileNotFoundError, "missing.jsonl: no such file or directory"),
        ("nothing-*.json", FileNotFoundError, r"nothing-\*.json: pattern matches no"),
        ("empty_dir", FileNotFoundError, "empty_dir: directory holds no"),
        ("notes.md", DataFileError, "notes.md: unsupported file type '.md'"),
    ],
)
def test_a_path_without_data_fails_at_once_naming_it(tmp_path, name, error, reason):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(error, match=reason):
        read_source(tmp_path / name)  # before any row is asked for


def test_read_hub_loads_the_named_split_and_numbers_rows(monkeypatch):
    import datasets

    seen = []

    def fake_load_dataset(name, subset, split):
        seen.append((name, subset, split))
        return ALPACA

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(read_hub("org/name", None, "train")) == [
        ("hub:org/name[train]#0", ALPACA[0]),
        ("hub:org/name[train]#1", ALPACA[1]),
    ]
    assert [loc for loc, _ in read_hub("org/name", "en", "test")] == [
        "hub:org/name:en[test]#0",
        "hub:org/name:en[test]#1",
    ]
    assert seen == [("org/name", None, "train"), ("org/name", "en", "test")]


# ------------------------------------------------------------------------------------ shared real data


def _load_registered(name):
    """Read and normalise one shared file with its LLaMA-Factory registry settings."""
    entry = json.loads((SHARED_DATA / "dataset_info.json").read_text())[name]
    fmt, columns, tags = entry.get("formatting", "alpaca"), entry.get("columns"), entry.get("tags")
    assert mapping_problems(fmt, columns, tags) == []
    convs, problems = [], []
    for location, row in read_source(SHARED_DATA / entry["file_name"]):
        try:
            convs.append(to_conversation(row, fmt, columns, tags))
        except MalformedRow as err:
            problems.append(f"{location}: {err}")
    return convs, problems


@pytest.mark.parametrize(("name", "count"), [("identity", 91), ("alpaca_en_demo", 999)])
def test_shared_alpaca_files_load_completely(name, count):
    convs, problems = _load_registered(name)
    assert (len(convs), problems) == (count, [])
    assert all(len(c["messages"]) == 2 and c["system"] is None and c["tools"] is None for c in convs)
    if name == "identity":
        assert convs[0]["messages"] == [
            user("hi"),
            assistant(
                "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"
            ),
        ]
    # Empty `input` fields leave the instruction alone; filled ones follow it on a new line.
    raw = json.loads((SHARED_DATA / f"{name}.json").read_text())
    for row, conv in zip(raw, convs, strict=True):
        expected = f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]
        assert conv["messages"][0]["content"] == expected


def test_shared_glaive_toolcall_file_loads_completely_with_tool_calls():
    convs, problems = _load_registered("glaive_toolcall_en_demo")
    assert (len(convs), problems) == (300, [])  # none of the 300 rows is malformed
    raw = json.loads((SHARED_DATA / "glaive_toolcall_en_demo.json").read_text())
    assert sum(c["tools"] is None for c in convs) == sum(r["tools"] == "[]" for r in raw) == 109
    calls = [m for c in convs for m in c["messages"] if m.get("tool_calls")]
    results = [m for c in convs for m in c["messages"] if m["role"] == "tool"]
    assert len(calls) == len(results) == 211
    for conv, row in zip(convs, raw, strict=True):
        assert len(conv["messages"]) == len(row["conversations"])
        for message, turn in zip(conv["messages"], row["conversations"], strict=True):
            if turn["from"] == "function_call":
                parsed = json.loads(turn["value"])
                assert message["tool_calls"] == [tool_call(parsed["name"], parsed["arguments"])]
                assert isinstance(message["tool_calls"][0]["function"]["arguments"], dict)
            elif turn["from"] == "observation":
                assert message == tool(turn["value"])
        if conv["tools"]:
            names = {t["function"]["name"] for t in conv["tools"]}
            assert all(t["type"] == "function" for t in conv["tools"])
            assert {c["function"]["name"] for m in conv["messages"] for c in m.get("tool_calls", [])} <= names
    first = convs[0]
    assert first["messages"][3] == call(
        "search_recipes", {"ingredients": ["chicken", "bell peppers", "rice"]}
    )
    assert first["messages"][4]["role"] == "tool" and first["messages"][4]["content"].startswith('{"recipes"')
