"""The pooled model's slope prior mean, estimated in closed form before the fit and held fixed.

A compound's response to the standards is largely a smooth function of where it elutes: a
gradient that runs a little slower or bends mid-way moves every compound as the standards that
bracket it move, so the slope vector on the standards' RTs follows the compound's RT. The prior
mean of group g's slopes (g = species u × compound c) is therefore::

    m_g = β_u + Σ_k φ_k(t_c) κ_k

with ``t_c`` the compound's training mean rt minus the overall mean, ``φ_k`` a cubic B-spline
basis on ``t`` (interior knots at quantiles of the compounds' ``t``; the first basis function is
dropped, since the B-splines sum to one and the species slopes carry the constant), ``κ_k`` one
p-vector per basis function and ``β_u`` the species' slopes. With no interior knots the basis is
``t`` alone: the slopes grow linearly along the gradient.

Everything is estimated by least squares on the within-group sufficient statistics (rows
centred on their group's mean, so the intercepts drop out): with ``W_g = XᵀX - ssᵀ/n`` and
``c_g = Xᵀyc`` the normal equations need only per-species and per-basis-pair sums of ``W_g``.
The species slopes are eliminated per species (Schur complement) and shrunk toward the pooled
solution by ``ρ|β_u - β̄|²``, ``ρ = σ²/τ_β²``: the species' slopes spread with ``τ_β`` around
``β̄``. ``ρ`` is chosen by the restricted likelihood of each species' within-group rows with
``β_u`` integrated out (:func:`choose_species_shrink`): a species seen in two injections of one
sample set tells little about its own response to the standards, and with a fixed ρ its slopes
chased the standards' jitter (their sum, the share of a drift passed on, fell to 0.3).
Thousands of groups inform these few parameters, so their uncertainty is negligible next to a
group's: they are held fixed, the statistics are shifted by ``m_g`` exactly
(:meth:`GroupAlgebra.shifted_by`), and the fit's slope prior mean is zero.

``λ`` (:func:`choose_lambda`) sets how far a group's slopes may stray from ``m_g``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtprep.models.algebra import GroupMoments

log = logging.getLogger(__name__)

#: Cubic B-splines.
DEGREE = 3
#: Grid of the shrinkage ρ of each species' slopes toward the pooled slopes (log10, relative to
#: an average species' information per slope), searched by the restricted likelihood of the
#: species' within-group rows (:func:`choose_species_shrink`); ``inf`` (one set of slopes for
#: every species) is searched too.
SPECIES_SHRINK_GRID = np.arange(-4.0, 4.01, 0.5)
#: Ridge on the spline coefficients, relative to their mean information (keeps empty spans
#: of the basis solvable).
SPLINE_RIDGE = 1e-6

#: Grid of slope precision ratios λ searched by :func:`choose_lambda` (log10).
LAMBDA_GRID = np.arange(-2.0, 5.01, 0.25)


@dataclass
class SlopePrior:
    """The fixed slope prior mean: species slopes plus a smooth function of the compound's RT."""

    centre: float          # t = compound mean rt - centre
    knots: np.ndarray      # full knot vector of the B-spline basis (empty: basis = t)
    kappa: np.ndarray      # (K, p) one slope vector per basis function
    beta_u: np.ndarray     # (units, p) species slopes
    t_c: np.ndarray        # (compounds,) each compound's t
    species_shrink: dict[str, Any] = field(default_factory=dict)  # the choice of ρ

    def basis(self, t: np.ndarray) -> np.ndarray:
        """``φ(t)`` (n, K); outside the knots' range t is clamped (constant slopes beyond)."""
        return spline_basis(np.asarray(t, dtype=np.float64), self.knots)

    def compound_slopes(self) -> np.ndarray:
        """``Σ_k φ_k(t_c) κ_k`` per compound (compounds, p)."""
        return self.basis(self.t_c) @ self.kappa

    def group_means(self, unit_g: np.ndarray, cpd_g: np.ndarray) -> np.ndarray:
        """``m_g`` for every group (G, p)."""
        return self.beta_u[unit_g] + self.compound_slopes()[cpd_g]

    def to_json(self) -> dict[str, Any]:
        """What prediction needs for compounds the model has not seen (their t from their
        predicted intercept)."""
        return {"centre": self.centre, "knots": self.knots.tolist(), "degree": DEGREE,
                "kappa": self.kappa.tolist()}


