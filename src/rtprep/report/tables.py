"""Tables for Snakemake's HTML report (``snakemake --report report.html``), beside the figures.

The report shows an HTML result in its viewer (a CSV would only be offered as a download), so each
table is written as one small, self-contained HTML page:

- :func:`metrics_table`: the held-out scores of every evaluation of an export, one row per
  (split, lib, cap, model) from each ``metrics.json`` (:mod:`rtprep.models.evaluate`): rows,
  scored, skipped, RMSE, MAE, 95% coverage and mean width, and, where the evaluation was scored
  against a truth, the RMSE (and the width) over the oracle's on the rows that are not
  mis-assigned and, for a truth table, the 5th percentile of the per-compound coverage;
- :func:`accounting_table`: the export's rows of the run-wide row-accounting table
  (``results/row_accounting.csv``, :mod:`rtprep.core.accounting`).

Every number cell keeps the full value in ``data-value`` (the cell's text is rounded), so a
reader, or a test, can take it back exactly.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rtprep.core.accounting import COLUMNS as ACCOUNTING_COLUMNS
from rtprep.core.artifacts import atomic_output
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.paths import merged_name
from rtprep.models.evaluate import MODEL_ORDER

log = logging.getLogger(__name__)

#: The metrics table's columns and their headers (the truth ratios only when a truth was scored).
METRICS_COLUMNS: dict[str, str] = {
    "split": "split", "lib": "lib", "cap": "cap", "model": "model", "rows": "rows",
    "scored": "scored", "skipped": "skipped", "rmse": "RMSE", "mae": "MAE",
    "coverage95": "95% coverage", "width95": "95% width",
    "rmse_over_oracle": "RMSE ÷ oracle", "width_over_oracle": "width ÷ oracle",
    "coverage95_compound_p05": "95% coverage, p05 over compounds",
}
TRUTH_COLUMNS = ("rmse_over_oracle", "width_over_oracle", "coverage95_compound_p05")
OVERALL_KEYS = ("rows", "scored", "skipped", "rmse", "mae", "coverage95", "width95")
ACCOUNTING_HEADERS: dict[str, str] = {
    "artifact": "artifact", "stage": "stage", "lib": "lib", "rows_in": "rows in",
    "reason": "drop reason", "dropped": "dropped", "rows_out": "rows out",
}

_SCHEMA = {"split": pl.String, "lib": pl.String, "cap": pl.String, "model": pl.String,
           "rows": pl.Int64, "scored": pl.Int64, "skipped": pl.Int64, "rmse": pl.Float64,
           "mae": pl.Float64, "coverage95": pl.Float64, "width95": pl.Float64,
           "rmse_over_oracle": pl.Float64, "width_over_oracle": pl.Float64,
           "coverage95_compound_p05": pl.Float64}


@dataclass(frozen=True)
class EvalEntry:
    """One evaluation: its lib and cap, its ``metrics.json`` and, when the workflow evaluates more
    than one way (``random``, ``time``), the split's name."""

    lib: int | str
    cap: int | str
    path: str | Path
    split: str | None = None


#: What :func:`metrics_table` takes as one evaluation.
Entry = EvalEntry | Mapping[str, Any] | Sequence[Any]


def _entry(e: Entry) -> EvalEntry:
    if isinstance(e, EvalEntry):
        return e
    if isinstance(e, Mapping):
        missing = [k for k in ("lib", "cap", "path") if k not in e]
        extra = sorted(set(e) - {"lib", "cap", "path", "split"})
        if missing or extra:
            raise RtprepError(f"a metrics table entry has keys lib, cap, path and optionally "
                              f"split; {e!r} " + (f"has no {', '.join(missing)}" if missing
                                                  else f"has {', '.join(extra)}"))
        return EvalEntry(e["lib"], e["cap"], e["path"], e.get("split"))
    if not 3 <= len(e) <= 4:
        raise RtprepError(f"a metrics table entry is (lib, cap, metrics.json[, split]), not {e!r}")
    return EvalEntry(*e)


