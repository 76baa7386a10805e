"""Per-group linear algebra shared by the ridge and the pooled model.

A group has rows (y, x) with x the centred covariates, and parameters θ = (a, b): intercept and
slopes. With ``K = (XᵀX + λI)⁻¹`` factored once per group, everything else is closed form:

* the ridge fit (intercept unpenalised) and its coefficient covariance;
* the conditional posterior of θ given the pooled model's hyperparameters
  (``a ~ N(μ, τ²)``, ``b ~ N(m, σ²/λ I)``, ``y ~ N(a + x·b, σ²)``);
* the integrated likelihood of the group's rows with θ integrated out:
  ``y ~ N(μ1 + Xm, σ²I + τ²11ᵀ + σ²/λ XXᵀ)``, through Woodbury and the determinant lemma.

y enters centred on each group's mean (``yc = y - ȳ``), which keeps the sums small and the
quadratic forms free of cancellation; intercepts are shifted back by ȳ.

Derivation of the integrated likelihood (P = (I + XXᵀ/λ)⁻¹ = I - XKXᵀ, Z = [1, X]):
with θ0 = (μ', m), μ' = μ - ȳ, r0 = yc - Zθ0,
``Q0 = r0ᵀPr0``, ``q1 = 1ᵀPr0``, ``Haa = 1ᵀP1 = n - sᵀKs``, and
``log p(y) = -½[n log 2πσ² + logdet(I+XXᵀ/λ) + log(1 + τ²Haa/σ²) + Q0/σ²
              - τ² q1² / (σ²(σ² + τ²Haa))]``.
The pieces of ZᵀPZ, ZᵀPyc, ycᵀPyc reduce to ``Ham = λKs``, ``Hmm = λ(I - λK)``,
``ha = -sᵀKc``, ``hm = λKc``, ``c0 = ycᵀyc - cᵀKc`` with ``s = Σx``, ``c = Xᵀyc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtprep.models.data import GroupStats

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class GroupMoments:
    """Each group's weighted sums (arrays indexed by group): what the slope prior and the
    choice of λ need, without factoring anything."""

    n: np.ndarray        # (G,)
    ybar: np.ndarray     # (G,)
    s: np.ndarray        # (G, p)  Σx
    c: np.ndarray        # (G, p)  Xᵀyc
    yty: np.ndarray      # (G,)    ycᵀyc
    xtx: np.ndarray      # (G, p, p)

    @classmethod
    def of(cls, stats: GroupStats) -> GroupMoments:
        return cls(n=stats.n, ybar=stats.ybar, s=stats.sx, c=stats.xty, yty=stats.yty,
                   xtx=stats.xtx)

    @property
    def p(self) -> int:
        return int(self.s.shape[1])

    def within(self) -> np.ndarray:
        """Each group's within-group ``XᵀX`` (rows centred on the group's mean): ``XᵀX - ssᵀ/n``."""
        return self.xtx - self.s[:, :, None] * self.s[:, None, :] / self.n[:, None, None]

    def within_eigh(self, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (clipped at 0) and eigenvectors of :meth:`within` (or of ``w``, when
        the caller has it already), per group."""
        e, v = np.linalg.eigh(self.within() if w is None else w)
        return np.maximum(e, 0.0), v


