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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from scipy import sparse
from scipy import stats as sps

from rtprep.core.artifacts import (
    ROW_GROUP_SIZE,
    RowAccount,
    atomic_output,
    file_checksum,
    write_sidecars,
    write_text_atomic,
)
from rtprep.core.errors import RtprepError
from rtprep.core.frames import parquet_rows, write_csv_atomic
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
from rtprep.models.data import iter_rows, read_rows
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


@dataclass
class _Reference:
    """What scoring a held-out row needs from the training rows, computed once: each group's
    training rows (its support), the units and compounds seen, and the baselines' levels."""

    unit: str
    support: pl.DataFrame  # unit, compound, support
    units: pl.Series
    compounds: pl.Series
    levels: list[tuple[str, list[str], str, pl.DataFrame, float]]  # name, keys, reason, table, t
    global_mean: float
    global_half: float

    @classmethod
    def of(cls, train: pl.DataFrame, unit: str) -> _Reference:
        """group / class means with t intervals from the within-level spread; the global mean
        with the rows' sd."""
        q = float(sps.norm.ppf(0.975))
        levels = []
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
            levels.append((name, keys, reason, lvl.drop("_ss"), tq))
        m = float(train["rt"].mean())
        half = q * float(train["rt"].std()) * np.sqrt(1 + 1 / train.height)
        return cls(unit, train.group_by([unit, "compound"]).agg(pl.len().alias("support")),
                   train[unit].unique(), train["compound"].unique(), levels, m, half)


