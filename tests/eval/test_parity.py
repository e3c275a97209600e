"""Export parity: an exported model answers the recorded prompts token for token as the trained model did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train, run_module
from hydra.core.global_hydra import GlobalHydra

from sft.eval import checklist
from sft.eval.parity import check, compare, describe, load_artifact, parity_prompts, record_reference
from sft.run_dir import RunDir
from sft.serving.export import check_parity, export
from sft.train import train

PROMPTS = 3
# The learning rate moves the adapter well away from zero (an export that lost it would answer differently)
# without collapsing the tiny model's answers into one repeated token.
TRAINED = [
    *TINY,
    "trainer.max_steps=3",
    "optimizer.lr=2e-3",
    "lora.dropout=0",
    f"evaluation.parity.prompts={PROMPTS}",
    "evaluation.parity.max_new_tokens=10",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir) -> tuple[Path, Path]:
    """A tiny LoRA run with its parity reference, and its merged export (float32, as trained)."""
    root = tmp_path_factory.mktemp("parity")
    train(compose_train(root / "run", root, cache_dir, *TRAINED))
    GlobalHydra.instance().clear()
    out, _ = export(root / "run", root / "merged", str(cache_dir))
    return root / "run", out


def test_the_run_records_greedy_answers_of_the_suite_prompts(exported):
    run, _ = exported
    reference = json.loads(RunDir(run).parity_reference.read_text())
    assert [r["prompt"] for r in reference["rows"]] == parity_prompts(["ifeval", "exact"], PROMPTS)
    assert reference["max_new_tokens"] == 10
    assert len({tuple(r["answer_ids"]) for r in reference["rows"]}) == PROMPTS  # answers tell prompts apart
    for row in reference["rows"]:
        assert row["prompt_ids"] and 0 < len(row["answer_ids"]) <= 10
        assert row["stopped"] == (row["answer_ids"][-1] in reference["stop_ids"])


def test_the_merged_export_passes_and_the_checklist_says_so(exported, tmp_path):
    run, out = exported
    result = check(run, out)
    assert result == json.loads(RunDir(run).parity.read_text())
    assert result["passed"] and result["matched"] == PROMPTS and result["first_difference"] is None
    assert f"{PROMPTS}/{PROMPTS} prompts identical" in describe(result)
    item = checklist.check_parity(checklist.gather(run))
    assert item.status == checklist.PASS and f"{PROMPTS}/{PROMPTS}" in item.evidence[0]


def _copy(out: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(out, to))


def test_sft_export_checks_what_it_wrote(exported, tmp_path):
    run, _ = exported
    done = run_module("sft.export", f"run={run}", f"out={tmp_path / 'merged'}")
    assert done.returncode == 0, done.stderr
    assert f"{PROMPTS}/{PROMPTS} prompts identical" in done.stdout
    assert json.loads(RunDir(run).parity.read_text())["artifact"] == str((tmp_path / "merged").resolve())


def test_a_changed_chat_template_is_named_and_fails_the_export(exported, tmp_path, capsys):
    run, out = exported
    broken = _copy(out, tmp_path / "template")
    jinja = broken / "chat_template.jinja"
    jinja.write_text(jinja.read_text().replace("<|im_start|>assistant", "<|im_start|>assistant\n"))
    result = check(run, broken, tmp_path / "parity.json")
    drift = result["first_difference"]
    assert not result["passed"] and result["matched"] == 0 and drift["index"] == 0
    assert "chat template renders the prompt differently" in drift["reason"]
    with pytest.raises(SystemExit) as exit_:
        check_parity(run, broken)
    assert exit_.value.code == 1 and "drifts from the trained model" in capsys.readouterr().err


def test_changed_weights_name_the_first_prompt_and_both_answers(exported, tmp_path):
    run, out = exported
    model, tokenizer = load_artifact(out)
    with torch.no_grad():  # the answers of a model whose last layer is off cannot all be the same
        model.model.layers[-1].mlp.down_proj.weight.mul_(-3)
    model.save_pretrained(tmp_path / "weights")
    tokenizer.save_pretrained(tmp_path / "weights")
    done = run_module("sft.eval", f"run={run}", f"artifact={tmp_path / 'weights'}", f"out={tmp_path}")
    assert done.returncode == 1, done.stderr
    result = json.loads((tmp_path / "parity.json").read_text())
    drift = result["first_difference"]
    assert "answers differ from token" in drift["reason"]
    assert drift["expected"] != drift["got"]
    assert f"first drift, prompt {drift['index']}: {drift['prompt']!r}" in done.stdout
    assert repr(drift["expected"]) in done.stdout and repr(drift["got"]) in done.stdout
    assert drift["index"] == result["matched"]  # every prompt before the first drift matched


def test_an_artifact_that_does_not_stop_at_the_trained_end_of_turn_fails(exported):
    run, out = exported
    model, tokenizer = load_artifact(out)
    prompt = parity_prompts(["ifeval"], 1)
    # A reference that stopped: one of the model's own greedy tokens (new from the third on) ended its turn.
    free = record_reference(model, tokenizer, _template(run, tokenizer), [-1], prompt, 8)
    ids = free["rows"][0]["answer_ids"]
    at = next(i for i, token in enumerate(ids) if i >= 2 and token not in ids[:i])
    end = ids[at]
    stopped = record_reference(model, tokenizer, _template(run, tokenizer), [end], prompt, 8)
    assert stopped["rows"][0]["stopped"] and stopped["rows"][0]["answer_ids"][-1] == end

    model.generation_config.eos_token_id = [end]
    assert compare(stopped, model, tokenizer)["first_difference"] is None
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    drift = compare(stopped, model, tokenizer)["first_difference"]
    assert drift is not None and "does not stop there" in drift["reason"]
    # A stop on the budget's last token: the same ids, but only the trained model ended its turn there.
    at_budget = record_reference(model, tokenizer, _template(run, tokenizer), [end], prompt, at + 1)
    assert at_budget["rows"][0]["stopped"] and len(at_budget["rows"][0]["answer_ids"]) == at + 1
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    assert "does not stop there" in compare(at_budget, model, tokenizer)["first_difference"]["reason"]
    # The other way round: the artifact stops where the trained model went on.
    model.generation_config.eos_token_id = [end]
    drift = compare(free, model, tokenizer)["first_difference"]
    assert drift is not None and "stops at token" in drift["reason"]


def _template(run: Path, tokenizer):
    from sft.data.templates import get_template

    return get_template(RunDir(run).read_config().data.template, tokenizer)


def test_without_a_reference_the_check_and_the_checklist_say_what_to_run(tmp_path):
    from sft.errors import ExportError

    with pytest.raises(ExportError, match="evaluation.parity.prompts was 0"):
        check(tmp_path, tmp_path)
    item = checklist.check_parity(checklist.gather(tmp_path))
    assert item.status == checklist.UNKNOWN and "evaluation.parity.prompts > 0" in item.hint
