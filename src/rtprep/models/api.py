"""The models' public functions: :func:`train`, :func:`evaluate`, :func:`predict`."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.core import embeddings as core_embeddings
from rtprep.core.artifacts import (
    RowAccount,
    atomic_output,
    file_checksum,
    write_sidecars,
    write_text_atomic,
)
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import require_columns, write_parquet_atomic
from rtprep.core.paths import MODEL_KINDS, MODEL_MANIFEST, MODEL_ROWS
from rtprep.models.algebra import GroupAlgebra
from rtprep.models.data import (
    Covariates,
    GroupStats,
    group_table,
    read_rows,
    sufficient_stats,
    unit_column,
)
from rtprep.models.fitted import FittedModel
from rtprep.models.options import ModelOptions
from rtprep.models.pooled import Embeddings, fit_pooled
from rtprep.models.ridge import fit_ridge, ridge_algebra
from rtprep.models.robust import misassignment

log = logging.getLogger(__name__)



def read_embeddings(path: str | Path) -> Embeddings:
    """The embeddings file (:func:`rtprep.core.embeddings.read_embeddings`: checked, one vector
    per chem_id), standardised for the pooled model."""
    df, _ = core_embeddings.read_embeddings(path)
    return Embeddings.from_frame(df.with_columns(pl.col("chem_id").cast(pl.String)))


def train(input_csv: str | Path, out_dir: str | Path, *, options: ModelOptions,
          quick: bool = False, embeddings: str | Path | None = None) -> dict[str, Any]:
    """Fit the ridge and pooled models on an RT CSV; write ``<out>/{ridge,pooled}/`` and
    ``<out>/model.json`` (a manifest, written last). Returns the manifest.

    Unless ``options.robust`` is off, every training row gets a probability of being
    mis-assigned (peaks of the wrong compound, :mod:`rtprep.models.robust`): rows more likely
    mis-assigned than not are left out of both models and counted as ``rt_outlier`` in the
    sidecars, the others weighted by their probability of being right.
    """
    t0 = time.perf_counter()
    opts = replace(options, quick=bool(quick or options.quick))
    out = Path(out_dir)
    account = RowAccount("train")
    df, names = read_rows(input_csv, tuple(opts.families), account=account)
    if df.height == 0:
        raise input_error(input_csv, "no rows with a retention time to train on", column="rt")
    if not names:
        log.warning("%s: no covariate columns of families %s; intercept-only models",
                    input_csv, list(opts.families))
    covs = Covariates.fit(df, names, opts.fill)
    emb = read_embeddings(embeddings) if embeddings is not None else None
    t_screen = time.perf_counter()
    df, stats, rows_table, screen = _weighted_statistics(df, covs, opts, emb, input_csv,
                                                         account)
    t_screen = time.perf_counter() - t_screen
    alg, ridge_choice = ridge_algebra(stats, opts.ridge_lambda)
    species_map = dict(df.select("species", "species_cluster").unique().sort("species").iter_rows())
    account.rows_out = df.height
    account.extra = {"groups": stats.groups.height,
                     "rt_outlier": 0 if screen is None else screen["outliers"]}
    del df
    t_stats = time.perf_counter()
    log.info("train: %d rows, %d groups, %d covariates; statistics in %.1fs", account.rows_out,
             stats.groups.height, stats.p, t_stats - t0)
    support = stats.groups["n_obs"]
    base_meta: dict[str, Any] = {
        "input": {"path": str(input_csv), "checksum": file_checksum(input_csv),
                  "rows": account.rows_out},
        "options": opts.to_dict(),
        "support": {"groups": stats.groups.height, "min": int(support.min()),
                    "median": float(support.median()), "max": int(support.max())},
        "outlier_screen": screen,
    }
    inputs = (input_csv,) if embeddings is None else (input_csv, embeddings)
    config = opts.to_dict()
    ridge = fit_ridge(stats, covs, alg, group_by=opts.group_by,
                      meta={**base_meta, "ridge_lambda_choice": ridge_choice},
                      species_map=species_map)
    ridge.save(out / "ridge", account=account, inputs=inputs, config=config)
    t_ridge = time.perf_counter()
    pooled = fit_pooled(stats, covs, alg, opts, sigma_init=_sigma_init_from(ridge, stats),
                        embeddings=emb,
                        meta={**base_meta, "embeddings": None if embeddings is None
                              else str(embeddings)},
                        species_map=species_map)
    require_converged(pooled.meta["fit"], input_csv, opts, "pooled fit")
    account.extra["fit"] = _verdicts(pooled.meta["fit"], screen)
    pooled.save(out / "pooled", account=account, inputs=inputs, config=config)
    t_end = time.perf_counter()
    manifest = {
        "models": {k: k for k in MODEL_KINDS},
        **base_meta,
        "embeddings": None if embeddings is None else str(embeddings),
        "n_groups": stats.groups.height,
        "covariates": covs.names,
        "seconds": {"statistics": round(t_stats - t0 - t_screen, 3),
                    "outlier_screen": round(t_screen, 3), "ridge": round(t_ridge - t_stats, 3),
                    "pooled": round(t_end - t_ridge, 3), "total": round(t_end - t0, 3)},
        "fit": pooled.meta.get("fit", {}),
        "fit_verdicts": _verdicts(pooled.meta["fit"], screen),
        "ridge_lambda": ridge_choice,
    }
    write_parquet_atomic(rows_table, out / MODEL_ROWS)
    write_text_atomic(out / MODEL_MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
    log.info("train: wrote %s in %.1fs", out, t_end - t0)
    return manifest


def _weighted_statistics(df: pl.DataFrame, covs: Covariates, opts: ModelOptions,
                         emb: Embeddings | None, input_csv: str | Path, account: RowAccount,
                         ) -> tuple[pl.DataFrame, GroupStats, pl.DataFrame,
                                    dict[str, Any] | None]:
    """The groups' statistics the models are fitted on, and every row's probability of being
    mis-assigned (``rows.parquet``).

    With ``opts.robust`` the robust fit (:func:`misassignment`) gives each row that
    probability; rows above one half are left out (``rt_outlier`` in ``account``) and the others
    weighted by their probability of being right (the EM's M-step). Returns the rows kept,
    the statistics, the rows table and what the robust fit did (None without it).
    """
    unit = unit_column(opts.group_by)
    groups, gid = group_table(df, unit, input_csv)
    x = covs.matrix(df)
    y = df["rt"].to_numpy().astype(np.float64)
    stats = sufficient_stats(groups, gid, x, y)
    if not (opts.robust and stats.groups.height):
        return df, stats, _rows_table(df, np.zeros(df.height)), None
    alg, _ = ridge_algebra(stats, opts.ridge_lambda)
    sigma_init = _sigma_init(stats, covs, alg, opts)
    del stats, alg  # the rounds build their own (weighted) statistics
    prob, screen = misassignment(groups, gid, x, y, covs, opts, sigma_init=sigma_init,
                                 embeddings=emb)
    require_converged(screen["fit"], input_csv, opts, "robust fit")
    rows_table = _rows_table(df, prob)
    flags = prob > 0.5
    if flags.any():
        account.drop("rt_outlier", int(flags.sum()))
        df = df.filter(pl.Series(~flags))
        x, y = x[~flags], y[~flags]  # rebinding frees the unscreened arrays
        groups, gid = group_table(df, unit, input_csv)
    return df, sufficient_stats(groups, gid, x, y, 1.0 - prob[~flags]), rows_table, screen


def _rows_table(df: pl.DataFrame, prob: np.ndarray) -> pl.DataFrame:
    """Every training row's identity and rt, its probability of being mis-assigned and whether
    it was left out as such (probability above one half)."""
    ids = [c for c in ("sampleset_id", "task_id", "species", "compound") if c in df.columns]
    return df.select(*ids, "rt").with_columns(
        pl.Series("p_misassigned", prob, dtype=pl.Float64),
        pl.Series("rt_outlier", prob > 0.5, dtype=pl.Boolean))


def _verdicts(fit: dict[str, Any], screen: dict[str, Any] | None) -> dict[str, Any]:
    """The ADVI verdicts of the fits behind a model (NUTS fits have none)."""
    out = {"pooled": fit.get("verdict")}
    if screen is not None:
        out["outlier_screen"] = screen["fit"].get("verdict")
    return out


def run_label(path: str | Path) -> str:
    """``lib 611, cap 5`` from an RT CSV's name, ``lib 611, cap 5 (time split's train fold)``
    from a split's train-fold CSV (``..._lib611_time_train_cap5_...``); the file name where it
    does not say."""
    m = re.search(r"_lib([^_]+)_(?:(?:([a-z]+)_)?train_)?cap(\d+)_", Path(path).name)
    if not m:
        return Path(path).name
    lib, split, cap = m.groups()
    return f"lib {lib}, cap {cap}" + (f" ({split} split's train fold)" if split else "")


def require_converged(fit: dict[str, Any], input_csv: str | Path, opts: ModelOptions,
                      what: str) -> None:
    """Fail on an ADVI fit that ended ``not converged`` unless ``allow_unconverged`` or a quick
    fit (a smoke run of few steps, which is not expected to converge: it is marked, not
    failed)."""
    if fit.get("verdict") != "not converged":
        return
    msg = (f"{run_label(input_csv)}: the {what} did not converge ({fit.get('problem')}; loss "
           f"{_fmt(fit.get('final_loss'))}, best {_fmt(fit.get('best_loss'))} at step "
           f"{fit.get('best_step')} of {fit.get('steps')})")
    if not (opts.allow_unconverged or opts.quick):
        raise RtprepError(f"{msg}; set model.allow_unconverged: true to keep it, marked "
                          "'not converged'")
    log.warning("%s; kept, marked 'not converged' (%s)", msg,
                "model.allow_unconverged" if opts.allow_unconverged else "a quick fit")


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.6g}"


def _sigma_init_from(ridge: FittedModel, stats: GroupStats) -> float:
    """Starting noise sd of the pooled fit: the ridge fit's pooled residual sd."""
    pooled_var = ridge.meta["ridge"]["pooled_noise_var"]
    if np.isfinite(pooled_var) and pooled_var > 0:
        return float(np.sqrt(pooled_var))
    return 0.1 * float(np.sqrt(max(float(np.var(stats.ybar)), 1e-6)))


