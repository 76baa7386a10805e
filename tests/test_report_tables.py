"""The report's tables (rtprep.report.tables) on small hand-made inputs; tests/test_report.py sees
them in the real report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rtprep.core.errors import RtprepError
from rtprep.report.tables import (
    EvalEntry,
    accounting_table,
    metrics_table,
    write_accounting_table,
    write_metrics_table,
)


def _scores(rows: int, scored: int, rmse: float | None, mae: float | None = 0.1,
            coverage: float | None = 0.95, width: float | None = 0.4) -> dict[str, Any]:
    return {"rows": rows, "scored": scored, "skipped": rows - scored, "rmse": rmse, "mae": mae,
            "coverage95": coverage, "width95": width}


def _metrics_json(path: Path, overall: dict[str, Any], truth: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {"test_rows": 100, "train_rows": 400, "overall": overall,
                           "metrics": [], "skipped": []}
    if truth is not None:
        doc["truth"] = truth
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# evaluate writes the models in its own order (ridge, pooled, baselines); given out of order here
OVERALL = {"global_mean": _scores(100, 100, 7.5, 6.0, 0.96, 30.0),
           "pooled": _scores(100, 100, 0.21, 0.12, 0.94, 0.36),
           "ridge": _scores(100, 70, 0.25, 0.15, 0.93, None)}
DEMO_TRUTH = {"rows_matched": 100, "misassigned_rows": 1,
              "clean": {"rows": 99, "truth_rmse": 0.07, "models": {
                  "pooled": {"rows": 99, "scored": 99, "rmse": 0.091, "truth_rmse": 0.07},
                  "ridge": {"rows": 99, "scored": 69, "rmse": 0.18, "truth_rmse": 0.06},
                  "global_mean": {"rows": 99, "scored": 99, "rmse": 7.9, "truth_rmse": 0.07}}}}


class _Tables(HTMLParser):
    """The cells of every table of a page: header keys (data-col) and, per row, (text, attrs)."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[list[tuple[str, dict[str, str | None]]]] = []
        self._cell: tuple[list[str], dict[str, str | None]] | None = None
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag == "th":
            self.header.append(a["data-col"] or "")
        elif tag == "td":
            self._cell = ([], a)
        elif tag in ("script", "link", "img"):
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[0].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(("".join(self._cell[0]), self._cell[1]))
            self._cell = None


def _parse(path: Path) -> _Tables:
    p = _Tables()
    p.feed(path.read_text(encoding="utf-8"))
    p.rows = [r for r in p.rows if r]  # the header row has no <td>
    return p


def test_metrics_table_rows_per_model_in_order(tmp_path: Path) -> None:
    a = _metrics_json(tmp_path / "a/metrics.json", OVERALL)
    b = _metrics_json(tmp_path / "b/metrics.json", {"pooled": _scores(50, 50, 0.3)})
    df = metrics_table([(208, 5, a), EvalEntry(209, 10, str(b))])
    assert df.columns == ["lib", "cap", "model", "rows", "scored", "skipped", "rmse", "mae",
                          "coverage95", "width95"]  # no split, no truth: those columns left out
    assert df.select("lib", "cap", "model").rows() == [
        ("208", "5", "ridge"), ("208", "5", "pooled"), ("208", "5", "global_mean"),
        ("209", "10", "pooled")]
    ridge = df.row(0, named=True)
    assert ridge == {"lib": "208", "cap": "5", "model": "ridge", **OVERALL["ridge"]}


def test_metrics_table_split_column_and_demo_truth_ratio(tmp_path: Path) -> None:
    r = _metrics_json(tmp_path / "random/metrics.json", OVERALL, DEMO_TRUTH)
    t = _metrics_json(tmp_path / "time/metrics.json", {"pooled": _scores(80, 80, 0.4)})
    df = metrics_table([(208, 5, r, "random"), (208, 5, t, "time")])
    assert df.columns[0] == "split" and "width_over_oracle" not in df.columns
    assert df["split"].to_list() == ["random"] * 3 + ["time"]
    ratio = dict(zip(df["model"][:3], df["rmse_over_oracle"][:3], strict=True))
    # the model's RMSE over the truth RMSE on the clean rows it scored
    assert ratio["pooled"] == pytest.approx(0.091 / 0.07)
    assert ratio["ridge"] == pytest.approx(0.18 / 0.06)
    assert df.filter(split="time")["rmse_over_oracle"].to_list() == [None]


def test_metrics_table_truth_table_ratios(tmp_path: Path) -> None:
    truth = {"kind": "truth_table", "same_rows": 60, "models": {
        "pooled": {"rmse_over_oracle": 1.08, "width_over_oracle": 1.2,
                   "coverage95_by_compound": {"compounds": 12, "min_rows": 30, "p05": 0.81,
                                              "median": 0.95}},
        "ridge": {"rmse_over_oracle": 1.9, "width_over_oracle": None,
                  "coverage95_by_compound": {"compounds": 0, "min_rows": 30, "p05": None,
                                             "median": None}}}}
    m = _metrics_json(tmp_path / "metrics.json", OVERALL, truth)
    df = metrics_table([(1, 5, m)])
    got = {r["model"]: (r["rmse_over_oracle"], r["width_over_oracle"],
                        r["coverage95_compound_p05"]) for r in df.iter_rows(named=True)}
    assert got == {"ridge": (1.9, None, None), "pooled": (1.08, 1.2, 0.81),
                   "global_mean": (None, None, None)}


