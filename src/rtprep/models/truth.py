"""Scoring an evaluation against the demo generator's truth (``<demo>/truth/truth_peaks.parquet``).

The demo knows, for every peak it emitted, the noise-free retention time ``rt_true`` and whether
the peak was mis-assigned. Joined to an evaluation's ``predictions.parquet`` on (sample set,
task, compound, observed rt), it gives the yardstick the acceptance targets are stated in: the
RMSE of the *true parameters* (``rt - rt_true``: the noise no model can remove) beside each
model's RMSE, on all held-out rows (what a user sees, mis-assigned peaks included) and on the
rows that are not mis-assigned (whether the model itself is right), and each model's error
against ``rt_true`` itself (what the model got wrong, whatever the peak's noise or
mis-assignment). On all rows, the 0.5% mis-assigned peaks (3+ min off) dominate every RMSE:
in the support bins ≤ 5 the true parameters score within a few % of ridge there, so a pooled
vs ridge ratio is read on the clean rows or against ``rt_true``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import require_columns

log = logging.getLogger(__name__)

TRUTH_COLUMNS = ("sample_set_id", "task_id", "chem_id", "apex_rt", "rt_true", "is_misassigned")
#: Support bins the "bins ≤ 5" target covers.
LOW_SUPPORT_BINS = ("≤1", "2", "3–5")
MODELS = ("ridge", "pooled", "group_mean", "class_mean", "global_mean")


def join_truth(predictions: pl.DataFrame, truth_peaks: str | Path) -> pl.DataFrame:
    """``predictions`` (an evaluation's per-row table) with ``rt_true`` and ``is_misassigned``.

    Joined on (sampleset_id, task_id, compound, rt) = (sample_set_id, task_id, chem_id,
    apex_rt); truth rows repeated by the demo's re-processed datums are collapsed first. Rows
    without a truth match are dropped (and counted in the log).
    """
    path = Path(truth_peaks)
    if not path.is_file():
        raise RtprepError(f"{path}: truth file not found (the demo writes "
                          "<demo>/truth/truth_peaks.parquet)")
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise input_error(path, f"cannot be read as Parquet: {exc}") from exc
    require_columns(schema, TRUTH_COLUMNS, path, "demo truth peaks")
    truth = (pl.scan_parquet(path)
             .select(pl.col("sample_set_id").cast(pl.String).alias("sampleset_id"),
                     pl.col("task_id").cast(pl.String),
                     pl.col("chem_id").cast(pl.String).alias("compound"),
                     pl.col("apex_rt").cast(pl.Float64).alias("rt"),
                     pl.col("rt_true").cast(pl.Float64),
                     pl.col("is_misassigned").cast(pl.Boolean))
             .unique(subset=["sampleset_id", "task_id", "compound", "rt"], keep="first",
                     maintain_order=True)
             .collect())
    keys = ["sampleset_id", "task_id", "compound", "rt"]
    pred = predictions.with_columns(pl.col("sampleset_id", "task_id", "compound")
                                    .cast(pl.String), pl.col("rt").cast(pl.Float64))
    out = pred.join(truth, on=keys, how="inner", maintain_order="left")
    if out.height < pred.height:
        log.warning("truth: %d of %d prediction rows have no truth peak", pred.height - out.height,
                    pred.height)
    return out


def _score(df: pl.DataFrame, model: str) -> dict[str, Any]:
    pred, lo, hi = f"{model}_pred", f"{model}_lower", f"{model}_upper"
    ok = df.filter(pl.col(pred).is_not_null())
    if ok.height == 0:
        return {"rows": df.height, "scored": 0, "rmse": None, "coverage95": None, "width95": None}
    err = pl.col("rt") - pl.col(pred)
    row = ok.select(
        (err**2).mean().sqrt().alias("rmse"),
        ((pl.col("rt") >= pl.col(lo)) & (pl.col("rt") <= pl.col(hi))).mean().alias("cov"),
        (pl.col(hi) - pl.col(lo)).mean().alias("width"),
        ((pl.col("rt") - pl.col("rt_true")) ** 2).mean().sqrt().alias("truth_rmse"),
        ((pl.col("rt_true") - pl.col(pred)) ** 2).mean().sqrt().alias("vs_true"),
    ).row(0, named=True)
    return {"rows": df.height, "scored": ok.height, "rmse": row["rmse"],
            "truth_rmse": row["truth_rmse"], "coverage95": row["cov"], "width95": row["width"],
            "rmse_vs_rt_true": row["vs_true"]}


def truth_report(predictions: pl.DataFrame | str | Path,
                 truth_peaks: str | Path) -> dict[str, Any]:
    """The acceptance numbers of an evaluation against the demo's truth.

    For ``all`` held-out rows and for ``clean`` rows (not mis-assigned): the truth RMSE (of
    ``rt_true``, on every row) and, per model, rows scored, RMSE, 95% coverage, mean width and
    the truth RMSE on the rows that model scored; the pooled/truth RMSE ratio; pooled and ridge
    in the support bins ≤ 5 (the rows both scored); pooled, class-mean and global-mean on the
    unseen-compound rows (the pooled model's backoff).
    """
    if not isinstance(predictions, pl.DataFrame):
        predictions = pl.read_parquet(predictions)
    df = join_truth(predictions, truth_peaks)
    subsets = {"all": df, "clean": df.filter(~pl.col("is_misassigned"))}
    report: dict[str, Any] = {"rows_matched": df.height, "rows_predictions": predictions.height,
                              "misassigned_rows": int(df["is_misassigned"].sum())}
    models = [m for m in MODELS if f"{m}_pred" in df.columns]
    for name, sub in subsets.items():
        truth_rmse = float(sub.select(((pl.col("rt") - pl.col("rt_true")) ** 2).mean().sqrt())
                           .item()) if sub.height else None
        scores = {m: _score(sub, m) for m in models}
        block: dict[str, Any] = {"rows": sub.height, "truth_rmse": truth_rmse, "models": scores}
        if "pooled" in scores and scores["pooled"]["rmse"] is not None and truth_rmse:
            block["pooled_over_truth"] = scores["pooled"]["rmse"] / scores["pooled"]["truth_rmse"]
        low = sub.filter(pl.col("support_bin").is_in(list(LOW_SUPPORT_BINS))
                         & pl.col("ridge_pred").is_not_null() & pl.col("pooled_pred").is_not_null()
                         ) if {"ridge_pred", "pooled_pred"} <= set(sub.columns) else None
        if low is not None:
            lp, lr = _score(low, "pooled"), _score(low, "ridge")
            block["support_le5"] = {
                "rows": low.height, "pooled_rmse": lp["rmse"], "ridge_rmse": lr["rmse"],
                "truth_rmse": lp.get("truth_rmse"),
                "pooled_over_ridge": (lp["rmse"] / lr["rmse"]) if lp["rmse"] and lr["rmse"]
                else None,
                # the true parameters' own ratio: the floor any model's ratio has on these rows
                "truth_over_ridge": (lp["truth_rmse"] / lr["rmse"])
                if lp.get("truth_rmse") and lr["rmse"] else None,
                # each model's error against rt_true (the noise-free RT), not the observed rt:
                # what the model got wrong, whatever the peak's noise or mis-assignment
                "pooled_rmse_vs_rt_true": lp.get("rmse_vs_rt_true"),
                "ridge_rmse_vs_rt_true": lr.get("rmse_vs_rt_true"),
                "pooled_over_ridge_vs_rt_true": (lp["rmse_vs_rt_true"] / lr["rmse_vs_rt_true"])
                if lp.get("rmse_vs_rt_true") and lr.get("rmse_vs_rt_true") else None}
            block["support_bins"] = {
                b: {m: _score(sub.filter(pl.col("support_bin") == b), m)["rmse"]
                    for m in ("pooled", "ridge")}
                | {"truth": _score(sub.filter(pl.col("support_bin") == b), "pooled")
                   .get("truth_rmse")}
                for b in LOW_SUPPORT_BINS}
        unseen = sub.filter(pl.col("novelty") == "unseen compound")
        block["unseen_compound"] = {
            "rows": unseen.height,
            **{m: _score(unseen, m) for m in ("pooled", "class_mean", "global_mean")
               if m in models}}
        report[name] = block
    return report


def truth_table(report: dict[str, Any]) -> pl.DataFrame:
    """The per-model part of :func:`truth_report` as a long table (subset, model, metrics)."""
    rows = []
    for subset in ("all", "clean"):
        block = report[subset]
        rows.append({"subset": subset, "model": "truth", "rows": block["rows"],
                     "scored": block["rows"], "rmse": block["truth_rmse"],
                     "coverage95": None, "width95": None})
        for m, s in block["models"].items():
            rows.append({"subset": subset, "model": m, "rows": s["rows"], "scored": s["scored"],
                         "rmse": s["rmse"], "coverage95": s["coverage95"],
                         "width95": s["width95"]})
    return pl.DataFrame(rows, schema={"subset": pl.String, "model": pl.String, "rows": pl.Int64,
                                      "scored": pl.Int64, "rmse": pl.Float64,
                                      "coverage95": pl.Float64, "width95": pl.Float64})
