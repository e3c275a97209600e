"""The named public datasets (conf/data entries with `source: hub`): each read offline from a fixture written
in that dataset's exact column layout (tests/data/fixtures/public/<name>.jsonl, invented text), both through
the hub reader and as a local copy; and the one message `sft.data` / `sft.train` print without a network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
from conftest import CONF, preview_in_process, run_module
from omegaconf import DictConfig, OmegaConf

from sft.config import validate
from sft.data.formats import read_hub
from sft.data.loading import read_dataset
from sft.data.preference_rows import to_pair
from sft.data.stats import DataStats
from sft.errors import HubError, MalformedRow

FIXTURES = Path(__file__).parent / "fixtures" / "public"


def hub_entries() -> dict[str, dict]:
    """conf/data file stem -> its one dataset entry, for every data config that reads the hub."""
    found = {}
    for file in sorted((CONF / "data").glob("*.yaml")):
        node = OmegaConf.load(file)
        entries = node.get("datasets") if not OmegaConf.is_missing(node, "datasets") else None
        for entry in entries.values() if isinstance(entries, DictConfig) else []:
            if entry.get("source") == "hub":
                found[file.stem] = OmegaConf.to_container(entry)
    return found


HUB = hub_entries()


def fixture_rows(name: str) -> list[dict]:
    """The rows of a dataset's fixture."""
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


def stage_of(name: str) -> list[str]:
    """The stage override a dataset's kind needs (preference pairs train under dpo)."""
    return ["stage=dpo"] if HUB[name].get("kind") == "pairs" else []


def user(text):
    return {"role": "user", "content": text}


def assistant(text, **extra):
    return {"role": "assistant", "content": text, **extra}


# The canonical record of each fixture's first row: roles, text, system prompt, reasoning out of the text.
FIRST = {
    "alpaca": {
        "system": None,
        "messages": [user("Name three colours of a traffic light."), assistant("Red, amber and green.")],
    },
    "alpaca_gpt4": {
        "system": None,
        "messages": [
            user("Suggest a name for a bakery run by two sisters."),
            assistant('How about "Two Crumbs": short, warm and easy to remember.'),
        ],
    },
    "code_alpaca": {
        "system": None,
        "messages": [
            user("Write a Python function that returns the square of a number."),
            assistant("def square(n):\n    return n * n"),
        ],
    },
    "sharegpt": {
        "system": None,
        "messages": [
            user("What is a good first houseplant?"),
            assistant("A snake plant: it forgives missed waterings and low light."),
            user("How often should I water it?"),
            assistant("Every two to three weeks, when the soil is dry all the way down."),
        ],
    },
    "openorca": {
        "system": "You are an AI assistant. You will be given a task. "
        "You must generate a detailed and long answer.",
        "messages": [
            user("Which is heavier, a kilogram of feathers or a kilogram of sand?"),
            assistant("They weigh the same: each is one kilogram. The feathers take up far more room."),
        ],
    },
    "ultrachat_200k": {
        "system": None,
        "messages": [
            user("Plan a short walk for a rainy afternoon."),
            assistant("Take the riverside path: it has cover under the bridges and a cafe at the end."),
            user("How long would it take?"),
            assistant("About forty minutes at an easy pace."),
        ],
    },
    "smoltalk": {
        "system": None,
        "messages": [
            user("Rewrite this to sound friendlier: Submit the form by noon."),
            assistant("Could you send the form over by noon? Thanks so much!"),
        ],
    },
    "tulu3_sft": {
        "system": None,
        "messages": [
            user("What does a lighthouse keeper do?"),
            assistant(
                "They keep the light burning and the lens clean so ships can steer clear of the rocks."
            ),
        ],
    },
    "openhermes": {
        "system": None,
        "messages": [
            user("Every cat has four legs. Tom is a cat. How many legs does Tom have?"),
            assistant("Tom has four legs, since every cat has four."),
        ],
    },
    "mixture_of_thoughts": {
        "system": None,
        "messages": [
            user("What is 15% of 80? Put the final answer in \\boxed{}."),
            assistant(
                "The answer is \\boxed{12}.", reasoning_content="10% of 80 is 8 and 5% is 4, so 15% is 12."
            ),
        ],
    },
    "ultrafeedback": {
        "system": None,
        "messages": [user("Name a fruit that is yellow.")],
        "chosen": assistant("A banana is yellow when ripe."),
        "rejected": assistant("Blue."),
    },
}
# Rows whose system prompt comes from a system turn (or column), not the first row: (fixture row, system).
SYSTEMS = {
    "openorca": (1, None),  # an empty system_prompt is no system prompt
    "smoltalk": (1, "You are a pirate who answers every question about the weather."),
    "tulu3_sft": (2, "You answer with one word."),
    "openhermes": (2, "You are a patient programming tutor."),
}


