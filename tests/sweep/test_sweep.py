"""Optuna sweeps through the Hydra sweeper plugin, and the shipped search spaces and ablation grids."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import optuna
import pytest
from conftest import CONF, ROOT, TINY, compose_train, run_module, start_module
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sft.config import validate
from sft.sweep.space import as_overrides, parse

# A study whose first three trials are fixed: one that learns (lr 1e-2, completes), one that barely
# moves (lr 1e-6: the median pruner stops it at its first evaluation, worse than the first trial's),
# and one with an invalid dropout (fails). Evaluations every step, so pruning has something to compare.
TEST_SWEEP = """# @package _global_
hydra:
  sweeper:
    study_name: tiny
    params:
      optimizer.lr: tag(log, interval(1e-6, 1e-2))
      lora.dropout: choice(0.0, 0.1, 1.5)
    enqueue:
      - {optimizer.lr: 1.0e-2, lora.dropout: 0.0}
      - {optimizer.lr: 1.0e-6, lora.dropout: 0.0}
      - {optimizer.lr: 1.0e-3, lora.dropout: 1.5}
"""


def test_search_space_syntax_maps_to_optuna_distributions():
    space, fixed = parse(
        [
            "optimizer.lr=tag(log, interval(1e-5, 1e-4))",
            "lora.r=choice(8, 16, 32)",
            "preset.epochs=range(1, 6)",
            "lora.use_rslora=false,true",
            "trainer.max_steps=10",
        ]
    )
    assert space == {
        "optimizer.lr": FloatDistribution(1e-5, 1e-4, log=True),
        "lora.r": CategoricalDistribution([8, 16, 32]),
        "preset.epochs": IntDistribution(1, 5),
        "lora.use_rslora": CategoricalDistribution([False, True]),
    }
    assert fixed == ["trainer.max_steps=10"]
    assert as_overrides({"optimizer.lr": 3e-5, "data.template": "chat ml", "lora.r": 8}) == [
        "optimizer.lr=3e-05",
        "data.template='chat ml'",
        "lora.r=8",
    ]


def train_steps(run: Path) -> list[int]:
    """The steps at which a run logged train/loss (each optimizer step it took, from 0)."""
    with open(run / "csv" / "metrics.csv") as f:
        return sorted(int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss"))


def test_sweep_run_prunes_and_fails_trials_without_stopping_and_resumes(tmp_path, cache_dir):
    search = tmp_path / "search"
    (search / "sweep").mkdir(parents=True)
    (search / "sweep" / "tiny.yaml").write_text(TEST_SWEEP)
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(tmp_path)}
    args = [
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.searchpath=[file://{search}]",
        "+sweep=tiny",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        *TINY,
        "trainer.max_steps=3",
        "trainer.eval_steps=1",
    ]
    first = run_module("sft.train", *args, "hydra.sweeper.n_trials=3", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert "lora.dropout=1.5" in study.trials[2].user_attrs["error"]
    # The pruned trial reported every evaluation until the first one worse than the completed trial's at
    # that step (the median of one trial), which the pruner fires on: training stopped at that very step,
    # before the last, and wrote no summary. The completed trial trained all three steps.
    done, pruned = study.trials[0].intermediate_values, study.trials[1].intermediate_values
    at = max(pruned)
    assert sorted(pruned) == list(range(1, at + 1)) and at < 3
    assert pruned[at] > done[at] and all(pruned[step] <= done[step] for step in range(1, at))
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert train_steps(sweep / "1") == list(range(at))
    assert not (sweep / "1" / "summary.json").exists()
    assert train_steps(sweep / "0") == [0, 1, 2]
    assert json.loads((sweep / "0" / "summary.json").read_text())["global_step"] == 3
    assert study.best_trial.number == 0

    second = run_module("sft.train", *args, "hydra.sweeper.n_trials=2", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]  # continued, the enqueued three not repeated
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    assert {t.params["optimizer.lr"] for t in study.trials[3:]}.isdisjoint({1e-2, 1e-6, 1e-3})

    sweeps = sorted((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 2
    record = json.loads((sweeps[-1] / "study.json").read_text())
    assert record["study_name"] == "tiny"
    config = (sweeps[0] / "0" / "config.yaml").read_text()
    assert "study_name: tiny" in config and "number: 0" in config  # each job knows its trial
    assert (sweeps[-1] / "optimization_results.yaml").is_file()


def compose_sweep_config(option: str, group: str, *overrides: str):
    """Compose train.yaml with `+<group>=<option>` as a multirun would, hydra node included."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"+{group}={option}", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")))
