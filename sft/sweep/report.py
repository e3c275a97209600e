"""`python -m sft.report <sweep dir>`: one table and a few plots for every run of a Hydra multirun.

A sweep dir is a Hydra multirun (numbered job dirs 0/, 1/, ... each with .hydra/overrides.yaml and, once
finished, summary.json) or an Optuna sweep (study.json names the study and its storage). For an Optuna
sweep the study is the source of truth: every trial gets a row, with or without a job dir here.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import optuna
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState
from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..config.overrides import parse_args
from ..run_dir import RunDir, series

# Optuna trial states as status words; without a study a job dir is finished (summary.json) or failed.
STATUS = {
    "COMPLETE": "finished",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}

# The terminal gets the columns that tell runs apart (and the metric); runs.csv and runs.md have them all.
SHOWN = ("run", "trial", "status", "error")

console = Console()


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The numbered job dirs of a Hydra multirun, in job order."""
    jobs = (p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit())
    return sorted(jobs, key=lambda p: int(p.name))


def load_study(sweep_dir: Path) -> optuna.Study | None:
    """The Optuna study that `<sweep_dir>/study.json` names, or None for a plain multirun."""
    path = Path(sweep_dir) / "study.json"
    if not path.is_file():
        return None
    ref = json.loads(path.read_text())
    return optuna.load_study(study_name=ref["study_name"], storage=ref["storage"])


def _overrides(job: Path, parser: OverridesParser) -> dict:
    values = {}
    for override in parser.parse_overrides(RunDir(job).overrides()):
        value = override.value()
        # Lists and dicts become text: table cells must be hashable and comparable across runs.
        scalar = value is None or isinstance(value, (str, int, float, bool))
        values[override.get_key_element().lstrip("+~")] = value if scalar else str(value)
    return values


def _trial_number(job: Path) -> int | None:
    trial = RunDir(job).composed_config().get("trial")
    return trial.get("number") if isinstance(trial, dict) else None


