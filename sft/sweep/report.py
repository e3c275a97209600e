"""`python -m sft.report <sweep dir>`: one table and a few plots for every run of a Hydra multirun.

A sweep dir is a Hydra multirun (numbered job dirs 0/, 1/, ... each with .hydra/overrides.yaml and, once
finished, summary.json) or an Optuna sweep (study.json names the study and its storage). For an Optuna
sweep the study is the source of truth: every trial gets a row, with or without a job dir here.

When `seed` is swept, the runs of each configuration (the other swept parameters) are also summarised over
their seeds (mean and 95% confidence interval), and `--baseline` compares every configuration with one of
them, paired by seed.
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
from scipy import stats

from ..config.overrides import parse_args
from ..run_dir import RunDir, read_json, series

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

# The seed summary's metrics, besides the ranking one and every eval/<suite> score, when the runs report them.
SEED_METRICS = (
    "val_loss",
    "val_ppl",
    "val_token_accuracy",
    "tokens_per_sec",
    "peak_rss_gb",
    "peak_cuda_memory_gb",
    "trainable_params",
    "wall_seconds",
)

# The one score each kind of `sft.eval` suite is judged by (the scorers of sft.eval.suite).
HEADLINE = {"ifeval": "prompt_level", "exact": "accuracy", "rouge": "rouge_l"}

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


def _eval_scores(job: Path) -> dict:
    """The headline score of each suite `python -m sft.eval` scored the tuned model on, as `eval/<suite>`."""
    tuned = (read_json(RunDir(job).scores) or {}).get("tuned") or {}
    return {
        f"eval/{suite}": scores.get(HEADLINE.get(scores.get("suite")))
        for suite, scores in tuned.items()
        if isinstance(scores, dict)
    }


def _summary(job: Path) -> dict | None:
    summary = RunDir(job).read_summary()
    if summary is None:
        return None
    parameters = summary.get("parameters") or {}
    # A stage's final validation metrics (val/rewards/accuracy, val/kl, ...) become columns of their own.
    summary = {
        **summary,
        **summary.get("val", {}),
        "trainable_params": parameters.get("trainable"),
        "total_params": parameters.get("total"),
        **_eval_scores(job),
    }
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


def _print_cells(cells: pd.DataFrame, numeric: set[str], title: str | None) -> None:
    table = Table(title=title)
    for column in cells.columns:
        if column in numeric:
            # A cut number misleads: never narrower than its longest number (`mean ± ci` may wrap at a space).
            width = max((len(word) for cell in cells[column] for word in cell.split()), default=0)
            table.add_column(str(column), justify="right", overflow="fold", min_width=width)
        else:
            table.add_column(str(column), overflow="fold")
    for row in cells.itertuples(index=False):
        table.add_row(*(Text(v) for v in row))  # Text: an error message is not rich markup
    console.print(table)


def print_table(
    df: pd.DataFrame, metric: str = "val_loss", title: str | None = None, columns: tuple | list[str] = ()
) -> None:
    """Print the main columns of the table (and `columns`) on the terminal with rich."""
    keep = {*SHOWN, metric, *columns, *df.attrs.get("params", [])}
    shown = df[[c for c in df.columns if c in keep or c == "value" or c.startswith("values_")]]
    numeric = {c for c in shown.columns if pd.api.types.is_numeric_dtype(shown[c])}
    _print_cells(shown.map(_fmt), numeric, title)


# --- statistics over seeds -----------------------------------------------------------------------------


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns a seed summary can average: numeric, reported by some run, not a parameter."""
    skip = {"run", "trial", *df.attrs.get("params", [])}
    return [
        c
        for c in df.columns
        if c not in skip and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()
    ]


def seed_metrics(df: pd.DataFrame, metric: str = "val_loss", columns: list[str] | None = None) -> list[str]:
    """The ranking metric, then `columns`, else those of SEED_METRICS and eval/<suite> the runs report."""
    wanted = (
        columns if columns is not None else [*SEED_METRICS, *(c for c in df if str(c).startswith("eval/"))]
    )
    available = numeric_columns(df)
    return [c for c in dict.fromkeys([metric_column(df, metric), *wanted]) if c in available]


def mean_ci95(values: pd.Series) -> tuple[float, float]:
    """(mean, half-width of its 95% Student-t confidence interval); the half-width is NaN below 2 values."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else math.nan), math.nan
    return float(values.mean()), float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def _config_keys(df: pd.DataFrame) -> list[str]:
    return [p for p in df.attrs.get("params", []) if p != "seed"]


def _config_label(row: pd.Series, keys: list[str]) -> str:
    # The form --baseline takes, so a label can be copied into the next command.
    return ",".join(f"{key}={_fmt(row[key])}" for key in keys) or "all runs"


def configurations(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The finished runs of each configuration (the swept parameters but seed), by label, in table order."""
    keys = _config_keys(df)
    finished = df[df["status"] == "finished"]
    labels = pd.Series([_config_label(row, keys) for _, row in finished.iterrows()], index=finished.index)
    return {str(label): runs for label, runs in finished.groupby(labels, sort=False)}


