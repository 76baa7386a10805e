"""Synthetic RT data with known true parameters, for the model tests and the benchmark.

The generator follows the structure the pooled model assumes, so that a fit can be checked
against the truth: ``rt = a_g + (x - x0)·b_g + ε`` for group g = (species, compound), with

* intercept ``a_g = α0 + cluster + species + class + embedding·γ + compound + group``,
* slopes ``b_g = global + cluster + species + group`` (per covariate),
* noise sd per (species, class): ``σ0 · exp(species + class)``,

covariates ``x`` the retention times of standards in each injection (a drift shared by the
injection plus a small per-standard jitter; a few nulls). Support varies from one row to
hundreds: compounds are present in a subset of species and detected in an injection with a
compound-specific probability. Held-out sample sets form the test rows (which carry the
noise-free ``rt_true`` for the oracle RMSE); some compounds and one species occur only there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from rtprep.core.embeddings import EMBEDDING_COLUMN


@dataclass
class SyntheticData:
    """Training rows, test rows (with ``rt_true``), embeddings and per-group truth."""

    train: pl.DataFrame
    test: pl.DataFrame
    embeddings: pl.DataFrame
    truth: pl.DataFrame
    noise_sd: float

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``train_rt_prod.csv``, ``test_rows.parquet``, ``embeddings.parquet``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"train": out / "train_rt_prod.csv", "test": out / "test_rows.parquet",
                 "embeddings": out / "embeddings.parquet"}
        self.train.write_csv(paths["train"])
        self.test.write_parquet(paths["test"])
        self.embeddings.write_parquet(paths["embeddings"])
        return paths


def covariate_names(p: int) -> list[str]:
    """``p`` covariate names over the three families (IS, RS, ES_), about half IS."""
    n_is = max(1, (p + 1) // 2)
    n_rs = (p - n_is + 1) // 2
    n_es = p - n_is - n_rs
    return ([f"IS{i + 1}" for i in range(n_is)] + [f"RS{i + 1}" for i in range(n_rs)]
            + [f"ES_{i + 1}" for i in range(n_es)])


def generate(*, n_species: int = 12, n_clusters: int = 3, n_compounds: int = 150,
             n_classes: int = 8, n_covariates: int = 6, n_sample_sets: int = 260,
             n_test_sets: int = 40, max_injections: int = 4, presence: float = 0.6,
             detect: tuple[float, float] = (0.6, 1.5), holdout_compounds: float = 0.05,
             holdout_species: int = 1, holdout_species_share: float = 0.05,
             null_fraction: float = 0.02, noise_sd: float = 0.05,
             embedding_dim: int = 20, seed: int = 0) -> SyntheticData:
    """Generate a synthetic library (see the module docstring); deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    s_n, c_n, k_n, p = n_species, n_compounds, n_classes, n_covariates
    names = covariate_names(p)
    # --- structure
    cluster_of_species = np.concatenate([np.arange(min(n_clusters, s_n)),
                                         rng.integers(0, n_clusters, max(0, s_n - n_clusters))])
    class_of_compound = np.concatenate([np.arange(min(k_n, c_n)),
                                        rng.integers(0, k_n, max(0, c_n - k_n))])
    # --- intercepts
    alpha0 = 8.0
    cl_eff = rng.normal(0, 0.3, n_clusters)
    sp_eff = cl_eff[cluster_of_species] + rng.normal(0, 0.15, s_n)
    class_eff = rng.uniform(-5, 5, k_n)
    class_centre = rng.normal(0, 1.0, (k_n, embedding_dim))
    emb = class_centre[class_of_compound] + rng.normal(0, 1.0, (c_n, embedding_dim))
    gamma = rng.normal(0, 0.15, embedding_dim)
    emb_dev = emb - class_centre[class_of_compound]
    cpd_eff = class_eff[class_of_compound] + emb_dev @ gamma + rng.normal(0, 0.4, c_n)
    # --- slopes (per covariate): RT follows the standards' drift, more for later eluters
    m_global = np.full(p, 1.0 / p) + rng.normal(0, 0.05, p)
    m_cluster = m_global + rng.normal(0, 0.05, (n_clusters, p))
    m_species = m_cluster[cluster_of_species] + rng.normal(0, 0.03, (s_n, p))
    # --- noise per (species, class)
    ns_sp = rng.normal(0, 0.25, s_n)
    ns_cl = rng.normal(0, 0.2, k_n)
    # --- which compounds each species has, how often each is detected
    present = rng.random((s_n, c_n)) < presence
    detect_p = rng.beta(detect[0], detect[1], c_n)
    # --- sample sets, injections, covariates
    set_species, set_is_test, inj_set, base, x_true, x_obs = _injections(
        rng, s_n, p, holdout_species, holdout_species_share, n_sample_sets, n_test_sets,
        max_injections, null_fraction)
    inj_species = set_species[inj_set]
    r_inj, r_cpd = _detections(rng, present, detect_p, inj_species)
    r_sp = inj_species[r_inj]
    # --- per-group truth (only for groups that occur)
    gkey = r_sp.astype(np.int64) * c_n + r_cpd
    groups, g_of_row = np.unique(gkey, return_inverse=True)
    g_sp, g_cpd = groups // c_n, groups % c_n
    n_g = len(groups)
    g_a = alpha0 + sp_eff[g_sp] + cpd_eff[g_cpd] + rng.normal(0, 0.1, n_g)
    g_sd = noise_sd * np.exp(ns_sp[g_sp] + ns_cl[class_of_compound[g_cpd]])
    g_b = m_species[g_sp] + rng.normal(0, 0.02, (n_g, p))
    xc = x_true[r_inj] - base[None, :]
    rt_true = g_a[g_of_row] + np.einsum("ri,ri->r", xc, g_b[g_of_row])
    rt = rt_true + rng.normal(0, 1.0, len(rt_true)) * g_sd[g_of_row]
    train, test = _train_test(rng, names, s_n, n_clusters, cluster_of_species, class_of_compound,
                              holdout_compounds, np.arange(s_n - holdout_species, s_n), inj_set,
                              set_is_test, x_obs, r_inj, r_cpd, r_sp, rt, rt_true)
    embeddings = pl.DataFrame({
        "chem_id": (10_000 + np.arange(c_n)).astype(np.int64),
        "smiles": ["C"] * c_n,
        EMBEDDING_COLUMN: emb,
    }, schema_overrides={EMBEDDING_COLUMN: pl.Array(pl.Float64, embedding_dim)})
    truth = pl.DataFrame({
        "species": np.array([f"sp{v:03d}" for v in range(s_n)])[g_sp],
        "compound": (10_000 + g_cpd).astype(np.int64),
        "intercept": g_a, "noise_sd": g_sd,
        "slopes": g_b,
    }, schema_overrides={"slopes": pl.Array(pl.Float64, p)})
    return SyntheticData(train, test, embeddings, truth, noise_sd)