def _baselines(ref: _Reference, test: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """group / class / global mean predictions of the rows of ``test`` (row order kept)."""
    out: dict[str, pl.DataFrame] = {}
    for name, keys, reason, lvl, tq in ref.levels:
        j = test.select(keys).join(lvl, on=keys, how="left", maintain_order="left")
        half = tq * j["_sd"] * (1 + 1 / j["_n"].cast(pl.Float64)).sqrt()
        out[name] = pl.DataFrame({
            "rt_pred": j["_m"], "rt_lower": j["_m"] - half, "rt_upper": j["_m"] + half,
            "skip": j.select(pl.when(pl.col("_m").is_null()).then(pl.lit(reason))
                             .otherwise(pl.lit(None, dtype=pl.String)).alias("skip"))["skip"],
        })
    m, half = ref.global_mean, ref.global_half
    out["global_mean"] = pl.DataFrame({
        "rt_pred": np.full(test.height, m), "rt_lower": np.full(test.height, m - half),
        "rt_upper": np.full(test.height, m + half),
        "skip": pl.repeat(None, test.height, dtype=pl.String, eager=True),
    })
    return out


#: Held-out rows scored at a time: evaluate's memory follows this, not the size of the test
#: folds (6.4 M held-out rows in the largest lib of a 100 M-peak export).
SCORE_CHUNK_ROWS = 500_000
_SLICE_KINDS = ("overall", "support_bin", "species_cluster", "novelty")
#: Sums per slice and model: rows, scored, Σerr², Σ|err|, intervals with both ends, rows
#: inside them, widths, Σwidth.
_SUMS = 8


class _MetricSums:
    """The metrics' sums per slice and model, added a chunk of rows at a time (summed in row
    order: the same sums on every run)."""

    def __init__(self, models: tuple[str, ...]) -> None:
        self.models = models
        self.labels: dict[str, dict[str, int]] = {k: {} for k in _SLICE_KINDS}
        self.sums = {k: np.zeros((0, len(models), _SUMS)) for k in _SLICE_KINDS}

    def _codes(self, kind: str, values: pl.Series) -> np.ndarray:
        labels = self.labels[kind]
        for v in values.unique().sort().to_list():
            labels.setdefault(v, len(labels))
        grow = len(labels) - len(self.sums[kind])
        if grow:
            self.sums[kind] = np.concatenate(
                [self.sums[kind], np.zeros((grow, len(self.models), _SUMS))])
        return values.replace_strict(labels, return_dtype=pl.Int64).to_numpy()

    def add(self, rows: pl.DataFrame, preds: dict[str, pl.DataFrame]) -> None:
        rt = rows["rt"].to_numpy()
        cols = []
        for k in self.models:
            p = preds[k]
            pred, lo, hi = (p[c].to_numpy().astype(np.float64)
                            for c in ("rt_pred", "rt_lower", "rt_upper"))
            ok = np.isfinite(pred)
            err = np.where(ok, rt - pred, 0.0)
            both = ok & np.isfinite(lo) & np.isfinite(hi)
            with np.errstate(invalid="ignore"):
                inside = both & (rt >= lo) & (rt <= hi)
                width = hi - lo
            wok = ok & np.isfinite(width)
            cols.append(np.stack([np.ones_like(rt), ok, err * err, np.abs(err), both, inside,
                                  wok, np.where(wok, width, 0.0)], axis=1))
        every = np.stack(cols, axis=1)  # rows × models × sums
        for kind in _SLICE_KINDS:
            values = (rows[kind] if kind != "overall"
                      else pl.repeat("all", rows.height, dtype=pl.String, eager=True))
            codes = self._codes(kind, values)
            # one sparse product per kind: slice × rows (one-hot) @ rows × (models · sums),
            # each output the sum of its slice's rows in row order
            onehot = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))),
                                       shape=(len(self.labels[kind]), len(codes)))
            self.sums[kind] += (onehot @ every.reshape(len(codes), -1)).reshape(
                self.sums[kind].shape)

    def table(self) -> pl.DataFrame:
        """The long metrics table: overall, by support bin, species cluster and novelty."""
        recs = []
        for kind in _SLICE_KINDS:
            for label, code in self.labels[kind].items():
                for m, model in enumerate(self.models):
                    r, sc, sse, sae, nb, inside, nw, sw = self.sums[kind][code, m].tolist()
                    recs.append({
                        "slice_kind": kind, "slice": label, "model": model, "rows": int(r),
                        "scored": int(sc), "skipped": int(r - sc),
                        "rmse": float(np.sqrt(sse / sc)) if sc else None,
                        "mae": sae / sc if sc else None,
                        "coverage95": inside / nb if nb else None,
                        "width95": sw / nw if nw else None})
        schema = {"slice_kind": pl.String, "slice": pl.String, "model": pl.String,
                  "rows": pl.Int64, "scored": pl.Int64, "skipped": pl.Int64,
                  "rmse": pl.Float64, "mae": pl.Float64, "coverage95": pl.Float64,
                  "width95": pl.Float64}
        bin_order = {b[0]: i for i, b in enumerate(SUPPORT_BINS)} | {UNSEEN_BIN: -1}
        order = {m: i for i, m in enumerate(MODEL_ORDER)}
        return (pl.DataFrame(recs, schema=schema, orient="row")
                .with_columns(
                    pl.col("slice_kind").replace_strict(
                        {k: i for i, k in enumerate(_SLICE_KINDS)},
                        return_dtype=pl.Int64).alias("_k"),
                    pl.col("slice").replace_strict(bin_order, default=100,
                                                   return_dtype=pl.Int64).alias("_b"),
                    pl.col("model").replace_strict(order, return_dtype=pl.Int64).alias("_m"))
                .sort("_k", "_b", "slice", "_m").drop("_k", "_b", "_m"))


@dataclass
class Scores:
    """What :func:`score` finds: the long metrics table, the skipped rows by reason, the
    overall metrics per model, and (from :func:`score`, not from :func:`evaluate`, which
    writes them a chunk at a time) every test row's predictions (wide)."""

    metrics: pl.DataFrame
    skipped: pl.DataFrame
    overall: dict[str, dict[str, Any]]
    predictions: pl.DataFrame | None = None


