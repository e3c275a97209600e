"""Streaming (data.streaming=true): shards read from a saved position, ranks dealt disjoint rows, the stream
continued exactly from a snapshot, bad rows and bad settings stopped. Real shared rows as .jsonl/.parquet."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA, TINY, preview_in_process

from sft.config import ConfigError, validate
from sft.data.formats import read_source
from sft.data.preprocess import Encoder
from sft.data.shards import Position, parse_row, read_files, read_hub_stream
from sft.data.streaming import PACK_WINDOW, TrainStream, prepare_stream
from sft.data.templates import get_template
from sft.errors import DataError, MalformedRow
from sft.train import train
from sft.training.model import byte_tokenizer

# The tiny setup on a data file instead of the builtin rows.
TINY_FILE = [o for o in TINY if not o.startswith("data.datasets.builtin")]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def alpaca_rows() -> list[dict]:
    return [row for _, row in read_source(SHARED_DATA / "alpaca_en_demo.json")]


def write_jsonl(path, rows, bom: bool = False) -> None:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "".join(json.dumps(r) + "\n" for r in rows).encode())


def test_jsonl_and_parquet_shards_continue_exactly_from_any_saved_position(tmp_path, alpaca_rows):
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows[:30], bom=True)
    (tmp_path / "b.jsonl").write_text(
        json.dumps(alpaca_rows[30]) + "\n\n{broken\n" + json.dumps(alpaca_rows[31])
    )
    table = pa.Table.from_pylist(alpaca_rows[32:60])
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.parquet"]

    whole = list(read_files(files, Position()))
    rows = [parse_row(raw) for _, raw, _ in whole]
    assert len(rows) == 61
    assert rows[:31] == alpaca_rows[:31] and rows[32:] == alpaca_rows[31:60]
    assert isinstance(rows[31], MalformedRow) and "invalid JSON" in str(rows[31])
    # Locations name the file and its line (blank lines counted) or parquet row.
    assert whole[31][0] == f"{tmp_path / 'b.jsonl'}:3" and whole[-1][0] == f"{tmp_path / 'c.parquet'}:row 28"
    for cut in (1, 17, 30, 31, 32, 33, 40, 47, 60):
        rest = list(read_files(files, whole[cut - 1][2]))
        assert [(loc, raw) for loc, raw, _ in rest] == [(loc, raw) for loc, raw, _ in whole[cut:]], cut


def test_a_hub_dataset_streams_and_continues_from_a_row_offset(tmp_path, alpaca_rows, monkeypatch):
    import datasets

    path = tmp_path / "copy.jsonl"
    write_jsonl(path, alpaca_rows[:25])
    asked, original = [], datasets.load_dataset

    def load_dataset(name, subset=None, split="train", streaming=False):
        asked.append((name, subset, split, streaming))
        return original("json", data_files=str(path), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    whole = list(read_hub_stream("tatsu-lab/alpaca", None, "train", Position()))
    assert asked[0] == ("tatsu-lab/alpaca", None, "train", True)  # streamed, never downloaded whole
    assert [row for _, row, _ in whole] == alpaca_rows[:25]
    assert whole[4][0] == "hub:tatsu-lab/alpaca[train]#5"
    assert list(read_hub_stream("tatsu-lab/alpaca", None, "train", whole[9][2])) == whole[10:]


def stream_cfg(make_cfg, path, *overrides):
    return validate(
        make_cfg(
            *TINY_FILE,
            "data=mix",
            f"data.datasets=[{path}]",
            "data.streaming=true",
            "data.val_size=10",
            "data.shuffle_buffer=50",
            "trainer.max_steps=10",
            *overrides,
        )
    ).data


def streams(cfg, tok, world_size=1, micro_batch_size=4, group_size=8):
    """One TrainStream per rank over the same prepared validation split."""
    template = get_template(cfg.template, tok, cfg.system)
    prepared, sources, starts = prepare_stream(cfg, tok, template)
    encoder = Encoder(tok, template, cfg)
    return prepared, [
        TrainStream(
            cfg, encoder, sources, starts, prepared.stats, 0, micro_batch_size, group_size, rank, world_size
        )
        for rank in range(world_size)
    ]


def take(stream, n):
    out, it = [], iter(stream)
    for _ in range(n):
        out.append(next(it))
    return out


def test_ranks_train_disjoint_rows_and_no_row_twice_within_a_pass(make_cfg, tok, tmp_path, alpaca_rows):
    path = tmp_path / "alpaca.jsonl"
    write_jsonl(path, alpaca_rows[:110])  # 10 held out, 100 to train on: 50 per rank and pass
    cfg = stream_cfg(make_cfg, path, "data.cutoff_len=4096", "data.shuffle_buffer=10")
    prepared, (rank0, rank1) = streams(cfg, tok, world_size=2)
    assert len(prepared.val) == 10 and prepared.val["location"] == [f"{path}:{n}" for n in range(1, 11)]
    # 10 micro-batches of 4 and a buffer of 10: the 50 rows a rank has in one pass.
    seen = [[e["location"] for batch in take(s, 10) for e in batch] for s in (rank0, rank1)]
    for rank, locations in enumerate(seen):
        assert len(locations) == len(set(locations)) == 40
        assert set(locations) <= {f"{path}:{n}" for n in range(11 + rank, 111, 2)}  # its own rows
    assert not set(seen[0]) & set(seen[1])
    # Each rank's share of an optimizer step (8 examples over 2 ranks: 4) is sorted longest first.
    for batch in take(rank0, 3):
        lengths = [e["length"] for e in batch]
        assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("packing", [False, True])
def test_a_stream_resumed_from_a_snapshot_yields_exactly_what_it_would_have(
    make_cfg, tok, tmp_path, alpaca_rows, packing
):
    path = tmp_path / "alpaca.jsonl"
    write_jsonl(path, alpaca_rows[:300])
    cfg = stream_cfg(make_cfg, path, f"data.packing={packing}")
    _, (stream,) = streams(cfg, tok)
    n = 2 * PACK_WINDOW // 4 + 3 if packing else 40  # past a refill of the packing window or a new pass
    expected = take(stream, n)
    _, (fresh,) = streams(cfg, tok)
    for k in (1, 7, n - 5):
        take(fresh, k + 2)  # Lightning has fetched ahead of what it trained when it saves a checkpoint
        fresh.resume_from = json.loads(json.dumps(fresh.snapshot(k)))  # plain values, as a checkpoint holds
        assert take(fresh, n - k) == expected[k:], k
    if packing:  # packed rows of several examples each, every one within cutoff_len
        assert all("position_ids" in row and len(row["input_ids"]) <= 256 for b in expected for row in b)
        rows = [row for batch in expected for row in batch]
        samples = sum(row["position_ids"].count(0) for row in rows)
        assert samples > len(rows)  # some rows hold several samples, each from position 0


def test_a_mostly_broken_stream_stops_with_counts_and_reasons(make_cfg, tok, tmp_path, alpaca_rows):
    lines = [json.dumps(r) if i % 3 else "{not json" for i, r in enumerate(alpaca_rows[:400])]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = stream_cfg(make_cfg, path)
    _, (stream,) = streams(cfg, tok)
    with pytest.raises(
        DataError, match=r"dataset 'broken': \d+ of 1\d\d rows \(3\d\.\d%\) are malformed"
    ) as stop:
        take(stream, 100)
    assert f"{path}:1: invalid JSON" in str(stop.value)


def test_a_dataset_held_out_whole_is_refused_instead_of_looping(make_cfg, tok, tmp_path, alpaca_rows):
    path = tmp_path / "small.jsonl"
    write_jsonl(path, alpaca_rows[:10])
    _, (stream,) = streams(stream_cfg(make_cfg, path), tok)
    with pytest.raises(
        DataError,
        match=r"no rows left to train on after the validation rows \(4 found for data.val_size=10\); lower",
    ):
        take(stream, 1)


def test_settings_a_stream_cannot_honour_are_named(make_cfg, tmp_path, alpaca_rows):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, alpaca_rows[:20])
    bad = [
        ("trainer.max_steps=-1", "trainer.max_steps=-1: a positive count with data.streaming=true"),
        ("data.val_size=0.1", "data.val_size=0.1: a whole count of rows with data.streaming=true"),
        ("data.curriculum=easy_to_hard", "data.curriculum='easy_to_hard': none with data.streaming=true"),
        ("data.max_samples=5", "data.max_samples: null with data.streaming=true"),
        ("data.num_workers=2", "data.num_workers=2: 0 with data.streaming=true"),
        ("stage=dpo", "data.streaming=true: stage sft or pt; pairs"),
    ]
    for override, message in bad:
        with pytest.raises(ConfigError) as err:
            stream_cfg(make_cfg, path, override)
        assert message in str(err.value), override
    with pytest.raises(DataError, match=r"alpaca_en_demo.json cannot be streamed; data.streaming=true reads"):
        prepare_stream(stream_cfg(make_cfg, SHARED_DATA / "alpaca_en_demo.json"), None, None)


def test_a_streamed_run_trains_validates_and_reports_its_rows(make_cfg, tmp_path, alpaca_rows):
    path = tmp_path / "alpaca.jsonl"
    write_jsonl(path, alpaca_rows[:200])
    cfg = make_cfg(
        *TINY_FILE,
        "data=mix",
        f"data.datasets=[{path}]",
        "data.streaming=true",
        "data.val_size=16",
        "data.shuffle_buffer=64",
        "trainer.max_steps=4",
        "trainer.eval_steps=2",
        run="streamed",
    )
    train(cfg)
    summary = json.loads((tmp_path / "streamed" / "summary.json").read_text())
    data = summary["data"]
    assert summary["global_step"] == 4 and data["val"] == 16
    assert data["datasets"]["alpaca"]["val"] == 16 and data["train"] >= 64 + 32
    assert data["cache"].startswith("streaming") and data["files"][str(path)].startswith("streamed:")
    assert summary["val_loss"] < summary["initial_val_loss"]


def test_the_preview_shows_the_streams_first_examples_and_the_held_out_rows(tmp_path, alpaca_rows):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, alpaca_rows[:80])
    common = ["model=tiny", "data=mix", f"data.datasets=[{path}]", "data.streaming=true", "data.val_size=4"]
    common += ["trainer.max_steps=5", "data.shuffle_buffer=8", "data.cutoff_len=2048", "preview.rows=2"]
    train_side = preview_in_process(tmp_path, tmp_path / "cache", *common)
    assert train_side.count("--- train example") == 2 and "(rows, " in train_side
    assert "cache streaming: tokenized on the fly" in train_side
    held_out = preview_in_process(tmp_path, tmp_path / "cache", *common, "preview.split=val")
    first = alpaca_rows[0]["instruction"]
    assert "--- val example 0 (rows, " in held_out and first in held_out


def test_raw_text_streams_in_chunks_for_continued_pretraining(make_cfg, tok):
    cfg = validate(
        make_cfg(
            *TINY_FILE, "stage=pt", "data=c4", "data.streaming=true", "data.val_size=4", "trainer.max_steps=5"
        )
    ).data
    prepared, (stream,) = streams(cfg, tok)
    assert len(prepared.val) >= 4
    rows = [row for batch in take(stream, 6) for row in batch]  # packed, as stage pt packs by default
    for row in rows:
        assert len(row["input_ids"]) <= cfg.cutoff_len
        # Every token is trained but each sample's first (nothing before it in its sample predicts it).
        expected = [-100 if p == 0 else t for t, p in zip(row["input_ids"], row["position_ids"], strict=True)]
        assert row["labels"] == expected
    assert prepared.stats.datasets["c4"].split > 0  # documents longer than cutoff_len gave several rows
