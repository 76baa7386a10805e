"""Outlier screen of the training rows: mis-assigned peaks out of the sufficient statistics.

Peak tables hold a small share of mis-assigned peaks: an apex minutes away from the compound's
true retention time. A Gaussian noise model cannot absorb them: a handful inflate the noise
variance (so every interval is too wide) and pull the few-row groups they sit in. The screen:

1. fit the pooled model once on all rows (``screen_steps`` ADVI steps: a rough fit suffices,
   since what it must tell apart is minutes against tenths of a minute);
2. each row's residual from its group's prior mean (species + compound effects and species
   slopes, without the group's own deviation, which an outlier in a small group would pull),
   minus the median residual of its group when the group has ``MIN_GROUP_MEDIAN`` rows or
   more;
3. the robust SD of the residuals per noise cell (species × compound class, as the model's
   noise) and kind (median-centred or not): 1.4826 × the median absolute deviation from the
   cell's median, the kind's global one for cells with fewer than ``MIN_CELL_ROWS`` rows (and
   never below the global one times ``MIN_CELL_FRACTION``, so that a cell of near-identical
   rows does not flag ordinary noise);
4. rows further than ``outlier_k`` robust SDs from their cell's median are left out of both
   models' statistics and counted as drop reason ``rt_outlier``.

The species and compound effects are estimated from many groups, so one outlier barely moves
them, and a median ignores one outlier among three rows: the clean rows of a group that holds
an outlier keep small residuals (a group posterior mean would be pulled towards the outlier
and push them over the threshold instead).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from rtprep.models.algebra import GroupAlgebra
from rtprep.models.data import Covariates, GroupStats
from rtprep.models.options import ModelOptions

log = logging.getLogger(__name__)

MAD_TO_SD = 1.4826
MIN_CELL_ROWS = 30
MIN_CELL_FRACTION = 0.5
MIN_GROUP_MEDIAN = 3
SCREEN_MIN_ROUNDS = 3
_CHUNK = 65_536


def fitted_values(mean: np.ndarray, gid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mean[g, 0] + x · mean[g, 1:]`` per row (chunked: bounded extra memory)."""
    out = np.empty(len(gid))
    for start in range(0, len(gid), _CHUNK):  # chunks of rows, each vectorised
        stop = min(start + _CHUNK, len(gid))
        m = mean[gid[start:stop]]
        out[start:stop] = m[:, 0] + np.einsum("ri,ri->r", x[start:stop], m[:, 1:])
    return out