def spline_basis(t: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The basis of :class:`SlopePrior` at ``t``: B-splines on ``knots`` without the first one,
    or ``t`` itself when ``knots`` is empty."""
    if len(knots) == 0:
        return t[:, None].copy()
    from scipy.interpolate import BSpline

    lo, hi = float(knots[DEGREE]), float(knots[-DEGREE - 1])
    tt = np.clip(t, lo, hi)
    dm = BSpline.design_matrix(tt, knots, DEGREE, extrapolate=False).toarray()
    return np.ascontiguousarray(dm[:, 1:])


def knot_vector(t_c: np.ndarray, n_knots: int) -> np.ndarray:
    """Cubic B-spline knots: ``n_knots`` interior knots at quantiles of the compounds' ``t``,
    the ends repeated (empty when ``n_knots`` is 0 or the compounds are too few)."""
    u = np.unique(t_c)
    if n_knots <= 0 or len(u) < n_knots + DEGREE + 2:
        return np.zeros(0)
    lo, hi = float(u[0]), float(u[-1])
    inner = np.quantile(u, np.linspace(0, 1, n_knots + 2)[1:-1])
    return np.concatenate([[lo] * (DEGREE + 1), inner, [hi] * (DEGREE + 1)])


def compound_t(alg: GroupMoments, cpd_g: np.ndarray, n_compounds: int) -> tuple[np.ndarray,
                                                                                 float]:
    """Each compound's training mean rt minus the overall mean, and that mean."""
    w_c = np.bincount(cpd_g, weights=alg.n, minlength=n_compounds)
    t_c = np.bincount(cpd_g, weights=alg.n * alg.ybar, minlength=n_compounds) / np.maximum(
        w_c, 1e-300)
    centre = float((alg.n * alg.ybar).sum() / alg.n.sum())
    return t_c - centre, centre


def fit_slope_prior(alg: GroupMoments, unit_g: np.ndarray, cpd_g: np.ndarray, n_units: int,
                    n_compounds: int, n_knots: int | None) -> SlopePrior:
    """Estimate ``β_u`` and ``κ`` by least squares on the within-group statistics.

    Within group g, ``yc ≈ Xw (β_u + κᵀφ_g)``. With ``A_u = Σ_{g∈u} W_g``,
    ``B_uk = Σ_{g∈u} φ_gk W_g``, ``C_kl = Σ_g φ_gk φ_gl W_g``: eliminating ``β_u`` leaves
    ``Σ_l (C_kl - Σ_u B_uk A_u⁻¹ B_ul) κ_l = Σ_g φ_gk c_g - Σ_u B_uk A_u⁻¹ c_u``, a (Kp × Kp)
    system (``n_knots`` None: no term along the gradient, species slopes only). Cost
    O(groups × p² × K) for the sums and O(units × (Kp)² p) for the elimination.
    """
    import scipy.sparse as sp

    t_c, centre = compound_t(alg, cpd_g, n_compounds)
    knots = knot_vector(t_c, n_knots or 0)
    p = alg.p
    g_n = len(alg.n)
    phi = (spline_basis(t_c, knots)[cpd_g] if n_knots is not None
           else np.zeros((g_n, 0)))                    # (G, K)
    k_n = phi.shape[1]
    w = alg.within().reshape(g_n, p * p)
    unit_sum = sp.csr_matrix((np.ones(g_n), (unit_g, np.arange(g_n))), shape=(n_units, g_n))
    a_u = np.asarray(unit_sum @ w).reshape(n_units, p, p)
    c_u = np.asarray(unit_sum @ alg.c)
    a_all = a_u.sum(axis=0)
    b_uk = np.zeros((n_units, k_n, p, p))
    for k in range(k_n):  # a loop over basis functions (~10), each a sparse product
        b_uk[:, k] = np.asarray(unit_sum @ (phi[:, k:k + 1] * w)).reshape(n_units, p, p)
    c_mat = np.zeros((k_n, k_n, p, p))
    for k in range(k_n):  # pairs of basis functions (B-splines overlap only near each other)
        for j in range(k, k_n):
            wkj = phi[:, k] * phi[:, j]
            if not wkj.any():
                continue
            v = (wkj @ w).reshape(p, p)
            c_mat[k, j] = v
            c_mat[j, k] = v
    e = phi.T @ alg.c                                 # (K, p)
    # pooled slopes β̄ (one for all species) first: the species shrink toward them
    kappa_bar, beta_bar = _solve_block(a_all[None], b_uk.sum(axis=0)[None], c_mat,
                                       c_u.sum(axis=0)[None], e, 0.0, np.zeros(p))
    beta_bar = beta_bar[0]
    m_bar = beta_bar[None, :] + phi @ kappa_bar                      # (G, p)
    rho, shrink_info = choose_species_shrink(alg, w.reshape(g_n, p, p), a_u, m_bar,
                                             unit_sum)
    if np.isfinite(rho):
        kappa, beta_u = _solve_block(a_u, b_uk, c_mat, c_u, e, rho, beta_bar)
    else:
        kappa, beta_u = kappa_bar, np.broadcast_to(beta_bar, (n_units, p)).copy()
    if not k_n:  # no term along the gradient: a linear one with coefficient 0
        kappa = np.zeros((1, p))
    return SlopePrior(centre=centre, knots=knots, kappa=kappa, beta_u=beta_u, t_c=t_c,
                      species_shrink=shrink_info)


def choose_species_shrink(alg: GroupMoments, w: np.ndarray, a_u: np.ndarray, m_bar: np.ndarray,
                          unit_sum: Any) -> tuple[float, dict[str, Any]]:
    """The shrinkage ρ of the species' slopes that maximises the restricted likelihood of the
    within-group rows (``w``: each group's within-group ``XᵀX``; ``a_u``: their sums per
    species), ``β_u ~ N(β̄, σ²/ρ I)`` integrated out.

    Around the pooled prior mean ``m̄_g`` (one set of slopes for all species), species u's
    within-group residuals have ``Xᵀr = r_u = Σ_g (c_g - W_g m̄_g)`` and ``rᵀr = q_u``; with
    ``A_u = V diag(e) Vᵀ``: ``Q = Σ_u q_u - Σ_i (Vᵀr_u)_i² / (e_i + ρ)``, ``logdet = Σ log(1 +
    e_i/ρ)``, σ² profiled out (the groups' own slope deviations are left out of this choice).
    """
    p = alg.p
    n_units = a_u.shape[0]
    r_g = alg.c - np.einsum("gij,gj->gi", w, m_bar)
    q_g = (alg.yty - 2.0 * np.einsum("gi,gi->g", m_bar, alg.c)
           + np.einsum("gi,gi->g", m_bar, np.einsum("gij,gj->gi", w, m_bar)))
    r_u = np.asarray(unit_sum @ r_g)
    q = float(q_g.sum())
    e_u, v_u = np.linalg.eigh(a_u)
    e_u = np.maximum(e_u, 0.0)
    proj2 = np.einsum("uji,uj->ui", v_u, r_u) ** 2
    dof = float((alg.n - 1).sum())
    ref = max(float(np.trace(a_u.sum(axis=0))) / (p * max(n_units, 1)), 1e-300)
    grid = [*(ref * 10.0**SPECIES_SHRINK_GRID), np.inf]
    scores = []
    for rho in grid:  # ~17 values, each vectorised over species
        if np.isfinite(rho):
            qq = q - float((proj2 / (e_u + rho)).sum())
            logdet = float(np.log1p(e_u / rho).sum())
        else:
            qq, logdet = q, 0.0
        sigma2 = max(qq / max(dof, 1.0), 1e-300)
        scores.append(-0.5 * (dof * np.log(sigma2) + logdet + dof))
    best = int(np.argmax(scores))
    rho = float(grid[best])
    info = {"rho": rho if np.isfinite(rho) else None,
            "rho_relative": float(rho / ref) if np.isfinite(rho) else None,
            "pooled": not np.isfinite(rho)}
    log.info("pooled: species slopes shrunk with ρ = %s (%s of an average species' "
             "information; restricted likelihood)",
             "inf (one set for all species)" if not np.isfinite(rho) else f"{rho:.4g}",
             "-" if not np.isfinite(rho) else f"{rho / ref:.3g}")
    return rho, info


def _solve_block(a_u: np.ndarray, b_uk: np.ndarray, c_mat: np.ndarray, c_u: np.ndarray,
                 e: np.ndarray, rho: float, beta_bar: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Solve for (κ, β_u) with ``ρ|β_u - β̄|²`` added; returns κ (K, p) and β (U, p)."""
    n_u, k_n, p, _ = b_uk.shape
    a_r = a_u + rho * np.eye(p)[None]
    rhs_u = c_u + rho * beta_bar[None]
    big_b = b_uk.transpose(0, 2, 1, 3).reshape(n_u, p, k_n * p)   # (U, p, Kp): [B_u1 … B_uK]
    ainv_b = np.linalg.solve(a_r, big_b)
    ainv_c = np.linalg.solve(a_r, rhs_u[:, :, None])[:, :, 0]
    lhs = (c_mat.transpose(0, 2, 1, 3).reshape(k_n * p, k_n * p)
           - np.einsum("uji,ujk->ik", big_b, ainv_b))
    rhs = e.reshape(-1) - np.einsum("uji,uj->i", big_b, ainv_c)
    ridge = SPLINE_RIDGE * max(float(np.trace(lhs)) / max(k_n * p, 1), 1e-12)
    kappa = np.linalg.solve(lhs + ridge * np.eye(k_n * p), rhs) if k_n else np.zeros(0)
    beta_u = ainv_c - np.einsum("uij,j->ui", ainv_b, kappa)
    return kappa.reshape(k_n, p), beta_u


def choose_lambda(alg: GroupMoments, m: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The slope precision ratio λ that maximises the within-group (restricted) likelihood.

    Within group g (rows centred on their mean; the intercept drops out), with the prior slope
    mean ``m_g``: ``yc ~ N(Xw m_g, σ²(P + Xw Xwᵀ/λ))``. With ``W = V diag(e) Vᵀ`` (one batched
    eigendecomposition) and ``r = c - W m``:
    ``Q_g = ycᵀyc - 2m·c + mᵀWm - Σ_i (Vᵀr)_i² / (e_i + λ)``, ``logdet = Σ_i log(1 + e_i/λ)``;
    σ² is profiled out. The grid search costs O(groups × p × grid) after the O(groups × p³)
    decomposition.
    """
    w = alg.within()
    e, v = alg.within_eigh(w)
    wm = np.einsum("gij,gj->gi", w, m)
    r = alg.c - wm
    q_base = alg.yty - 2.0 * np.einsum("gi,gi->g", m, alg.c) + np.einsum("gi,gi->g", m, wm)
    vr2 = np.einsum("gji,gj->gi", v, r) ** 2
    dof = float((alg.n - 1).sum())
    scores = []
    for lg in LAMBDA_GRID:  # a loop over ~30 grid values, each vectorised over groups
        lam = 10.0**lg
        q = q_base - (vr2 / (e + lam)).sum(axis=1)
        logdet = np.log1p(e / lam).sum()
        sigma2 = max(float(q.sum()) / max(dof, 1.0), 1e-300)
        scores.append(-0.5 * (dof * np.log(sigma2) + logdet + dof))
    best = int(np.argmax(scores))
    lam = float(10.0 ** LAMBDA_GRID[best])
    info = {"lambda": lam, "grid_log10": [float(LAMBDA_GRID[0]), float(LAMBDA_GRID[-1])],
            "at_grid_edge": best in (0, len(LAMBDA_GRID) - 1)}
    log.info("pooled: slope precision ratio λ = %.4g (restricted likelihood)", lam)
    return lam, info
