"""`python -m sft.eval` on a tiny trained run: both models answer every suite, scores match the answers."""

from __future__ import annotations

import json
import os

from conftest import SHARED_DATA, TINY, run_module

from sft.eval import load_suite, score_exact, score_ifeval
from sft.train import train


def test_eval_scores_tuned_and_base_and_feeds_the_human_sheet(make_cfg, tmp_path, cache_dir):
    train(make_cfg(*TINY, "trainer.max_steps=2", "trainer.eval_steps=2", run="trained"))
    run = tmp_path / "trained"
    env = {**os.environ, "SFT_CACHE": str(cache_dir)}
    references = SHARED_DATA / "alpaca_en_demo.json"
    result = run_module(
        "sft.eval",
        f"run={run}",
        "evaluation.limit=3",
        "evaluation.max_new_tokens=8",
        f"evaluation.references={references}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert set(scores) == {"tuned", "base", "compare"}
    assert set(scores["tuned"]) == {"ifeval", "exact", "references"}
    assert "ifeval.prompt_level" in scores["compare"]["metrics"]

    generations = [json.loads(line) for line in (run / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 9 and all("output_b" in g for g in generations)
    for suite, scorer in (("ifeval", score_ifeval), ("exact", score_exact)):
        rows = load_suite(suite)[:3]
        answers = {g["id"]: g["output"] for g in generations if g["suite"] == suite}
        rescored = scorer(rows, answers)
        assert {k: v for k, v in rescored.items() if k != "rows"} == {
            k: v for k, v in scores["tuned"][suite].items() if k != "rows"
        }

    sheet = run_module(
        "sft.eval.human", "export", str(run / "eval" / "generations.jsonl"), "--out", str(tmp_path / "s")
    )
    assert sheet.returncode == 0, sheet.stderr[-2000:]
    assert "preferred" in (tmp_path / "s.csv").read_text().splitlines()[0]  # tuned vs base, side by side


def test_eval_names_a_missing_run(tmp_path):
    result = run_module("sft.eval", f"run={tmp_path / 'nope'}")
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


def test_training_can_end_with_the_evaluation(make_cfg, tmp_path):
    overrides = ["evaluation.enabled=true", "evaluation.limit=2", "evaluation.max_new_tokens=4"]
    train(
        make_cfg(
            *TINY, "trainer.max_steps=1", "trainer.eval_steps=1", *overrides, "evaluation.base=false", run="r"
        )
    )
    scores = json.loads((tmp_path / "r" / "eval" / "scores.json").read_text())
    assert set(scores) == {"tuned"} and len(scores["tuned"]["ifeval"]["rows"]) == 2
