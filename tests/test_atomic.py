"""Atomic file and directory writes."""

from __future__ import annotations

import json
import os

import pytest

from sft import atomic
from sft.atomic import publish_dir, write_json, write_text


def test_write_json_round_trips_atomically(tmp_path):
    path = tmp_path / "run" / "record.json"
    write_json({"a": 1, "p": tmp_path}, path)
    write_json({"b": [1, 2], "a": None}, path)
    assert json.loads(path.read_text()) == {"b": [1, 2], "a": None}
    assert list(path.parent.iterdir()) == [path]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    write_text("old\n", path)

    def broken(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError, match="disk gone"):
        write_text("new\n", path)
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]


def test_written_files_get_the_umask_modes_not_the_temp_files_private_ones(tmp_path):
    path = tmp_path / "shared.json"
    write_json({}, path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~atomic._umask()


def test_publish_dir_keeps_an_existing_target_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    publish_dir(lambda tmp: (tmp / "a").write_text("1"), target)
    publish_dir(lambda tmp: (tmp / "b").write_text("2"), target)
    assert os.listdir(target) == ["a"]
    publish_dir(lambda tmp: (tmp / "b").write_text("2"), target, overwrite=True)
    assert os.listdir(target) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp or old copies left behind