def seed_summary(
    df: pd.DataFrame, metrics: list[str] | None = None, direction: str = "minimize"
) -> pd.DataFrame:
    """One row per configuration: its parameters, n (finished seeds), `<metric>_mean` and `<metric>_ci95`.

    Rows are ordered best first by the first metric's mean. A run missing a metric is left out of that
    metric's mean and interval only.
    """
    metrics = seed_metrics(df) if metrics is None else list(metrics)
    keys = _config_keys(df)
    rows = []
    for runs in configurations(df).values():
        row = {key: runs[key].iloc[0] for key in keys} | {"n": len(runs)}
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci95(runs[metric])
        rows.append(row)
    columns = [*keys, "n", *(f"{m}_{part}" for m in metrics for part in ("mean", "ci95"))]
    summary = pd.DataFrame(rows, columns=columns)
    if metrics:
        ascending = direction == "minimize"
        summary = summary.sort_values(
            f"{metrics[0]}_mean", ascending=ascending, na_position="last", kind="stable"
        )
    summary = summary.reset_index(drop=True)
    summary.attrs.update(params=keys, metrics=metrics)
    return summary


def _pm(mean: float, half: float) -> str:
    """`mean ± half`, the mean rounded to the interval's second significant digit: more digits are noise."""
    if math.isnan(mean) or math.isnan(half) or half == 0:
        return _fmt(mean)
    decimals = max(0, 1 - math.floor(math.log10(half)))
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def seed_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """A seed summary as text: the parameters, n and one `mean ± ci95` cell per metric."""
    cells = summary[[*summary.attrs["params"], "n"]].map(_fmt)
    for metric in summary.attrs["metrics"]:
        cells[metric] = [
            _pm(m, h) for m, h in zip(summary[f"{metric}_mean"], summary[f"{metric}_ci95"], strict=True)
        ]
    return cells


def print_seed_summary(summary: pd.DataFrame, title: str | None = None) -> None:
    """Print a seed summary on the terminal with rich, one `mean ± ci95` cell per metric."""
    _print_cells(seed_cells(summary), {"n", *summary.attrs["metrics"]}, title)


def parse_baseline(text: str) -> dict[str, str]:
    """`key=value[,key=value...]` as a dict; ValueError for a part without `=`."""
    parts = [part.partition("=") for part in text.split(",")]
    if any(not key or not sep for key, sep, _ in parts):
        raise ValueError(f"--baseline {text}: write key=value, comma-separated for several swept parameters")
    return {key.strip(): value.strip() for key, _, value in parts}


def find_baseline(df: pd.DataFrame, baseline: dict[str, str]) -> str:
    """The label of the one configuration with the `baseline` values; ValueError naming those that exist."""
    configs = configurations(df)
    keys = _config_keys(df)
    names = ", ".join(configs) or "none"
    unknown = [key for key in baseline if key not in keys]
    if unknown:
        raise ValueError(
            f"--baseline names {', '.join(unknown)}, not a swept parameter; the configurations are: {names}"
        )
    matches = [
        label
        for label, runs in configs.items()
        if all(_fmt(runs[key].iloc[0]) == value for key, value in baseline.items())
    ]
    if len(matches) != 1:
        found = "no configuration" if not matches else f"{len(matches)} configurations"
        given = ",".join(f"{k}={v}" for k, v in baseline.items())
        raise ValueError(f"--baseline {given} matches {found}; the configurations are: {names}")
    return matches[0]


def seed_differences(
    df: pd.DataFrame, baseline: dict[str, str], metrics: list[str] | None = None
) -> pd.DataFrame:
    """Every other configuration minus the baseline, per metric, over the seeds both have.

    Columns: config, baseline, metric, n (pairs), mean_diff, ci95_low, ci95_high, p_value (paired t-test),
    resolved (p < 0.05, the same as the interval excluding 0).
    """
    metrics = seed_metrics(df) if metrics is None else list(metrics)
    configs = configurations(df)
    base_label = find_baseline(df, baseline)
    base = configs[base_label].set_index("seed")
    rows = []
    for label, runs in configs.items():
        if label == base_label:
            continue
        runs = runs.set_index("seed")
        for metric in metrics:
            # Seeds pair up by value: a seed one configuration lacks (failed, not run) drops out of both.
            pairs = pd.concat({"config": runs[metric], "base": base[metric]}, axis=1, join="inner").dropna()
            pairs = pairs.astype(float)
            mean, half = mean_ci95(pairs["config"] - pairs["base"])
            with warnings.catch_warnings():  # identical pairs give NaN, which the row then shows
                warnings.simplefilter("ignore", RuntimeWarning)
                p = stats.ttest_rel(pairs["config"], pairs["base"]).pvalue if len(pairs) >= 2 else math.nan
            rows.append(
                {
                    "config": label,
                    "baseline": base_label,
                    "metric": metric,
                    "n": len(pairs),
                    "mean_diff": mean,
                    "ci95_low": mean - half,
                    "ci95_high": mean + half,
                    "p_value": float(p),
                    "resolved": bool(p < 0.05),
                }
            )
    columns = [
        "config",
        "baseline",
        "metric",
        "n",
        "mean_diff",
        "ci95_low",
        "ci95_high",
        "p_value",
        "resolved",
    ]
    return pd.DataFrame(rows, columns=columns)


