"""The `python -m sft.prepare` steps end to end: real files in, JSONL out that training reads back."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA, TINY, compose_step, run_module
from omegaconf import OmegaConf

from sft.config import validate
from sft.prepare.rows import PrepareError, intact_lines
from sft.prepare.steps import STEPS
from sft.train import train

ALPACA = SHARED_DATA / "alpaca_en_demo.json"


def stats_of(output) -> dict:
    """The counts and problems a step wrote beside its output."""
    return json.loads(output.with_name(output.name + ".stats.json").read_text())


MODEL_STEPS = ("generate", "score", "augment")  # the steps that can call a model backend


@pytest.mark.parametrize(
    ("step", "backend"),
    [(s, b) for s in sorted(STEPS) for b in (("local", "endpoint") if s in MODEL_STEPS else (None,))],
)
def test_every_step_config_composes(step, backend):
    cfg = compose_step(step, *([f"backend={backend}"] if backend else []))
    assert OmegaConf.is_missing(cfg, "seeds" if step == "generate" else "input")
    assert ("backend" in cfg) == (backend is not None)
    if backend:
        assert cfg.backend.kind == backend


def test_cli_names_the_steps_and_the_missing_settings(tmp_path):
    done = run_module("sft.prepare")
    assert done.returncode == 2 and "usage: python -m sft.prepare {generate," in done.stderr
    done = run_module("sft.prepare", "polish")
    assert done.returncode == 2 and "unknown step 'polish'" in done.stderr
    done = run_module("sft.prepare", "dedup", f"input={ALPACA}")
    assert done.returncode == 2 and "output: missing; give output=<...>" in done.stderr
    done = run_module("sft.prepare", "dedup", str(tmp_path / "none.json"), f"output={tmp_path / 'o.jsonl'}")
    assert done.returncode == 2 and "none.json" in done.stderr and "Traceback" not in done.stderr


def test_dedup_drops_repeats_and_reports_each_pair(tmp_path):
    rows = json.loads(ALPACA.read_text())[:50]
    rows += [
        {**rows[3], "instruction": rows[3]["instruction"].upper() + "  "},  # exact once normalised
        {**rows[37], "instruction": rows[37]["instruction"].replace(" the ", " this ", 1), "output": "x"},
        {"instruction": "   ", "output": "no prompt"},  # malformed: reported with its line, not written
    ]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows, indent=1))
    out = tmp_path / "dedup.jsonl"
    done = run_module("sft.prepare", "dedup", str(data), f"output={out}")
    assert done.returncode == 0, done.stderr
    kept = intact_lines(out)
    stats = stats_of(out)
    assert len(kept) == 50 and kept == rows[:50]  # first occurrences, unchanged, in order
    assert stats["counts"] == {
        "malformed": 1,
        "read": 52,
        "exact_duplicates": 1,
        "near_duplicates": 1,
        "kept": 50,
    }
    assert stats["problems"][0].startswith(f"{data}:") and "both empty" in stats["problems"][0]
    pairs = intact_lines(out.with_name(out.name + ".duplicates.jsonl"))
    assert [(p["kind"], p["of"]) for p in pairs] == [
        ("exact", f"{data}:{3 * 5 + 2}"),
        ("near", f"{data}:{37 * 5 + 2}"),
    ]


def test_balance_labels_and_resamples_to_the_guide_mix(tmp_path):
    out = tmp_path / "balanced.jsonl"
    STEPS["balance"](compose_step("balance", f"input={ALPACA}", f"output={out}", "size=200", "replace=true"))
    rows = intact_lines(out)
    assert len(rows) == 200
    share = {
        c: sum(r["category"] == c for r in rows) / 200
        for c in ("code", "conversational", "question_answering")
    }
    assert share == {"code": 0.15, "conversational": 0.20, "question_answering": 0.25}
    # Difficulty is exact only within categories that have rows of every level: near the targets overall.
    assert abs(sum(r["difficulty"] == "medium" for r in rows) - 100) <= 10
    stats = stats_of(out)
    before = {r["name"]: r["count"] for r in stats["mix"]["before"]["category"]}
    assert sum(before.values()) == 999 and before["conversational"] < 20
    # Labels only: every row, in order, with category, difficulty and complexity beside its own fields.
    labelled = tmp_path / "labelled.jsonl"
    STEPS["balance"](compose_step("balance", f"input={ALPACA}", f"output={labelled}", "resample=false"))
    rows = intact_lines(labelled)
    assert len(rows) == 999 and rows[0]["instruction"] == json.loads(ALPACA.read_text())[0]["instruction"]
    assert {"category", "difficulty", "complexity"} <= rows[0].keys()


def test_balance_refuses_targets_that_do_not_add_up(tmp_path):
    cfg = compose_step(
        "balance", f"input={ALPACA}", f"output={tmp_path / 'o.jsonl'}", "targets.category.code=0.5"
    )
    with pytest.raises(PrepareError, match="category"):
        STEPS["balance"](cfg)


def test_prepared_file_trains_with_its_own_complexity_curriculum(tmp_path, make_cfg):
    """balance output → data.datasets.<name>.path, trained easy to hard by the complexity it wrote."""
    out = tmp_path / "labelled.jsonl"
    shutil.copy(SHARED_DATA / "identity.json", tmp_path / "identity.json")
    STEPS["balance"](
        compose_step("balance", f"input={tmp_path / 'identity.json'}", f"output={out}", "resample=false")
    )
    tiny = [o for o in TINY if not o.startswith("data.datasets.builtin")]
    cfg = make_cfg(
        *tiny,
        "data=alpaca_en",
        f"data.datasets.alpaca_en.path={out}",
        "data.curriculum=easy_to_hard",
        "trainer.max_steps=2",
    )
    validate(cfg)
    assert train(cfg) > 0


def crafted(tmp_path) -> Path:
    """60 real Alpaca rows plus a refusal and an echo, which the quality rules must catch."""
    rows = json.loads(ALPACA.read_text())[:60]
    rows.append(
        {
            "instruction": "Explain how vaccines train the immune system.",
            "input": "",
            "output": "I'm sorry, but I cannot help with that.",
        }
    )
    rows.append(
        {
            "instruction": "Describe the water cycle in detail.",
            "input": "",
            "output": "Describe the water cycle in detail.",
        }
    )
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(rows, indent=1))
    return path


def test_score_then_filter_keeps_good_rows_and_says_why_others_went(tmp_path):
    data, scored, kept = crafted(tmp_path), tmp_path / "scored.jsonl", tmp_path / "kept.jsonl"
    STEPS["score"](compose_step("score", f"input={data}", f"output={scored}"))
    rows = intact_lines(scored)
    assert len(rows) == 62 and all(
        {"clarity", "helpfulness", "formatting", "score"} <= r["quality"].keys() for r in rows
    )
    assert rows[-1]["quality"]["score"] < 4 and rows[-2]["quality"]["score"] < 4
    STEPS["filter"](compose_step("filter", f"input={scored}", f"output={kept}"))
    rejected = intact_lines(kept.with_name(kept.name + ".rejected.jsonl"))
    assert {r["instruction"] for r in rejected} >= {
        "Explain how vaccines train the immune system.",
        "Describe the water cycle in detail.",
    }
    assert len(intact_lines(kept)) + len(rejected) == 62
    stats = stats_of(kept)
    assert stats["counts"]["kept"] == len(intact_lines(kept)) and "scored_now" not in stats["counts"]
    assert any("refus" in reason for reason in stats["reasons"])
    assert all(r["quality"]["score"] >= 4.0 for r in intact_lines(kept))


def test_score_resumes_where_it_stopped_and_refuses_a_changed_input(tmp_path):
    data, full, cut = crafted(tmp_path), tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    STEPS["score"](compose_step("score", f"input={data}", f"output={full}"))
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:20]) + lines[20][: len(lines[20]) // 2])  # killed mid-write
    STEPS["score"](compose_step("score", f"input={data}", f"output={cut}"))
    assert cut.read_text() == full.read_text()
    assert stats_of(cut)["counts"]["resumed"] == 20
    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(ALPACA.read_text())[100:120]))
    with pytest.raises(PrepareError, match="row 1 is not input row 1"):
        STEPS["score"](compose_step("score", f"input={other}", f"output={cut}"))


def test_llm_scorer_uses_the_judge_and_falls_back_when_it_has_no_verdict(scripted, tmp_path):
    server, url = scripted
    data = tmp_path / "two.json"
    data.write_text(json.dumps(json.loads(ALPACA.read_text())[:2]))
    server.script = [
        'Clear and correct. {"clarity": 5, "helpfulness": 3, "formatting": 4}',
        "Looks fine to me.",
    ]
    out = tmp_path / "judged.jsonl"
    STEPS["score"](
        compose_step(
            "score",
            f"input={data}",
            f"output={out}",
            "scorer=llm",
            "backend=endpoint",
            f"backend.url={url}",
            "backend.concurrency=1",
        )
    )
    first, second = (r["quality"] for r in intact_lines(out))
    assert (first["by"], first["helpfulness"], first["score"]) == ("llm", 3, 4.0)
    assert second["by"] == "heuristic (judge failed)"
    assert stats_of(out)["counts"]["judge_failed"] == 1
    assert (
        "clarity" in server.prompts[0]
        and json.loads(ALPACA.read_text())[0]["instruction"] in server.prompts[0]
    )


def test_augment_adds_variants_and_resumes_after_a_kill(tmp_path):
    rows = json.loads(ALPACA.read_text())[:40]
    data, full, cut = tmp_path / "rows.json", tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    data.write_text(json.dumps(rows))
    STEPS["augment"](compose_step("augment", f"input={data}", f"output={full}"))
    made = intact_lines(full)
    kinds = Counter(r["augmented"]["kind"] for r in made)
    assert kinds["original"] == 40 and kinds["lowercase"] > 30 and kinds["concise"] >= 1
    for variant in (r for r in made if r["augmented"]["kind"] == "concise"):
        original = rows[variant["augmented"]["row"]]
        assert variant["instruction"] == original["instruction"] + " (Be concise)"
        assert len(variant["output"]) < len(original["output"])
        assert original["output"].startswith(variant["output"].rstrip())
    # Killed after 50 lines, the last input row's group possibly partial: that group is redone.
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:50]))
    STEPS["augment"](compose_step("augment", f"input={data}", f"output={cut}"))
    assert cut.read_text() == full.read_text()


def test_augment_rephrases_through_a_backend_and_rejects_bad_rewordings(scripted, tmp_path):
    server, url = scripted
    data, out = tmp_path / "three.json", tmp_path / "rephrased.jsonl"
    data.write_text(json.dumps(json.loads(ALPACA.read_text())[:3]))
    server.script = [
        "Explain the steps for making crepes.",  # kept
        "Transform the following sentence using a synonym: The car sped quickly.",  # identical: rejected
        "Sure! What else can I help you with today? I love helping people.",  # unrelated chatter: rejected
    ]
    STEPS["augment"](
        compose_step(
            "augment",
            f"input={data}",
            f"output={out}",
            "variants=[]",
            "rephrase=1",
            "keep_original=false",
            "backend=endpoint",
            f"backend.url={url}",
            "backend.concurrency=1",
        )
    )
    (row,) = intact_lines(out)
    assert row["instruction"] == "Explain the steps for making crepes."
    assert row["augmented"]["kind"] == "rephrase" and row["output"].startswith("Making crepes")
    skipped = stats_of(out)["skipped"]
    assert sum(skipped.values()) == 2 and any("identical" in k for k in skipped)
    assert "Describe a process of making crepes." in server.prompts[0]


def test_report_draws_the_mix_lengths_and_quality(tmp_path):
    scored = tmp_path / "scored.jsonl"
    STEPS["score"](compose_step("score", f"input={crafted(tmp_path)}", f"output={scored}"))
    done = run_module("sft.prepare", "report", str(scored))
    assert done.returncode == 0, done.stderr
    out_dir = tmp_path / "scored.jsonl.report"
    report = json.loads((out_dir / "report.json").read_text())
    assert sorted(Path(c).name for c in report["charts"]) == [
        "categories.png",
        "difficulty.png",
        "lengths.png",
        "quality.png",
    ]
    assert sum(r["count"] for r in report["mix"]["category"]) == 62
    for chart in report["charts"]:
        assert Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