def _oracle_ratios(truth: dict[str, Any] | None, model: str) -> dict[str, float | None]:
    """RMSE and width over the oracle's, on the rows that are not mis-assigned.

    A truth table's scores (``kind: truth_table``, :mod:`rtprep.models.calibration`) carry both
    (the oracle: the rows' own noise sd); the demo's (:mod:`rtprep.models.truth`) give the truth
    RMSE (``rt - rt_true``) on the rows the model scored, so the RMSE ratio only."""
    out: dict[str, float | None] = dict.fromkeys(TRUTH_COLUMNS)
    if not truth:
        return out
    if truth.get("kind") == "truth_table":
        s = (truth.get("models") or {}).get(model) or {}
        out["rmse_over_oracle"] = s.get("rmse_over_oracle")
        out["width_over_oracle"] = s.get("width_over_oracle")
        out["coverage95_compound_p05"] = (s.get("coverage95_by_compound") or {}).get("p05")
        return out
    s = ((truth.get("clean") or {}).get("models") or {}).get(model) or {}
    if s.get("rmse") is not None and s.get("truth_rmse"):
        out["rmse_over_oracle"] = s["rmse"] / s["truth_rmse"]
    return out


def metrics_table(entries: Iterable[Entry]) -> pl.DataFrame:
    """One row per (entry, model) of each ``metrics.json``'s overall scores, models in the
    evaluation's order. ``entries``: dicts ``{lib, cap, path[, split]}`` (the workflow's),
    :class:`EvalEntry` or ``(lib, cap, path[, split])``.

    The ``split`` column is dropped when no entry names one, the truth ratios when no
    evaluation was scored against a truth."""
    rows: list[dict[str, Any]] = []
    for e in map(_entry, entries):
        path = Path(e.path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise input_error(path, f"cannot read the evaluation's metrics: {exc}") from exc
        overall = doc.get("overall")
        if not isinstance(overall, dict):
            raise RtprepError(f"{path}: no 'overall' block of per-model scores "
                              "(not an evaluation's metrics.json)")
        truth = doc.get("truth")
        models = sorted(overall, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER
                                                 else len(MODEL_ORDER), m))
        for model in models:
            scores = overall[model] or {}
            missing = [k for k in OVERALL_KEYS if k not in scores]
            if missing:
                raise RtprepError(f"{path}: overall.{model} has no {', '.join(missing)}")
            rows.append({"split": e.split, "lib": str(e.lib), "cap": str(e.cap), "model": model,
                         **{k: scores[k] for k in OVERALL_KEYS},
                         **_oracle_ratios(truth, model)})
    df = pl.DataFrame(rows, schema=_SCHEMA, orient="row") if rows else pl.DataFrame(
        schema=_SCHEMA)
    drop = [] if df["split"].is_not_null().any() else ["split"]
    drop += [c for c in TRUTH_COLUMNS if df[c].is_null().all()]
    return df.drop(drop)


def accounting_table(accounting_csv: str | Path, export: str | None = None) -> pl.DataFrame:
    """The rows of the run-wide accounting table (:func:`rtprep.core.accounting.gather_accounting`),
    with ``export``: only that export's artifacts (``merged_training_<export>[_...]``)."""
    path = Path(accounting_csv)
    try:
        df = pl.read_csv(path, schema_overrides={"lib": pl.String, "reason": pl.String,
                                                 "stage": pl.String})
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise input_error(path, f"cannot read the row-accounting table: {exc}") from exc
    missing = [c for c in ACCOUNTING_COLUMNS if c not in df.columns]
    if missing:
        raise RtprepError(f"{path}: no column {', '.join(missing)} "
                          f"(a row-accounting table has {', '.join(ACCOUNTING_COLUMNS)})")
    df = df.select(ACCOUNTING_COLUMNS)
    if export is not None:
        merged = merged_name(export)
        stem = merged.removesuffix(".parquet") + "_"
        df = df.filter((pl.col("artifact") == merged) | pl.col("artifact").str.starts_with(stem))
    return df


