"""Ridge regression per group: each (species, compound) group fitted alone.

Intercept unpenalised, slopes penalised by λ on the centred covariates (the same solution as
scikit-learn's ``Ridge(alpha=λ, fit_intercept=True)`` on the group's rows). The coefficient
covariance is ``σ² (ZᵀZ + diag(0, λI))⁻¹`` (the ridge posterior under a flat intercept prior);
σ² is the group's own residual variance ``RSS / (n - df)`` (df = trace of the hat matrix) when
the group has more rows than parameters, else the pooled residual variance of those groups.

λ is in the covariates' units, so no fixed value suits every dataset (on one export λ = 1 scored
5× worse than λ = 0.01): unless ``ridge_lambda`` fixes it, :func:`choose_ridge_lambda` picks it on
the training rows by generalised cross-validation, as the pooled model's λ is chosen from the
data.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rtprep.models.algebra import GroupAlgebra
from rtprep.models.data import Covariates, GroupStats
from rtprep.models.fitted import FittedModel

log = logging.getLogger(__name__)


#: Grid of ridge penalties searched by :func:`choose_ridge_lambda` (log10, covariates in minutes).
RIDGE_LAMBDA_GRID = np.arange(-6.0, 4.01, 0.25)


def choose_ridge_lambda(stats: GroupStats) -> tuple[float, dict[str, Any]]:
    """The ridge penalty with the smallest generalised cross-validation score over all groups.

    Within group g (rows centred on their mean, so the unpenalised intercept drops out), with
    ``W = Xwᵀ Xw = V diag(e) Vᵀ`` and ``c̃ = Vᵀ Xwᵀ yc``: ``RSS_g(λ) = ycᵀyc - Σ_i c̃_i² (e_i +
    2λ) / (e_i + λ)²`` and ``df_g(λ) = 1 + Σ_i e_i / (e_i + λ)``; ``GCV(λ) = N Σ_g RSS_g / (N -
    Σ_g df_g)²``. One batched eigendecomposition, then O(groups × p) per grid value.
    """
    # the statistics are centred on y already (yty = ycᵀyc, xty = Xᵀyc = Xwᵀyc)
    w = stats.xtx - stats.sx[:, :, None] * stats.sx[:, None, :] / stats.n[:, None, None]
    e, v = np.linalg.eigh(w)
    del w
    e = np.maximum(e, 0.0)
    c2 = np.einsum("gji,gj->gi", v, stats.xty) ** 2
    del v
    n_tot = float(stats.n.sum())
    scores = []
    for lg in RIDGE_LAMBDA_GRID:  # a loop over ~40 grid values, each vectorised over groups
        lam = 10.0**lg
        rss = np.maximum(stats.yty - (c2 * (e + 2 * lam) / (e + lam) ** 2).sum(axis=1), 0.0)
        df = float(len(stats.n) + (e / (e + lam)).sum())
        resid = n_tot - df
        scores.append(n_tot * float(rss.sum()) / resid**2 if resid > 0.5 else np.inf)
    best = int(np.argmin(scores))
    lam = float(10.0 ** RIDGE_LAMBDA_GRID[best])
    info = {"method": "gcv", "lambda": lam,
            "grid_log10": [float(RIDGE_LAMBDA_GRID[0]), float(RIDGE_LAMBDA_GRID[-1])],
            "at_grid_edge": best in (0, len(RIDGE_LAMBDA_GRID) - 1)}
    log.info("ridge: penalty λ = %.4g (generalised cross-validation)", lam)
    return lam, info


def ridge_algebra(stats: GroupStats, ridge_lambda: float | None,
                  ) -> tuple[GroupAlgebra, dict[str, Any]]:
    """The algebra of the ridge fits: at ``ridge_lambda``, or at the λ chosen from ``stats``
    (None); and how λ was chosen."""
    if ridge_lambda is not None:
        return GroupAlgebra.from_stats(stats, ridge_lambda), {"method": "fixed",
                                                               "lambda": float(ridge_lambda)}
    lam, info = choose_ridge_lambda(stats)
    return GroupAlgebra.from_stats(stats, lam), info


def fit_ridge(stats: GroupStats, covs: Covariates, alg: GroupAlgebra, *, group_by: str,
              meta: dict[str, Any] | None = None,
              species_map: dict[str, str] | None = None) -> FittedModel:
    """Fit every group's ridge regression from its sufficient statistics."""
    g = stats.groups.height
    p = stats.p
    zeros = np.zeros(g)
    a, b, s_schur = alg.posterior(zeros, zeros, None)
    rss = np.maximum(alg.rss(a, b), 0.0)
    # df of a ridge fit: trace of the hat matrix = (p+1) - λ·tr((M⁻¹)_bb)
    tr_k = np.trace(alg.k, axis1=1, axis2=2)
    df_fit = (p + 1) - alg.lam * (tr_k + np.einsum("gi,gi->g", alg.ks, alg.ks) / s_schur)
    resid_df = alg.n - df_fit
    own = alg.n > p + 1
    pool_from = own if own.any() else resid_df > 1e-8
    if pool_from.any():
        pooled_var = float(rss[pool_from].sum() / resid_df[pool_from].sum())
        pooled_df = float(resid_df[pool_from].sum())
    else:  # every group has one row: nothing to estimate a noise variance from
        pooled_var, pooled_df = float("nan"), float("nan")
        log.warning("ridge: no group has more than one row; noise variance unknown")
    noise_var = np.where(own, rss / np.where(own, resid_df, 1.0), pooled_var)
    noise_df = np.where(own, resid_df, pooled_df)
    mean = np.concatenate([(alg.ybar + a)[:, None], b], axis=1)
    cov = alg.covariance(noise_var, noise_var / s_schur)
    log.info("ridge: %d groups, %d with their own noise variance, pooled σ=%.4g (df %.0f)",
             g, int(own.sum()), np.sqrt(pooled_var), pooled_df)
    info = dict(meta or {})
    info["ridge"] = {"pooled_noise_var": pooled_var, "pooled_noise_df": pooled_df,
                     "groups_own_noise": int(own.sum())}
    return FittedModel(kind="ridge", group_by=group_by, covariates=covs,
                       ridge_lambda=alg.lam, groups=stats.groups, mean=mean, cov=cov,
                       noise_var=noise_var, noise_df=noise_df, meta=info,
                       species_map=dict(species_map or {}))
