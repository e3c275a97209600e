"""Each `python -m sft.prepare <step>`: read the input, run the step, write its output and counts."""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from ..atomic import write_json
from ..data.complexity import DIFFICULTIES, complexity, difficulty, role_text
from ..errors import PrepareError
from ..text import words
from . import generate
from .augment import (
    VARIANTS,
    Skip,
    constraint_variant,
    instruction_text,
    judge_rephrase,
    rephrase_messages,
    rephrased_row,
)
from .backends import open_backend
from .balance import classify, mix_report, resample
from .charts import draw_report
from .dedup import dedup_text, find_duplicates
from .quality import heuristic_scores, judge_messages, parse_judge
from .rows import Appender, Row, Tally, finish, intact_lines, load_rows, write_rows

console = Console(stderr=True)


def run_generate(cfg: DictConfig) -> None:
    """Self-instruct generation (sft.prepare.generate)."""
    generate.run(cfg, open_backend(cfg.backend))


def _read(cfg: DictConfig) -> tuple[list[Row], Tally, Path]:
    """The usable input rows, the tally that counted them, and the output path."""
    tally = Tally()
    return load_rows(cfg.input, tally, fmt=cfg.format), tally, Path(cfg.output).expanduser()


def run_dedup(cfg: DictConfig) -> None:
    """Drop exact and near duplicates, keeping first occurrences; the pairs go beside the output."""
    rows, tally, output = _read(cfg)
    texts = [dedup_text(row, cfg.fields) for row in rows]
    found = find_duplicates(texts, cfg.threshold, cfg.ngram, cfg.shingle, cfg.num_perm)
    dropped = {d.index for d in found}
    for d in found:
        tally.count(f"{d.kind}_duplicates")
    pairs = output.with_name(output.name + ".duplicates.jsonl")
    write_rows(
        (
            {
                "row": rows[d.index].location,
                "of": rows[d.of].location,
                "kind": d.kind,
                "similarity": round(d.similarity, 4),
            }
            for d in found
        ),
        pairs,
    )
    tally.count("kept", write_rows((r.data for i, r in enumerate(rows) if i not in dropped), output))
    finish("dedup", tally, output, duplicates=str(pairs))