def difference_lines(differences: pd.DataFrame, metric: str) -> list[str]:
    """One sentence per configuration: how far `metric` is from the baseline and whether that is resolved."""
    lines = []
    for row in differences[differences["metric"] == metric].itertuples(index=False):
        head = f"{row.config}: {metric}"
        if row.n < 2:
            shared = "no seed" if row.n == 0 else "1 seed"
            lines.append(f"{head}: {shared} shared with {row.baseline}, too few to compare: not resolved")
            continue
        size = row.mean_diff
        way = "the same as" if size == 0 else f"{abs(size):.3g} {'higher' if size > 0 else 'lower'} than"
        interval = f"95% CI {row.ci95_low:.3g} to {row.ci95_high:.3g}, p={row.p_value:.2g}, {row.n} seeds"
        verdict = "resolved" if row.resolved else "not resolved (the interval includes 0)"
        lines.append(f"{head} {way} {row.baseline} ({interval}): {verdict}")
    return lines


def seed_markdown(summary: pd.DataFrame, differences: pd.DataFrame | None = None) -> str:
    """configs.md: the seed summary, then (with a baseline) the differences in words and as a table."""
    parts = ["# Configurations over seeds (mean ± 95% CI)", "", to_markdown(seed_cells(summary))]
    if differences is not None:
        base = differences["baseline"].iloc[0] if len(differences) else "the baseline"
        lines = difference_lines(differences, summary.attrs["metrics"][0]) if summary.attrs["metrics"] else []
        parts += [f"## Differences from {base}, paired by seed", "", *(f"- {line}" for line in lines), ""]
        parts += [to_markdown(differences)]
    return "\n".join(parts)


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
    configs: pd.DataFrame | None = None,
    differences: pd.DataFrame | None = None,
) -> list[Path]:
    """Write runs.csv, runs.md, configs.csv/.md (a seed summary), differences.csv and the PNG plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "runs.csv", index=False)
    (out_dir / "runs.md").write_text(to_markdown(df))
    written = [out_dir / "runs.csv", out_dir / "runs.md"]
    if configs is not None:
        configs.to_csv(out_dir / "configs.csv", index=False)
        (out_dir / "configs.md").write_text(seed_markdown(configs, differences))
        written += [out_dir / "configs.csv", out_dir / "configs.md"]
    if differences is not None:
        differences.to_csv(out_dir / "differences.csv", index=False)
        written.append(out_dir / "differences.csv")

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
    parser.add_argument(
        "--columns",
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        help="comma-separated metric columns to show (and, with seed swept, to summarise over seeds)",
    )
    parser.add_argument(
        "--baseline",
        help="with seed swept: the configuration to compare the others with, paired by seed, "
        "as key=value of the other swept parameters (comma-separated for several)",
    )
    args = parse_args(parser, argv)
    matplotlib.use("Agg")  # files only, also where no display exists
    try:
        df = collect(args.sweep_dir, args.metric, args.direction)
    except FileNotFoundError as err:
        parser.error(str(err))
    study = load_study(args.sweep_dir)
    unknown = [c for c in args.columns or [] if c not in numeric_columns(df)]
    if unknown:
        known = ", ".join(numeric_columns(df))
        parser.error(f"--columns: no numeric column {', '.join(unknown)}; there are: {known}")
    configs = differences = None
    if "seed" in df.attrs["params"]:
        metrics = seed_metrics(df, args.metric, args.columns)
        direction = args.direction or (study.directions[0].name.lower() if study else "minimize")
        configs = seed_summary(df, metrics, direction)
        if args.baseline:
            try:
                differences = seed_differences(df, parse_baseline(args.baseline), metrics)
            except ValueError as err:
                parser.error(str(err))
    elif args.baseline:
        parser.error("--baseline pairs runs by seed, and this sweep did not sweep seed (e.g. seed=1,2,3)")

    print_table(df, args.metric, title=str(args.sweep_dir), columns=args.columns or [])
    if configs is not None:
        print_seed_summary(configs, title="configurations over seeds: mean ± 95% CI")
        if differences is not None and metrics:  # no metric at all: every run failed
            for line in difference_lines(differences, metrics[0]):
                _say(line)
    out_dir = args.out or args.sweep_dir / "report"
    written = write_report(df, args.sweep_dir, out_dir, args.metric, study, configs, differences)
    _say("written:")
    for path in written:
        _say(f"  {path}")


if __name__ == "__main__":
    main()
