"""The data pipeline through its entry points: registry, reading, mixing, splitting, caching, preview."""

from __future__ import annotations

import json

import pytest
from conftest import run_module

from sft.config import ConfigError, validate
from sft.data.datamodule import EpochShuffleSampler
from sft.data.loading import DataError
from sft.data.preprocess import prepare
from sft.data.templates import get_template
from sft.data.tokenize import IGNORE_INDEX
from sft.training.model import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def data_cfg(make_cfg, *overrides: str):
    """The typed data config composed from the real conf/ tree."""
    return validate(make_cfg("model=tiny", *overrides)).data


def run(make_cfg, tok, *overrides: str, cache=None):
    """Prepare the data of a composed config with the byte tokenizer."""
    cfg = data_cfg(make_cfg, *overrides)
    return prepare(cfg, tok, get_template(cfg.template, tok, cfg.system), 42, cache)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"instruction": "Say hi", "output": "Hi"}


def test_llamafactory_registry_loads_the_shared_files_as_is(make_cfg, tok):
    prepared = run(make_cfg, tok, "data=llamafactory", "data.cutoff_len=4096", "data.val_size=0")
    counts = prepared.stats.datasets
    assert {n: (d.rows, d.malformed) for n, d in counts.items()} == {
        "identity": (91, 0),
        "alpaca_en_demo": (999, 0),
        "glaive_toolcall_en_demo": (300, 0),
    }
    assert prepared.stats.train == 91 + 999 + 300 - prepared.stats.total("too_long")
    identity = [tok.decode(r["input_ids"]) for r in prepared.train if r["source"] == "identity"]
    assert all("{{" not in text for text in identity) and any("Nova" in text for text in identity)
    # Function calls are trained as assistant turns; tool results are not.
    tool_rows = [r for r in prepared.train if r["source"] == "glaive_toolcall_en_demo"]
    assert any("<tool_call>" in tok.decode([t for t in r["labels"] if t != IGNORE_INDEX]) for r in tool_rows)
    assert all(
        "<tool_response>" not in tok.decode([t for t in r["labels"] if t != IGNORE_INDEX]) for r in tool_rows
    )


def test_names_paths_and_weights_resolve(make_cfg, tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD])
    cfg = data_cfg(
        make_cfg, "data=mix", f"data.datasets=[alpaca_en,{path},{{name: self_cognition, weight: 2}}]"
    )
    assert list(cfg.datasets) == ["alpaca_en", "mine", "self_cognition"]
    assert cfg.datasets["alpaca_en"].format == "alpaca" and cfg.datasets["self_cognition"].weight == 2
    assert cfg.datasets["mine"].path == str(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data=mix", "data.datasets=[alpacca]"],
            "unknown dataset 'alpacca'; available: alpaca, alpaca_en, alpaca_gpt4, builtin",
        ),
        (["data=mix", "data.datasets=[/no/such.jsonl]"], "data.datasets.such.path='/no/such.jsonl': "),
        (["data=alpaca_en", "+data.datasets.alpaca_en.columns.answer=output"], "answer"),
        (["data=glaive_toolcall", "+data.datasets.glaive_toolcall.tags.bot_tag=gpt"], "bot_tag"),
        (["data=alpaca_en", "data.datasets.alpaca_en.format=csv"], "format='csv': one of"),
        (["data=alpaca_en", "data.truncation=cut"], "data.truncation='cut': one of ('keep_response'"),
        (
            ["data=alpaca_en", "+data.datasets.alpaca_en.rows=3"],
            "did you mean 'data.datasets.alpaca_en.num_rows'",
        ),
    ],
)
def test_config_mistakes_name_the_key_before_anything_loads(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match="Invalid config") as err:
        validate(make_cfg("model=tiny", *overrides))
    assert message in str(err.value)


def test_a_dataset_info_entry_wins_over_a_same_named_conf_file(make_cfg, tmp_path):
    write_jsonl(tmp_path / "mine.jsonl", [GOOD])
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"alpaca_en": {"file_name": "mine.jsonl"}}))
    cfg = data_cfg(make_cfg, "data=llamafactory", f"data.dataset_info={info}", "data.datasets=[alpaca_en]")
    assert cfg.datasets["alpaca_en"].path == str(tmp_path / "mine.jsonl")