def _summary(job: Path) -> dict | None:
    summary = RunDir(job).read_summary()
    if summary is None:
        return None
    # A stage's final validation metrics (val/rewards/accuracy, val/kl, ...) become columns of their own.
    summary = {**summary, **summary.get("val", {})}
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _job_rows(sweep_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    jobs = job_dirs(sweep_dir)
    parser = OverridesParser.create()
    overrides = pd.DataFrame([_overrides(job, parser) for job in jobs], index=range(len(jobs)))
    # Every job repeats the command line's fixed overrides; only those that differ were swept. The
    # sweeper's `trial={...}` override names each job's trial: that is the `trial` column, not a parameter.
    params = [
        key
        for key in overrides.columns
        if overrides[key].astype(str).nunique(dropna=False) > 1 and key.split(".")[0] != "trial"
    ]
    summaries = [_summary(job) for job in jobs]
    rows = pd.DataFrame(
        {
            "run": [job.name for job in jobs],
            "trial": pd.array([_trial_number(job) for job in jobs], dtype="Int64"),
            "status": ["failed" if s is None else "finished" for s in summaries],
        }
    )
    metrics = pd.DataFrame([s or {} for s in summaries], index=range(len(jobs)))
    return pd.concat([rows, overrides[params], metrics], axis=1), params


def trial_rows(study: optuna.Study) -> tuple[pd.DataFrame, list[str]]:
    """(one row per trial: number, state, parameters, objective value(s), error; the parameter names)."""
    trials = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    if trials.empty:
        return pd.DataFrame({"trial": pd.array([], dtype="Int64"), "state": []}), []
    trials = trials.rename(columns={"number": "trial", "user_attrs_error": "error"})
    space = [c.removeprefix("params_") for c in trials.columns if c.startswith("params_")]
    trials = trials.rename(columns=lambda c: c.removeprefix("params_"))
    values = [c for c in trials.columns if c == "value" or c.startswith("values_")]
    keep = ["trial", "state", *space, *values, *(["error"] if "error" in trials else [])]
    return trials[keep], space


def _join_study(jobs: pd.DataFrame, params: list[str], study: optuna.Study) -> tuple[pd.DataFrame, list[str]]:
    trials, space = trial_rows(study)
    df = jobs.merge(trials, on="trial", how="outer", suffixes=("", "_study"))
    for name in space:  # a trial without a job dir here has its parameters only in the study
        if f"{name}_study" in df:
            df[name] = df[name].combine_first(df.pop(f"{name}_study"))
    df["status"] = df["state"].map(STATUS).fillna(df["status"])
    if "error" not in df:
        df["error"] = None
    return df, [*params, *(name for name in space if name not in params)]


def metric_column(df: pd.DataFrame, metric: str) -> str | None:
    """The column to rank and plot by: `metric`, or the study's objective when no run reported `metric`."""
    if metric in df and df[metric].notna().any():
        return metric
    return "value" if "value" in df else None


def collect(path: Path | str, metric: str = "val_loss", direction: str | None = None) -> pd.DataFrame:
    """One row per run of the multirun or Optuna sweep at `path`; finished runs first, best `metric` first."""
    sweep_dir = Path(path)
    has_study = (sweep_dir / "study.json").is_file()
    if not sweep_dir.is_dir() or not (has_study or job_dirs(sweep_dir)):
        raise FileNotFoundError(
            f"{sweep_dir} is not a sweep dir: it has no numbered job dirs (0/, 1/, ...) and no study.json"
        )
    df, params = _job_rows(sweep_dir)
    study = load_study(sweep_dir)
    if study is None:
        df = df.drop(columns="trial") if df["trial"].isna().all() else df
    else:
        df, params = _join_study(df, params, study)
        direction = direction or study.directions[0].name.lower()
    fixed = ["run", "trial", "status", "state", *params]
    values = [c for c in df.columns if c == "value" or c.startswith("values_")]
    metrics = [c for c in df.columns if c not in {*fixed, *values, "error"}]
    df = df[[c for c in [*fixed, *values, *metrics, "error"] if c in df]]
    df = _sort(df, metric_column(df, metric), ascending=(direction or "minimize") == "minimize")
    df.attrs["params"] = params
    return df


def _sort(df: pd.DataFrame, column: str | None, ascending: bool) -> pd.DataFrame:
    ranked = df.assign(_unfinished=df["status"].ne("finished"))
    by, order = (["_unfinished", column], [True, ascending]) if column else (["_unfinished"], [True])
    ranked = ranked.sort_values(by, ascending=order, na_position="last", kind="stable")
    return ranked.drop(columns="_unfinished").reset_index(drop=True)


def _fmt(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):  # an error message's line breaks would break a table row
        return " ".join(value.split())
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def to_markdown(df: pd.DataFrame) -> str:
    """The table as a Markdown table (pandas' own `to_markdown` needs `tabulate`, which we do not require)."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rows = [line(_fmt(v) for v in row) for row in df.itertuples(index=False)]
    return "\n".join([line(df.columns), line(["---"] * len(df.columns)), *rows]) + "\n"


def print_table(df: pd.DataFrame, metric: str = "val_loss", title: str | None = None) -> None:
    """Print the main columns of the table on the terminal with rich."""
    keep = {*SHOWN, metric, *df.attrs.get("params", [])}
    shown = df[[c for c in df.columns if c in keep or c == "value" or c.startswith("values_")]]
    cells = shown.map(_fmt)
    table = Table(title=title)
    for column in shown.columns:
        if pd.api.types.is_numeric_dtype(shown[column]):  # a cut number misleads: squeeze the text instead
            table.add_column(str(column), justify="right", min_width=max(map(len, cells[column]), default=0))
        else:
            table.add_column(str(column), overflow="fold")
    for row in cells.itertuples(index=False):
        table.add_row(*(Text(v) for v in row))  # Text: an error message is not rich markup
    console.print(table)


def _label(row: pd.Series, params: list[str]) -> str:
    return " ".join([str(row["run"]), *(f"{p}={_fmt(row[p])}" for p in params)])


def plot_loss_curves(ax: Axes, df: pd.DataFrame, sweep_dir: Path) -> int:
    """Train loss of every run (solid) and its val loss (dashed, same colour) by step; returns runs drawn."""
    drawn = 0
    for _, row in df.dropna(subset=["run"]).iterrows():
        logged = RunDir(Path(sweep_dir) / str(row["run"])).metrics()
        if logged.empty:
            continue
        label, color = _label(row, df.attrs.get("params", [])), None
        if "train/loss" in logged:
            train = series(logged, "train/loss")
            (line,) = ax.plot(train["step"], train["train/loss"], label=label)
            label, color = "_nolegend_", line.get_color()  # one legend entry per run
        if "val/loss" in logged:
            val = series(logged, "val/loss")
            ax.plot(val["step"], val["val/loss"], linestyle="--", marker=".", color=color, label=label)
        drawn += 1
    ax.set(xlabel="step", ylabel="loss", title="train loss (solid) and val loss (dashed)")
    if 0 < drawn <= 20:  # past that a legend hides the curves
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return drawn


def _as_numbers(values: pd.Series) -> pd.Series | None:
    if values.map(lambda v: isinstance(v, bool)).any():
        return None
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if numbers.notna().all() else None


def plot_metric_vs_param(ax: Axes, df: pd.DataFrame, metric: str, param: str) -> None:
    """Scatter of `metric` against a swept parameter: categories as categories, wide ranges on a log axis."""
    rows = df[[param, metric]].dropna()
    numbers = _as_numbers(rows[param])
    if numbers is None:
        rows = rows.sort_values(param, key=lambda s: s.astype(str))
        ax.scatter(rows[param].astype(str), rows[metric])  # matplotlib draws strings as categories
    else:
        ax.scatter(numbers, rows[metric])
        if len(numbers) and numbers.min() > 0 and numbers.max() / numbers.min() > 20:
            ax.set_xscale("log")
        elif pd.api.types.is_integer_dtype(numbers):  # lora.r=4,8 should not get a tick at 4.5
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=param, ylabel=metric, title=f"{metric} vs {param}")


def _say(text: str) -> None:
    # Plain text, never wrapped: paths and Optuna's messages must stay whole and copyable.
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)  # Optuna's plots come from pyplot, which keeps every figure until closed
    return path


def _importance_problem(done: list[optuna.trial.FrozenTrial]) -> str | None:
    if len(done) < 2:
        return f"it needs at least 2 completed trials, the study has {len(done)}"
    names = {name for trial in done for name in trial.params}
    if all(len({repr(trial.params.get(name)) for trial in done}) < 2 for name in names):
        return "no parameter took more than one value among the completed trials"
    return None


def _study_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        _say("skipped optimization_history.png and param_importances.png: the study has no completed trial")
        return []
    # A multi-objective study has no single history or importance: show those of its first objective.
    multi = len(study.directions) > 1
    target = {"target": lambda t: t.values[0], "target_name": "values_0"} if multi else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(study, **target)
        written = [_save(ax.figure, out_dir / "optimization_history.png")]
        problem = _importance_problem(done)
        if problem is None:
            try:
                ax = plot_param_importances(study, **target)
                written.append(_save(ax.figure, out_dir / "param_importances.png"))
            except (ValueError, RuntimeError) as err:  # Optuna's reason beats a crash of the whole report
                plt.close("all")
                problem = str(err)
    if problem:
        _say(f"skipped param_importances.png: {problem}")
    return written


def _safe(name: str) -> str:
    return name.replace("/", "_")


def write_report(
    df: pd.DataFrame,
    sweep_dir: Path,
    out_dir: Path,
    metric: str = "val_loss",
    study: optuna.Study | None = None,
) -> list[Path]:
    """Write runs.csv, runs.md and the PNG plots into `out_dir`; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "runs.csv", index=False)
    (out_dir / "runs.md").write_text(to_markdown(df))
    written = [out_dir / "runs.csv", out_dir / "runs.md"]

    fig = Figure(figsize=(9, 5))
    if plot_loss_curves(fig.subplots(), df, sweep_dir):
        written.append(_save(fig, out_dir / "loss_curves.png"))
    else:
        _say("skipped loss_curves.png: no run has csv/metrics.csv (train with logger=csv)")

    column = metric_column(df, metric)
    if column is None:
        _say(f"skipped the {metric}_vs_<param> plots: no run reported {metric}")
    else:
        for param in df.attrs.get("params", []):
            fig = Figure(figsize=(6, 4))
            plot_metric_vs_param(fig.subplots(), df, column, param)
            written.append(_save(fig, out_dir / f"{_safe(column)}_vs_{_safe(param)}.png"))
    if study is not None:
        written += _study_plots(study, out_dir)
    return written


def main(argv: list[str] | None = None) -> None:
    """`python -m sft.report <sweep dir>`: print the runs table and write the report files."""
    parser = argparse.ArgumentParser(prog="python -m sft.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun dir (with 0/, 1/, ...) or an Optuna sweep dir"
    )
    parser.add_argument("--metric", default="val_loss", help="summary.json key to rank and plot by")
    parser.add_argument(
        "--direction", choices=("minimize", "maximize"), help="default: the study's direction, else minimize"
    )
    parser.add_argument("--out", type=Path, help="output dir (default: <sweep_dir>/report)")
    args = parse_args(parser, argv)
    matplotlib.use("Agg")  # files only, also where no display exists
    try:
        df = collect(args.sweep_dir, args.metric, args.direction)
    except FileNotFoundError as err:
        parser.error(str(err))
    print_table(df, args.metric, title=str(args.sweep_dir))
    out_dir = args.out or args.sweep_dir / "report"
    written = write_report(df, args.sweep_dir, out_dir, args.metric, load_study(args.sweep_dir))
    _say("written:")
    for path in written:
        _say(f"  {path}")


if __name__ == "__main__":
    main()
