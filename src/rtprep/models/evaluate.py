"""Held-out evaluation of the RT models and of simple baselines, without leakage.

The models are trained on the train folds' rows only; every row of the test folds (whole sample
sets never seen in training) is scored. Models: ``ridge``, ``pooled`` and the baselines
``group_mean`` (training mean of the row's group), ``class_mean`` (training mean of the row's
compound class) and ``global_mean``. Metrics: RMSE, MAE, 95% interval coverage and mean width,
rows scored and skipped (with reasons): overall, by support bin (training rows of the row's
group), by species cluster, and by novelty (seen group, unseen pair, unseen compound, unseen
species, both unseen: the pooled model's backoff).

Outputs in ``out_dir``: ``metrics.csv`` (long table), ``skipped.csv``, ``predictions.parquet``
(every test row with each model's prediction and interval) and ``metrics.json`` (all tables;
written last, with a sidecar). The report's model-quality figure draws them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps

from rtprep.core.artifacts import (
    RowAccount,
    atomic_output,
    file_checksum,
    write_sidecars,
    write_text_atomic,
)
from rtprep.core.errors import RtprepError
from rtprep.core.frames import write_csv_atomic, write_parquet_atomic
from rtprep.core.paths import (
    EVAL_FILES,
    EVAL_METRICS,
    EVAL_METRICS_CSV,
    EVAL_MODEL_DIR,
    EVAL_PREDICTIONS,
    EVAL_SKIPPED,
    EVAL_TRUTH_CSV,
    EVAL_TRUTH_FILES,
    EVAL_TRUTH_JSON,
    MODEL_ROWS,
)
from rtprep.models.api import load_models, train
from rtprep.models.data import read_rows
from rtprep.models.options import ModelOptions

log = logging.getLogger(__name__)

#: Support bins (training rows of the row's group).
SUPPORT_BINS: tuple[tuple[str, int, int], ...] = (
    ("≤1", 1, 1), ("2", 2, 2), ("3–5", 3, 5), ("6–10", 6, 10), ("11–20", 11, 20),
    ("21–50", 21, 50), ("51–100", 51, 100), (">100", 101, 2**62),
)
UNSEEN_BIN = "0 (unseen group)"
MODEL_ORDER = ("ridge", "pooled", "group_mean", "class_mean", "global_mean")


def support_bin(n: pl.Expr) -> pl.Expr:
    """Label of the support bin of a training row count."""
    expr = pl.when(n <= 0).then(pl.lit(UNSEEN_BIN))
    for label, lo, hi in SUPPORT_BINS:
        expr = expr.when((n >= lo) & (n <= hi)).then(pl.lit(label))
    return expr.otherwise(pl.lit(UNSEEN_BIN))


def _baselines(train: pl.DataFrame, test: pl.DataFrame, unit: str) -> dict[str, pl.DataFrame]:
    """group / class / global mean predictions with t intervals from the within-level spread."""
    q = float(sps.norm.ppf(0.975))
    out: dict[str, pl.DataFrame] = {}
    for name, keys, reason in (("group_mean", [unit, "compound"], "unseen group"),
                               ("class_mean", ["compound_class"], "unseen class")):
        lvl = train.group_by(keys).agg(
            pl.col("rt").mean().alias("_m"), pl.len().alias("_n"),
            ((pl.col("rt") - pl.col("rt").mean()) ** 2).sum().alias("_ss"))
        dof = float((lvl["_n"] - 1).sum())
        pooled_sd = float(np.sqrt(lvl["_ss"].sum() / dof)) if dof > 0 else float("nan")
        tq = float(sps.t.ppf(0.975, dof)) if dof > 0 else q
        if name == "class_mean":
            # classes differ in spread; each class's own sd where it has a few rows
            lvl = lvl.with_columns(pl.when(pl.col("_n") > 2)
                                   .then((pl.col("_ss") / (pl.col("_n") - 1)).sqrt())
                                   .otherwise(pooled_sd).alias("_sd"))
        else:
            lvl = lvl.with_columns(pl.lit(pooled_sd).alias("_sd"))
        j = (test.select(keys).with_row_index("_r").join(lvl, on=keys, how="left").sort("_r"))
        half = tq * j["_sd"] * (1 + 1 / j["_n"].cast(pl.Float64)).sqrt()
        out[name] = pl.DataFrame({
            "rt_pred": j["_m"], "rt_lower": j["_m"] - half, "rt_upper": j["_m"] + half,
            "skip": j.select(pl.when(pl.col("_m").is_null()).then(pl.lit(reason))
                             .otherwise(pl.lit(None, dtype=pl.String)).alias("skip"))["skip"],
        })
    m = float(train["rt"].mean())
    sd = float(train["rt"].std())
    half = q * sd * np.sqrt(1 + 1 / train.height)
    out["global_mean"] = pl.DataFrame({
        "rt_pred": np.full(test.height, m), "rt_lower": np.full(test.height, m - half),
        "rt_upper": np.full(test.height, m + half),
        "skip": pl.Series([None] * test.height, dtype=pl.String),
    })
    return out


def _metrics(long: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    err = pl.col("rt") - pl.col("rt_pred")
    ok = pl.col("rt_pred").is_not_null()
    return (long.group_by([*by, "model"]).agg(
        pl.len().alias("rows"),
        ok.sum().alias("scored"),
        (~ok).sum().alias("skipped"),
        (err.filter(ok) ** 2).mean().sqrt().alias("rmse"),
        err.filter(ok).abs().mean().alias("mae"),
        ((pl.col("rt") >= pl.col("rt_lower")) & (pl.col("rt") <= pl.col("rt_upper")))
        .filter(ok).cast(pl.Float64).mean().alias("coverage95"),
        (pl.col("rt_upper") - pl.col("rt_lower")).filter(ok).mean().alias("width95"),
    ))


@dataclass
class Scores:
    """What :func:`score` finds: the long metrics table, the skipped rows by reason, every
    test row's predictions (wide) and the overall metrics per model."""

    metrics: pl.DataFrame
    skipped: pl.DataFrame
    predictions: pl.DataFrame
    overall: dict[str, dict[str, Any]]


