"""Mis-assigned peaks: each training row's probability of being one, from a mixture likelihood.

Peak tables hold a small share of mis-assigned peaks: an apex that belongs to another compound
(an isomer eluting nearby, tenths of a minute away) or to nothing (minutes away). A Gaussian
noise model cannot absorb them: a handful inflate their compound's noise (so its intervals are
too wide) and pull the few-row groups they sit in. A hard cut at k robust SDs either passes the
near ones or, on data without any, leaves out good rows.

The robust fit treats every row as drawn from a mixture: with probability ``1 - π`` the model's
Gaussian (its group's prediction, its compound's noise), with probability ``π`` a broad outlier
component around the same prediction (``N(0, s² + s_out²)`` for the residual). EM, keeping the
collapsed design:

1. E-step: fit the pooled model on the rows with their current weights (at first 1, but
   ``MIN_WEIGHT`` for rows far off their compound's median, :func:`initial_weights`; the
   statistics are weighted sums, :func:`rtprep.models.data.sufficient_stats`), and judge each
   row by its leave-one-out predictive: with ``r`` the residual from its group's posterior mean,
   ``v`` that mean's variance at the row, ``s²`` the noise and ``w`` the row's weight,
   ``h = w v / s²``, the residual without the row is ``r / (1 - h)`` and its variance
   ``s² + v / (1 - h)`` (exact for a Gaussian linear model given the hyperparameters), so a
   mis-assigned row in a small group cannot hide by pulling its group; each compound's
   variance is scaled by its median ``r²/s²`` over χ²₁'s where that is below 1
   (:func:`robust_scale`), so a few near-off rows cannot hide behind the noise they inflate.
   ``π`` and ``s_out`` are
   then fitted to those residuals (a one-dimensional EM), giving each row's posterior
   probability ``p`` of being mis-assigned.
2. M-step: weights ``1 - p`` (at least ``MIN_WEIGHT``, so no group vanishes between rounds);
   refit. Rounds repeat until no row's probability moves by more than ``ROUND_TOLERANCE`` (at
   most ``robust_rounds``).

The main fit then leaves out the rows more likely mis-assigned than not (``p > 0.5``, counted
as drop reason ``rt_outlier``) and weights the others by ``1 - p``. Every training row's ``p`` is
written beside the models (``rows.parquet``), usable to clean training data and in peak
assignment.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from rtprep.models.algebra import GroupMoments
from rtprep.models.data import Covariates, sufficient_stats
from rtprep.models.fitted import apply_groups
from rtprep.models.options import ModelOptions

log = logging.getLogger(__name__)

#: A row's weight never drops below this between rounds (its group keeps its place).
MIN_WEIGHT = 1e-3
#: Rounds stop once no row's probability moves by more than this.
ROUND_TOLERANCE = 0.05
#: At least this many rounds of ``screen_steps`` in each robust fit's ADVI (see advi.fit).
SCREEN_MIN_ROUNDS = 3
#: Prior share of mis-assigned rows and the outlier spread's start (× the median row sd).
PI_START = 0.01
OUT_SCALE_START = 20.0
_EM_ITERATIONS = 200
#: Before the first round, rows this many robust sds (1.4826 × MAD) from their compound's
#: median rt start at ``MIN_WEIGHT`` (compounds with at least ``INITIAL_MIN_ROWS`` rows).
INITIAL_K = 8.0
INITIAL_MIN_ROWS = 5


#: Compounds with at least this many rows get their own noise scale (:func:`robust_scale`).
SCALE_MIN_ROWS = 20


def _by_compound(groups: pl.DataFrame, gid: np.ndarray, v: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its compound's median of ``v``, the median absolute deviation from it and the
    compound's row count."""
    cpd = groups["compound"].to_numpy()[gid] if groups.height else np.zeros(len(v))
    frame = pl.DataFrame({"c": pl.Series(cpd).cast(pl.String), "v": v})
    stats = frame.group_by("c").agg(
        pl.col("v").median().alias("med"), pl.len().alias("n"),
        (pl.col("v") - pl.col("v").median()).abs().median().alias("mad"))
    j = frame.join(stats, on="c", how="left", maintain_order="left")
    return j["med"].to_numpy(), j["mad"].to_numpy(), j["n"].to_numpy()