def mix_table(title: str, report: list[dict]) -> Table:
    """A category or difficulty mix against its targets, for the terminal."""
    table = Table(title=title)
    for column in ("name", "rows", "share", "target", "gap"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for r in report:
        table.add_row(
            r["name"], str(r["count"]), f"{r['share']:.1%}", f"{r['target']:.0%}", f"{r['gap']:+.1%}"
        )
    return table


def _targets(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """The category and difficulty target shares, each set checked to add up to 1."""
    targets = OmegaConf.to_container(cfg.targets, resolve=True)
    for what, shares in targets.items():
        if any(not isinstance(v, (int, float)) or v < 0 for v in shares.values()):
            raise PrepareError(f"targets.{what}: shares must be numbers >= 0, got {shares}")
        if abs(sum(shares.values()) - 1) > 0.01:
            raise PrepareError(
                f"targets.{what}: shares add up to {sum(shares.values()):.3g}, not 1: {shares}"
            )
    return targets


def run_balance(cfg: DictConfig) -> None:
    """Label category, difficulty and complexity; report the mix; with resample=true, resample to targets."""
    rows, tally, output = _read(cfg)
    targets = _targets(cfg)
    scores = [complexity(r.conversation) for r in rows]
    categories, levels = [classify(r) for r in rows], [difficulty(s) for s in scores]
    mixes = {
        "before": {
            "category": mix_report(categories, targets["category"]),
            "difficulty": mix_report(levels, targets["difficulty"]),
        }
    }
    chosen = list(range(len(rows)))
    if cfg.resample:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chosen = resample(
                categories,
                levels,
                targets["category"],
                targets["difficulty"],
                cfg.size,
                cfg.replace,
                cfg.seed,
            )
        for w in caught:
            tally.problems.append(f"{cfg.input}: {w.message}")
        mixes["after"] = {
            "category": mix_report([categories[i] for i in chosen], targets["category"]),
            "difficulty": mix_report([levels[i] for i in chosen], targets["difficulty"]),
        }
    for when, mix in mixes.items():
        for what, report in mix.items():
            console.print(mix_table(f"{what} mix {when} ({sum(r['count'] for r in report)} rows)", report))
    labelled = (
        rows[i].with_fields(category=categories[i], difficulty=levels[i], complexity=round(scores[i], 4))
        for i in chosen
    )
    tally.count("written", write_rows(labelled, output))
    finish("balance", tally, output, mix=mixes)


def _resumed(rows: list[Row], output: Path, tally: Tally) -> int:
    """How many input rows a one-row-in, one-row-out output already holds (checked against the input)."""
    done = intact_lines(output)
    for i, previous in enumerate(done):
        source = {k: v for k, v in previous.items() if k != "quality"}
        if i >= len(rows) or source != {k: v for k, v in rows[i].data.items() if k != "quality"}:
            raise PrepareError(
                f"output={output}: row {i + 1} is not input row {i + 1}; the input changed since this output "
                "was started: remove the output or write to another file"
            )
    tally.count("resumed", len(done))
    return len(done)


def _judged(scores: dict, reply: str | Exception, location: str, tally: Tally) -> dict:
    """The judge's scores for a row, or its heuristic scores when the judge gave none (counted)."""
    verdict = parse_judge(reply) if isinstance(reply, str) else None
    if verdict is None:
        why = f"judge request failed: {reply}" if isinstance(reply, Exception) else "judge gave no verdict"
        tally.problem(location, why, "judge_failed")
        return {**scores, "by": "heuristic (judge failed)"}
    return {**verdict, "heuristic": scores["score"], "reasons": scores["reasons"]}


def run_score(cfg: DictConfig) -> None:
    """Write each row with its `quality` scores, appending, so an interrupted run resumes."""
    rows, tally, output = _read(cfg)
    start = _resumed(rows, output, tally)
    backend = open_backend(cfg.backend) if cfg.scorer == "llm" else None
    batch = backend.batch_size if backend else 256
    with Appender(output) as out:
        for first in range(start, len(rows), batch):
            chunk = rows[first : first + batch]
            scores = [heuristic_scores(row) for row in chunk]
            if backend:
                replies = backend.complete([judge_messages(row) for row in chunk], temperature=0.0)
                scores = [
                    _judged(s, r, row.location, tally)
                    for s, r, row in zip(scores, replies, chunk, strict=True)
                ]
            for row, quality in zip(chunk, scores, strict=True):
                out.write(row.with_fields(quality=quality))
                tally.count("scored")
                tally.count("at_or_above_4" if quality["score"] >= 4.0 else "below_4")
    finish("score", tally, output)


def _quality(row: Row, tally: Tally) -> dict:
    """A row's `quality` as `score` wrote it, or its heuristic scores now."""
    given = row.data.get("quality")
    if isinstance(given, dict) and isinstance(given.get("score"), (int, float)):
        return given
    tally.count("scored_now")
    return heuristic_scores(row)


def run_filter(cfg: DictConfig) -> None:
    """Keep rows scored at or above the threshold; the rest go to the rejected file with their reasons."""
    rows, tally, output = _read(cfg)
    kept, rejected, reasons = [], [], Counter()
    for row in rows:
        quality = _quality(row, tally)
        if quality["score"] >= cfg.threshold:
            kept.append(row.with_fields(quality=quality))
        else:
            rejected.append(row.with_fields(quality=quality))
            reasons.update(reason.split(" (exchange")[0] for reason in quality.get("reasons", []))
    rejected_path = Path(cfg.rejected or output.with_name(output.name + ".rejected.jsonl")).expanduser()
    tally.count("kept", write_rows(kept, output))
    tally.count("rejected", write_rows(rejected, rejected_path))
    finish("filter", tally, output, rejected=str(rejected_path), reasons=dict(reasons.most_common()))


def _augment_start(rows: list[Row], output: Path, tally: Tally) -> int:
    """The first input row an augment output lacks; the last row's group is redone, as it may be partial."""
    done = intact_lines(output)
    if not done:
        return 0
    last = done[-1].get("augmented", {})
    index = last.get("row")
    if not isinstance(index, int) or index >= len(rows) or rows[index].location != last.get("from"):
        source = rows[0].location.rsplit(":", 1)[0]
        raise PrepareError(f"output={output}: its rows do not come from input={source}")
    write_rows((r for r in done if r["augmented"]["row"] != index), output)
    tally.count("resumed", index)
    return index


def _fresh(data: dict) -> dict:
    """A derived row without the scores of the row it came from (they judged a different output)."""
    return {k: v for k, v in data.items() if k not in ("quality", "difficulty", "complexity")}


def run_augment(cfg: DictConfig) -> None:
    """The rows, their constraint variants and (rephrase > 0) reworded instructions, appended as made."""
    rows, tally, output = _read(cfg)
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise PrepareError(f"variants: {unknown} unknown; choose from {', '.join(VARIANTS)}")
    start = _augment_start(rows, output, tally)
    backend = open_backend(cfg.backend) if cfg.rephrase > 0 else None
    batch = backend.batch_size if backend else 256
    skipped = Counter()
    with Appender(output) as out:
        for first in range(start, len(rows), batch):
            chunk = rows[first : first + batch]
            replies: list = []
            if backend:
                prompts = [
                    rephrase_messages(instruction_text(r, cfg.format))
                    for r in chunk
                    for _ in range(cfg.rephrase)
                ]
                replies = backend.complete(prompts)
            for i, row in enumerate(chunk):
                made = (
                    [{**row.data, "augmented": {"kind": "original", "from": row.location}}]
                    if cfg.keep_original
                    else []
                )
                for name in cfg.variants:
                    try:
                        made.append(_fresh(constraint_variant(row, name, fmt=cfg.format)))
                        tally.count(name)
                    except Skip as skip:
                        skipped[f"{name}: {skip.reason}"] += 1
                for reply in replies[i * cfg.rephrase : (i + 1) * cfg.rephrase]:
                    if isinstance(reply, Exception):
                        tally.problem(row.location, str(reply), "request_errors")
                        continue
                    text, why = judge_rephrase(instruction_text(row, cfg.format), reply)
                    if text is None:
                        skipped[f"rephrase: {why}"] += 1
                        continue
                    made.append(_fresh(rephrased_row(row, text, fmt=cfg.format)))
                    tally.count("rephrase")
                for data in made:  # the input row's index: locations repeat when a file has rows on one line
                    out.write({**data, "augmented": {**data["augmented"], "row": first + i}})
    finish("augment", tally, output, skipped=dict(skipped.most_common()))


def run_report(cfg: DictConfig) -> None:
    """Category and difficulty mix, lengths and quality of a file as PNG charts and a JSON summary."""
    tally = Tally()
    rows = load_rows(cfg.input, tally, fmt=cfg.format)
    out_dir = Path(cfg.out_dir or f"{cfg.input}.report").expanduser()
    targets = _targets(cfg)
    categories = [classify(r) for r in rows]
    # A row's own difficulty (as `balance` writes it) wins over the estimate, as its category does.
    levels = [
        r.data["difficulty"]
        if r.data.get("difficulty") in DIFFICULTIES
        else difficulty(complexity(r.conversation))
        for r in rows
    ]
    prompt_words = [len(words(role_text(r.conversation["messages"], "user"))) for r in rows]
    response_words = [len(words(role_text(r.conversation["messages"], "assistant"))) for r in rows]
    scores = [r.data["quality"]["score"] for r in rows if isinstance(r.data.get("quality"), dict)]
    charts = draw_report(
        out_dir,
        categories,
        levels,
        prompt_words,
        response_words,
        targets["category"],
        targets["difficulty"],
        scores if len(scores) == len(rows) else None,
    )
    mixes = {
        "category": mix_report(categories, targets["category"]),
        "difficulty": mix_report(levels, targets["difficulty"]),
    }
    for what, report in mixes.items():
        console.print(mix_table(f"{what} mix ({len(rows)} rows)", report))
    write_json(
        {
            "input": str(cfg.input),
            "counts": dict(tally.counts),
            "mix": mixes,
            "charts": [str(c) for c in charts],
            "problems": tally.problems,
        },
        out_dir / "report.json",
    )
    print(
        f"report: {tally.summary()}\nwritten: {', '.join(str(c) for c in charts)}, {out_dir / 'report.json'}",
        file=sys.stderr,
    )


STEPS: dict[str, Callable[[DictConfig], None]] = {
    "generate": run_generate,
    "score": run_score,
    "filter": run_filter,
    "dedup": run_dedup,
    "balance": run_balance,
    "augment": run_augment,
    "report": run_report,
}