def evaluate(model_dir: str | Path | None, train_csv: str | Path, test_rows: str | Path,
             out_dir: str | Path, *, options: ModelOptions | None = None,
             embeddings: str | Path | None = None, quick: bool = False,
             truth: str | Path | None = None) -> dict[str, Any]:
    """Score the models trained on ``train_csv`` on every row of ``test_rows``.

    ``truth``: a truth table or the demo's ``truth/truth_peaks.parquet``; the scores against
    it are then added as ``truth`` to the result and written to ``truth.json`` and
    ``truth.csv`` (see :mod:`rtprep.models.calibration` and :mod:`rtprep.models.truth`).

    ``model_dir``: a folder written by :func:`rtprep.models.train` from exactly ``train_csv``
    (checked by checksum: a model trained on other rows could have seen the test rows). With
    ``None`` the models are trained here, into ``<out_dir>/model``. Returns the metrics dict
    (also written to ``<out_dir>/metrics.json``).
    """
    opts = options or ModelOptions()
    out = Path(out_dir)
    if model_dir is None:
        model_dir = out / EVAL_MODEL_DIR
        train(train_csv, model_dir, options=opts, quick=quick, embeddings=embeddings)
    models = load_models(model_dir)
    _require_trained_on(models, model_dir, train_csv)
    any_model = next(iter(models.values()))
    families = tuple(any_model.meta.get("options", {}).get("families", opts.families))
    account = RowAccount("evaluate")
    train_df, _ = read_rows(train_csv, families, features=[])
    test_df, _ = read_rows(test_rows, families, features=any_model.covariates.names,
                           account=account)
    _require_disjoint(train_df, test_df, train_csv, test_rows)
    scores = score(models, train_df, test_df)
    account.rows_out = test_df.height
    account.extra = {"train_rows": train_df.height, "test_sample_sets":
                     int(test_df["sampleset_id"].n_unique()) if "sampleset_id" in test_df.columns
                     else None}
    truth_block = truth_table_ = None
    if truth is not None:
        truth_block, truth_table_ = _truth_scores(scores.predictions, truth, model_dir,
                                                  opts.seed)
    result = {
        "model_dir": str(model_dir), "train": str(train_csv), "test": str(test_rows),
        "test_rows": test_df.height, "train_rows": train_df.height,
        "test_sample_sets": account.extra["test_sample_sets"],
        "overall": scores.overall,
        "metrics": scores.metrics.to_dicts(),
        "skipped": scores.skipped.to_dicts(),
        "isomer_choice": _isomer_choice(models, train_df, test_df, embeddings, opts.seed),
        "files": [*EVAL_FILES[1:], *(EVAL_TRUTH_FILES if truth_block is not None else [])],
    }
    if truth_block is not None:
        result["truth"] = truth_block
    result = _plain(result)
    write_evaluation(out, scores, result, truth_table_, account=account,
                     inputs=(train_csv, test_rows),
                     config={"model_dir": str(model_dir), **opts.to_dict()})
    log.info("evaluate: %d test rows; %s", test_df.height,
             ", ".join(f"{m} RMSE {v['rmse']:.4g}" for m, v in result["overall"].items()
                       if v["rmse"] is not None))
    return result