def robust_flags(residual: np.ndarray, cell: np.ndarray, k: float,
                 stratum: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows further than ``k`` robust SDs from their cell's median residual (True = outlier).

    ``stratum`` (optional, small ints) separates residuals of different kinds: each stratum has
    its own global robust SD, the fallback of its small cells.
    """
    strat = np.zeros(len(residual), np.int64) if stratum is None else stratum.astype(np.int64)
    frame = pl.DataFrame({"s": strat, "cell": cell, "r": residual})
    mad = (pl.col("r") - pl.col("r").median()).abs().median() * MAD_TO_SD
    glob = frame.group_by("s").agg(pl.col("r").median().alias("med_s"), mad.alias("sd_s"))
    per_cell = (frame.group_by("s", "cell")
                .agg(pl.len().alias("n"), pl.col("r").median().alias("med"), mad.alias("sd"))
                .join(glob, on="s", how="left"))
    own = pl.col("n") >= MIN_CELL_ROWS
    per_cell = per_cell.with_columns(
        pl.when(own).then(pl.col("med")).otherwise(pl.col("med_s")).alias("med"),
        pl.when(own).then(pl.max_horizontal(pl.col("sd"), MIN_CELL_FRACTION * pl.col("sd_s")))
        .otherwise(pl.col("sd_s")).alias("sd"))
    j = frame.join(per_cell, on=["s", "cell"], how="left", maintain_order="left")
    z = np.abs(j["r"].to_numpy() - j["med"].to_numpy()) / np.maximum(j["sd"].to_numpy(), 1e-12)
    flags = z > k
    sds = dict(glob.sort("s").select("s", "sd_s").iter_rows())
    info = {"robust_sd": {int(a): float(b) for a, b in sds.items()}, "k": k,
            "cells_own_scale": int(per_cell.select(own.sum()).item()),
            "cells": per_cell.height}
    return flags, info


def screen_outliers(stats: GroupStats, covs: Covariates, alg: GroupAlgebra, gid: np.ndarray,
                    x: np.ndarray, y: np.ndarray, options: ModelOptions, *, sigma_init: float,
                    embeddings: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Flag the training rows to leave out (see the module docstring); True = outlier."""
    from rtprep.models.pooled import _fit_advi, _initial_point, build_model, prepare_fit

    steps = int(min(options.steps(), options.screen_steps))
    first_opts = replace(options, quick=True, quick_steps=steps, method="advi",
                         summary_draws=min(options.summary_draws, 10))
    d, alg_fit, srt = prepare_fit(stats, alg, first_opts, sigma_init, embeddings)
    model = build_model(alg_fit, d, covs)
    # the screen judges rows only from a converged fit: rounds of ``steps`` until another round
    # no longer moves it (at most the main fit's steps, and at least three rounds' worth)
    draws, fit_info = _fit_advi(model, first_opts, _initial_point(alg_fit, d),
                                label="outlier screen", until_converged=True,
                                max_steps=max(options.steps(), SCREEN_MIN_ROUNDS * steps))
    prior = group_prior_means(d, draws)
    if srt is not None:
        prior[:, 1:] += srt.t_g[:, None] * srt.kappa[None, :]
    # residual from the group's prior (species + compound effects, species slopes): a group's
    # own outlier cannot pull it; the group's median residual (groups of >= 3 rows) then
    # removes the group's own deviation robustly
    residual = y - fitted_values(prior, gid, x)
    frame = pl.DataFrame({"g": gid, "r": residual})
    centred = (stats.n >= MIN_GROUP_MEDIAN)[gid]
    centre = frame.select(pl.col("r").median().over("g").alias("m"))["m"].to_numpy()
    residual = np.where(centred, residual - centre, residual)
    unit = stats.groups.columns[0]
    cell_key = (stats.groups.select(pl.concat_str(pl.col(unit), pl.lit("\x1f"),
                                                  pl.col("compound_class")).rank("dense")
                                    .alias("c"))["c"].to_numpy().astype(np.int64))
    # residuals from the group prior (groups of 1-2 rows) spread wider than median-centred
    # ones: each kind gets its own scale
    flags, info = robust_flags(residual, cell_key[gid], float(options.outlier_k),
                               stratum=centred.astype(np.int64))
    info["robust_sd"] = {"group_prior": info["robust_sd"].get(0),
                         "group_median": info["robust_sd"].get(1)}
    info.update({"rows": len(y), "outliers": int(flags.sum()), "first_fit_steps": steps,
                 "first_fit_seconds": fit_info.get("seconds"), "fit": fit_info})
    log.info("outlier screen: %d of %d training rows beyond %.3g robust SDs (robust SDs %s "
             "min) left out as rt_outlier", info["outliers"], info["rows"], options.outlier_k,
             info["robust_sd"])
    return flags, info


def group_prior_means(d: Any, draws: dict[str, np.ndarray]) -> np.ndarray:
    """Each group's prior mean of (intercept, slopes) given the hyperparameters, averaged over
    draws: ``α0 + species + compound`` and ``slope_species`` (G, p+1)."""
    a = (draws["alpha0"][:, None] + draws["species_effect"][:, d.unit_g]
         + draws["compound_effect"][:, d.cpd_g]).mean(axis=0)
    m = draws["slope_species"][:, d.unit_g, :].mean(axis=0)
    return np.concatenate([a[:, None], m], axis=1)
