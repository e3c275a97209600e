"""`python -m sft.pipeline`: stages chained by init_from, finished ones skipped, a failure stops it."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import TINY, run_module

from sft.config import ConfigError, PipelineConfig, PipelineStage
from sft.pipeline import metrics, stage_command, stage_row, to_markdown

STEPS = [*TINY, "trainer.max_steps=2", "trainer.eval_steps=2"]


def _list(items: list[str]) -> str:
    return "[" + ",".join(f"'{item}'" for item in items) + "]"


def test_stages_chain_are_skipped_once_finished_and_a_failure_stops_the_pipeline(tmp_path, cache_dir):
    out = tmp_path / "pipe"
    env = {**os.environ, "SFT_CACHE": str(cache_dir)}
    common = f"overrides={_list([*STEPS, f'paths.log_dir={tmp_path}'])}"
    two = "{name:first,overrides:['stage=sft']},{name:second,overrides:['stage=sft','seed=1'],handoff:merge}"
    done = run_module("sft.pipeline", f"out={out}", common, f"stages=[{two}]", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads((out / "stages.json").read_text())
    first, second = out / "1-first", out / "2-second"
    assert [(r["stage"], r["status"], r["run"]) for r in rows] == [
        ("first", "finished", str(first)),
        ("second", "finished", str(second)),
    ]
    assert rows[0]["parent"] is None and rows[0]["handoff"] is None
    assert rows[1]["parent"] == str(first) and rows[1]["handoff"] == "merge"
    assert all(r["global_step"] == 2 and r["val_loss"] > 0 and r["train_loss"] > 0 for r in rows)
    assert json.loads((second / "run_record.json").read_text())["parent"]["run"] == str(first)
    assert (second / "adapter").is_dir() and (second / ".hydra").is_dir()  # Hydra's record in the run too
    assert f"run dir: {first}" in (out / "1-first.log").read_text()  # the stage's console, streamed
    table = (out / "stages.md").read_text()
    assert table.startswith("| stage | status | run | parent | handoff |") and f"| {first} |" in table
    assert table in done.stdout

    # The same command with a third stage: the finished two are skipped, the broken third stops it.
    three = two + ",{name:third,overrides:['lora.r=0']}"
    again = run_module("sft.pipeline", f"out={out}", common, f"stages=[{three}]", env=env, timeout=600)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "stage 3-third failed (exit code 2)" in again.stderr and str(out / "3-third.log") in again.stderr
    assert "lora.r=0" in (out / "3-third.log").read_text()
    rows = json.loads((out / "stages.json").read_text())
    assert [(r["stage"], r["status"]) for r in rows] == [
        ("first", "skipped"),
        ("second", "skipped"),
        ("third", "failed"),
    ]
    assert rows[1]["val_loss"] > 0  # a skipped stage still reports its run's results


def test_the_table_shows_every_metric_a_run_reports_and_dashes_for_missing_ones(tmp_path):
    a, b = tmp_path / "1-sft", tmp_path / "2-dpo"
    (a / "eval").mkdir(parents=True)
    b.mkdir()
    (a / "summary.json").write_text(json.dumps({"global_step": 4, "val_loss": 1.5, "batch": {"size": 8}}))
    (a / "eval" / "scores.json").write_text(json.dumps({"tuned": {"exact": {"accuracy": 0.5}}, "base": {}}))
    (b / "summary.json").write_text(
        json.dumps(
            {
                "global_step": 2,
                "val": {"val/loss": 0.6, "val/rewards/accuracy": 0.75, "val/rewards/margin": 0.25},
                "initial_val": {"val/loss": 0.69, "val/rewards/accuracy": 0.0, "val/rewards/margin": 0.0},
                "val_token_accuracy": 0.3,
            }
        )
    )
    (b / "run_record.json").write_text(json.dumps({"parent": {"run": str(a), "handoff": "merge"}}))
    rows = [
        stage_row(PipelineStage("sft", [], None), a, "finished"),
        stage_row(PipelineStage("dpo", [], None), b, "finished"),
    ]
    assert metrics(json.loads((a / "summary.json").read_text()), a) == {"eval/exact/accuracy": 0.5}
    assert rows[1]["val/rewards/accuracy"] == 0.75 and rows[1]["parent"] == str(a)
    assert rows[1]["val/rewards/accuracy (start)"] == 0.0  # the first evaluation: before this stage trained
    lines = to_markdown(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-6:] == [
        "eval/exact/accuracy",
        "val/rewards/accuracy (start)",
        "val/rewards/accuracy",
        "val/rewards/margin (start)",
        "val/rewards/margin",
        "val_token_accuracy",
    ]
    sft_row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert sft_row[header.index("val/rewards/accuracy")] == "-" and sft_row[header.index("val_loss")] == "1.5"
    assert sft_row[header.index("parent")] == "-"


def test_a_stage_that_stopped_part_way_is_resumed_and_a_new_one_starts_from_its_parent(tmp_path):
    cfg = PipelineConfig(
        out=str(tmp_path), overrides=["model=tiny"], init_from=None, stages=[], overwrite=False
    )
    stage = PipelineStage("dpo", ["stage=dpo"], "continue")
    run, parent = tmp_path / "2-dpo", tmp_path / "1-sft"
    fresh = stage_command(cfg, run, stage, parent)
    assert fresh[-5:] == ["stage=dpo", f"paths.output_dir={run}", f"hydra.run.dir={run}",
                          f"init_from={parent}", "handoff=continue"]  # fmt: skip
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")  # a crash after its first checkpoint
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(fresh[3:]))  # as Hydra records them
    assert stage_command(cfg, run, stage, parent) == [*fresh, f"resume={run}"]
    resumed_once = [*fresh[3:], f"resume={run}"]  # a resumed launch records its resume= too
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(resumed_once))
    assert stage_command(cfg, run, stage, parent) == [*fresh, f"resume={run}"]
    # Checkpoints of other settings are never resumed with these ones.
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*fresh[3:-1], "handoff=merge"]))
    with pytest.raises(ConfigError, match="holds checkpoints of a run started with other overrides"):
        stage_command(cfg, run, stage, parent)
    cfg.overwrite = True  # runs it again from the start instead
    assert stage_command(cfg, run, stage, parent) == [*fresh, "overwrite=true"]