class _Scorer:
    """Scores held-out rows a chunk at a time (:meth:`add`, in order; then :meth:`finish`)."""

    def __init__(self, models: dict[str, Any], train_df: pl.DataFrame,
                 isomer: Any | None = None) -> None:
        self.models = models
        self.ref = _Reference.of(train_df, next(iter(models.values())).unit)
        self.present = tuple(k for k in MODEL_ORDER
                             if k in models or k in ("group_mean", "class_mean", "global_mean"))
        self.sums = _MetricSums(self.present)
        self.skips: dict[tuple[str, str], int] = {}
        self.isomer = isomer
        self.rows = 0

    def add(self, test: pl.DataFrame) -> pl.DataFrame:
        """Score the rows of ``test``; returns their predictions (wide)."""
        rows = _novelty(self.ref, test)
        preds, xs = _predictions(self.models, self.ref, test)
        self.sums.add(rows, preds)
        for k in self.present:
            for reason, n in (preds[k].filter(pl.col("skip").is_not_null())
                              .group_by("skip").len().iter_rows()):
                self.skips[(k, reason)] = self.skips.get((k, reason), 0) + int(n)
        if self.isomer is not None:
            self.isomer.add(test, x=xs)
        self.rows += test.height
        wide = rows.select("sampleset_id", "task_id", "species", "species_cluster", "compound",
                           "compound_class", "rt", "support", "support_bin", "novelty")
        extra = []
        for k in self.present:
            extra += [preds[k]["rt_pred"].alias(f"{k}_pred"),
                      preds[k]["rt_lower"].alias(f"{k}_lower"),
                      preds[k]["rt_upper"].alias(f"{k}_upper")]
            if "rt_sd" in preds[k].columns:  # the models' predictive sd (not the baselines')
                extra.append(preds[k]["rt_sd"].alias(f"{k}_sd"))
        return wide.with_columns(extra)

    def finish(self) -> Scores:
        metrics = self.sums.table()
        skipped = pl.DataFrame(
            [(m, r, n) for (m, r), n in sorted(self.skips.items())],
            schema={"model": pl.String, "reason": pl.String, "rows": pl.Int64}, orient="row")
        overall_rows = {r["model"]: r for r in
                        metrics.filter(pl.col("slice_kind") == "overall").iter_rows(named=True)}
        keys = ("rows", "scored", "skipped", "rmse", "mae", "coverage95", "width95")
        overall = {m: {k: overall_rows[m][k] for k in keys} if m in overall_rows
                   else {k: (0 if k in ("rows", "scored", "skipped") else None) for k in keys}
                   for m in self.present}  # in MODEL_ORDER
        return Scores(metrics, skipped, overall)


