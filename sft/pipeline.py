"""`python -m sft.pipeline out=<dir>`: training stages in order (CPT → SFT → DPO), each one run of
`python -m sft.train` that starts from the previous stage's run (`init_from`), then a table of them all.

Each stage is a subprocess (no shell), so a stage that crashes or runs out of memory cannot take the
pipeline's bookkeeping with it, and its console is kept in `<out>/<i>-<name>.log`. A stage whose run
already finished is skipped, so running the same command again resumes after the last finished stage.
Nothing here imports torch: the stages do.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .atomic import write_json, write_text
from .config import PipelineConfig, PipelineStage, check, checked_cli
from .errors import ConfigError
from .locations import CONF_DIR
from .run_dir import SUMMARY_METRICS, RunDir, read_json

log = logging.getLogger(__name__)

STAGES_JSON, STAGES_MD = "stages.json", "stages.md"
# Every row has these columns; the metrics any stage's summary holds besides them follow.
COLUMNS = ("stage", "status", "run", "parent", "handoff", "global_step", "train_loss", "val_loss", "val_ppl")
MISSING = "-"


@dataclass
class StageFailed(Exception):
    """A stage's sft.train exited non-zero; the pipeline stops there with its exit code."""

    name: str
    code: int
    log: Path

    def __str__(self) -> str:
        return f"stage {self.name} failed (exit code {self.code}); its console is in {self.log}"


def stage_problems(cfg: PipelineConfig) -> list[str]:
    """Stage settings the schema walk does not reach inside the list: names unique, hand-offs known."""
    problems = [] if cfg.stages else ["stages: empty; give at least one stage"]
    names = [s.name for s in cfg.stages]
    problems += [f"stages: the name {n!r} appears twice" for n in sorted(set(names)) if names.count(n) > 1]
    name_rule, handoff_rule = (PipelineStage.__dataclass_fields__[k].metadata for k in ("name", "handoff"))
    for i, stage in enumerate(cfg.stages):
        if not name_rule["check"][0](stage.name):
            problems.append(f"stages[{i}].name={stage.name!r}: {name_rule['check'][1]}")
        if stage.handoff is not None and stage.handoff not in handoff_rule["choices"]:
            problems.append(
                f"stages[{i}].handoff={stage.handoff!r}: null or one of {handoff_rule['choices']}"
            )
    return problems


def stage_dir(out: Path, index: int, stage: PipelineStage) -> Path:
    """Where stage `index` (counted from 1) runs: <out>/<index>-<name>."""
    return out / f"{index}-{stage.name}"


def stage_command(cfg: PipelineConfig, run: Path, stage: PipelineStage, parent: Path | None) -> list[str]:
    """The stage's `python -m sft.train` command line: common overrides, its own, then where it runs."""
    command = [sys.executable, "-m", "sft.train", *cfg.overrides, *stage.overrides]
    # .hydra/ and train.log go into the run directory too, so each stage is one self-contained folder.
    command += [f"paths.output_dir={run}", f"hydra.run.dir={run}"]
    if parent is not None:
        command.append(f"init_from={parent}")
    if stage.handoff is not None:
        command.append(f"handoff={stage.handoff}")
    if cfg.overwrite:
        command.append("overwrite=true")
    elif any(RunDir(run).checkpoints.glob("*.ckpt")):  # a stage that stopped part-way: continue it
        # ... but only the same run: checkpoints of other settings would silently train a mixture.
        before = [o for o in RunDir(run).overrides() if not o.startswith("resume=")]
        if before != command[3:]:
            raise ConfigError(
                f"stage {run.name}: {run} holds checkpoints of a run started with other overrides "
                f"({' '.join(before) or 'none recorded'}); set overwrite=true to run it again from the start"
            )
        command.append(f"resume={run}")
    return command


