"""Every command checks its command line against its schema before Hydra composes (or a model loads): a
misspelt key exits 2 naming the closest valid one; a value out of range is named with what is allowed."""

from __future__ import annotations

import os

import pytest
from conftest import run_module

TYPOS = [
    (("sft.chat", "run=x", "max_new_token=5"), "max_new_token: unknown key; did you mean 'max_new_tokens'?"),
    (("sft.serve", "run=x", "prot=8001"), "prot: unknown key; did you mean 'port'?"),
    (("sft.export", "run=x", "dtyp=float16"), "dtyp: unknown key; did you mean 'dtype'?"),
    (
        ("sft.eval", "run=x", "evaluation.limt=2"),
        "evaluation.limt: unknown key; did you mean 'evaluation.limit'?",
    ),
    (("sft.eval.judge", "generations=x", "mod=single"), "mod: unknown key; did you mean 'mode'?"),
    (("sft.checklist", "run=x", "sheet=[a]"), "sheet: unknown key; did you mean 'sheets'?"),
    (
        ("sft.prepare", "dedup", "input=x", "output=y", "treshold=0.5"),
        "treshold: unknown key; did you mean 'threshold'?",
    ),
    (
        ("sft.prepare", "generate", "seeds=x", "output=y", "backend=endpoint", "backend.ulr=http://h/v1"),
        "backend.ulr: unknown key; did you mean 'backend.url'?",
    ),
    (("sft.data", "preview.rowz=3"), "preview.rowz: unknown key; did you mean 'preview.rows'?"),
    (("sft.report", "outputs", "--metrc", "val_loss"), "--metrc: unknown key; did you mean '--metric'?"),
]


@pytest.mark.parametrize(("command", "expected"), TYPOS, ids=[" ".join(c[:2]) for c, _ in TYPOS])
def test_a_misspelt_key_exits_2_with_the_closest_one(command, expected):
    done = run_module(*command)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


VALUES = [
    (
        ("sft.export", "run=x", "dtype=float64"),
        "dtype='float64': null or one of ('float32', 'bfloat16', 'float16')",
    ),
    (("sft.chat", "run=x", "top_p=1.5"), "top_p=1.5: a number in (0, 1]"),
    (("sft.serve", "run=x", "port=-3"), "port=-3: an integer in [0, 65535]"),
    (("sft.eval", "run=x", "evaluation.limit=0"), "evaluation.limit=0: null or a positive integer"),
    (("sft.data", "data.cutoff_len=0"), "data.cutoff_len=0: an integer >= 16"),
]


@pytest.mark.parametrize(("command", "expected"), VALUES, ids=[c[0] for c, _ in VALUES])
def test_a_value_out_of_range_is_named_before_anything_loads(command, expected, tmp_path):
    """The commands that load a model check their values first: here torch cannot even be imported."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch loaded before the check')\n")
    done = run_module(*command, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["sft.eval", "sft.export", "sft.chat", "sft.serve", "sft.checklist"])
def test_a_run_directory_that_does_not_exist_is_named_before_anything_loads(command, tmp_path):
    """Every command that reads a finished run names a missing one at once: torch cannot even be imported."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch loaded before the check')\n")
    missing = tmp_path / "no-such-run"
    done = run_module(command, f"run={missing}", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert f"run={missing}: no such directory" in done.stderr and "Traceback" not in done.stderr


def test_a_required_setting_left_unset_is_named():
    done = run_module("sft.eval.judge")
    assert done.returncode == 2 and "generations: missing; give generations=<...>" in done.stderr