def evaluate(model_dir: str | Path | None, train_csv: str | Path, test_rows: str | Path,
             out_dir: str | Path, *, options: ModelOptions | None = None,
             embeddings: str | Path | None = None, quick: bool = False,
             truth: str | Path | None = None,
             chunk_rows: int = SCORE_CHUNK_ROWS) -> dict[str, Any]:
    """Score the models trained on ``train_csv`` on every row of ``test_rows``.

    ``truth``: a truth table or the demo's ``truth/truth_peaks.parquet``; the scores against
    it are then added as ``truth`` to the result and written to ``truth.json`` and
    ``truth.csv`` (see :mod:`rtprep.models.calibration` and :mod:`rtprep.models.truth`).

    ``model_dir``: a folder written by :func:`rtprep.models.train` from exactly ``train_csv``
    (checked by checksum: a model trained on other rows could have seen the test rows). With
    ``None`` the models are trained here, into ``<out_dir>/model``. Returns the metrics dict
    (also written to ``<out_dir>/metrics.json``). The held-out rows are read and scored
    ``chunk_rows`` at a time, their predictions written as they come.
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
    train_sets = (set(train_df["sampleset_id"].unique().to_list())
                  if "sampleset_id" in train_df.columns else None)
    scorer = _Scorer(models, train_df, _isomer_choice(models, train_df, embeddings))
    total = parquet_rows(test_rows) if str(test_rows).lower().endswith(
        (".parquet", ".pq")) else None
    test_sets: set[Any] = set()
    out.mkdir(parents=True, exist_ok=True)
    t0 = last = time.perf_counter()
    with atomic_output(out / EVAL_PREDICTIONS) as tmp:
        writer = None
        try:
            for chunk in iter_rows(test_rows, families, features=any_model.covariates.names,
                                   chunk_rows=chunk_rows, account=account):
                if "sampleset_id" in chunk.columns:
                    chunk_sets = set(chunk["sampleset_id"].unique().to_list())
                    _require_disjoint(train_sets, chunk_sets, train_csv, test_rows)
                    test_sets |= chunk_sets
                table = scorer.add(chunk).to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema), row_group_size=ROW_GROUP_SIZE)
                if time.perf_counter() - last > 30:
                    last = time.perf_counter()
                    log.info("evaluate: %s of %s held-out rows scored (%.0f s)",
                             f"{scorer.rows:,}", f"{total:,}" if total else "?", last - t0)
        finally:
            if writer is not None:
                writer.close()
    scores = scorer.finish()
    account.rows_out = scorer.rows
    account.extra = {"train_rows": train_df.height,
                     "test_sample_sets": len(test_sets) if train_sets is not None else None}
    truth_block = truth_table_ = None
    if truth is not None:
        truth_block, truth_table_ = _truth_scores(pl.read_parquet(out / EVAL_PREDICTIONS),
                                                  truth, model_dir, opts.seed)
    isomer_choice = scorer.isomer.result(opts.seed) if scorer.isomer is not None else None
    if isomer_choice is not None:
        log.info("evaluate: isomer choice on %d held-out peaks: pooled %.3f, ridge %.3f, "
                 "nearest median %.3f", isomer_choice["peaks"],
                 isomer_choice.get("pooled_right", float("nan")),
                 isomer_choice.get("ridge_right", float("nan")),
                 isomer_choice.get("nearest_median_right", float("nan")))
    result = {
        "model_dir": str(model_dir), "train": str(train_csv), "test": str(test_rows),
        "test_rows": scorer.rows, "train_rows": train_df.height,
        "test_sample_sets": account.extra["test_sample_sets"],
        "overall": scores.overall,
        "metrics": scores.metrics.to_dicts(),
        "skipped": scores.skipped.to_dicts(),
        "isomer_choice": isomer_choice,
        "files": [*EVAL_FILES[1:], *(EVAL_TRUTH_FILES if truth_block is not None else [])],
    }
    if truth_block is not None:
        result["truth"] = truth_block
    result = _plain(result)
    write_evaluation(out, scores, result, truth_table_, account=account,
                     inputs=(train_csv, test_rows),
                     config={"model_dir": str(model_dir), **opts.to_dict()})
    log.info("evaluate: %d test rows in %.0f s; %s", scorer.rows, time.perf_counter() - t0,
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


def _require_disjoint(train_sets: set[Any] | None, test_sets: set[Any],
                      train_csv: str | Path, test_rows: str | Path) -> None:
    """No sample set is in both the training and the test rows."""
    shared = (train_sets or set()) & test_sets
    if shared:
        raise RtprepError(
            f"{test_rows}: {len(shared)} sample set(s) are also in the training rows "
            f"{train_csv} (e.g. {sorted(shared)[:5]}); folds must hold whole sample sets")


def _novelty(ref: _Reference, test_df: pl.DataFrame) -> pl.DataFrame:
    """The test rows with the support (training rows of their group), its bin and the
    novelty of each row relative to the training rows."""
    unit = ref.unit
    rows = (test_df.join(ref.support, on=[unit, "compound"], how="left", maintain_order="left")
            .with_columns(pl.col("support").fill_null(0)))
    u_seen = pl.col(unit).is_in(ref.units.implode())
    c_seen = pl.col("compound").is_in(ref.compounds.implode())
    return rows.with_columns(
        support_bin(pl.col("support")).alias("support_bin"),
        pl.when(pl.col("support") > 0).then(pl.lit("seen group"))
        .when(u_seen & c_seen).then(pl.lit("unseen pair"))
        .when(u_seen).then(pl.lit("unseen compound"))
        .when(c_seen).then(pl.lit("unseen species"))
        .otherwise(pl.lit("unseen species and compound")).alias("novelty"),
    )


def _predictions(models: dict[str, Any], ref: _Reference, test_df: pl.DataFrame,
                 ) -> tuple[dict[str, pl.DataFrame], dict[str, np.ndarray]]:
    """Each model's and baseline's predictions of the test rows (row order kept), and each
    model's covariate matrix of them (computed once for models that share their covariates)."""
    preds: dict[str, pl.DataFrame] = {}
    xs: dict[str, np.ndarray] = {}
    for kind in ("ridge", "pooled"):
        if kind in models:
            model = models[kind]
            x = next((v for k, v in xs.items() if models[k].covariates.same_as(model.covariates)),
                     None)
            xs[kind] = model.covariates.matrix(test_df) if x is None else x
            p = model.predict_frame(test_df, x=xs[kind])
            preds[kind] = p.select(
                "rt_pred", "rt_lower", "rt_upper", "rt_sd",
                pl.when(pl.col("rt_pred").is_null()).then(
                    pl.lit("unseen group (") + pl.col("source") + pl.lit(")"))
                .otherwise(None).alias("skip"))
    preds.update(_baselines(ref, test_df))
    return preds, xs