def test_dataset_info_entries_we_cannot_train_on_are_refused(make_cfg, tmp_path):
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"prefs": {"file_name": "p.json", "ranking": True}}))
    with pytest.raises(ConfigError, match="ranking"):
        validate(make_cfg("data=llamafactory", f"data.dataset_info={info}", "data.datasets=[prefs]"))


def test_bad_rows_are_reported_with_file_and_line_counted_and_skipped(make_cfg, tok, tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            GOOD,
            "{not json",
            {"instruction": "x", "output": ""},
            {"instruction": "I am {{ name }}; keep <p>{{message}}</p>", "output": "Hi"},
            {"messages": [{"role": "robot", "content": "x"}]},
            GOOD,
        ],
    )
    # Half the rows are bad on purpose: the default data.max_bad_fraction would stop the run.
    prepared = run(
        make_cfg, tok, "data=mix", f"data.datasets=[{path}]", "data.val_size=0", "data.max_bad_fraction=1"
    )
    d = prepared.stats.datasets["rows"]
    assert (d.rows, d.malformed, d.used, prepared.stats.train) == (6, 3, 3, 3)
    problems = prepared.stats.problems
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 5)]
    assert "invalid JSON" in problems[0] and "robot" in problems[2]
    # Only configured placeholders are filled; other braces (code, templates) are data.
    texts = [tok.decode(ids) for ids in prepared.train["input_ids"]]
    assert any("I am Nova; keep <p>{{message}}</p>" in t for t in texts)
    with pytest.raises(DataError, match=f"{path}:2"):
        run(make_cfg, tok, "data=mix", f"data.datasets=[{path}]", "data.strict=true")


def test_a_dataset_with_no_usable_row_or_a_column_no_row_has_stops_the_run(make_cfg, tok, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD] * 3)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(DataError, match=r"dataset 'bad': none of its 3 rows is usable\n  .*bad.jsonl:1"):
        run(make_cfg, tok, "data=mix", f"data.datasets=[{good},{bad}]")
    with pytest.raises(DataError, match=r"columns: \{'system': 'persona'\} name columns no row has"):
        run(make_cfg, tok, "data=mix", f"data.datasets=[{{path: {good}, columns: {{system: persona}}}}]")


def test_truncation_policies_are_explicit_and_counted(make_cfg, tok, tmp_path):
    long = {"instruction": "x " * 200, "output": "short answer"}
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD, long, {"instruction": "q", "output": "y " * 200}])
    common = ("data=mix", f"data.datasets=[{path}]", "data.val_size=0", "data.cutoff_len=96")
    kept = run(make_cfg, tok, *common)
    d = kept.stats.datasets["long"]
    assert (d.truncated, d.too_long, kept.stats.train) == (1, 1, 2)
    assert (
        "too long (over data.cutoff_len=96" in kept.stats.problems[0]
        and f"{path}:3" in kept.stats.problems[0]
    )
    dropped = run(make_cfg, tok, *common, "data.truncation=drop")
    assert (dropped.stats.datasets["long"].too_long, dropped.stats.train) == (2, 1)
    with pytest.raises(DataError, match=f"{path}:2.*cutoff_len=96"):
        run(make_cfg, tok, *common, "data.truncation=error")


def test_validation_split_is_seeded_per_dataset_and_accepts_counts(make_cfg, tok):
    mix = ("data=mix", "data.datasets=[self_cognition,{name: builtin, num_rows: 60}]")
    a = run(make_cfg, tok, *mix, "data.val_size=0.1")
    assert {n: d.val for n, d in a.stats.datasets.items()} == {"self_cognition": 9, "builtin": 6}
    b = run(make_cfg, tok, *mix, "data.val_size=0.1")
    assert a.val["location"] == b.val["location"]
    assert not set(a.val["location"]) & set(a.train["location"])
    for count in (15, 1, 10):  # apportioned by largest remainder: the total is what was asked
        assert run(make_cfg, tok, *mix, f"data.val_size={count}").stats.val == count