def robust_scale(groups: pl.DataFrame, gid: np.ndarray, r: np.ndarray, s2: np.ndarray,
                 ) -> np.ndarray:
    """Per row, a factor (at most 1) on its predictive variance: its compound's median of
    ``r²/s²`` over the median of χ²₁ (0.455), where the compound has enough rows. A few
    mis-assigned rows inflate their compound's noise; the median is not moved by them."""
    med, _, n = _by_compound(groups, gid, r * r / s2)
    return np.clip(np.where(n >= SCALE_MIN_ROWS, med / 0.455, 1.0), 0.25, 1.0)


def initial_weights(groups: pl.DataFrame, gid: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first round's weights: 1, but ``MIN_WEIGHT`` for rows far from their compound's
    median rt (``INITIAL_K`` robust sds across all its rows, whatever the species).

    Without them, a rare compound's few far rows (minutes off) can make the first fit give that
    compound a noise of minutes, under which its rows look ordinary, and EM stays there. The
    spread across a compound's rows holds species shifts and drift, so only rows far beyond
    them start down-weighted; every row's probability is then judged by the fitted model.
    """
    med, mad, n = _by_compound(groups, gid, y)
    far = (n >= INITIAL_MIN_ROWS) & (np.abs(y - med) > INITIAL_K * 1.4826 * mad) & (mad > 0)
    return np.where(far, MIN_WEIGHT, 1.0)


def loo_residuals(mean: np.ndarray, cov: np.ndarray, noise_var: np.ndarray, gid: np.ndarray,
                  x: np.ndarray, y: np.ndarray, w: np.ndarray,
                  between: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's leave-one-out residual and predictive variance (see the module docstring).

    ``cov``: the group posterior's covariance given the hyperparameters (averaged over their
    draws); ``between``: its part from the draws' spread, added to the variance but kept out
    of the row's leverage (given the draws, a row's leverage is below 1; with the spread in it,
    a one-row group's could exceed 1 and break the leave-one-out residual).
    """
    pred, var = apply_groups(mean, cov, noise_var, gid, x)
    s2 = noise_var[gid]
    v = np.maximum(var - s2, 0.0)
    one_minus_h = np.clip(1.0 - w * v / s2, 1e-6, 1.0)
    extra = (np.zeros(len(y)) if between is None
             else apply_groups(np.zeros_like(mean), between, np.zeros(len(mean)), gid, x)[1])
    return (y - pred) / one_minus_h, s2 + v / one_minus_h + extra


def mixture_probabilities(r: np.ndarray, s2: np.ndarray, *, pi: float = PI_START,
                          out_var: float | None = None, max_r2: float | None = None,
                          ) -> tuple[np.ndarray, dict[str, Any]]:
    """Posterior probability that each residual is the outlier component's.

    ``r ~ (1 - π) N(0, s²) + π N(0, s² + s_out²)``; ``π`` and ``s_out²`` by EM (deterministic:
    fixed start, fixed iterations, sums in row order). ``max_r2`` caps the squared residuals
    (a peak cannot lie further off than the RT range) so that a row whose leave-one-out
    prediction is vague cannot blow up ``s_out``.
    """
    median_s2 = float(np.median(s2))
    if out_var is None:
        out_var = float((OUT_SCALE_START**2) * median_s2)
    r2 = r * r if max_r2 is None else np.minimum(r * r, max_r2)
    good = np.log(s2) + r2 / s2          # the same in every iteration
    excess = np.maximum(r2 - s2, 0.0)
    p = np.zeros(len(r))
    for _ in range(_EM_ITERATIONS):  # a 2-parameter EM, each step vectorised over rows
        v_out = s2 + out_var
        log_good = np.log1p(-pi) - 0.5 * good
        log_out = np.log(pi) - 0.5 * (np.log(v_out) + r2 / v_out)
        p = 1.0 / (1.0 + np.exp(np.clip(log_good - log_out, -700, 700)))
        total = float(p.sum())
        pi = float(np.clip(total / len(r), 1e-6, 0.5))
        if total > 0:
            out_var = max(float((p * excess).sum() / total), median_s2)
    info = {"pi": pi, "out_sd": float(np.sqrt(out_var))}
    return p, info


def misassignment(groups: pl.DataFrame, gid: np.ndarray, x: np.ndarray, y: np.ndarray,
                  covs: Covariates, options: ModelOptions, *, sigma_init: float,
                  embeddings: Any = None,
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Each training row's posterior probability of being mis-assigned (EM rounds, module
    docstring), and what the rounds did."""
    from rtprep.models.pooled import (
        build_model,
        fit_advi_state,
        group_posterior_parts,
        initial_point,
        prepare_fit,
    )

    steps = int(min(options.steps(), options.screen_steps))
    round_opts = replace(options, quick=True, quick_steps=steps, method="advi",
                         summary_draws=min(options.summary_draws, 10))
    w = initial_weights(groups, gid, y)
    prob = np.zeros(len(y))
    rounds: list[dict[str, Any]] = []
    fit_info: dict[str, Any] = {}
    q_prev = None
    for i in range(max(int(options.robust_rounds), 1)):  # EM rounds (a few), each a fit
        # the last round's arrays go before this round's are built
        fit = mean = cov = between = None
        stats = sufficient_stats(groups, gid, x, y, w)
        fit = prepare_fit(stats, GroupMoments.of(stats), round_opts, sigma_init, embeddings)
        del stats
        model = build_model(fit.alg, fit.data, covs)
        # each round judges rows only from a converged fit: ADVI rounds of ``steps`` until
        # another no longer moves it (at most the main fit's steps, at least three rounds')
        # (rounds after the first start from the previous round's state: the weights moved
        # few rows, so it is close to this round's optimum)
        draws, fit_info, q_prev = fit_advi_state(
            model, round_opts, initial_point(fit.alg, fit.data),
            label=f"robust fit, round {i + 1}", until_converged=True,
            max_steps=max(options.steps(), SCREEN_MIN_ROUNDS * steps), q_start=q_prev)
        mean, cov, between, noise_var, _ = group_posterior_parts(fit.alg, fit.data, draws)
        mean[:, 1:] += fit.slope_means
        r, s2 = loo_residuals(mean, cov, noise_var, gid, x, y, w, between)
        s2 = s2 * robust_scale(groups, gid, r, s2)
        new, mix = mixture_probabilities(r, s2, max_r2=float(np.ptp(y)) ** 2)
        change = float(np.abs(new - prob).max())
        prob = new
        w = np.maximum(1.0 - prob, MIN_WEIGHT)
        rounds.append({"round": i + 1, "verdict": fit_info.get("verdict"),
                       "loss": fit_info.get("final_loss"), "steps": fit_info.get("steps"),
                       "misassigned": int((prob > 0.5).sum()), "max_change": change, **mix})
        log.info("robust fit, round %d: %d of %d rows more likely mis-assigned than not "
                 "(share %.4f, outlier sd %.3g min; largest change %.3f)", i + 1,
                 int((prob > 0.5).sum()), len(y), mix["pi"], mix["out_sd"], change)
        if change <= ROUND_TOLERANCE:
            break
    info = {"rows": len(y), "outliers": int((prob > 0.5).sum()), "rounds": rounds,
            "round_steps": steps, "fit": fit_info,
            "expected_misassigned": float(prob.sum())}
    return prob, info
