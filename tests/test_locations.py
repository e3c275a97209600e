"""Commands work from any directory: configs ship in the package, named data is found via paths.data_dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import SHARED_DATA, TINY

from sft.locations import CONF_DIR, PACKAGE_DIR


def test_configs_ship_inside_the_package():
    assert CONF_DIR.parent == PACKAGE_DIR and (CONF_DIR / "train.yaml").is_file()
    assert (CONF_DIR / "sweep" / "hparam_table.yaml").is_file()  # search spaces ship too


def test_train_runs_from_another_directory_with_named_data(tmp_path, cache_dir):
    """`cd /tmp && python -m sft.train data=alpaca_en ...`: outputs go under the working directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "SFT_DATA_DIR": str(SHARED_DATA)}
    env.pop("PROJECT_ROOT", None)
    tiny = [o for o in TINY if not o.startswith("data.datasets.builtin")]
    command = [sys.executable, "-m", "sft.train", *tiny, "data=alpaca_en", "data.max_samples=40"]
    done = subprocess.run(
        [*command, "trainer.max_steps=1"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (elsewhere / "outputs" / "train" / "runs").iterdir()
    record = json.loads((run / "run_record.json").read_text())
    files = record["data_files"]
    assert any(Path(path).name == "alpaca_en_demo.json" for path in files), files


def test_named_data_without_its_files_names_the_setting(tmp_path):
    """A data directory without the file: the error names the path, not a traceback."""
    env = {**os.environ, "SFT_DATA_DIR": str(tmp_path / "nowhere")}
    command = [sys.executable, "-m", "sft.train", "model=tiny", "data=alpaca_en", "trainer.max_steps=1"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert str(tmp_path / "nowhere" / "alpaca_en_demo.json") in done.stderr


def test_console_scripts_are_installed():
    """`pip install` gives the commands as console scripts beside `python -m`."""
    script = Path(sys.executable).parent / "sft-train"
    assert script.is_file(), "run `make setup` (pip install -e .) to install the console scripts"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "preset" in done.stdout  # Hydra's help lists the config groups