def _require_trained_on(models: dict[str, Any], model_dir: str | Path,
                        train_csv: str | Path) -> None:
    """Every model was trained on exactly ``train_csv`` (by checksum)."""
    checksum = file_checksum(train_csv)
    for kind, fm in models.items():
        trained_on = fm.meta.get("input", {}).get("checksum")
        if trained_on != checksum:
            raise RtprepError(
                f"{model_dir}: the {kind} model was trained on "
                f"{fm.meta.get('input', {}).get('path')!r}, not on {train_csv} (checksums "
                "differ); train on the train-fold CSV so the test rows stay unseen")


def _require_disjoint(train_df: pl.DataFrame, test_df: pl.DataFrame, train_csv: str | Path,
                      test_rows: str | Path) -> None:
    """No sample set is in both the training and the test rows."""
    if "sampleset_id" in train_df.columns and "sampleset_id" in test_df.columns:
        shared = set(train_df["sampleset_id"].unique().to_list()) & set(
            test_df["sampleset_id"].unique().to_list())
        if shared:
            raise RtprepError(
                f"{test_rows}: {len(shared)} sample set(s) are also in the training rows "
                f"{train_csv} (e.g. {sorted(shared)[:5]}); folds must hold whole sample sets")


def _novelty(train_df: pl.DataFrame, test_df: pl.DataFrame, unit: str) -> pl.DataFrame:
    """The test rows with the support (training rows of their group), its bin and the
    novelty of each row relative to the training rows."""
    counts = train_df.group_by([unit, "compound"]).agg(pl.len().alias("support"))
    rows = (test_df.with_row_index("_r")
            .join(counts, on=[unit, "compound"], how="left").sort("_r")
            .with_columns(pl.col("support").fill_null(0)))
    u_seen = pl.col(unit).is_in(train_df[unit].unique().implode())
    c_seen = pl.col("compound").is_in(train_df["compound"].unique().implode())
    return rows.with_columns(
        support_bin(pl.col("support")).alias("support_bin"),
        pl.when(pl.col("support") > 0).then(pl.lit("seen group"))
        .when(u_seen & c_seen).then(pl.lit("unseen pair"))
        .when(u_seen).then(pl.lit("unseen compound"))
        .when(c_seen).then(pl.lit("unseen species"))
        .otherwise(pl.lit("unseen species and compound")).alias("novelty"),
    )