def test_metrics_table_takes_the_workflows_dict_entries(tmp_path: Path) -> None:
    """The rule's entries: {lib, cap, split, path}; one row per model per lib × cap."""
    a = _metrics_json(tmp_path / "a/metrics.json", OVERALL)
    b = _metrics_json(tmp_path / "b/metrics.json", OVERALL)
    entries = [{"lib": 208, "cap": 5, "split": "random", "path": str(a)},
               {"lib": 209, "cap": 5, "split": "random", "path": b}]
    df = metrics_table(entries)
    assert df.columns[:4] == ["split", "lib", "cap", "model"]
    assert df.height == 2 * len(OVERALL)
    assert df.group_by("lib", "cap").len().sort("lib")["len"].to_list() == [len(OVERALL)] * 2
    ridge = df.filter(lib="209", model="ridge").row(0, named=True)
    assert {k: ridge[k] for k in OVERALL["ridge"]} == OVERALL["ridge"]
    with pytest.raises(RtprepError, match="has no path"):
        metrics_table([{"lib": 1, "cap": 5, "split": "random"}])


def test_metrics_table_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "none/metrics.json"
    with pytest.raises(RtprepError, match=r"none/metrics\.json: cannot read"):
        metrics_table([(1, 5, missing)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"overall": {"pooled": {"rows": 3}}}))
    with pytest.raises(RtprepError, match=r"bad\.json: overall\.pooled has no scored"):
        metrics_table([(1, 5, bad)])
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(RtprepError, match=r"other\.json: no 'overall' block"):
        metrics_table([(1, 5, other)])
    with pytest.raises(RtprepError, match=r"lib, cap, metrics\.json"):
        metrics_table([(1, 5)])


def test_metrics_html_keeps_every_value(tmp_path: Path) -> None:
    m = _metrics_json(tmp_path / "metrics.json", OVERALL, DEMO_TRUTH)
    out = tmp_path / "report/abc/metrics.html"
    df = write_metrics_table([(208, 5, m)], out, export="abc")
    page = _parse(out)
    assert page.scripts == 0  # self-contained
    assert page.header == df.columns
    assert len(page.rows) == df.height == 3
    for row, expected in zip(page.rows, df.iter_rows(named=True), strict=True):
        cells = {attrs["data-col"]: (text, attrs) for text, attrs in row}
        for col, value in expected.items():
            text, attrs = cells[col]
            if value is None:
                assert text == "n/a" and "data-value" not in attrs, col
            elif isinstance(value, int | float):
                assert float(attrs["data-value"] or "nan") == value, col  # exact, not rounded
            else:
                assert text == value, col
    ridge = {a["data-col"]: t for t, a in page.rows[0]}
    assert ridge["rows"] == "100" and ridge["rmse"] == "0.25" and ridge["width95"] == "n/a"
    assert "Held-out scores of export abc" in out.read_text(encoding="utf-8")


def test_accounting_table_keeps_its_export(tmp_path: Path) -> None:
    rows = [
        ("merged_training_abc.parquet", "merge", "1", 10, "duplicate_row", 2, 8),
        ("merged_training_abc_lib1.parquet", "split", "1", 8, None, 0, 8),
        ("merged_training_abc_lib1_cap5_chemclass_rt_prod.csv", "rt_csv", "1", 8, None, 0, 8),
        # an export whose hash starts with the other's
        ("merged_training_abcd.parquet", "merge", "2", 5, None, 0, 5),
        ("merged_training_abcd_lib2.parquet", "split", "2", 5, None, 0, 5),
    ]
    csv = tmp_path / "row_accounting.csv"
    pl.DataFrame(rows, orient="row", schema=["artifact", "stage", "lib", "rows_in", "reason",
                                             "dropped", "rows_out"]).write_csv(csv)
    assert accounting_table(csv).height == 5
    abc = accounting_table(csv, "abc")
    assert abc["artifact"].to_list() == [r[0] for r in rows[:3]]
    out = tmp_path / "row_accounting.html"
    df = write_accounting_table(csv, out, export="abcd")
    page = _parse(out)
    assert df.height == len(page.rows) == 2
    assert page.header == list(df.columns)
    # the export's common start is shown as … (the name in full in the cell's title)
    assert [r[0][0] for r in page.rows] == ["….parquet", "…_lib2.parquet"]
    assert [r[0][1]["title"] for r in page.rows] == [r[0] for r in rows[3:]]
    assert "… stands for merged_training_abcd." in out.read_text(encoding="utf-8")
    assert page.rows[0][4] == ("n/a", {"data-col": "reason", "class": "na"})
    bad = tmp_path / "bad.csv"
    bad.write_text("artifact,stage\nx,merge\n")
    with pytest.raises(RtprepError, match=r"bad\.csv: no column lib, rows_in"):
        accounting_table(bad)
