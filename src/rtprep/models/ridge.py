"""Ridge regression per group: each (species, compound) group fitted alone.

Intercept unpenalised, slopes penalised by λ on the centred covariates (the same solution as
scikit-learn's ``Ridge(alpha=λ, fit_intercept=True)`` on the group's rows). The coefficient
covariance is ``σ² (ZᵀZ + diag(0, λI))⁻¹`` (the ridge posterior under a flat intercept prior);
σ² is the group's own residual variance ``RSS / (n - df)`` (df = trace of the hat matrix) when
the group has more rows than parameters, else the pooled residual variance of those groups.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rtprep.models.algebra import GroupAlgebra
from rtprep.models.data import Covariates, GroupStats
from rtprep.models.fitted import FittedModel

log = logging.getLogger(__name__)


def fit_ridge(stats: GroupStats, covs: Covariates, alg: GroupAlgebra, *, group_by: str,
              meta: dict[str, Any] | None = None,
              species_map: dict[str, str] | None = None) -> FittedModel:
    """Fit every group's ridge regression from its sufficient statistics."""
    g = stats.groups.height
    p = stats.p
    zeros = np.zeros(g)
    a, b, s_schur = alg.posterior(zeros, zeros, np.zeros((g, p)))
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