def _sigma_init(stats: GroupStats, covs: Covariates, alg: GroupAlgebra,
                opts: ModelOptions) -> float:
    return _sigma_init_from(fit_ridge(stats, covs, alg, group_by=opts.group_by), stats)


def load_models(model_dir: str | Path) -> dict[str, FittedModel]:
    """Load ``ridge`` and ``pooled`` from a folder written by :func:`train` (or one model)."""
    d = Path(model_dir)
    mpath = d / MODEL_MANIFEST
    if not mpath.is_file():
        raise RtprepError(f"{d}: not a model folder (no model.json); run `rtprep train` first")
    meta = json.loads(mpath.read_text(encoding="utf-8"))
    if "kind" in meta:
        return {meta["kind"]: FittedModel.load(d)}
    return {k: FittedModel.load(d / sub) for k, sub in meta.get("models", {}).items()}


# ------------------------------------------------------------------------------ prediction
def _restore_ids(df: pl.DataFrame, cols: tuple[str, ...]) -> pl.DataFrame:
    """Give id columns back an integer type when every value is an integer."""
    out = []
    for c in cols:
        if c in df.columns and df[c].dtype == pl.String:
            as_int = df[c].cast(pl.Int64, strict=False)
            if as_int.null_count() == df[c].null_count():
                out.append(as_int.alias(c))
    return df.with_columns(out) if out else df