def _predictions(models: dict[str, Any], train_df: pl.DataFrame, test_df: pl.DataFrame,
                 unit: str) -> dict[str, pl.DataFrame]:
    """Each model's and baseline's predictions of the test rows (row order kept)."""
    preds: dict[str, pl.DataFrame] = {}
    for kind in ("ridge", "pooled"):
        if kind in models:
            p = models[kind].predict_frame(test_df)
            preds[kind] = p.select(
                "rt_pred", "rt_lower", "rt_upper", "rt_sd",
                pl.when(pl.col("rt_pred").is_null()).then(
                    pl.lit("unseen group (") + pl.col("source") + pl.lit(")"))
                .otherwise(None).alias("skip"))
    preds.update(_baselines(train_df, test_df, unit))
    return preds


def _metrics_table(long: pl.DataFrame) -> pl.DataFrame:
    """The long metrics table: overall, by support bin, species cluster and novelty."""
    tables = [_metrics(long, []).with_columns(pl.lit("overall").alias("slice_kind"),
                                              pl.lit("all").alias("slice"))]
    for kind in ("support_bin", "species_cluster", "novelty"):
        tables.append(_metrics(long, [kind]).rename({kind: "slice"})
                      .with_columns(pl.lit(kind).alias("slice_kind")))
    bin_order = {b[0]: i for i, b in enumerate(SUPPORT_BINS)} | {UNSEEN_BIN: -1}
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return (pl.concat([t.select("slice_kind", "slice", "model", "rows", "scored", "skipped",
                                "rmse", "mae", "coverage95", "width95") for t in tables])
            .with_columns(
                pl.col("slice_kind").replace_strict(
                    {"overall": 0, "support_bin": 1, "species_cluster": 2, "novelty": 3},
                    return_dtype=pl.Int64).alias("_k"),
                pl.col("slice").replace_strict(bin_order, default=100,
                                               return_dtype=pl.Int64).alias("_b"),
                pl.col("model").replace_strict(order, return_dtype=pl.Int64).alias("_m"))
            .sort("_k", "_b", "slice", "_m").drop("_k", "_b", "_m"))


def score(models: dict[str, Any], train_df: pl.DataFrame, test_df: pl.DataFrame) -> Scores:
    """Score ``models`` (and the baselines fitted on ``train_df``) on every row of
    ``test_df``: no files read or written."""
    unit = next(iter(models.values())).unit
    rows = _novelty(train_df, test_df, unit)
    preds = _predictions(models, train_df, test_df, unit)
    base_cols = rows.select("species", "species_cluster", "compound", "compound_class", "rt",
                            "support", "support_bin", "novelty")
    present = [k for k in MODEL_ORDER if k in preds]
    long = pl.concat([
        pl.concat([base_cols, preds[k].select("rt_pred", "rt_lower", "rt_upper", "skip")],
                  how="horizontal").with_columns(pl.lit(k).alias("model"))
        for k in present
    ])
    metrics = _metrics_table(long)
    skipped = (long.filter(pl.col("skip").is_not_null()).group_by("model", "skip").len()
               .rename({"skip": "reason", "len": "rows"}).sort("model", "reason"))
    wide = rows.select("sampleset_id", "task_id", "species", "species_cluster", "compound",
                       "compound_class", "rt", "support", "support_bin", "novelty")
    for k in present:
        wide = wide.with_columns(preds[k]["rt_pred"].alias(f"{k}_pred"),
                                 preds[k]["rt_lower"].alias(f"{k}_lower"),
                                 preds[k]["rt_upper"].alias(f"{k}_upper"))
        if "rt_sd" in preds[k].columns:  # the models' predictive sd (not the baselines')
            wide = wide.with_columns(preds[k]["rt_sd"].alias(f"{k}_sd"))
    overall_rows = {r["model"]: r for r in
                    metrics.filter(pl.col("slice_kind") == "overall").iter_rows(named=True)}
    overall = {m: {k: overall_rows[m][k] for k in ("rows", "scored", "skipped", "rmse", "mae",
                                                    "coverage95", "width95")}
               for m in present}  # in MODEL_ORDER (a group_by's order changes from run to run)
    return Scores(metrics, skipped, wide, overall)