def _cell(col: str, value: Any, title: str | None = None) -> str:
    """A ``<td>`` of column ``col``: integers with thousands separators, floats to 4 significant
    digits (the full value in ``data-value``), missing values as ``n/a``; ``title``: the text
    in full, when the cell shows it shortened."""
    attr = f'data-col="{html.escape(col)}"'
    if title is not None:
        attr += f' title="{html.escape(title)}"'
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f'<td {attr} class="na">n/a</td>'
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"<td {attr}>{html.escape(str(value))}</td>"
    text = f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
    return f'<td {attr} class="num" data-value="{value!r}">{text}</td>'


_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 13px; margin: 12px; color: #1e293b; }
h1 { font-size: 15px; margin: 0 0 8px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #cbd5e1; padding: 3px 8px; }
th { background: #f1f5f9; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.na { color: #94a3b8; text-align: right; }
td[data-col="artifact"] { overflow-wrap: anywhere; }
p { max-width: 60em; }
"""


def write_html_table(df: pl.DataFrame, out: str | Path, *, title: str,
                     headers: Mapping[str, str] | None = None, note: str = "",
                     full_text: Mapping[str, Sequence[str]] | None = None) -> None:
    """``df`` as a self-contained HTML page (no script, no external resource), atomically.

    ``headers``: display names by column (default: the column names); each ``<th>`` and
    ``<td>`` carries its column in ``data-col``. ``full_text``: by column, each row's text in
    full (the cell's ``title``) for a column ``df`` holds shortened."""
    headers = headers or {}
    full_text = full_text or {}
    head = "".join(f'<th data-col="{html.escape(c)}">{html.escape(headers.get(c, c))}</th>'
                   for c in df.columns)
    body = "\n".join(
        "<tr>" + "".join(_cell(c, v, full_text[c][i] if c in full_text else None)
                         for c, v in zip(df.columns, row, strict=True)) + "</tr>"
        for i, row in enumerate(df.iter_rows()))
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n"
            + (f"<p>{html.escape(note)}</p>\n" if note else "")
            + f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
            f"</body>\n</html>\n")
    with atomic_output(out) as tmp:
        tmp.write_text(page, encoding="utf-8")


def write_metrics_table(entries: Iterable[Entry], out: str | Path, *,
                        export: str | None = None) -> pl.DataFrame:
    """:func:`metrics_table` of ``entries`` as the report's HTML page ``out``."""
    df = metrics_table(entries)
    title = "Held-out scores" + (f" of export {export}" if export else "")
    write_html_table(df, out, title=title, headers=METRICS_COLUMNS)
    log.info("metrics table: %d rows (%d evaluations) written to %s", df.height,
             df.select("lib", "cap", *(["split"] if "split" in df.columns else []))
             .n_unique(), out)
    return df


def write_accounting_table(accounting_csv: str | Path, out: str | Path, *,
                           export: str | None = None) -> pl.DataFrame:
    """:func:`accounting_table` as the report's HTML page ``out``. With ``export``, its artifacts'
    common start ``merged_training_<export>`` is shown as ``…`` (each cell's title: the name in
    full), so the numbers fit beside the names."""
    df = accounting_table(accounting_csv, export)
    title = "Row accounting" + (f" of export {export}" if export else "")
    note = (f"From {Path(accounting_csv).name}: one row per artifact and drop reason "
            "(n/a: nothing dropped).")
    shown, full = df, None
    if export is not None:
        stem = merged_name(export).removesuffix(".parquet")
        note += f" … stands for {stem}."
        shown = df.with_columns((pl.lit("…") + pl.col("artifact").str.strip_prefix(stem))
                                .alias("artifact"))
        full = {"artifact": df["artifact"].to_list()}
    write_html_table(shown, out, title=title, headers=ACCOUNTING_HEADERS, note=note,
                     full_text=full)
    log.info("row-accounting table: %d rows written to %s", df.height, out)
    return df