def test_every_hub_entry_has_a_fixture_and_expectations():
    # A new hub entry without a fixture (or a fixture left behind by a removed entry) fails here.
    assert sorted(HUB) == sorted(p.stem for p in FIXTURES.glob("*.jsonl")) == sorted(FIRST)
    for name, entry in HUB.items():
        # The entry is named as its file, so data=<name> and data.datasets.<name>.* name the same dataset.
        assert list(OmegaConf.load(CONF / "data" / f"{name}.yaml").datasets) == [name]
        assert entry["path"].count("/") == 1 and entry.get("split"), name
        assert 3 <= len(fixture_rows(name)) <= 5


def typed_data(make_cfg, name: str, *overrides: str):
    """The typed data config of `data=<name>` composed from the real conf/ tree."""
    return validate(make_cfg("model=tiny", f"data={name}", *stage_of(name), *overrides)).data


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_entries_read_their_fixture_through_the_hub_reader(name, make_cfg, monkeypatch):
    # The hub answers with the fixture's rows (through Arrow, as the hub's rows come); the entry's
    # own format, columns and tags must turn every row into the record its dataset means.
    asked = []

    def load_dataset(path, subset=None, split=None, **kwargs):
        asked.append((path, subset, split))
        return datasets.Dataset.from_list(fixture_rows(name))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = typed_data(make_cfg, name)
    stats = DataStats()
    read = read_dataset(name, cfg.datasets[name], cfg, stats)
    records = [json.loads(r["conversation"]) for r in read]
    entry = HUB[name]
    assert asked == [(entry["path"], entry.get("subset"), entry["split"])]
    counts = stats.datasets[name]
    assert (counts.rows, counts.malformed) == (len(fixture_rows(name)), 0), stats.problems
    assert {k: v for k, v in records[0].items() if k in FIRST[name]} == FIRST[name]
    if name in SYSTEMS:
        row, system = SYSTEMS[name]
        assert records[row]["system"] == system
    assert all(r["location"].startswith(f"hub:{entry['path']}") for r in read)


def preview_text(tmp_path, cache_dir, name: str, *overrides: str) -> str:
    """`python -m sft.data data=<name>` in-process, every fixture row shown."""
    common = ["model=tiny", f"data={name}", *stage_of(name), "data.val_size=0", "data.cutoff_len=1024"]
    return preview_in_process(tmp_path, cache_dir, *common, "preview.rows=5", *overrides)


@pytest.mark.parametrize("name", sorted(HUB))
def test_a_local_copy_previews_with_the_entry_columns_and_tags(name, tmp_path, cache_dir):
    # What the offline message advises: the same entry (format, columns, tags) with source=file and a path.
    local = [f"data.datasets.{name}.source=file", f"data.datasets.{name}.path={FIXTURES / f'{name}.jsonl'}"]
    # A reasoning set needs a template that renders the trace.
    template = ["data.template=qwen3"] if name == "mixture_of_thoughts" else []
    text = preview_text(tmp_path, cache_dir, name, *local, *template)
    rows = len(fixture_rows(name))
    assert f"--- train example 0 ({name}," in text
    counts = next(line.split() for line in text.splitlines() if line.startswith(f"{name} "))
    assert counts[1:3] == [str(rows), "0"]  # rows, malformed
    expected = FIRST[name].get("chosen", FIRST[name]["messages"][-1])["content"]
    assert expected.splitlines()[0] in text
    if name == "mixture_of_thoughts":
        assert "<think>\n10% of 80 is 8 and 5% is 4, so 15% is 12.\n</think>\n\nThe answer is" in text


# ------------------------------------------------------------------------------------------- no network


