"""Scoring held-out predictions against a truth table: accuracy beside the oracle, calibration
per compound, on the rows every model scores, with bootstrap intervals by sample set.

A truth table has one row per generated peak: ``task_id, compound, rt_true, noise_sd,
misassigned`` (the shared realistic export's ``truth.parquet``; any export whose truth is known).
Joined to an evaluation's ``predictions.parquet`` on ``(task_id, compound)``, the **clean** rows
(not mis-assigned) are scored, and on them the **oracle** is the rows' own noise: its RMSE is the
root mean square of ``noise_sd`` and its 95% interval is ``±1.96 noise_sd`` (width ``3.92
noise_sd``). Per model, on the rows all the models compared score (``same_rows``), beside each
model's share of the clean rows it can score:

- ``rmse`` and ``rmse_over_oracle``, ``mae``;
- ``coverage95``, ``width95`` and ``width_over_oracle``;
- ``coverage95_by_compound``: the 5th percentile (and the median) of the per-compound coverage
  over compounds with at least ``MIN_COMPOUND_ROWS`` held-out rows, and how many there are;
- ``interval_score``: the mean 95% interval score (Gneiting & Raftery 2007: width, plus 2/α
  times how far the observation falls outside; lower is better);
- ``log_density``: the mean log predictive density of the observed RT (a normal with the
  prediction's sd);
- ``ci95``: bootstrap intervals (``BOOTSTRAP`` resamples of whole sample sets, seeded) of the
  RMSE ÷ oracle and of the coverage.

And of the training rows (the model's ``rows.parquet``): how well the rows it left out as
mis-assigned match those the truth puts at least ``FLAG_K`` noise sds off (:func:`flag_report`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import require_columns

log = logging.getLogger(__name__)

TRUTH_TABLE_COLUMNS = ("task_id", "compound", "rt_true", "noise_sd", "misassigned")
MIN_COMPOUND_ROWS = 30
#: A training row is mis-assigned, for the flag scores, when it lies this many noise sds off.
FLAG_K = 5.0
BOOTSTRAP = 200
Z95 = 1.959963984540054
ALPHA = 0.05


def is_truth_table(path: str | Path) -> bool:
    """True when ``path`` is a truth table (:data:`TRUTH_TABLE_COLUMNS`), not the demo's
    ``truth_peaks.parquet``."""
    try:
        names = set(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError):
        return False
    return set(TRUTH_TABLE_COLUMNS) <= names


def read_truth_table(path: str | Path) -> pl.DataFrame:
    """``task_id, compound`` (as strings), ``rt_true, noise_sd, misassigned``; one row per
    (task_id, compound)."""
    path = Path(path)
    if not path.is_file():
        raise RtprepError(f"{path}: truth file not found")
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise input_error(path, f"cannot be read as Parquet: {exc}") from exc
    require_columns(schema, TRUTH_TABLE_COLUMNS, path, "a truth table")
    truth = pl.read_parquet(path, columns=list(TRUTH_TABLE_COLUMNS)).with_columns(
        pl.col("task_id", "compound").cast(pl.String),
        pl.col("rt_true", "noise_sd").cast(pl.Float64),
        pl.col("misassigned").cast(pl.Boolean))
    dup = truth.select("task_id", "compound").is_duplicated()
    if dup.any():
        first = truth.filter(dup).row(0, named=True)
        raise input_error(path, f"(task_id, compound) = ({first['task_id']}, "
                          f"{first['compound']}) appears more than once", column="compound")
    return truth


def _model_columns(model: str) -> tuple[str, str, str, str]:
    return f"{model}_pred", f"{model}_lower", f"{model}_upper", f"{model}_sd"


def _per_row(df: pl.DataFrame, model: str) -> pl.DataFrame:
    """Per-row squared error, coverage, width, interval score, log density of one model."""
    pred, lo, hi, sd = _model_columns(model)
    sd_expr = (pl.col(sd) if sd in df.columns
               else (pl.col(hi) - pl.col(lo)) / (2 * Z95))  # older predictions: from the interval
    y = pl.col("rt")
    below = (pl.col(lo) - y).clip(lower_bound=0)
    above = (y - pl.col(hi)).clip(lower_bound=0)
    return df.select(
        "sampleset_id", "compound", "noise_sd",
        ((y - pl.col(pred)) ** 2).alias("se"),
        (y - pl.col(pred)).abs().alias("ae"),
        ((y >= pl.col(lo)) & (y <= pl.col(hi))).cast(pl.Float64).alias("covered"),
        (pl.col(hi) - pl.col(lo)).alias("width"),
        ((pl.col(hi) - pl.col(lo)) + (2 / ALPHA) * (below + above)).alias("interval_score"),
        (-0.5 * np.log(2 * np.pi) - sd_expr.log()
         - 0.5 * ((y - pl.col(pred)) / sd_expr) ** 2).alias("log_density"),
    )


def _bootstrap(rows: pl.DataFrame, seed: int) -> dict[str, list[float]]:
    """95% intervals of RMSE ÷ oracle and coverage over resamples of whole sample sets."""
    per_set = rows.group_by("sampleset_id").agg(
        pl.col("se").sum(), (pl.col("noise_sd") ** 2).sum().alias("ns"),
        pl.col("covered").sum(), pl.len().alias("n")).sort("sampleset_id")
    k = per_set.height
    if k < 2:
        return {}
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, k, size=(BOOTSTRAP, k))
    sums = {c: per_set[c].to_numpy().astype(np.float64)[pick].sum(axis=1)
            for c in ("se", "ns", "covered", "n")}
    ratio = np.sqrt(sums["se"] / sums["ns"])
    cover = sums["covered"] / sums["n"]
    return {"rmse_over_oracle": np.quantile(ratio, [0.025, 0.975]).tolist(),
            "coverage95": np.quantile(cover, [0.025, 0.975]).tolist()}


def _summary(rows: pl.DataFrame, seed: int) -> dict[str, Any]:
    oracle = float(np.sqrt((rows["noise_sd"] ** 2).mean()))
    rmse = float(np.sqrt(rows["se"].mean()))
    by_cpd = (rows.group_by("compound").agg(pl.len().alias("n"), pl.col("covered").mean())
              .filter(pl.col("n") >= MIN_COMPOUND_ROWS))
    cov_c = by_cpd["covered"].to_numpy()
    return {
        "rows": rows.height,
        "rmse": rmse, "rmse_over_oracle": rmse / oracle if oracle > 0 else None,
        "mae": float(rows["ae"].mean()),
        "coverage95": float(rows["covered"].mean()),
        "width95": float(rows["width"].mean()),
        "width_over_oracle": float(rows["width"].mean() / (2 * Z95 * rows["noise_sd"].mean())),
        "coverage95_by_compound": {
            "compounds": len(cov_c), "min_rows": MIN_COMPOUND_ROWS,
            "p05": float(np.quantile(cov_c, 0.05)) if len(cov_c) else None,
            "median": float(np.median(cov_c)) if len(cov_c) else None},
        "interval_score": float(rows["interval_score"].mean()),
        "log_density": float(rows["log_density"].mean()),
        "ci95": _bootstrap(rows, seed),
    }


def calibration_report(predictions: pl.DataFrame, truth: pl.DataFrame,
                       models: tuple[str, ...] = ("pooled", "ridge"), *,
                       seed: int = 0) -> dict[str, Any]:
    """The numbers of the module docstring for ``models`` (those present in ``predictions``)."""
    pred = predictions.with_columns(pl.col("task_id", "compound", "sampleset_id")
                                    .cast(pl.String))
    df = pred.join(truth, on=["task_id", "compound"], how="inner", maintain_order="left")
    if df.height < pred.height:
        log.warning("truth: %d of %d prediction rows have no truth row",
                    pred.height - df.height, pred.height)
    clean = df.filter(~pl.col("misassigned"))
    present = [m for m in models if f"{m}_pred" in clean.columns]
    scored = {m: clean[f"{m}_pred"].is_not_null() for m in present}
    same = np.ones(clean.height, dtype=bool)
    for mask in scored.values():
        same &= mask.to_numpy()
    same_rows = clean.filter(pl.Series(same))
    oracle = float(np.sqrt((clean["noise_sd"] ** 2).mean())) if clean.height else None
    return {
        "rows_matched": df.height, "rows_predictions": pred.height,
        "misassigned_rows": int(df["misassigned"].sum()),
        "clean_rows": clean.height, "same_rows": same_rows.height,
        "oracle_rmse": oracle,
        "models": {m: {"share_scored": float(scored[m].mean()) if clean.height else None,
                       **_summary(_per_row(same_rows, m), seed)} for m in present}
        if same_rows.height else {},
    }


def calibration_table(report: dict[str, Any]) -> pl.DataFrame:
    """One row per model of :func:`calibration_report` (the headline numbers)."""
    rows = []
    for m, s in report["models"].items():
        ci = s.get("ci95", {})
        rows.append({
            "model": m, "same_rows": report["same_rows"], "share_scored": s["share_scored"],
            "rmse": s["rmse"], "rmse_over_oracle": s["rmse_over_oracle"],
            "rmse_over_oracle_lo": (ci.get("rmse_over_oracle") or [None, None])[0],
            "rmse_over_oracle_hi": (ci.get("rmse_over_oracle") or [None, None])[1],
            "mae": s["mae"], "coverage95": s["coverage95"],
            "coverage95_lo": (ci.get("coverage95") or [None, None])[0],
            "coverage95_hi": (ci.get("coverage95") or [None, None])[1],
            "coverage95_compound_p05": s["coverage95_by_compound"]["p05"],
            "compounds_30_rows": s["coverage95_by_compound"]["compounds"],
            "width95": s["width95"], "width_over_oracle": s["width_over_oracle"],
            "interval_score": s["interval_score"], "log_density": s["log_density"]})
    return pl.DataFrame(rows)


def flag_report(train_rows: pl.DataFrame, truth: pl.DataFrame) -> dict[str, Any]:
    """Precision and recall of the training rows the model left out (``rt_outlier``) against
    the rows the truth puts ``FLAG_K`` noise sds or more off, and the share of the other (good)
    rows left out."""
    rows = train_rows.with_columns(pl.col("task_id", "compound").cast(pl.String)).join(
        truth, on=["task_id", "compound"], how="inner")
    off = ((rows["rt"] - rows["rt_true"]).abs() >= FLAG_K * rows["noise_sd"]).to_numpy()
    flagged = rows["rt_outlier"].to_numpy()
    tp = int((off & flagged).sum())
    return {
        "rows": rows.height, "k": FLAG_K, "off_rows": int(off.sum()),
        "flagged_rows": int(flagged.sum()),
        "precision": tp / int(flagged.sum()) if flagged.any() else None,
        "recall": tp / int(off.sum()) if off.any() else None,
        "good_rows_left_out": float((flagged & ~off).sum() / max(int((~off).sum()), 1)),
    }