def test_shipped_search_spaces_parse(name):
    cfg = compose_sweep_config(name, "sweep", "hydra/sweeper=optuna")
    space, _ = parse([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    assert len(space) >= 3
    assert all(set(entry) <= set(space) for entry in cfg.hydra.sweeper.get("enqueue", []))


def test_hparam_table_spans_the_presets():
    cfg = compose_sweep_config("hparam_table", "sweep", "hydra/sweeper=optuna")
    space, _ = parse([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    for preset in ("conservative", "balanced", "aggressive"):
        row = OmegaConf.load(CONF / "preset" / f"{preset}.yaml")  # the table's row
        assert space["preset.learning_rate"].low <= row.learning_rate <= space["preset.learning_rate"].high
        assert row.lora_rank in space["preset.lora_rank"].choices
        assert space["preset.epochs"].low <= row.epochs <= space["preset.epochs"].high
        assert row.batch_size in space["preset.batch_size"].choices


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_ablation_grid_point_validates(name, tmp_path, cache_dir):
    params = compose_sweep_config(name, "experiment").hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (points,) = BasicSweeper.split_arguments(overrides, None)  # the grid exactly as the multirun expands it
    assert len(points) >= 2
    for point in points:
        validate(compose_train(tmp_path, tmp_path, cache_dir, f"+experiment={name}", *point))


def test_a_grid_ablation_runs_every_point(tmp_path, cache_dir):
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(tmp_path)}
    result = run_module(
        "sft.train",
        "-m",
        "+experiment=target_modules",
        *TINY,
        "trainer.max_steps=1",
        "trainer.eval_steps=1",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    targets = sorted(
        json.loads((job / "summary.json").read_text())["parameters"]["trainable"]
        for job in sweep.glob("[0-9]*")
    )
    assert (
        len(targets) == 2 and targets[0] < targets[1]
    )  # attention-only trains fewer weights than all linear


def test_wandb_groups_the_trials_of_a_study(make_cfg):
    cfg = make_cfg("logger=wandb", "trial={study_name:abc,storage:'sqlite:///x.db',id:1,number:0}")
    assert cfg.logger.wandb.group == "abc"
    assert make_cfg("logger=wandb").logger.wandb.group is None


def test_search_spaces_ship_with_the_configs():
    assert (ROOT / "sweeps").resolve() == CONF / "sweep"  # the top-level sweeps/ is a view of them


def test_two_workers_share_one_study_and_a_multi_objective_one_keeps_both_values(tmp_path, cache_dir):
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(tmp_path)}
    args = [
        "-m",
        "hydra/sweeper=optuna",
        *TINY,
        "trainer.max_steps=1",
        "trainer.eval_steps=1",
        "optimizer.lr=tag(log,interval(1e-6,1e-2))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=shared",
        "objective.metrics=[val/loss,wall_seconds]",  # quality and cost: a Pareto front
        "objective.directions=[minimize,minimize]",
    ]
    workers = [start_module("sft.train", *args, log=tmp_path / f"worker{i}.log", env=env) for i in range(2)]
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=600) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")
    assert len(study.directions) == 2
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    job_dirs = [p for p in (tmp_path / "outputs" / "train" / "multiruns").glob("*/[0-9]*")]
    assert sorted(p.name for p in job_dirs) == ["0", "1", "2", "3"]  # named by trial: never shared
