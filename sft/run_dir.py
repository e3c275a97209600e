"""A run directory: the names of its files, writing them atomically, claiming one, reading one back.

Every file is replaced whole (temp file, fsync, rename) and saved weights are published as a directory,
so a reader never sees half of one; summary.json is written last and marks the run finished.
Hydra and the CSV logger are told three of these names in sft/conf (hydra/default.yaml: `.hydra` and
`train.log`; logger/csv.yaml: `csv`), where Python constants cannot reach.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from .atomic import write_json, write_text
from .errors import ConfigError

CONFIG = "config.yaml"  # the resolved training config
RECORD = "run_record.json"  # how to repeat the run: command, code, versions, hardware, data hashes
SUMMARY = "summary.json"  # written last: a run that has one is finished
DATA_PROBLEMS = "data_problems.txt"
PROGRESS = "progress.json"
METRICS_DIR, METRICS = "csv", "metrics.csv"
CHECKPOINTS, LAST_CHECKPOINT = "checkpoints", "last.ckpt"
# Final validation metrics that summary.json also keeps under keys of their own (beside its `val` section).
SUMMARY_METRICS = {"val/loss": "val_loss", "val/ppl": "val_ppl", "val/token_accuracy": "val_token_accuracy"}
ADAPTER, MODEL, MERGED = "adapter", "model", "merged"
ADAPTER_INIT = "adapter_init"  # a PiSSA/OLoRA adapter's start, until the trained one is converted
EVAL, SCORES, EVAL_REPORT, GENERATIONS, HARNESS = (
    "eval",
    "scores.json",
    "report.md",
    "generations.jsonl",
    "harness.json",
)
# The trained model's greedy answers, recorded at the end of training, and an export's check against them.
PARITY_REFERENCE, PARITY = "parity_reference.json", "parity.json"
CHECKLIST_MD, CHECKLIST_JSON = "checklist.md", "checklist.json"
HYDRA, TRAIN_LOG, CONSOLE_LOG = ".hydra", "train.log", "console.log"
# Hydra's record and log of the launch that claims a directory survive an overwrite.
KEEP_ON_OVERWRITE = (HYDRA, TRAIN_LOG, CONSOLE_LOG)


class RunDir:
    """One run directory: paths of its files, their atomic writes and their reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG, doc="config.yaml")
    record = property(lambda self: self.path / RECORD, doc="run_record.json")
    summary = property(lambda self: self.path / SUMMARY, doc="summary.json")
    data_problems = property(lambda self: self.path / DATA_PROBLEMS, doc="data_problems.txt")
    progress = property(lambda self: self.path / PROGRESS, doc="progress.json")
    metrics_dir = property(lambda self: self.path / METRICS_DIR, doc="csv/, the CSV logger's folder")
    checkpoints = property(lambda self: self.path / CHECKPOINTS, doc="checkpoints/")
    last_checkpoint = property(lambda self: self.checkpoints / LAST_CHECKPOINT, doc="checkpoints/last.ckpt")
    adapter = property(lambda self: self.path / ADAPTER, doc="adapter/ (LoRA weights)")
    adapter_init = property(lambda self: self.path / ADAPTER_INIT, doc="adapter_init/ (a PiSSA/OLoRA start)")
    model = property(lambda self: self.path / MODEL, doc="model/ (fully fine-tuned weights)")
    merged = property(lambda self: self.path / MERGED, doc="merged/ (python -m sft.export's default)")
    eval = property(lambda self: self.path / EVAL, doc="eval/ (python -m sft.eval's default)")
    scores = property(lambda self: self.eval / SCORES, doc="eval/scores.json")
    generations = property(lambda self: self.eval / GENERATIONS, doc="eval/generations.jsonl")
    harness = property(lambda self: self.eval / HARNESS, doc="eval/harness.json")
    parity_reference = property(lambda self: self.path / PARITY_REFERENCE, doc="parity_reference.json")
    parity = property(lambda self: self.eval / PARITY, doc="eval/parity.json (an export's parity check)")
    checklist_md = property(lambda self: self.path / CHECKLIST_MD, doc="checklist.md")
    checklist_json = property(lambda self: self.path / CHECKLIST_JSON, doc="checklist.json")
    hydra = property(lambda self: self.path / HYDRA, doc=".hydra/, Hydra's record of the launch")
    train_log = property(lambda self: self.path / TRAIN_LOG, doc="train.log")
    console_log = property(lambda self: self.path / CONSOLE_LOG, doc="console.log (runs started by the page)")

    @property
    def finished(self) -> bool:
        """True once summary.json exists (it is written last, and whole)."""
        return self.summary.is_file()

    @property
    def weights(self) -> Path | None:
        """The saved weights directory, adapter/ or model/; None before the run saved any."""
        return next((p for p in (self.adapter, self.model) if p.is_dir()), None)

    def saved_weights(self, key: str, given: str | Path, error: type[Exception] = ConfigError) -> Path:
        """The weights of a run that saved them, for a command option `key={given}`; `error` says what
        is missing: the directory, its config.yaml, or adapter/ and model/ (a run still training)."""
        if not self.path.is_dir():
            raise error(f"{key}={given}: no such directory; give a finished run's directory")
        if not self.config.is_file():
            raise error(f"{key}={given}: no {self.config.name} here; this is not a run directory")
        if self.weights is None:
            raise error(
                f"{key}={given}: neither {self.adapter.name}/ nor {self.model.name}/ exists yet; "
                "is the run still training, or did it stop before saving its weights?"
            )
        return self.weights

    def weights_dir(self, is_adapter: bool) -> Path:
        """Where the trained weights go: adapter/ for LoRA, model/ for full fine-tuning."""
        return self.adapter if is_adapter else self.model

    # --- claiming -------------------------------------------------------------------------------------

    def claim(self, overwrite: bool, resume_from: str | None) -> bool:
        """Refuse a directory that holds a finished run, or an unfinished one's checkpoints.

        Resuming from a checkpoint inside it continues that run in place (returns True). With
        `overwrite`, the old outputs are deleted (Hydra's record and log of this launch stay).
        """
        checkpoints = sorted(self.checkpoints.glob("*.ckpt"))
        in_place = resume_from is not None and self.path.resolve() in Path(resume_from).resolve().parents
        if not (self.finished or checkpoints) or in_place:
            return in_place
        if not overwrite:
            what = f"a finished run ({SUMMARY})" if self.finished else "checkpoints of an unfinished run"
            raise ConfigError(
                f"paths.output_dir={self.path} already holds {what}; choose another directory, "
                f"resume it with resume={self.path}, or set overwrite=true to delete it"
            )
        for entry in self.path.iterdir():
            if entry.name not in KEEP_ON_OVERWRITE:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return False

    # --- writing --------------------------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        """Write config.yaml, the run's resolved config."""
        write_text(OmegaConf.to_yaml(OmegaConf.create(config)), self.config)

    def write_record(self, record: dict) -> None:
        """Write run_record.json."""
        write_json(record, self.record)

    def write_progress(self, progress: dict) -> None:
        """Write progress.json, without an fsync: the next step's write replaces it."""
        write_json(progress, self.progress, durable=False)

    def write_summary(self, summary: dict, data_problems: list[str]) -> None:
        """Write data_problems.txt (when rows were skipped), then summary.json: the run is finished."""
        if data_problems:
            write_text("\n".join(data_problems) + "\n", self.data_problems)
        write_json(summary, self.summary)

    def set_aside_metrics(self) -> Path | None:
        """Rename csv/metrics.csv to the next free `metrics.<n>.csv`; None when there is none.

        Lightning's CSV logger deletes an existing metrics.csv when it starts, so a run resumed in its
        own directory would lose the curve before the stop; `metrics()` joins the parts back.
        """
        current = self.metrics_dir / METRICS
        if not current.is_file():
            return None
        target = current.with_name(f"metrics.{len(self._metrics_parts()) + 1}.csv")
        current.rename(target)
        return target

    # --- reading --------------------------------------------------------------------------------------

    def read_config(self) -> DictConfig:
        """The run's saved, resolved training config."""
        return OmegaConf.load(self.config)

    def read_summary(self) -> dict | None:
        """summary.json's content, or None when the run has not finished."""
        return read_json(self.summary)

    def read_progress(self) -> dict | None:
        """progress.json's content, or None before the first step (or for a run from before it existed)."""
        return read_json(self.progress)

    def overrides(self) -> list[str]:
        """The command-line overrides the run was started with (Hydra's record); [] without one."""
        try:
            return list(yaml.safe_load((self.hydra / "overrides.yaml").read_text()) or [])
        except (OSError, yaml.YAMLError):
            return []

    def choices(self) -> dict[str, str]:
        """The config group options the run was composed from (Hydra's record); {} without one."""
        try:
            record = yaml.safe_load((self.hydra / "hydra.yaml").read_text())
            return dict(record["hydra"]["runtime"]["choices"])
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return {}

    def composed_config(self) -> dict:
        """config.yaml, else Hydra's copy of the composed config (a run that failed before saving its own)."""
        for path in (self.config, self.hydra / CONFIG):
            if path.is_file():
                return yaml.safe_load(path.read_text()) or {}
        return {}

    def metrics(self) -> pd.DataFrame:
        """Every logged row, set-aside parts first, the resumed part winning from the step it restarted at."""
        frames = []
        for path in [*self._metrics_parts(), self.metrics_dir / METRICS]:
            try:
                frame = pd.read_csv(path, on_bad_lines="skip")  # a row being written is skipped
            except (OSError, ValueError, pd.errors.EmptyDataError):
                continue
            if frames and "step" in frame and len(frame):
                restart = frame["step"].min()  # steps after the checkpoint were trained again
                frames = [f[f["step"] < restart] for f in frames]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _metrics_parts(self) -> list[Path]:
        """The set-aside metrics.<n>.csv parts in the order they were written."""
        parts = self.metrics_dir.glob("metrics.*.csv")
        return sorted(parts, key=lambda p: int(p.suffixes[0][1:]) if p.suffixes[0][1:].isdigit() else 0)


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a half write of an older sft)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def series(logged: pd.DataFrame, column: str) -> pd.DataFrame:
    """One column's logged points (step, value), one per step.

    Lightning logs the final validation again after restoring the best weights, at the last step.
    """
    if column not in logged:
        return pd.DataFrame(columns=["step", column])
    return logged[["step", column]].dropna().drop_duplicates("step", keep="last")
