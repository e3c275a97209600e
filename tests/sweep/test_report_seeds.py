"""sft.sweep.report over seeds: per-configuration means and intervals, paired differences from a baseline,
and the columns that summaries and evaluations add; on hand-made numbers and a real seed x rank multirun."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, run_module
from scipy import stats

from sft.atomic import write_json
from sft.eval.suite import score_exact, score_ifeval, score_rouge
from sft.run_dir import RunDir
from sft.sweep.report import (
    collect,
    difference_lines,
    find_baseline,
    main,
    parse_baseline,
    seed_cells,
    seed_differences,
    seed_metrics,
    seed_summary,
)

T_975_2 = 4.3027  # Student t, 97.5% quantile, 2 degrees of freedom (from a printed table)
T_975_1 = 12.7062  # ... and 1 degree of freedom


def _runs(rows: list[tuple], params=("lora", "seed")) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["run", *params, "val_loss", "status"])
    df.attrs["params"] = list(params)
    return df


@pytest.fixture
def runs() -> pd.DataFrame:
    """Baseline a (seeds 1-3, seed 4 failed), b (seeds 1-3), c (seeds 3 and 1, in that order), d (seed 1)."""
    return _runs(
        [
            ("0", "a", 1, 1.0, "finished"),
            ("1", "a", 2, 1.2, "finished"),
            ("2", "a", 3, 1.1, "finished"),
            ("3", "b", 1, 1.3, "finished"),
            ("4", "b", 2, 1.4, "finished"),
            ("5", "b", 3, 1.5, "finished"),
            ("6", "c", 3, 1.2, "finished"),
            ("7", "c", 1, 1.05, "finished"),
            ("8", "d", 1, 0.9, "finished"),
            ("9", "a", 4, math.nan, "failed"),
        ]
    )


def test_seed_summary_mean_and_interval(runs):
    summary = seed_summary(runs, ["val_loss"]).set_index("lora")
    # a: 1.0, 1.2, 1.1 -> mean 1.1, sample sd 0.1; the failed run is no seed.
    assert summary.loc["a", "n"] == 3
    assert summary.loc["a", "val_loss_mean"] == pytest.approx(1.1)
    assert summary.loc["a", "val_loss_ci95"] == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), rel=1e-4)
    # c: 1.2, 1.05 -> sd 0.15 / sqrt 2
    assert summary.loc["c", "val_loss_ci95"] == pytest.approx(
        T_975_1 * (0.15 / math.sqrt(2)) / math.sqrt(2), rel=1e-4
    )
    assert summary.loc["d", "n"] == 1 and math.isnan(summary.loc["d", "val_loss_ci95"])
    assert list(summary.index) == ["d", "a", "c", "b"]  # best mean first
    assert list(seed_summary(runs, ["val_loss"], direction="maximize")["lora"]) == ["b", "c", "a", "d"]
    cells = seed_cells(seed_summary(runs, ["val_loss"])).set_index("lora")
    assert cells.loc["a", "val_loss"] == "1.10 ± 0.25" and cells.loc["d", "val_loss"] == "0.9"


def test_seed_summary_without_other_parameters():
    summary = seed_summary(_runs([("0", 1, 2.0, "finished"), ("1", 2, 4.0, "finished")], params=["seed"]))
    assert len(summary) == 1 and summary.loc[0, "n"] == 2 and summary.loc[0, "val_loss_mean"] == 3.0


def test_differences_pair_by_seed(runs):
    diffs = seed_differences(runs, {"lora": "a"}, ["val_loss"]).set_index("config")
    assert list(diffs.index) == ["lora=b", "lora=c", "lora=d"] and (diffs["baseline"] == "lora=a").all()
    b = diffs.loc["lora=b"]  # differences 0.3, 0.2, 0.4: mean 0.3, sd 0.1
    assert b["n"] == 3 and b["mean_diff"] == pytest.approx(0.3)
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert (b["ci95_high"] - b["ci95_low"]) / 2 == pytest.approx(half, rel=1e-4)
    assert (b["ci95_high"] + b["ci95_low"]) / 2 == pytest.approx(0.3)
    assert b["p_value"] == pytest.approx(stats.ttest_rel([1.3, 1.4, 1.5], [1.0, 1.2, 1.1]).pvalue)
    assert b["resolved"]
    c = diffs.loc["lora=c"]  # seeds 3 and 1 only, listed in the other order: 1.2 - 1.1 and 1.05 - 1.0
    assert c["n"] == 2 and c["mean_diff"] == pytest.approx(0.075)
    assert c["p_value"] == pytest.approx(stats.ttest_rel([1.05, 1.2], [1.0, 1.1]).pvalue)
    assert not c["resolved"] and c["ci95_low"] < 0 < c["ci95_high"]
    d = diffs.loc["lora=d"]
    assert d["n"] == 1 and math.isnan(d["p_value"]) and not d["resolved"]


def test_difference_lines_say_whether_resolved(runs):
    diffs = seed_differences(runs, {"lora": "a"}, ["val_loss"])
    p_b = stats.ttest_rel([1.3, 1.4, 1.5], [1.0, 1.2, 1.1]).pvalue
    p_c = stats.ttest_rel([1.05, 1.2], [1.0, 1.1]).pvalue
    assert difference_lines(diffs, "val_loss") == [
        f"lora=b: val_loss 0.3 higher than lora=a (95% CI 0.0516 to 0.548, p={p_b:.2g}, 3 seeds): resolved",
        f"lora=c: val_loss 0.075 higher than lora=a (95% CI -0.243 to 0.393, p={p_c:.2g}, 2 seeds): "
        "not resolved (the interval includes 0)",
        "lora=d: val_loss: 1 seed shared with lora=a, too few to compare: not resolved",
    ]
    lower = seed_differences(runs, {"lora": "b"}, ["val_loss"])
    assert difference_lines(lower, "val_loss")[0].startswith("lora=a: val_loss 0.3 lower than lora=b (")


def test_baseline_must_name_one_configuration(runs):
    with pytest.raises(
        ValueError,
        match="lora=x matches no configuration; the configurations are: lora=a, lora=b, lora=c, lora=d",
    ):
        find_baseline(runs, {"lora": "x"})
    with pytest.raises(ValueError, match="r, not a swept parameter"):
        find_baseline(runs, {"r": "8"})
    two = _runs(
        [("0", "a", 4, 1, 1.0, "finished"), ("1", "a", 8, 1, 2.0, "finished")],
        params=["lora", "lora.r", "seed"],
    )
    with pytest.raises(
        ValueError, match="matches 2 configurations; the configurations are: lora=a,lora.r=4, lora"
    ):
        find_baseline(two, parse_baseline("lora=a"))
    assert find_baseline(two, parse_baseline("lora=a, lora.r=8")) == "lora=a,lora.r=8"
    with pytest.raises(ValueError, match="write key=value"):
        parse_baseline("default")


# --- a real multirun ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds_multirun(tmp_path_factory, cache_dir) -> Path:
    """A real four-job multirun of the tiny model, seeds 1 and 2 of lora.r=4 and lora.r=8, two steps each."""
    root = tmp_path_factory.mktemp("seeds")
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(root)}
    args = ["-m", *TINY, "trainer.max_steps=2", "trainer.eval_steps=2", "seed=1,2", "lora.r=4,8"]
    done = run_module("sft.train", *args, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = (root / "outputs" / "train" / "multiruns").iterdir()
    return sweep_dir


def _copy(sweep_dir: Path, to: Path, jobs=None) -> Path:
    """A copy of a sweep dir (or of some of its jobs) without the weights, which the report never reads."""
    ignore = shutil.ignore_patterns("checkpoints", "adapter")
    for job in jobs or [p.name for p in sweep_dir.iterdir() if p.name.isdigit()]:
        shutil.copytree(sweep_dir / job, to / job, ignore=ignore)
    return to


def test_parameters_are_columns(seeds_multirun):
    df = collect(seeds_multirun)
    assert df.attrs["params"] == ["seed", "lora.r"] and len(df) == 4
    trainable = df.groupby("lora.r")["trainable_params"].unique()
    assert len(trainable[4]) == 1 and trainable[8][0] == 2 * trainable[4][0]  # LoRA's size is linear in r
    assert (df["total_params"] > df["trainable_params"]).all()


def test_cli_seed_report_with_baseline(seeds_multirun, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(seeds_multirun), "--out", str(out), "--baseline", "lora.r=4"])
    assert {"configs.csv", "configs.md", "differences.csv", "runs.csv"} <= {p.name for p in out.iterdir()}
    runs = pd.read_csv(out / "runs.csv")
    configs = pd.read_csv(out / "configs.csv").set_index("lora.r")
    assert sorted(configs.index) == [4, 8] and (configs["n"] == 2).all()
    means = runs.groupby("lora.r")[["val_loss", "trainable_params"]].mean()
    assert configs["val_loss_mean"].to_dict() == pytest.approx(means["val_loss"].to_dict())
    assert configs["trainable_params_mean"].to_dict() == pytest.approx(means["trainable_params"].to_dict())
    assert "seed_mean" not in configs and "total_params_mean" not in configs  # not in the default set

    diffs = pd.read_csv(out / "differences.csv")
    loss = diffs.set_index("metric").loc["val_loss"]
    assert (loss["config"], loss["baseline"], loss["n"]) == ("lora.r=8", "lora.r=4", 2)
    paired = runs.pivot(index="seed", columns="lora.r", values="val_loss")
    assert loss["mean_diff"] == pytest.approx((paired[8] - paired[4]).mean())
    assert loss["p_value"] == pytest.approx(stats.ttest_rel(paired[8], paired[4]).pvalue, nan_ok=True)

    printed = capsys.readouterr().out
    (line,) = difference_lines(diffs, "val_loss")
    assert line.startswith("lora.r=8: val_loss ") and line in printed and "±" in printed
    markdown = (out / "configs.md").read_text()
    assert f"- {line}" in markdown and "| lora.r | n | val_loss |" in markdown


def test_cli_columns_pick_the_metrics(seeds_multirun, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(seeds_multirun), "--out", str(out), "--columns", "total_params"])
    assert list(pd.read_csv(out / "configs.csv").columns) == [
        "lora.r",
        "n",
        "val_loss_mean",
        "val_loss_ci95",
        "total_params_mean",
        "total_params_ci95",
    ]
    with pytest.raises(SystemExit) as stop:
        main([str(seeds_multirun), "--columns", "val_los"])
    assert stop.value.code == 2 and "no numeric column val_los; there are: " in capsys.readouterr().err


def test_cli_bad_baselines_exit_2(seeds_multirun, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(seeds_multirun), "--out", str(tmp_path), "--baseline", "lora.r=16"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "lora.r=16 matches no configuration" in err
    assert "lora.r=4" in err and "lora.r=8" in err
    one_seed = _copy(seeds_multirun, tmp_path / "one_seed", jobs=["0", "1"])  # seed=1 of each rank
    with pytest.raises(SystemExit) as stop:
        main([str(one_seed), "--baseline", "lora.r=4"])
    assert stop.value.code == 2 and "did not sweep seed" in capsys.readouterr().err
    assert not (tmp_path / "configs.csv").exists()


def test_eval_scores_are_columns(seeds_multirun, tmp_path):
    sweep_dir = _copy(seeds_multirun, tmp_path / "sweep")
    facts = [
        {"id": "q1", "category": "facts", "answer": "Paris"},
        {"id": "q2", "category": "facts", "answer": "4"},
    ]
    tuned = {
        "facts": score_exact(facts, ["The answer is Paris.", "It is 5."]),
        "references": score_rouge(["the cat sat"], ["the cat sat"]),
        "follow": score_ifeval(
            [{"id": "i1", "category": "case", "constraints": [{"name": "lowercase"}, {"name": "no_commas"}]}],
            ["all lowercase, but a comma"],  # one of two instructions: prompt level 0, instruction level 0.5
        ),
    }
    job = RunDir(sweep_dir / "0")
    write_json({"tuned": tuned, "base": {"facts": score_exact(facts, ["Paris", "4"])}}, job.scores)
    df = collect(sweep_dir).set_index("run")
    assert df.loc["0", "eval/facts"] == 0.5 and df.loc["0", "eval/references"] == 1.0  # the tuned model's
    assert df.loc["0", "eval/follow"] == 0.0
    assert df.drop(index="0")["eval/facts"].isna().all()
    assert {"eval/facts", "eval/references", "eval/follow"} <= set(seed_metrics(df.reset_index()))
