"""lm-eval-harness on a tiny trained run, offline, with our own task: its accuracy is recomputed by hand."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import TINY, run_module

from sft.eval.harness import TASKS_DIR, local_tasks, task_index
from sft.serving.export import load_run
from sft.train import train

pytest.importorskip("lm_eval")


def test_harness_runs_offline_and_its_accuracy_is_the_log_likelihood_argmax(make_cfg, tmp_path, cache_dir):
    train(make_cfg(*TINY, "trainer.max_steps=2", "trainer.eval_steps=2", "optimizer.lr=1e-2", run="trained"))
    run = tmp_path / "trained"
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = run_module("sft.eval.harness", f"run={run}", "limit=8", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((run / "eval" / "harness.json").read_text())
    assert set(scores) == {"tuned", "base", "compare"}

    # lm-eval's multiple-choice accuracy: the choice whose " <choice>" continuation is most likely.
    model, tokenizer = load_run(run, str(cache_dir))
    docs = [json.loads(line) for line in (TASKS_DIR / "general_mc.jsonl").read_text().splitlines()[:8]]
    correct = 0
    for doc in docs:
        context = tokenizer(f"Question: {doc['question']}\nAnswer:")["input_ids"]
        totals = []
        for choice in doc["choices"]:
            whole = tokenizer(f"Question: {doc['question']}\nAnswer: {choice}")["input_ids"]
            with torch.no_grad():
                logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            totals.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += int(max(range(len(totals)), key=totals.__getitem__) == doc["answer"])
    assert scores["tuned"]["sft_general_mc"]["acc"] == pytest.approx(correct / len(docs))


def test_an_unknown_task_is_named_before_any_model_loads_and_lm_evals_own_tasks_are_known(
    tmp_path, cache_dir
):
    run = tmp_path / "r"
    run.mkdir()  # a directory with no weights: loading a model would fail with another message
    env = {**os.environ, "SFT_CACHE": str(cache_dir)}
    tasks = "tasks=[sft_general_mc,arc_easy,nope]"  # ours, one of lm-eval's own, and no task at all
    result = run_module("sft.eval.harness", f"run={run}", tasks, "base=false", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tasks=['nope']: unknown to lm-eval (local tasks: ['sft_general_mc'" in result.stderr


def test_a_group_of_include_path_over_lm_evals_own_tasks_reads_lm_evals_index(tmp_path):
    """Only our tasks skip lm-eval's own index: a group of `include_path` naming lm-eval's tasks needs it."""
    shipped, group = tmp_path / "shipped", tmp_path / "mine"
    for folder in (shipped, group):
        folder.mkdir()
    (group / "suite.yaml").write_text("group: my_suite\ntask: [arc_easy]\n")
    ours = task_index(["sft_general_mc"], [str(local_tasks(shipped))])
    assert ours.all_tasks == ["sft_general_mc"]  # lm-eval's own ~15k were not read
    both = task_index(["my_suite"], [str(shipped), str(group)])
    assert {"my_suite", "arc_easy", "sft_general_mc"} <= set(both.all_tasks)
