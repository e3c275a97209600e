"""Human evaluation sheets: export, fill as a rater would, read back with validation, aggregate, CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sft.eval import human as he

ROOT = Path(__file__).resolve().parents[2]
T3 = 3.182446  # Student-t 0.975 quantile, 3 degrees of freedom (4 samples)
T1 = 12.706205  # ... 1 degree of freedom (2 samples)
MULTILINE = "- boil water\n- add pasta\n- drain"  # three physical lines, and it starts a list item


def samples(pairwise: bool = False) -> list[dict]:
    """Four samples in two categories; s1's output spans three lines."""
    outputs = [MULTILINE, "=2+2 is 4", "Paris", "Use a strong password."]
    rows = [
        {"id": f"s{i + 1}", "instruction": f"question {i + 1}", "output": output, "category": category}
        for i, (output, category) in enumerate(zip(outputs, ["chat", "chat", "math", "math"], strict=True))
    ]
    if pairwise:
        for row in rows:
            row.update(output_b=f"other answer to {row['id']}", model="tuned", model_b="base")
    return rows


def fill_csv(sheet: Path, out: Path, filled: dict[str, dict[str, str]], extra: tuple[dict, ...] = ()) -> Path:
    """Fill cells as a spreadsheet would save them (text, multi-line cells quoted); `extra`: rows to add."""
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    for row in rows[1:]:
        for column, value in filled.get(row[0], {}).items():
            row[header.index(column)] = value
    for values in extra:
        rows.append([values.get(column, "") for column in header])
    with open(out, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return out


def ratings(*values: object, preferred: str | None = None) -> dict[str, str]:
    """One row's cells: the four ratings in DIMENSIONS order (and `preferred`), as text."""
    cells = {dimension: str(value) for dimension, value in zip(he.DIMENSIONS, values, strict=True)}
    return cells if preferred is None else {**cells, "preferred": preferred}


GOOD = {
    "s1": ratings(4, 5, 2, 5),
    "s2": ratings(5, 5, 4, 5),
    "s3": ratings(3, 5, 4, 4),
    "s4": ratings(4, 5, 2, 4),
}


def half_width(values: list[float], t: float) -> float:
    """The Student-t half width from first principles: t * sample sd / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    return t * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def test_export_writes_csv_jsonl_and_readme(tmp_path):
    csv_path, jsonl_path, readme = he.export_sheet(samples(), tmp_path / "sheets" / "round1.v2")
    assert [p.name for p in (csv_path, jsonl_path, readme)] == [
        "round1.v2.csv",
        "round1.v2.jsonl",
        "round1.v2.README.md",
    ]
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "category", "instruction", "output", *he.DIMENSIONS, "notes"]
    assert len(rows) == 4
    # The multi-line cell survives; cells that look like formulas get the apostrophe that keeps them text.
    assert rows[0]["output"] == "'" + MULTILINE
    assert rows[1]["output"] == "'=2+2 is 4"
    assert rows[2]["output"] == "Paris"
    assert all(row[d] == "" for row in rows for d in he.DIMENSIONS)
    lines = [json.loads(line) for line in jsonl_path.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in lines] == ["s1", "s2", "s3", "s4"]
    assert lines[0]["output"] == MULTILINE
    assert all(row[d] is None for row in lines for d in he.DIMENSIONS)
    text = readme.read_text(encoding="utf-8")
    assert all(f"## {d}" in text for d in he.DIMENSIONS)
    assert "**1**" in text and "**3**" in text and "**5**" in text
    assert "preferred" not in text


def test_export_pairwise_sheet_has_preferred_and_model_columns(tmp_path):
    csv_path, jsonl_path, readme = he.export_sheet(samples(pairwise=True), tmp_path / "pair")
    header = next(csv.reader(open(csv_path, encoding="utf-8-sig", newline="")))
    assert header == [
        "id",
        "category",
        "model",
        "instruction",
        "output",
        "model_b",
        "output_b",
        *he.DIMENSIONS,
        "preferred",
        "notes",
    ]
    assert json.loads(jsonl_path.read_text().splitlines()[0])["preferred"] is None
    assert "## preferred" in readme.read_text()


def test_export_rejects_bad_samples(tmp_path):
    with pytest.raises(ValueError, match="not unique"):
        he.export_sheet([*samples()[:2], samples()[0]], tmp_path / "dup")
    with pytest.raises(ValueError, match="output_b"):
        he.export_sheet([{**samples()[0], "output_b": "x"}, samples()[1]], tmp_path / "mixed")
    with pytest.raises(ValueError, match="sample 1 has no output"):
        he.export_sheet([samples()[0], {"id": "x", "instruction": "q"}], tmp_path / "missing")


def test_filled_csv_round_trip_aggregates_exactly(tmp_path):
    sheet = he.export_sheet(samples(), tmp_path / "round1")[0]
    frame, problems = he.read_sheet(fill_csv(sheet, tmp_path / "alice.csv", GOOD), ids=sheet)
    assert problems == []
    assert frame["id"].tolist() == ["s1", "s2", "s3", "s4"]
    assert frame["rater"].unique().tolist() == ["alice"]
    assert frame["line"].tolist() == [2, 5, 6, 7]  # s1's output spans lines 2-4
    summary = he.aggregate(frame)
    columns = {d: [float(GOOD[s][d]) for s in ("s1", "s2", "s3", "s4")] for d in he.DIMENSIONS}
    expected_means = {"helpfulness": 4.0, "accuracy": 5.0, "clarity": 3.0, "safety": 4.5}
    assert summary["samples"] == 4
    for dimension, stats in summary["dimensions"].items():
        assert stats["n"] == 4 and stats["ratings"] == 4
        assert stats["mean"] == pytest.approx(expected_means[dimension])
        half = half_width(columns[dimension], T3)
        assert stats["ci_high"] - stats["mean"] == pytest.approx(half, rel=1e-6, abs=1e-12)
        assert stats["mean"] - stats["ci_low"] == pytest.approx(half, rel=1e-6, abs=1e-12)
    # helpfulness 4, 5, 3, 4: sd sqrt(2/3).
    assert summary["dimensions"]["helpfulness"]["ci_high"] == pytest.approx(4 + T3 * math.sqrt(2 / 3) / 2)
    assert summary["dimensions"]["accuracy"]["ci_low"] == pytest.approx(5.0)  # no spread, no width
    overall = [4.0, 4.75, 4.0, 3.75]  # each sample's mean of the four dimensions
    assert summary["overall"]["mean"] == pytest.approx(4.125)
    assert summary["overall"]["ci_high"] - 4.125 == pytest.approx(half_width(overall, T3), rel=1e-6)
    chat = summary["by_category"]["chat"]
    assert chat["helpfulness"]["mean"] == pytest.approx(4.5) and chat["helpfulness"]["n"] == 2
    assert chat["helpfulness"]["ci_high"] - 4.5 == pytest.approx(half_width([4, 5], T1), rel=1e-6)
    assert summary["by_category"]["math"]["overall"]["mean"] == pytest.approx(3.875)
    assert summary["preference"] is None and summary["agreement"] is None
    report = he.to_markdown(summary)
    assert "| helpfulness | 4.00 |" in report and "### By category" in report
    json.dumps(summary)  # ready for --json


def test_malformed_sheet_reports_each_bad_cell_and_keeps_the_valid_ones(tmp_path):
    sheet = he.export_sheet(samples(pairwise=True), tmp_path / "pair")[0]
    filled = {
        "s1": ratings(4, 5, 3, 4, preferred="A"),
        "s2": ratings(6, "good", 4, 5, preferred="C"),
        "s3": ratings(4.5, 3, "", 2, preferred="Tie"),
        # s4 stays empty: not yet rated
    }
    duplicate = {"id": "s2", **ratings(5, 5, 5, 5, preferred="B")}
    unknown = {"id": "s9", **ratings(5, 5, 5, 5, preferred="B")}
    path = fill_csv(sheet, tmp_path / "bob.csv", filled, extra=(duplicate, unknown))
    frame, problems = he.read_sheet(path, ids=tmp_path / "pair.jsonl")
    rating = "(allowed: integers 1-5)"
    # s1's three-line output puts s2 on line 5, the spreadsheet's row 3.
    assert problems == [
        f"{path}:5: helpfulness: 6 is out of range, spreadsheet row 3 {rating}",
        f"{path}:5: accuracy: 'good' is not a number, spreadsheet row 3 {rating}",
        f"{path}:5: preferred: 'C' is not a choice, spreadsheet row 3 (allowed: A, B, tie)",
        f"{path}:6: helpfulness: 4.5 is not a whole number, spreadsheet row 4 {rating}",
        f"{path}:6: clarity: missing, spreadsheet row 4 {rating}",
        f"{path}:8: id: 's2' again, first at line 5, spreadsheet row 6 (allowed: each id once)",
        f"{path}:9: id: 's9' is not in the exported sheet, spreadsheet row 7 (allowed: its 4 ids)",
        f"{path}:7: ratings: 1 row(s) not yet rated, at line(s) 7 (allowed: every row rated)",
    ]
    assert frame["id"].tolist() == ["s1", "s2", "s3"]
    assert frame["preferred"].tolist() == ["A", None, "tie"]
    summary = he.aggregate(frame)
    dims = summary["dimensions"]
    assert (dims["helpfulness"]["mean"], dims["helpfulness"]["n"]) == (4.0, 1)
    assert dims["helpfulness"]["ci_low"] is None  # one value: no interval
    assert (dims["accuracy"]["mean"], dims["accuracy"]["n"]) == (4.0, 2)  # s1 5, s3 3
    assert (dims["clarity"]["mean"], dims["clarity"]["n"]) == (3.5, 2)  # s1 3, s2 4
    assert dims["safety"]["mean"] == pytest.approx(11 / 3) and dims["safety"]["n"] == 3
    assert summary["overall"]["n"] == 1  # only s1 has all four
    pref = summary["preference"]
    assert (pref["a"], pref["b"], pref["tie"], pref["samples"]) == (1, 0, 1, 2)
    assert pref["win_rate_a"] == pytest.approx(0.75)


def test_rating_cells_accept_whole_numbers_in_any_form():
    assert [he._rating(v)[0] for v in ("4", 4, 4.0, " 4 ", "4.0", 1, "5")] == [4, 4, 4, 4, 4, 1, 5]
    wrong = {v: he._rating(v)[1] for v in (0, 6, 4.5, "good", "", None, True, "nan", "4,5")}
    assert wrong == {
        0: "0 is out of range",
        6: "6 is out of range",
        4.5: "4.5 is not a whole number",
        "good": "'good' is not a number",
        "": "missing",
        None: "missing",
        True: "true is not a number",
        "nan": "'nan' is not a number",
        "4,5": "'4,5' is not a number",
    }


def test_jsonl_round_trip_matches_the_csv(tmp_path):
    _, jsonl_path, _ = he.export_sheet(samples(), tmp_path / "round1")
    rows = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    forms = [int, str, float, int]  # ratings as a JSON tool might write them: 4, "4", 4.0
    for row, form in zip(rows, forms, strict=True):
        row.update({d: form(int(GOOD[row["id"]][d])) for d in he.DIMENSIONS})
    filled = tmp_path / "carol.jsonl"
    filled.write_text("".join(json.dumps(row) + "\n" for row in rows))
    frame, problems = he.read_sheet(filled)
    assert problems == []
    assert frame["line"].tolist() == [1, 2, 3, 4]
    from_csv, _ = he.read_sheet(fill_csv(tmp_path / "round1.csv", tmp_path / "carol.csv", GOOD))
    assert frame[list(he.DIMENSIONS)].equals(from_csv[list(he.DIMENSIONS)])
    assert he.aggregate(frame)["dimensions"] == he.aggregate(from_csv)["dimensions"]


def test_jsonl_problems_name_the_physical_line(tmp_path):
    sheet = tmp_path / "dave.jsonl"
    good = {"id": "s1", **{d: 4 for d in he.DIMENSIONS}}
    lines = [json.dumps(good), "", json.dumps({**good, "id": "s2", "safety": 0}), "{not json", "[1, 2]"]
    sheet.write_text("\n".join(lines) + "\n")
    frame, problems = he.read_sheet(sheet)
    assert problems == [
        f"{sheet}:4: (line): not JSON: Expecting property name enclosed in double quotes"
        " (allowed: a JSON object)",
        f"{sheet}:5: (line): a JSON list, not an object (allowed: a JSON object)",
        f"{sheet}:3: safety: 0 is out of range (allowed: integers 1-5)",
    ]
    assert frame["id"].tolist() == ["s1", "s2"]


def test_two_raters_agreement(tmp_path):
    sheet = he.export_sheet(samples(), tmp_path / "round1")[0]
    (tmp_path / "alice").mkdir()
    (tmp_path / "bob").mkdir()
    alice = fill_csv(sheet, tmp_path / "alice" / "sheet.csv", GOOD)
    bob_ratings = {
        "s1": ratings(5, 5, 2, 5),  # helpfulness differs by 1
        "s2": ratings(3, 5, 4, 5),  # helpfulness differs by 2
        "s3": ratings(3, 4, 4, 4),  # accuracy differs by 1
        # s4: bob has not rated it yet
    }
    bob = fill_csv(sheet, tmp_path / "bob" / "sheet.csv", bob_ratings)
    frame, problems = he.read_sheets([alice, bob])
    assert len(problems) == 1 and "1 row(s) not yet rated" in problems[0]
    assert sorted(frame["rater"].unique()) == ["alice/sheet", "bob/sheet"]  # same stem: the folder tells
    summary = he.aggregate(frame)
    agreement = summary["agreement"]
    assert agreement["samples"] == 3
    helpfulness = agreement["dimensions"]["helpfulness"]
    assert helpfulness["mean_abs_diff"] == pytest.approx(1.0)  # |4-5|, |5-3|, |3-3|
    assert helpfulness["exact"] == pytest.approx(1 / 3) and helpfulness["pairs"] == 3
    assert agreement["dimensions"]["accuracy"]["mean_abs_diff"] == pytest.approx(1 / 3)
    assert agreement["dimensions"]["clarity"]["mean_abs_diff"] == 0
    # Means are over samples: each sample's raters are averaged first (s1 4.5, s2 4, s3 3, s4 4).
    assert summary["dimensions"]["helpfulness"]["mean"] == pytest.approx(3.875)
    assert summary["dimensions"]["helpfulness"]["n"] == 4
    assert summary["dimensions"]["helpfulness"]["ratings"] == 7
    assert "Agreement between raters" in he.to_markdown(summary)
    named, _ = he.read_sheets([alice, bob], raters=["A. Smith", "B. Jones"])
    assert sorted(named["rater"].unique()) == ["A. Smith", "B. Jones"]


def test_pairwise_win_rate_counts_ties_half(tmp_path):
    pairs = [{**s, "id": f"p{i}", "output_b": "b"} for i, s in enumerate(samples() * 3)][:10]
    sheet = he.export_sheet(pairs, tmp_path / "pairs")[0]
    choices = ["A"] * 4 + ["a", " A "] + ["B", "b"] + ["tie", "TIE"]  # any case, stray spaces
    filled = {f"p{i}": ratings(4, 4, 4, 4, preferred=c) for i, c in enumerate(choices)}
    frame, problems = he.read_sheet(fill_csv(sheet, tmp_path / "erin.csv", filled))
    assert problems == []
    pref = he.aggregate(frame)["preference"]
    assert (pref["a"], pref["b"], pref["tie"], pref["judgements"], pref["samples"]) == (6, 2, 2, 10, 10)
    assert pref["win_rate_a"] == pytest.approx(0.7)
    # Wilson interval for 7 of 10 (6 wins + 2 ties as half), as published: 0.3968-0.8922.
    assert (pref["ci_low"], pref["ci_high"]) == pytest.approx((0.39678, 0.89221), abs=1e-5)
    assert "win rate of A 0.70 (95% Wilson CI 0.40 to 0.89)" in he.to_markdown(he.aggregate(frame))


def test_wilson_interval_edges():
    assert he.wilson_interval(0, 5) == pytest.approx((0.0, 0.434482), abs=1e-6)
    assert he.wilson_interval(5, 5) == pytest.approx((0.565518, 1.0), abs=1e-6)


def test_t_critical_table_and_interpolation():
    assert he.t_critical(3) == pytest.approx(T3, abs=1e-6)
    assert he.t_critical(30) == pytest.approx(2.042272, abs=1e-6)
    assert he.t_critical(10**9) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        he.t_critical(0)
    mpmath = pytest.importorskip("mpmath")

    def exact(df: int) -> float:
        tail = lambda x: mpmath.betainc(df / 2, 0.5, 0, df / (df + x * x), regularized=True) / 2 - 0.025  # noqa: E731
        return float(mpmath.findroot(tail, 2.0))

    for df in [*range(1, 32), 35, 45, 50, 75, 90, 150, 400, 2000]:
        assert he.t_critical(df) == pytest.approx(exact(df), abs=1e-4), df


def test_excel_style_csv_with_semicolons_bom_and_crlf(tmp_path):
    sheet = tmp_path / "excel.csv"
    header = ";".join(["id", "instruction", "output", *he.DIMENSIONS, "notes"])
    rows = [header, 's1;q;"two\r\nlines";5;4;3;5;fine', "s2;q;a;4;4;4;4;", ";;;;;;;"]  # Excel's blank row
    sheet.write_bytes(("\r\n".join(rows) + "\r\n").encode("utf-8-sig"))
    frame, problems = he.read_sheet(sheet)
    assert problems == []
    assert frame["id"].tolist() == ["s1", "s2"] and frame["line"].tolist() == [2, 4]
    assert frame["notes"].tolist() == ["fine", ""]


def test_missing_columns_and_ids_are_reported(tmp_path):
    sheet = tmp_path / "cut.csv"
    sheet.write_text("id,helpfulness,accuracy,clarity\ns1,4,4,4\n,5,5,5\n", encoding="utf-8")
    frame, problems = he.read_sheet(sheet)
    assert problems == [
        f"{sheet}:1: safety: column missing (allowed: the columns of the exported sheet)",
        f"{sheet}:3: id: missing (allowed: the ids of the exported sheet)",
    ]
    assert frame["id"].tolist() == ["s1"] and frame["safety"].isna().all()
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("id,helpfulness\ns1,caf\xe9\n".encode("latin-1"))
    assert he.read_sheet(latin)[1] == [f"{latin}:1: (file): not UTF-8 text (allowed: a sheet saved as UTF-8)"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m sft.human_eval <args>` from the project root."""
    command = [sys.executable, "-m", "sft.eval.human", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_export_and_aggregate(tmp_path):
    source = tmp_path / "samples.jsonl"
    source.write_text("".join(json.dumps(s) + "\n" for s in samples()))
    exported = run_cli("export", str(source), "--out", str(tmp_path / "round1"))
    assert exported.returncode == 0, exported.stderr
    assert "round1.README.md" in exported.stdout
    good = fill_csv(tmp_path / "round1.csv", tmp_path / "alice.csv", GOOD)
    bad_ratings = {**GOOD, "s2": ratings(6, 5, 4, 5), "s3": ratings("good", 5, 4, 4)}
    bad = fill_csv(tmp_path / "round1.csv", tmp_path / "bob.csv", bad_ratings)
    out = tmp_path / "summary.json"
    clean = run_cli("aggregate", str(good), "--json", str(out), "--ids", str(tmp_path / "round1.jsonl"))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "helpfulness" in clean.stdout and "4.00" in clean.stdout
    summary = json.loads(out.read_text())
    assert summary["problems"] == [] and summary["dimensions"]["accuracy"]["mean"] == 5.0
    failed = run_cli("aggregate", str(good), str(bad), "--markdown", str(tmp_path / "report.md"))
    assert failed.returncode == 1
    expected = f"{bad}:5: helpfulness: 6 is out of range, spreadsheet row 3 (allowed: integers 1-5)"
    assert expected in failed.stderr
    assert f"{bad}:6: helpfulness: 'good' is not a number, spreadsheet row 4" in failed.stderr
    assert "Agreement between raters" in failed.stdout  # the valid cells were still aggregated
    assert "## Human evaluation" in (tmp_path / "report.md").read_text()


def test_aggregate_takes_a_bare_frame_and_an_empty_one():
    bare = pd.DataFrame({"id": ["x", "y"], **{d: [3, 5] for d in he.DIMENSIONS}})
    summary = he.aggregate(bare)
    assert summary["overall"]["mean"] == 4.0 and summary["raters"] == ["rater"]
    assert summary["by_category"] is None and summary["preference"] is None and summary["agreement"] is None
    empty, _ = he.read_sheets([])
    nothing = he.aggregate(empty)
    assert nothing["samples"] == 0 and nothing["dimensions"]["safety"] == {
        "mean": None,
        "n": 0,
        "ci_low": None,
        "ci_high": None,
        "ratings": 0,
    }
    assert "0 samples rated" in he.to_markdown(nothing)