def run_stage(command: list[str], log_path: Path) -> int:
    """Run one stage, its console streamed line by line to `log_path` and to stdout; return its exit code."""
    with (
        open(log_path, "w", encoding="utf-8") as log_file,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as process,
    ):
        try:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()  # the log is what a user watches (tail -f) and reads after a crash
                sys.stdout.write(line)
        except KeyboardInterrupt:  # Ctrl-C: the stage saves a checkpoint on the same signal; wait for it
            process.wait()
            raise
    code = process.returncode
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def run_pipeline(cfg: PipelineConfig) -> list[dict]:
    """Run (or skip, when finished) every stage in order and return one row per stage reached.

    A failing stage raises StageFailed after its row is added; the rows so far are written either way.
    """
    out = Path(cfg.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    parent = Path(cfg.init_from).expanduser().resolve() if cfg.init_from else None
    rows = []
    try:
        for index, stage in enumerate(cfg.stages, start=1):
            run = stage_dir(out, index, stage)
            if RunDir(run).finished and not cfg.overwrite:
                log.info(
                    "stage %s: skipped, %s already finished (overwrite=true runs it again)", run.name, run
                )
                rows.append(stage_row(stage, run, "skipped"))
            else:
                log_path = out / f"{run.name}.log"
                log.info("stage %s: running in %s (console in %s)", run.name, run, log_path)
                code = run_stage(stage_command(cfg, run, stage, parent), log_path)
                rows.append(stage_row(stage, run, "finished" if code == 0 else "failed"))
                if code != 0:
                    raise StageFailed(run.name, code, log_path)
            parent = run
    finally:
        write_table(rows, out)
    return rows


def stage_row(stage: PipelineStage, run: Path, status: str) -> dict:
    """One table row: where the stage ran, what it started from, and every metric its run reports."""
    summary = RunDir(run).read_summary() or {}
    parent = (read_json(RunDir(run).record) or {}).get("parent") or {}
    row = {
        "stage": stage.name,
        "status": status,
        "run": str(run),
        "parent": parent.get("run"),
        "handoff": parent.get("handoff"),  # what the run did (continue from a full model is a merge)
        **{k: summary.get(k) for k in ("global_step", "train_loss", "val_loss", "val_ppl")},
    }
    return {**row, **metrics(summary, run)}


def metrics(summary: dict, run: Path) -> dict:
    """A run's metrics beyond the fixed columns, found by name so that ones added later show up too.

    The stage's own validation metrics (`val/rewards/accuracy`, `val/logps/accuracy`, `val/kl`, ...) at
    the run's first evaluation and its last, other `val_*` values of summary.json, any `eval*` sections
    in it, and the tuned model's eval-suite scores (eval/scores.json).
    """
    found = {}
    for key, value in summary.get("val", {}).items():  # the stage's own: rewards, preference accuracy, kl
        if key not in SUMMARY_METRICS and _number(value):  # those have columns (val_loss, ...) already
            found[f"{key} (start)"] = summary.get("initial_val", {}).get(key)
            found[key] = value
    for key, value in summary.items():
        if key in COLUMNS:
            continue
        if _number(value) and ("/" in key or key.startswith("val_")):
            found[key] = value
        elif key.startswith("eval") and isinstance(value, dict):
            found.update(_flatten(value, key))
    scores = read_json(RunDir(run).scores) or {}
    if isinstance(scores.get("tuned"), dict):
        found.update(_flatten(scores["tuned"], "eval"))
    return found


def _flatten(node: dict, prefix: str) -> dict:
    """The numbers of a nested dict, keyed by their path (`eval/ifeval/accuracy`)."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}/{key}"))
        elif _number(value):
            flat[f"{prefix}/{key}"] = value
    return flat


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table: the fixed columns, then every other metric any row has."""
    columns = list(COLUMNS) + [k for row in rows for k in row if k not in COLUMNS]
    columns = list(dict.fromkeys(columns))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_table(rows: list[dict], out: Path) -> None:
    """Write <out>/stages.json (missing values null) and <out>/stages.md (missing values "-")."""
    write_json(rows, out / STAGES_JSON)
    write_text(to_markdown(rows), out / STAGES_MD)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pipeline")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a config mistake exits 2, a failing stage exits with that stage's code."""
    try:
        typed = check(cfg, PipelineConfig, stage_problems)
        rows = run_pipeline(typed)
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    except StageFailed as failed:
        print(failed, file=sys.stderr)
        sys.exit(failed.code)
    print(to_markdown(rows), end="")
    print(f"written: {Path(typed.out) / STAGES_JSON}, {Path(typed.out) / STAGES_MD}")


cli = checked_cli(main, PipelineConfig)

if __name__ == "__main__":
    cli()
