"""Evaluate a finished run: the suites answered by the tuned model (and its base), scored and written."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json, write_text
from ..config import EvaluationConfig
from ..data.formats import read_source, to_conversation
from ..errors import MalformedRow
from ..run_dir import EVAL_REPORT, GENERATIONS, SCORES, RunDir
from ..serving.export import load_run, stop_token_ids
from ..training.lineage import start_weights
from .generate import generate
from .suite import compare, load_suite, score_exact, score_ifeval, score_rouge, to_markdown


def reference_rows(path: str, limit: int | None) -> list[dict]:
    """Single-turn rows of a data file as {id, category, prompt, reference}; other rows are skipped."""
    rows = []
    for location, row in read_source(path):
        try:
            conversation = to_conversation(row)
        except MalformedRow:
            continue
        turns = conversation["messages"]
        if len(turns) == 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant":
            category = conversation.get("category") or "reference"
            rows.append({"id": location, "category": category, "prompt": turns[0]["content"]})
            rows[-1]["reference"] = turns[1]["content"]
        if limit and len(rows) >= limit:
            break
    return rows


def score(suite: str, rows: list[dict], answers: list[str]) -> dict:
    """Score one suite's answers with the scorer its rows call for."""
    if suite == "references":
        ids = [r["id"] for r in rows]
        return score_rouge({r["id"]: r["reference"] for r in rows}, dict(zip(ids, answers, strict=True)))
    return (score_exact if "answer" in rows[0] else score_ifeval)(rows, answers)


def evaluate(run: Path, cfg: EvaluationConfig, cache_dir: str, out: Path | None = None) -> dict:
    """Generate and score every suite with the tuned model (and the base); write and return the scores.

    "base" is the run's starting policy: its configured base model, or for a run started from another
    (`init_from`) that parent's result, so the comparison shows what this run's own training changed.
    """
    run = Path(run)
    out = Path(out) if out else RunDir(run).eval
    suites = {Path(str(name)).stem: load_suite(name)[: cfg.limit or None] for name in cfg.suites}
    if cfg.references:
        suites["references"] = reference_rows(cfg.references, cfg.limit)
    tuned, tokenizer = load_run(run, cache_dir)
    models = {"tuned": tuned}
    if cfg.base:
        run_cfg = RunDir(run).read_config()
        base = start_weights(run_cfg, cache_dir).eval()
        base.generation_config.eos_token_id = stop_token_ids(run_cfg, tokenizer, base)
        models["base"] = base
    answers = {
        name: {
            suite: generate(model, tokenizer, [r["prompt"] for r in rows], cfg.max_new_tokens, cfg.batch_size)
            for suite, rows in suites.items()
            if rows
        }
        for name, model in models.items()
    }
    scores = {
        name: {s: score(s, suites[s], a) for s, a in by_suite.items()} for name, by_suite in answers.items()
    }
    if "base" in scores:
        scores["compare"] = compare(scores["base"], scores["tuned"], tolerance=cfg.tolerance)
    write_json(scores, out / SCORES)
    report = [f"# Evaluation of {run}", ""]
    report += [f"## {name}\n\n{to_markdown(s)}\n" for name, s in scores.items()]
    write_text("\n".join(report), out / EVAL_REPORT)
    lines = []
    for suite, rows in suites.items():
        for i, row in enumerate(rows):
            record = {"id": row["id"], "suite": suite, "category": row.get("category"), "model": "tuned"}
            record |= {"instruction": row["prompt"], "output": answers["tuned"][suite][i]}
            if "base" in answers:
                record |= {"output_b": answers["base"][suite][i], "model_b": "base"}
            lines.append(json.dumps(record) + "\n")
    write_text("".join(lines), out / GENERATIONS)
    print(to_markdown(scores.get("compare") or scores["tuned"]))
    print(f"written: {out / SCORES}, {out / EVAL_REPORT}, {out / GENERATIONS}")
    return scores