def score(models: dict[str, Any], train_df: pl.DataFrame, test_df: pl.DataFrame, *,
          chunk_rows: int = SCORE_CHUNK_ROWS) -> Scores:
    """Score ``models`` (and the baselines fitted on ``train_df``) on every row of
    ``test_df``, ``chunk_rows`` at a time: no files read or written."""
    scorer = _Scorer(models, train_df)
    wide = [scorer.add(test_df.slice(lo, chunk_rows))
            for lo in range(0, max(test_df.height, 1), chunk_rows)]
    scores = scorer.finish()
    scores.predictions = pl.concat(wide)
    return scores


def write_evaluation(out: Path, scores: Scores, result: dict[str, Any],
                     truth_table_: pl.DataFrame | None, *, account: RowAccount,
                     inputs: tuple[str | Path, ...], config: dict[str, Any]) -> None:
    """Write the evaluation's files but the predictions (written as they are scored);
    ``metrics.json`` (with its sidecar) last."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(scores.metrics, out / EVAL_METRICS_CSV)
    write_csv_atomic(scores.skipped, out / EVAL_SKIPPED)
    if truth_table_ is not None:
        write_csv_atomic(truth_table_, out / EVAL_TRUTH_CSV)
        write_text_atomic(out / EVAL_TRUTH_JSON,
                          json.dumps(result["truth"], indent=2) + "\n")
    with atomic_output(out / EVAL_METRICS) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        write_sidecars(out / EVAL_METRICS, account, inputs=inputs, config=config)


def _isomer_choice(models: dict[str, Any], train_df: pl.DataFrame,
                   embeddings: str | Path | None) -> Any | None:
    """The pooled model's choice among isomers on the held-out peaks (:mod:`.isomers`), when
    the embeddings table gives the structures: an :class:`~.isomers.IsomerChoice` to feed."""
    if embeddings is None or "pooled" not in models:
        return None
    from rtprep.models import isomers

    formula = isomers.formulas(embeddings)
    if not formula:
        return None
    ordered = {k: models[k] for k in ("pooled", "ridge") if k in models}
    return isomers.IsomerChoice(ordered, train_df, formula)


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
