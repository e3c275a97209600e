"""Evaluation suites: load and validate them, score model responses, compare two runs, report as Markdown.

Two built-in suites live in `sft/eval/data/` (project-authored, original text):

- `ifeval.jsonl`: `{"id", "category", "prompt", "constraints": [{"name", "kwargs"}]}` rows whose
  constraints are checked by `sft.eval.constraints`;
- `exact.jsonl`: `{"id", "category", "prompt", "answer", "aliases"}` rows scored by the strict
  final-answer rule of `sft.eval.answers`.

Generating responses is not done here: callers pass `responses` either as a list aligned with the rows or
as a mapping from row id to response. Every score dict holds its rates as floats, its counts as ints and a
`rows` list with per-row results, so a report can show which constraint failed for which id.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import CheckerError, SuiteError
from .answers import is_correct, last_sentence
from .constraints import CHECKERS, check, validate
from .rouge import rouge_l

DATA_DIR = Path(__file__).parent / "data"
SUITES = {"ifeval": DATA_DIR / "ifeval.jsonl", "exact": DATA_DIR / "exact.jsonl"}
CATEGORIES = ("creative_writing", "question_answering", "code", "analysis_reasoning", "conversational")
# Leaves with these names are rates (0..1) and are what compare() diffs; counts are left alone.
RATE_KEYS = ("prompt_level", "instruction_level", "accuracy", "rouge_l")

_FIELDS = {
    "ifeval": {"id", "category", "prompt", "constraints"},
    "exact": {"id", "category", "prompt", "answer", "aliases"},
}
_OPTIONAL = {"aliases"}


# ------------------------------------------------------------------------------------------ loading


def load_suite(name: str | Path = "ifeval") -> list[dict]:
    """Rows of a built-in suite ("ifeval", "exact") or a .jsonl file, validated; SuiteError lists problems."""
    path = SUITES.get(str(name), Path(name))
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such suite file; built-in suites: {', '.join(SUITES)}")
    rows, problems, seen = [], [], {}
    for location, row in _read_jsonl(path):
        try:
            rows.append(_validated(row, location, seen))
        except ValueError as err:
            problems.append(f"{location}: {err}")
    kinds = {_kind(row) for row in rows}
    if len(kinds) > 1:
        problems.append(f"{path}: mixes ifeval rows (with constraints) and exact rows (with an answer)")
    if problems:
        raise SuiteError(f"{len(problems)} problem(s) in suite {path}:\n" + "\n".join(problems))
    if not rows:
        raise SuiteError(f"{path}: the suite holds no rows")
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, object]]:
    out = []
    # split("\n"), not splitlines(): U+2028 may sit unescaped inside a JSON string and is not a row break.
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            out.append((f"{path}:{lineno}", ValueError(f"invalid JSON ({err.msg} at column {err.colno})")))
    return out


def _kind(row: Mapping) -> str:
    return "ifeval" if "constraints" in row else "exact"


def _validated(row: object, location: str, seen: dict[str, str]) -> dict:
    """The row with defaults filled in and its location added; ValueError says what is wrong."""
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    if "constraints" not in row and "answer" not in row:
        raise ValueError("a row needs `constraints` (ifeval suite) or `answer` (exact suite)")
    kind = _kind(row)
    _check_fields(row, _FIELDS[kind])
    for key in ("id", "category", "prompt"):
        _require_text(row, key)
    if row["id"] in seen:
        raise ValueError(f"duplicate id {row['id']!r} (first at {seen[row['id']]})")
    seen[row["id"]] = location
    extra = _constraints(row["constraints"]) if kind == "ifeval" else _answer(row)
    return {**row, **extra, "location": location}


def _check_fields(row: dict, fields: set[str]) -> None:
    missing = sorted(fields - _OPTIONAL - row.keys())
    unknown = sorted(row.keys() - fields)
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(fields))}")


def _require_text(row: dict, key: str) -> None:
    if not isinstance(row[key], str) or not row[key].strip():
        raise ValueError(f"`{key}` must be a non-empty string, got {row[key]!r}")


def _constraints(value: object) -> dict:
    if not isinstance(value, list) or not value:
        raise ValueError(f"`constraints` must be a non-empty list, got {value!r}")
    return {"constraints": [_constraint(item, index) for index, item in enumerate(value)]}


def _constraint(item: object, index: int) -> dict:
    where = f"constraints[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ValueError(f"{where}: expected {{'name': str, 'kwargs': {{...}}}}, got {item!r}")
    if item.keys() - {"name", "kwargs"}:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(item.keys() - {'name', 'kwargs'}))}")
    name, kwargs = item["name"], item.get("kwargs", {})
    try:
        validate(name, kwargs)
    except CheckerError as err:
        close = difflib.get_close_matches(name, CHECKERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close and name not in CHECKERS else ""
        raise ValueError(f"{where}: {err}{hint}") from None
    return {"name": name, "kwargs": dict(kwargs)}


def _answer(row: dict) -> dict:
    _require_text(row, "answer")
    aliases = row.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise ValueError(f"`aliases` must be a list of non-empty strings, got {aliases!r}")
    return {"aliases": aliases}


# ------------------------------------------------------------------------------------------ scoring


def _aligned(ids: list[str], responses: Sequence[str] | Mapping[str, str]) -> list[str]:
    """Responses in row order, from a list aligned with the rows or a mapping id → response."""
    if isinstance(responses, Mapping):
        missing = [i for i in ids if i not in responses]
        extra = sorted(set(responses) - set(ids))
        if missing or extra:
            raise ValueError(f"responses do not match the rows: missing ids {missing}, unknown ids {extra}")
        responses = [responses[i] for i in ids]
    elif len(responses) != len(ids):
        raise ValueError(f"{len(ids)} rows but {len(responses)} responses")
    bad = [i for i, r in zip(ids, responses, strict=True) if not isinstance(r, str)]
    if bad:
        raise TypeError(f"responses must be strings; not for ids {bad}")
    return list(responses)


def _rate(passed: int, total: int) -> float:
    return passed / total if total else 0.0


def score_ifeval(rows: Sequence[dict], responses: Sequence[str] | Mapping[str, str]) -> dict:
    """Prompt-level (all constraints pass) and instruction-level accuracy, per category and per checker."""
    ids = [row["id"] for row in rows]
    results = [_ifeval_row(row, text) for row, text in zip(rows, _aligned(ids, responses), strict=True)]
    per_checker: dict[str, list[bool]] = {}
    for result in results:
        for item in result["results"]:
            per_checker.setdefault(item["name"], []).append(item["passed"])
    return {
        "suite": "ifeval",
        **_ifeval_totals(results),
        "per_category": {c: _ifeval_totals(rs) for c, rs in _by_category(results).items()},
        "per_checker": {
            name: {"total": len(p), "passed": sum(p), "accuracy": _rate(sum(p), len(p))}
            for name, p in sorted(per_checker.items())
        },
        "rows": results,
    }


def _ifeval_row(row: dict, response: str) -> dict:
    results = [
        {
            "name": c["name"],
            "kwargs": c.get("kwargs", {}),
            "passed": check(c["name"], response, c.get("kwargs")),
        }
        for c in row["constraints"]
    ]
    failed = [r["name"] for r in results if not r["passed"]]
    return {
        "id": row["id"],
        "category": row["category"],
        "passed": not failed,
        "failed": failed,
        "results": results,
    }


def _ifeval_totals(results: list[dict]) -> dict:
    prompts = len(results)
    instructions = sum(len(r["results"]) for r in results)
    passed = sum(item["passed"] for r in results for item in r["results"])
    return {
        "prompts": prompts,
        "instructions": instructions,
        "prompt_level": _rate(sum(r["passed"] for r in results), prompts),
        "instruction_level": _rate(passed, instructions),
    }


def _by_category(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(result["category"], []).append(result)
    return dict(sorted(groups.items()))


def score_exact(rows: Sequence[dict], responses: Sequence[str] | Mapping[str, str]) -> dict:
    """Accuracy of final answers (the strict rule of `sft.eval.answers`), overall and per category."""
    ids = [row["id"] for row in rows]
    results = [
        {
            "id": row["id"],
            "category": row["category"],
            "correct": is_correct(text, row["answer"], row.get("aliases", ())),
            "answer": row["answer"],
            "final": last_sentence(text),
        }
        for row, text in zip(rows, _aligned(ids, responses), strict=True)
    ]
    return {
        "suite": "exact",
        **_exact_totals(results),
        "per_category": {c: _exact_totals(rs) for c, rs in _by_category(results).items()},
        "rows": results,
    }


def _exact_totals(results: list[dict]) -> dict:
    return {"n": len(results), "accuracy": _rate(sum(r["correct"] for r in results), len(results))}


def score_rouge(
    references: Sequence[str] | Mapping[str, str], responses: Sequence[str] | Mapping[str, str]
) -> dict:
    """Mean ROUGE-L F1 of responses against references (aligned lists, or mappings by id)."""
    if isinstance(references, Mapping):
        ids, refs = list(references), list(references.values())
    else:
        ids, refs = [str(i) for i in range(len(references))], list(references)
    scores = [rouge_l(text, ref) for text, ref in zip(_aligned(ids, responses), refs, strict=True)]
    rows = [{"id": i, "rouge_l": s} for i, s in zip(ids, scores, strict=True)]
    return {"suite": "rouge", "n": len(rows), "rouge_l": _rate(sum(scores), len(scores)), "rows": rows}


# -------------------------------------------------------------------------------------- comparison


def rates(scores: Mapping, prefix: str = "") -> dict[str, float]:
    """Rate leaves of a score dict (or a dict of them) keyed by dotted path; per-row results are skipped."""
    out: dict[str, float] = {}
    for key, value in scores.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(rates(value, f"{path}."))
        elif key in RATE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def compare(before: Mapping, after: Mapping, tolerance: float = 0.0) -> dict:
    """Rates of two score dicts side by side, delta = after − before; `worse` lists drops beyond tolerance."""
    old, new = rates(before), rates(after)
    metrics = {}
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key), new.get(key)
        metrics[key] = {"before": a, "after": b, "delta": None if a is None or b is None else b - a}
    worse = [k for k, m in metrics.items() if m["delta"] is not None and m["delta"] < -tolerance]
    return {"suite": "compare", "metrics": metrics, "worse": worse}


# ----------------------------------------------------------------------------------------- markdown


def to_markdown(scores: Mapping, max_failures: int = 10) -> str:
    """A short Markdown report of a score dict, a compare() result, or a dict of named score dicts."""
    render = {"ifeval": _md_ifeval, "exact": _md_exact, "rouge": _md_rouge, "compare": _md_compare}
    kind = scores.get("suite")
    if kind in render:
        return render[kind](scores, max_failures)
    parts = [
        f"## {name}\n\n{to_markdown(s, max_failures)}" for name, s in scores.items() if isinstance(s, Mapping)
    ]
    return "\n\n".join(parts)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_ifeval(scores: Mapping, max_failures: int) -> str:
    head = (
        f"**Instruction following**: prompt-level {_pct(scores['prompt_level'])}, instruction-level "
        f"{_pct(scores['instruction_level'])} ({scores['prompts']} prompts, "
        f"{scores['instructions']} instructions)"
    )
    categories = _table(
        ["category", "prompts", "prompt-level", "instruction-level"],
        [
            [c, str(s["prompts"]), _pct(s["prompt_level"]), _pct(s["instruction_level"])]
            for c, s in scores["per_category"].items()
        ],
    )
    checkers = _table(
        ["checker", "passed", "accuracy"],
        [[n, f"{s['passed']}/{s['total']}", _pct(s["accuracy"])] for n, s in scores["per_checker"].items()],
    )
    failures = [f"`{r['id']}`: {', '.join(r['failed'])}" for r in scores["rows"] if r["failed"]]
    return "\n\n".join([head, categories, checkers, _md_failures(failures, max_failures)])


def _md_exact(scores: Mapping, max_failures: int) -> str:
    head = f"**Exact answers**: accuracy {_pct(scores['accuracy'])} ({scores['n']} tasks)"
    categories = _table(
        ["category", "tasks", "accuracy"],
        [[c, str(s["n"]), _pct(s["accuracy"])] for c, s in scores["per_category"].items()],
    )
    failures = [
        f"`{r['id']}`: expected `{_short(r['answer'])}`, ended with `{_short(r['final'])}`"
        for r in scores["rows"]
        if not r["correct"]
    ]
    return "\n\n".join([head, categories, _md_failures(failures, max_failures)])


def _md_rouge(scores: Mapping, max_failures: int) -> str:
    return f"**ROUGE-L F1**: {_pct(scores['rouge_l'])} ({scores['n']} responses)"


def _md_compare(scores: Mapping, max_failures: int) -> str:
    rows = [
        [
            key,
            _pct(m["before"]),
            _pct(m["after"]),
            "–" if m["delta"] is None else f"{m['delta'] * 100:+.1f} pt",
        ]
        for key, m in scores["metrics"].items()
    ]
    worse = ", ".join(f"`{k}`" for k in scores["worse"]) or "none"
    return _table(["metric", "before", "after", "Δ"], rows) + f"\n\nWorse after: {worse}"


def _md_failures(failures: list[str], limit: int) -> str:
    if not failures:
        return "No failures."
    shown = [f"- {line}" for line in failures[:limit]]
    more = [f"- … and {len(failures) - limit} more"] if len(failures) > limit else []
    return "Failures:\n\n" + "\n".join(shown + more)


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat if len(flat) <= width else flat[: width - 1] + "…"