@dataclass
class GroupAlgebra(GroupMoments):
    """:class:`GroupMoments` with ``K`` and the products the fits need."""

    lam: float
    k: np.ndarray        # (G, p, p)  (XᵀX + λI)⁻¹
    ks: np.ndarray       # (G, p)  K s
    kc: np.ndarray       # (G, p)  K c
    sks: np.ndarray      # (G,)
    skc: np.ndarray      # (G,)
    ckc: np.ndarray      # (G,)
    logdet: np.ndarray   # (G,)  logdet(I + XXᵀ/λ) = logdet(XᵀX + λI) - p log λ

    @classmethod
    def from_stats(cls, stats: GroupStats, lam: float) -> GroupAlgebra:
        """Factor every group's ``XᵀX + λI`` once (batched Cholesky)."""
        p = stats.p
        b = stats.xtx + lam * np.eye(p)[None, :, :]
        chol = np.linalg.cholesky(b)
        eye = np.broadcast_to(np.eye(p), b.shape)
        linv = np.linalg.solve(chol, eye)          # L⁻¹
        k = np.matmul(linv.transpose(0, 2, 1), linv)  # K = L⁻ᵀ L⁻¹ (batched BLAS, not einsum)
        k = 0.5 * (k + k.transpose(0, 2, 1))          # exactly symmetric
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1) - p * np.log(lam)
        ks = np.matmul(k, stats.sx[:, :, None])[:, :, 0]
        kc = np.matmul(k, stats.xty[:, :, None])[:, :, 0]
        return cls(
            lam=float(lam), n=stats.n, ybar=stats.ybar, s=stats.sx, c=stats.xty, yty=stats.yty,
            xtx=stats.xtx, k=k, ks=ks, kc=kc,
            sks=np.einsum("gi,gi->g", stats.sx, ks), skc=np.einsum("gi,gi->g", stats.sx, kc),
            ckc=np.einsum("gi,gi->g", stats.xty, kc), logdet=logdet,
        )

    def shifted(self, t: np.ndarray, kappa: np.ndarray) -> GroupAlgebra:
        """The algebra of ``y' = y - t_g x·κ``: :meth:`shifted_by` with ``m_g = t_g κ``."""
        return self.shifted_by(t[:, None] * kappa[None, :])

    def shifted_by(self, m: np.ndarray) -> GroupAlgebra:
        """The algebra of ``y' = y - x·m_g`` (same X, so ``K`` is reused), exactly.

        With ``u = x·m_g``: ``ȳ' = ȳ - s·m/n``, ``yc' = yc - (X - 1sᵀ/n)m``, so
        ``c' = c - Wm`` and ``yc'ᵀyc' = ycᵀyc - 2m·c + mᵀWm`` with ``W = XᵀX - ssᵀ/n``.
        """
        sm = np.einsum("gi,gi->g", self.s, m)
        wm = np.einsum("gij,gj->gi", self.xtx, m) - self.s * (sm / self.n)[:, None]
        c = self.c - wm
        yty = self.yty - 2.0 * np.einsum("gi,gi->g", m, self.c) + np.einsum("gi,gi->g", m, wm)
        ybar = self.ybar - sm / self.n
        kc = np.einsum("gij,gj->gi", self.k, c)
        return GroupAlgebra(
            lam=self.lam, n=self.n, ybar=ybar, s=self.s, c=c, yty=np.maximum(yty, 0.0),
            xtx=self.xtx, k=self.k, ks=self.ks, kc=kc, sks=self.sks,
            skc=np.einsum("gi,gi->g", self.s, kc), ckc=np.einsum("gi,gi->g", c, kc),
            logdet=self.logdet)

    # -- pieces of the integrated likelihood ---------------------------------------------------
    @property
    def h_aa(self) -> np.ndarray:
        return self.n - self.sks

    @property
    def h_am(self) -> np.ndarray:
        return self.lam * self.ks

    @property
    def h_a(self) -> np.ndarray:
        return -self.skc

    @property
    def h_m(self) -> np.ndarray:
        return self.lam * self.kc

    @property
    def c0(self) -> np.ndarray:
        return self.yty - self.ckc

    def h_mm(self) -> np.ndarray:
        """``λ(I - λK)`` per group (G, p, p)."""
        return self.lam * (np.eye(self.p)[None] - self.lam * self.k)

    # -- conditional posterior of θ -----------------------------------------------------------
    def posterior(self, rho: np.ndarray, mu_prime: np.ndarray,
                  m: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior mean of (a - ȳ, b) given prior ``a ~ N(μ, σ²/ρ)``, ``b ~ N(m, σ²/λ)``.

        Returns ``(a', b, S)`` with ``S = n + ρ - sᵀKs``; the posterior covariance is
        ``σ² [[1/S, -(Ks)ᵀ/S], [-Ks/S, K + Ks Ksᵀ/S]]`` (see :meth:`covariance`).
        ``rho = 0`` and ``m = 0`` give the ridge fit; ``m = None`` is ``m = 0`` without the
        products with it.
        """
        s_schur = self.n + rho - self.sks
        if m is None:
            a = (rho * mu_prime - self.skc) / s_schur
            return a, self.kc - self.ks * a[:, None], s_schur
        ks_m = np.einsum("gi,gi->g", self.ks, m)
        a = (rho * mu_prime - self.skc - self.lam * ks_m) / s_schur
        km = np.einsum("gij,gj->gi", self.k, m)
        b = self.kc + self.lam * km - self.ks * a[:, None]
        return a, b, s_schur

    def covariance(self, w_k: np.ndarray, w_s: np.ndarray) -> np.ndarray:
        """``[[w_s, -w_s Ksᵀ], [-w_s Ks, w_k K + w_s Ks Ksᵀ]]`` per group, flattened (G, (p+1)²).

        With ``w_k = σ²`` and ``w_s = σ²/S`` it is the posterior covariance of (a, b); averages of
        those weights over draws give the average covariance.
        """
        g, p = self.ks.shape
        cov = np.empty((g, p + 1, p + 1))
        cov[:, 0, 0] = w_s
        cov[:, 0, 1:] = -w_s[:, None] * self.ks
        cov[:, 1:, 0] = cov[:, 0, 1:]
        cov[:, 1:, 1:] = (w_k[:, None, None] * self.k
                          + w_s[:, None, None] * self.ks[:, :, None] * self.ks[:, None, :])
        return cov.reshape(g, (p + 1) ** 2)

    def rss(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Residual sum of squares of θ = (ȳ + a, b) on the group's rows."""
        btab = np.einsum("gi,gij,gj->g", b, self.xtx, b)
        return (self.yty - 2.0 * np.einsum("gi,gi->g", b, self.c) + self.n * a * a
                + 2.0 * a * np.einsum("gi,gi->g", self.s, b) + btab)


def integrated_loglik_np(alg: GroupAlgebra, mu_prime: np.ndarray, m: np.ndarray,
                         sigma2: np.ndarray, tau2: float) -> np.ndarray:
    """Per-group log density of the rows with intercept deviation and slopes integrated out.

    ``mu_prime`` (G,) is the prior intercept mean minus ȳ, ``m`` (G, p) the prior slope mean,
    ``sigma2`` (G,) the noise variance, ``tau2`` the intercept deviation variance. A numpy
    reference of what the PyMC model's Potential computes (tests compare both to brute force).
    """
    h_aa = alg.h_aa
    ham_m = np.einsum("gi,gi->g", alg.h_am, m)
    mhm = np.einsum("gi,gij,gj->g", m, alg.h_mm(), m)
    q0 = (alg.c0 - 2 * mu_prime * alg.h_a - 2 * np.einsum("gi,gi->g", m, alg.h_m)
          + mu_prime**2 * h_aa + 2 * mu_prime * ham_m + mhm)
    q1 = alg.h_a - mu_prime * h_aa - ham_m
    return -0.5 * (alg.n * (LOG_2PI + np.log(sigma2)) + alg.logdet
                   + np.log1p(tau2 * h_aa / sigma2) + q0 / sigma2
                   - tau2 * q1**2 / (sigma2 * (sigma2 + tau2 * h_aa)))