def offline_env(tmp_path: Path) -> dict:
    """The environment of a machine whose hub is off: offline mode on, empty Hugging Face caches."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf" / "datasets")
    return env


def test_without_the_hub_the_preview_says_so_and_how_to_use_a_local_copy(tmp_path, cache_dir):
    env = offline_env(tmp_path)
    common = ("model=tiny", "preview.rows=1", "preview.color=false", f"paths.cache_dir={cache_dir}")
    done = run_module("sft.data", "data=alpaca", *common, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    assert "Traceback" not in err and "Traceback" not in done.stdout
    assert "data.datasets.alpaca: dataset tatsu-lab/alpaca (split train) needs the Hugging Face hub" in err
    assert "offline mode is on: HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1" in err
    assert "data.datasets.alpaca.source=file data.datasets.alpaca.path=/path/to/copy.jsonl" in err
    assert "hf download tatsu-lab/alpaca --repo-type dataset --local-dir DIR" in err
    # A local copy as advised previews: test_a_local_copy_previews_with_the_entry_columns_and_tags[alpaca]
    # (a file source never asks the hub).


def test_without_the_hub_training_stops_with_the_same_message(tmp_path, cache_dir):
    done = run_module(
        "sft.train",
        "model=tiny",
        "data=ultrachat_200k",
        "trainer=debug",
        "logger=csv",
        "probe.enabled=false",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.log_dir={tmp_path / 'runs'}",
        env=offline_env(tmp_path),
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    said = (
        "data.datasets.ultrachat_200k: dataset HuggingFaceH4/ultrachat_200k (split train_sft) "
        "needs the Hugging Face hub"
    )
    assert said in done.stderr
    assert "data.datasets.ultrachat_200k.source=file data.datasets.ultrachat_200k.path=" in done.stderr


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (
            ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)"),
            "needs the Hugging Face hub",
        ),
        (TimeoutError("read timed out"), "needs the Hugging Face hub"),
        (
            datasets.exceptions.DatasetNotFoundError("Dataset 'x' doesn't exist on the Hub"),
            "is gated or private",
        ),
        (ValueError("Unknown split \"tain\". Should be one of ['train']."), 'Unknown split "tain"'),
    ],
    ids=["connection", "timeout", "not_found", "split"],
)
def test_hub_failures_become_one_message_naming_the_entry(monkeypatch, raised, said):
    def load_dataset(*args, **kwargs):
        raise raised

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(HubError) as err:  # a DataError: the commands print it and exit 2
        next(read_hub("HuggingFaceH4/ultrachat_200k", None, "train_sft", entry="ultrachat_200k"))
    text = str(err.value)
    assert text.startswith("data.datasets.ultrachat_200k: ") and said in text
    if not isinstance(raised, ValueError):
        assert "data.datasets.ultrachat_200k.source=file data.datasets.ultrachat_200k.path=" in text
        assert "'DIR/**/train_sft-*.parquet'" in text
    else:
        assert "data.datasets.ultrachat_200k.split" in text
    # Without the caller's entry name, the message says what <name> stands for.
    with pytest.raises(HubError, match=r"^data\.datasets\.<name>: "):
        next(read_hub("someone/elses-set"))
    with pytest.raises(HubError, match=r"^data\.datasets\.mine: "):
        next(read_hub("someone/elses-set", entry="mine"))


# ---------------------------------------------------------------------------------- implicit-prompt pairs


def test_pairs_whose_sides_are_whole_conversations_share_their_prompt():
    row = fixture_rows("ultrafeedback")[0]
    assert to_pair(row) == to_pair(row, "messages", {"chosen": "chosen", "rejected": "rejected"})
    pair = to_pair({k: row[k] for k in ("chosen", "rejected")})  # TRL's implicit prompt, no prompt column
    assert pair["messages"] == [user("Name a fruit that is yellow.")] and pair["rejected"] == assistant(
        "Blue."
    )
    other = {**row, "rejected": [user("Another question"), assistant("Blue.")]}
    with pytest.raises(MalformedRow, match="differ before their last turn"):
        to_pair(other)
    # A row with a prompt of its own keeps it: its two-turn sides are not a pair.
    own = {**row, "messages": [user("A different prompt")]}
    with pytest.raises(MalformedRow, match="must hold one assistant turn, got 2"):
        to_pair(own)