def predict(model_dir: str | Path, injections: str | Path, output: str | Path, *,
            model: str = "pooled") -> None:
    """Predicted RT and 95% interval per (injection, compound) for the compounds the model knows.

    ``injections``: CSV or Parquet with ``task_id, species`` (optionally ``species_cluster``)
    and the model's covariates; any other column (``sampleset_id``, ...) is carried through to
    every prediction of that injection. A species the model has not seen is predicted through its
    cluster (or the global effects) by the pooled model; the ridge model predicts only the
    (species, compound) groups it was fitted on. Output (CSV or Parquet, by suffix): ``task_id,
    species, species_cluster, compound, compound_class, rt_pred, rt_lower, rt_upper, rt_sd,
    source, n_obs`` with the injections' other columns after ``task_id``, sorted by those
    columns, task_id and compound.
    """
    models = load_models(model_dir)
    if model not in models:
        raise RtprepError(f"{model_dir}: has no {model!r} model (has {', '.join(models)})")
    fm = models[model]
    path = Path(injections)
    if not path.is_file():
        raise RtprepError(f"{path}: injections file not found")
    try:
        raw = (pl.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq")
               else pl.read_csv(path, infer_schema_length=10_000))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise input_error(path, f"cannot be read: {exc}") from exc
    require_columns(raw.schema, ["task_id", "species", *fm.covariates.names], path,
                    "injections: task_id, species and the model's covariates")
    covariates = set(fm.covariates.names)
    # every other column of an injection (sampleset_id, file names, ...) is carried through
    extra = [c for c in raw.columns if c not in covariates
             and c not in ("task_id", "species", "species_cluster", "compound",
                           "compound_class")]
    ids = ["task_id", "species", *(["species_cluster"] if "species_cluster" in raw.columns
                                   else [])]
    try:
        inj = raw.select(*ids, *extra, *fm.covariates.names).with_columns(
            pl.col(ids).cast(pl.String),
            pl.col(fm.covariates.names).cast(pl.Float64, strict=True))
    except pl.exceptions.PolarsError as exc:
        raise input_error(path, f"a covariate is not a number: {exc}") from exc
    if inj["species"].null_count():
        raise input_error(path, "rows without a species", column="species")
    compounds = (fm.groups.select("compound", "compound_class").unique()
                 .sort("compound"))
    # the injections' clusters; the compounds bring their classes
    inj = fm._with_cluster(inj).drop("compound_class")
    if fm.kind == "ridge":
        # ridge knows only its groups: pair each injection with its species' compounds
        grid = inj.join(fm.groups.select(fm.unit, "compound", "compound_class"), on=fm.unit,
                        how="inner")
    else:
        grid = inj.join(compounds, how="cross")
    grid = fm._with_cluster(grid)
    pred = fm.predict_frame(grid)
    res = pl.concat([grid.select("task_id", *extra, "species", "species_cluster", "compound",
                                 "compound_class"), pred], how="horizontal")
    res = res.filter(pl.col("rt_pred").is_not_null())
    res = _restore_ids(res, ("task_id", "compound", "compound_class"))
    res = res.sort(*extra, "task_id", "compound").select(
        "task_id", *extra, "species", "species_cluster", "compound", "compound_class", "rt_pred",
        "rt_lower", "rt_upper", "rt_sd", "source", "n_obs")
    account = RowAccount("predict", rows_in=inj.height, rows_out=res.height)
    account.extra = {"model": model, "compounds": compounds.height,
                     "sources": dict(res.group_by("source").len().sort("source").iter_rows())}
    out = Path(output)
    with atomic_output(out) as tmp:
        if out.suffix.lower() in (".parquet", ".pq"):
            res.write_parquet(tmp, compression="zstd", statistics=True)
        else:
            res.write_csv(tmp)
        write_sidecars(out, account, inputs=(path,), config={"model_dir": str(model_dir),
                                                             "model": model}, balanced=False)
    log.info("predict: %d injections → %d predictions (%s)", inj.height, res.height, out)
