"""`python -m sft.eval.harness run=<run dir> tasks=[...]`: lm-eval-harness benchmarks, tuned and base.

Our own offline tasks (sft/eval/tasks/*.yaml, data beside them) run with no network; standard tasks
(mmlu, hellaswag, humaneval, ...) are named as lm-eval names them and need their datasets (a network or
a warm Hugging Face cache); `include_path` adds a directory of your own task YAMLs. The model is the run's
adapter merged into its base, passed to lm-eval as an already-built model. Writes `<run>/eval/harness.json`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import hydra
import yaml
from omegaconf import DictConfig

from ..atomic import write_json
from ..config import HarnessConfig, check, checked_cli
from ..errors import ConfigError, ExportError, HarnessError
from ..locations import CONF_DIR
from ..run_dir import RunDir
from ..serving.export import load_run
from ..training.lineage import start_weights
from .suite import compare

TASKS_DIR = Path(__file__).parent / "tasks"


def local_tasks(into: Path) -> Path:
    """Copy the shipped task YAMLs into `into`, data_files made absolute (lm-eval reads them from cwd)."""
    for source in TASKS_DIR.glob("*.yaml"):
        task = yaml.safe_load(source.read_text())
        files = task.get("dataset_kwargs", {}).get("data_files", {})
        for split, name in files.items():
            files[split] = str((TASKS_DIR / name).resolve())
        (into / source.name).write_text(yaml.safe_dump(task, sort_keys=False))
    return into


def task_index(tasks: list[str], include: list[str]):
    """lm-eval's task index over its own tasks and `include`; names it does not hold are refused here."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise HarnessError("lm-eval is not installed: pip install -e '.[benchmarks]'") from err
    # Our offline tasks and `include` index at once; lm-eval's own ~15k tasks take seconds, so only when
    # a name is not one of those tasks (a group or tag of `include` may list lm-eval's own tasks).
    manager = TaskManager(include_path=include or None, include_defaults=False)
    if not set(tasks) <= set(manager.all_subtasks):
        manager = TaskManager(include_path=include or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise HarnessError(f"tasks={unknown}: unknown to lm-eval (local tasks: {sorted(_local_names())})")
    return manager


def run_tasks(model, tokenizer, tasks: list[str], manager, limit: int | None, batch_size: int) -> dict:
    """lm-eval's `simple_evaluate` on an in-memory model; returns {task: {metric: value}}."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    return {task: _metrics(values) for task, values in results["results"].items()}


def _metrics(values: dict) -> dict[str, float]:
    """lm-eval's `metric,filter` keys as plain metric names (acc, acc_stderr, ...), numbers only."""
    return {
        key.split(",")[0]: float(value)
        for key, value in values.items()
        if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _local_names() -> list[str]:
    return [yaml.safe_load(p.read_text())["task"] for p in TASKS_DIR.glob("*.yaml")]


def benchmark(cfg: DictConfig) -> dict:
    """Run the tasks on the tuned model (and the base), compare, write harness.json and return it."""
    run = Path(cfg.run)
    include = tempfile.mkdtemp(prefix="sft-tasks-")
    try:
        paths = [str(local_tasks(Path(include))), *([str(cfg.include_path)] if cfg.include_path else [])]
        tasks = list(cfg.tasks)
        manager = task_index(tasks, paths)  # a misspelt task is named before any model loads
        tuned, tokenizer = load_run(run, cfg.cache_dir)
        scores = {"tuned": run_tasks(tuned, tokenizer, tasks, manager, cfg.limit, cfg.batch_size)}
        if cfg.base:
            # The run's starting policy: its base model, or its init_from parent's result.
            base = start_weights(RunDir(run).read_config(), cfg.cache_dir).eval()
            scores["base"] = run_tasks(base, tokenizer, tasks, manager, cfg.limit, cfg.batch_size)
            scores["compare"] = compare(_rates(scores["base"]), _rates(scores["tuned"]), cfg.tolerance)
    finally:
        shutil.rmtree(include, ignore_errors=True)
    out = RunDir(run).harness
    write_json(scores, out)
    for task, metrics in scores["tuned"].items():
        base = scores.get("base", {}).get(task, {})
        shown = ", ".join(
            f"{k} {v:.4f}" + (f" (base {base[k]:.4f})" if k in base else "") for k, v in metrics.items()
        )
        print(f"{task}: {shown}")
    print(f"written: {out}")
    return scores


def _rates(scores: dict) -> dict:
    """Task metrics in the shape `compare` reads: {task: {acc: ...}} with rate keys named `accuracy`."""
    return {task: {"accuracy": m.get("acc", m.get("exact_match"))} for task, m in scores.items()}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="harness")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a missing run, lm-eval or task exits with the message, not a traceback."""
    try:
        check(cfg, HarnessConfig)
        benchmark(cfg)
    except (ConfigError, ExportError, HarnessError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)


cli = checked_cli(main, HarnessConfig)

if __name__ == "__main__":
    cli()