def _injections(rng: np.random.Generator, s_n: int, p: int, holdout_species: int,
                holdout_species_share: float, n_sample_sets: int, n_test_sets: int,
                max_injections: int, null_fraction: float,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                           np.ndarray]:
    """Sample sets (species, train or test), their injections and the covariates each
    injection sees (true and observed, with nulls)."""
    sp_weight = rng.dirichlet(np.full(s_n, 1.5))
    train_species = np.arange(s_n - holdout_species)
    w = sp_weight[train_species] / sp_weight[train_species].sum()
    n_train_sets = n_sample_sets - n_test_sets
    set_species = np.concatenate([
        rng.choice(train_species, n_train_sets, p=w),
        rng.choice(np.arange(s_n), n_test_sets,
                   p=np.r_[sp_weight[train_species] * (1 - holdout_species_share)
                           / sp_weight[train_species].sum(),
                           np.full(holdout_species,
                                   holdout_species_share / max(holdout_species, 1))]
                   if holdout_species else sp_weight),
    ])
    set_is_test = np.arange(n_sample_sets) >= n_train_sets
    n_inj_set = rng.integers(1, max_injections + 1, n_sample_sets)
    inj_set = np.repeat(np.arange(n_sample_sets), n_inj_set)
    n_inj = len(inj_set)
    base = np.sort(rng.uniform(1.0, 15.0, p))
    drift = rng.normal(0, 0.15, n_inj)[:, None] * (0.5 + base / 15.0)[None, :]
    x_true = base[None, :] + drift + rng.normal(0, 0.03, (n_inj, p))
    x_obs = np.where(rng.random((n_inj, p)) < null_fraction, np.nan, x_true)
    return set_species, set_is_test, inj_set, base, x_true, x_obs


def _detections(rng: np.random.Generator, present: np.ndarray, detect_p: np.ndarray,
                inj_species: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows: (injection, compound) where the compound was detected."""
    c_n = present.shape[1]
    n_inj = len(inj_species)
    inj_rows: list[np.ndarray] = []
    cpd_rows: list[np.ndarray] = []
    chunk = max(1, 4_000_000 // max(c_n, 1))
    for start in range(0, n_inj, chunk):  # chunks of injections bound the memory
        stop = min(start + chunk, n_inj)
        hit = (present[inj_species[start:stop]]
               & (rng.random((stop - start, c_n)) < detect_p[None, :]))
        i, c = np.nonzero(hit)
        inj_rows.append(i + start)
        cpd_rows.append(c)
    return np.concatenate(inj_rows), np.concatenate(cpd_rows)


def _train_test(rng: np.random.Generator, names: list[str], s_n: int, n_clusters: int,
                cluster_of_species: np.ndarray, class_of_compound: np.ndarray,
                holdout_compounds: float, test_only_species: np.ndarray, inj_set: np.ndarray,
                set_is_test: np.ndarray, x_obs: np.ndarray, r_inj: np.ndarray,
                r_cpd: np.ndarray, r_sp: np.ndarray, rt: np.ndarray, rt_true: np.ndarray,
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows as RT-CSV frames, split into training rows (train sets, compounds and species
    not held out) and test rows (test sets, with ``rt_true``)."""
    c_n = len(class_of_compound)
    task_id = 100_000 + r_inj
    frame = pl.DataFrame({
        "sampleset_id": (5_000 + inj_set[r_inj]).astype(np.int64),
        "worksheet_id": (700 + inj_set[r_inj] // 10).astype(np.int64),
        "task_id": task_id.astype(np.int64),
        "species": np.array([f"sp{v:03d}" for v in range(s_n)])[r_sp],
        "species_cluster": np.array([f"cl{v}" for v in range(n_clusters)])[
            cluster_of_species[r_sp]],
        "compound": (10_000 + r_cpd).astype(np.int64),
        "compound_class": class_of_compound[r_cpd].astype(np.int64),
        **{n: x_obs[r_inj, j] for j, n in enumerate(names)},
        "rt": rt,
    }).with_columns(pl.col(names).fill_nan(None))
    is_test = set_is_test[inj_set[r_inj]]
    holdout_cpd = rng.random(c_n) < holdout_compounds
    train_mask = ~is_test & ~holdout_cpd[r_cpd] & ~np.isin(r_sp, test_only_species)
    order = np.lexsort((r_cpd, r_inj))
    train = frame[order].filter(pl.Series(train_mask[order]))
    test = frame[order].filter(pl.Series(is_test[order])).with_columns(
        pl.Series("rt_true", rt_true[order][is_test[order]]))
    return train, test