def test_mixing_weights_and_interleaving(make_cfg, tok):
    mix = ("data=mix", "data.datasets={self_cognition: {}, builtin: {num_rows: 40}}", "data.val_size=0")
    plain = run(make_cfg, tok, *mix).stats
    tenth = run(
        make_cfg, tok, "data=mix", "data.datasets={builtin: {num_rows: 4, weight: 0.1}}", "data.val_size=0"
    )
    assert tenth.stats.train == 1  # a small fractional weight still keeps a row
    weighted = run(
        make_cfg,
        tok,
        "data=mix",
        "data.datasets={self_cognition: {weight: 2}, builtin: {num_rows: 40, weight: 0.5}}",
        "data.val_size=0",
    ).stats
    assert (plain.datasets["self_cognition"].train, plain.datasets["builtin"].train) == (91, 40)
    assert (weighted.datasets["self_cognition"].train, weighted.datasets["builtin"].train) == (182, 20)
    assert weighted.datasets["self_cognition"].rows == 91  # repeats are counted once, not per copy
    under = run(make_cfg, tok, *mix, "data.mix=interleave_under").stats
    over = run(make_cfg, tok, *mix, "data.mix=interleave_over").stats
    assert under.datasets["builtin"].train <= 40 and under.train < 131
    assert over.datasets["self_cognition"].train >= 91 and over.datasets["builtin"].train >= 40


def test_tokenized_data_is_cached_by_content_and_options(make_cfg, tok, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD] * 5)
    common = ("data=mix", f"data.datasets=[{path}]", "data.val_size=1")
    first = run(make_cfg, tok, *common, cache=tmp_path / "c")
    again = run(make_cfg, tok, *common, cache=tmp_path / "c")
    assert first.stats.cache.startswith("built") and again.stats.cache.startswith("hit")
    assert again.train["input_ids"] == first.train["input_ids"] and again.stats.train == 4
    assert run(make_cfg, tok, *common, "data.cutoff_len=64", cache=tmp_path / "c").stats.cache.startswith(
        "built"
    )
    assert run(
        make_cfg, tok, *common, "data.overwrite_cache=true", cache=tmp_path / "c"
    ).stats.cache.startswith("built")
    other = write_jsonl(tmp_path / "other.jsonl", [GOOD] * 3)
    ab = run(
        make_cfg, tok, "data=mix", f"data.datasets=[{path},{other}]", "data.val_size=0", cache=tmp_path / "c"
    )
    ba = run(
        make_cfg, tok, "data=mix", f"data.datasets=[{other},{path}]", "data.val_size=0", cache=tmp_path / "c"
    )
    assert ba.stats.cache.startswith("built") and ab.train["source"] != ba.train["source"]
    write_jsonl(path, [GOOD] * 6)  # new content, same name: a new key
    changed = run(make_cfg, tok, *common, cache=tmp_path / "c")
    assert changed.stats.cache.startswith("built") and changed.stats.train == 5
    assert changed.stats.files[str(path)] != first.stats.files[str(path)]


def test_preview_shows_trained_spans_and_statistics(tmp_path):
    out = run_module(
        "sft.data",
        "model=tiny",
        "data=self_cognition",
        "preview.rows=1",
        "preview.color=false",
        f"paths.cache_dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr
    assert "--- train example 0 (self_cognition" in out.stdout
    assert "<|im_start|>assistant\n«" in out.stdout and "<|im_end|>»" in out.stdout
    assert "self_cognition" in out.stdout and " 91 " in out.stdout and "lengths {'min'" in out.stdout
    bad = run_module("sft.data", "model=tiny", "data=mix", "data.datasets=[nope]")
    assert bad.returncode == 2 and "unknown dataset 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_length_grouping_sorts_within_each_step_and_keeps_the_step_contents():
    lengths = [(i * 37) % 101 for i in range(50)]
    plain, grouped = EpochShuffleSampler(lengths, seed=3), EpochShuffleSampler(lengths, seed=3, group_size=8)
    a, b = list(plain), list(grouped)
    assert sorted(b) == list(range(50))
    for start in range(0, 50, 8):
        block = b[start : start + 8]
        assert set(block) == set(a[start : start + 8])  # same examples in each optimizer step
        assert [lengths[i] for i in block] == sorted((lengths[i] for i in block), reverse=True)
    grouped.set_epoch(1)
    assert list(grouped) != b and list(EpochShuffleSampler(lengths, seed=3, group_size=8)) == b


def test_parallel_tokenization_gives_the_same_rows(make_cfg, tok):
    common = ("data=self_cognition", "data.val_size=0")
    one = run(make_cfg, tok, *common)
    two = run(make_cfg, tok, *common, "data.num_proc=2")
    assert two.train["input_ids"] == one.train["input_ids"] and two.train["labels"] == one.train["labels"]