def write_evaluation(out: Path, scores: Scores, result: dict[str, Any],
                     truth_table_: pl.DataFrame | None, *, account: RowAccount,
                     inputs: tuple[str | Path, ...], config: dict[str, Any]) -> None:
    """Write the evaluation's files; ``metrics.json`` (with its sidecar) last."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(scores.metrics, out / EVAL_METRICS_CSV)
    write_csv_atomic(scores.skipped, out / EVAL_SKIPPED)
    write_parquet_atomic(scores.predictions, out / EVAL_PREDICTIONS)
    if truth_table_ is not None:
        write_csv_atomic(truth_table_, out / EVAL_TRUTH_CSV)
        write_text_atomic(out / EVAL_TRUTH_JSON,
                          json.dumps(result["truth"], indent=2) + "\n")
    with atomic_output(out / EVAL_METRICS) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        write_sidecars(out / EVAL_METRICS, account, inputs=inputs, config=config)


def _isomer_choice(models: dict[str, Any], train_df: pl.DataFrame, test_df: pl.DataFrame,
                   embeddings: str | Path | None, seed: int = 0) -> dict[str, Any] | None:
    """The pooled model's choice among isomers on the held-out peaks (:mod:`.isomers`), when
    the embeddings table gives the structures."""
    if embeddings is None or "pooled" not in models:
        return None
    from rtprep.models import isomers

    formula = isomers.formulas(embeddings)
    if not formula:
        return None
    ordered = {k: models[k] for k in ("pooled", "ridge") if k in models}
    choice = isomers.isomer_choice(ordered, train_df, test_df, formula, seed=seed)
    log.info("evaluate: isomer choice on %d held-out peaks: pooled %.3f, ridge %.3f, "
             "nearest median %.3f", choice["peaks"], choice.get("pooled_right", float("nan")),
             choice.get("ridge_right", float("nan")),
             choice.get("nearest_median_right", float("nan")))
    return choice


def _truth_scores(wide: pl.DataFrame, truth: str | Path, model_dir: str | Path, seed: int,
                  ) -> tuple[dict[str, Any], pl.DataFrame]:
    """Scores against ``truth``: a truth table (``task_id, compound, rt_true, noise_sd,
    misassigned``; :mod:`rtprep.models.calibration`) or the demo's ``truth_peaks.parquet``
    (:mod:`rtprep.models.truth`). The report, and its table for ``truth.csv``."""
    from rtprep.models import calibration

    if calibration.is_truth_table(truth):
        table = calibration.read_truth_table(truth)
        report = calibration.calibration_report(wide, table, seed=seed)
        rows = Path(model_dir) / MODEL_ROWS
        if rows.is_file():
            report["training_rows_flagged"] = calibration.flag_report(pl.read_parquet(rows),
                                                                      table)
        return {"kind": "truth_table", "truth": str(truth), **report}, \
            calibration.calibration_table(report)
    from rtprep.models.truth import truth_report, truth_table

    report = truth_report(wide, truth)
    return report, truth_table(report)


def _plain(o: Any) -> Any:
    """``o`` as plain JSON values: non-finite floats as None, numpy scalars and arrays as
    Python numbers and lists, tuples as lists, anything else unknown as its string."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.ndarray):
        return [_plain(v) for v in o.tolist()]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float):
        return o if np.isfinite(o) else None
    if o is None or isinstance(o, (bool, int, str)):
        return o
    return str(o)
