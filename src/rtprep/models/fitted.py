"""The fitted state of an RT model: group summaries (+ backoff effects), saved and applied.

On disk (readable without rtprep: Parquet with fixed-size lists, plus JSON)::

    <dir>/model.json       kind, group_by, covariates (names, centre, fill), λ, fit details,
                           hyperparameters used for backoff, species → cluster map
    <dir>/groups.parquet   one row per group: <unit>, compound, [species_cluster],
                           compound_class, n_obs, mean [p+1], cov [(p+1)²] (row-major, intercept
                           first), noise_var, noise_df (inf: normal quantiles)
    <dir>/effects.parquet  pooled only: level (global, cluster, species, class, compound,
                           embedding), key, intercept_mean, intercept_var, slope_mean [p],
                           slope_cov [p²], log_noise_sd

A prediction for a row with centred covariates x and z = (1, x) is ``zᵀmean`` with variance
``zᵀ cov z + noise_var``; the 95% interval uses a t quantile with ``noise_df`` degrees of freedom.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps

from rtprep.core.artifacts import RowAccount, atomic_output, write_sidecars, write_text_atomic
from rtprep.core.errors import RtprepError
from rtprep.core.paths import MODEL_EFFECTS, MODEL_GROUPS, MODEL_MANIFEST
from rtprep.models.data import Covariates, unit_column

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
Z95 = float(sps.norm.ppf(0.975))
#: Rows of few-row groups per chunk of :func:`apply_groups` (their Σ gathered: 2,048 × (p+1)²
#: floats is 22 MB at 36 covariates, under the allocator's mmap threshold, so reused).
_APPLY_CHUNK = 2_048
#: Groups with at least this many rows are applied a group at a time (:func:`apply_groups`): one
#: Python step per group costs about what gathering Σ row by row does for 3 rows at 36 covariates.
_GROUP_RUN = 4

#: Where a prediction came from (column ``source``).
SOURCES = ("group", "unseen_pair", "unseen_compound", "unseen_species",
           "unseen_species_and_compound")


@dataclass
class FittedModel:
    """One fitted model (``kind`` = ``ridge`` or ``pooled``): what :meth:`save` writes."""

    kind: str
    group_by: str
    covariates: Covariates
    ridge_lambda: float
    groups: pl.DataFrame           # keys, n_obs, compound_class, [species_cluster]
    mean: np.ndarray               # (G, p+1)
    cov: np.ndarray                # (G, (p+1)²)
    noise_var: np.ndarray          # (G,)
    noise_df: np.ndarray           # (G,)
    meta: dict[str, Any] = field(default_factory=dict)
    effects: pl.DataFrame | None = None
    species_map: dict[str, str] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return unit_column(self.group_by)

    @property
    def p(self) -> int:
        return len(self.covariates.names)

    # -- persistence ----------------------------------------------------------------------------
    def summary_frame(self) -> pl.DataFrame:
        """The per-group summary table (as written to ``groups.parquet``)."""
        p1 = self.p + 1
        return self.groups.with_columns(
            pl.Series("mean", self.mean, dtype=pl.Array(pl.Float64, p1)),
            pl.Series("cov", self.cov, dtype=pl.Array(pl.Float64, p1 * p1)),
            pl.Series("noise_var", self.noise_var, dtype=pl.Float64),
            pl.Series("noise_df", self.noise_df, dtype=pl.Float64),
        )

    def save(self, out_dir: str | Path, *, account: RowAccount | None = None,
             inputs: tuple[str | Path, ...] = (), config: dict[str, Any] | None = None) -> Path:
        """Write ``groups.parquet`` (+ sidecars), ``effects.parquet`` and ``model.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        acc = account or RowAccount(f"train_{self.kind}")
        files = [MODEL_GROUPS]
        with atomic_output(out / MODEL_GROUPS) as tmp:
            self.summary_frame().write_parquet(tmp, compression="zstd", statistics=True)
            write_sidecars(out / MODEL_GROUPS, acc, inputs=inputs, config=config,
                           seeds={"seed": int(self.meta.get("options", {}).get("seed", 0))})
        if self.effects is not None:
            with atomic_output(out / MODEL_EFFECTS) as tmp:
                self.effects.write_parquet(tmp, compression="zstd", statistics=True)
            files.append(MODEL_EFFECTS)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "group_by": self.group_by,
            "unit_column": self.unit,
            "group_keys": [self.unit, "compound"],
            "ridge_lambda": self.ridge_lambda,
            "covariates": self.covariates.to_json(),
            "parameters": ["intercept", *self.covariates.names],
            "n_groups": self.groups.height,
            "files": files,
            "species_map": [[k, v] for k, v in sorted(self.species_map.items())],
            **{k: v for k, v in self.meta.items() if k not in ("species_map",)},
        }
        write_text_atomic(out / MODEL_MANIFEST,
                          json.dumps(meta, indent=2, default=_json_default) + "\n")
        return out

    @classmethod
    def load(cls, model_dir: str | Path) -> FittedModel:
        """Read a model written by :meth:`save`."""
        d = Path(model_dir)
        mpath = d / MODEL_MANIFEST
        if not mpath.is_file():
            raise RtprepError(f"{d}: not a model folder (no model.json); give the folder that "
                              "`rtprep train` wrote (or its ridge/ or pooled/ subfolder)")
        meta = json.loads(mpath.read_text(encoding="utf-8"))
        if "kind" not in meta:
            raise RtprepError(f"{mpath}: not a single model's model.json (no 'kind')")
        covs = Covariates.from_json(meta["covariates"])
        summ = pl.read_parquet(d / MODEL_GROUPS)
        p1 = len(covs.names) + 1
        mean = summ["mean"].to_numpy().reshape(-1, p1).astype(np.float64)
        cov = summ["cov"].to_numpy().reshape(-1, p1 * p1).astype(np.float64)
        effects = (pl.read_parquet(d / MODEL_EFFECTS)
                   if (d / MODEL_EFFECTS).is_file() else None)
        skip = ("format_version", "kind", "group_by", "unit_column", "group_keys", "ridge_lambda",
                "covariates", "parameters", "n_groups", "files", "species_map")
        return cls(
            kind=meta["kind"], group_by=meta["group_by"], covariates=covs,
            ridge_lambda=float(meta["ridge_lambda"]),
            groups=summ.drop("mean", "cov", "noise_var", "noise_df"),
            mean=mean, cov=cov, noise_var=summ["noise_var"].to_numpy().astype(np.float64),
            noise_df=summ["noise_df"].to_numpy().astype(np.float64),
            meta={k: v for k, v in meta.items() if k not in skip}, effects=effects,
            species_map={k: v for k, v in meta.get("species_map", [])},
        )

    # -- prediction ------------------------------------------------------------------------------
    def predict_frame(self, df: pl.DataFrame, *, level: float = 0.95,
                      x: np.ndarray | None = None) -> pl.DataFrame:
        """Predict ``rt`` for every row of ``df`` (key columns as String, covariates Float64).

        ``x``: ``self.covariates.matrix(df)`` when the caller already has it (models trained
        on the same rows share it; the covariates of a peak's isomers are the peak's).

        Returns the row order of ``df`` with ``rt_pred, rt_sd, rt_lower, rt_upper, source,
        n_obs`` (training rows of the row's group; 0 when unseen). Rows a model cannot predict
        (ridge: unseen group) get nulls and ``source`` = the reason.
        """
        unit = self.unit
        df = self._with_cluster(df)
        keys = [unit, "compound"]
        idx_tab = self.groups.select([*keys, "n_obs"]).with_row_index("_g")
        rows = (df.select(keys).with_row_index("_row")
                .join(idx_tab, on=keys, how="left").sort("_row"))
        g_idx = rows["_g"].to_numpy(allow_copy=True)
        seen = ~rows["_g"].is_null().to_numpy()
        g_idx = np.where(seen, np.nan_to_num(g_idx.astype(np.float64)), 0).astype(np.int64)
        source = np.zeros(df.height, dtype=np.int8)  # an index into SOURCES
        mean_tab, cov_tab = self.mean, self.cov
        noise_var, noise_df = self.noise_var, self.noise_df
        if (~seen).any():
            known_units = set(self.groups[unit].unique().to_list())
            known_cpds = set(self.groups["compound"].unique().to_list())
            u_known = df[unit].is_in(list(known_units)).to_numpy()
            c_known = df["compound"].is_in(list(known_cpds)).to_numpy()
            source = np.where(seen, 0, np.where(u_known & c_known, 1, np.where(
                u_known, 2, np.where(c_known, 3, 4)))).astype(np.int8)
            if self.effects is not None:
                combo_cols = list(dict.fromkeys([unit, "species_cluster", "compound",
                                                 "compound_class"]))
                combos = (df.filter(pl.Series(~seen)).select(combo_cols)
                          .unique(maintain_order=True))
                b_mean, b_cov, b_var = self._backoff(combos)
                base = len(mean_tab)
                mean_tab = np.vstack([mean_tab, b_mean])
                cov_tab = np.vstack([cov_tab, b_cov])
                noise_var = np.concatenate([noise_var, b_var])
                noise_df = np.concatenate([noise_df, np.full(len(b_var), np.inf)])
                combo_idx = (df.select(combo_cols)
                             .with_row_index("_row")
                             .join(combos.with_row_index("_b"), on=combo_cols,
                                   how="left", nulls_equal=True)
                             .sort("_row")["_b"].fill_null(0).to_numpy().astype(np.int64))
                g_idx = np.where(seen, g_idx, base + combo_idx)
        usable = seen | (self.effects is not None)
        if x is None:
            x = self.covariates.matrix(df)
        elif x.shape != (df.height, self.p):
            raise ValueError(f"x has shape {x.shape}; expected ({df.height}, {self.p})")
        pred, var = apply_groups(mean_tab, cov_tab, noise_var, g_idx, x)
        q_group = np.where(np.isfinite(noise_df),  # per group, then per row (fewer calls)
                           sps.t.ppf(0.5 + level / 2, np.maximum(noise_df, 1e-9)),
                           sps.norm.ppf(0.5 + level / 2))
        q = q_group[g_idx]
        sd = np.sqrt(var)
        pred = np.where(usable, pred, np.nan)
        sd = np.where(usable, sd, np.nan)
        n_obs = np.where(seen, rows["n_obs"].fill_null(0).to_numpy(), 0)
        return pl.DataFrame({
            "rt_pred": pred, "rt_sd": sd, "rt_lower": pred - q * sd, "rt_upper": pred + q * sd,
            "source": pl.Series(source).replace_strict(dict(enumerate(SOURCES)),
                                                       return_dtype=pl.String),
            "n_obs": n_obs.astype(np.int64),
        }).with_columns(pl.col("rt_pred", "rt_sd", "rt_lower", "rt_upper").fill_nan(None))

    def _with_cluster(self, df: pl.DataFrame) -> pl.DataFrame:
        """Add (or fill) species_cluster from the training species → cluster map."""
        if "species_cluster" in df.columns and df["species_cluster"].null_count() == 0:
            return df
        mapping = pl.DataFrame({"species": list(self.species_map.keys()),
                                "_cl": list(self.species_map.values())},
                               schema={"species": pl.String, "_cl": pl.String})
        out = df.join(mapping, on="species", how="left", maintain_order="left")
        if "species_cluster" in df.columns:
            out = out.with_columns(pl.coalesce("species_cluster", "_cl").alias("species_cluster"))
        else:
            out = out.with_columns(pl.col("_cl").alias("species_cluster"))
        out = out.drop("_cl").with_columns(pl.col("species_cluster").fill_null("<unknown>"))
        if "compound_class" not in out.columns:
            out = out.with_columns(pl.lit("<unknown>").alias("compound_class"))
        return out

    def _backoff(self, combos: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, covariance and noise variance of unseen groups from the pooled effects.

        Unseen species → its cluster's effect (or the global one); unseen compound → its
        class effect (+ the embedding regression when the compound has an embedding).
        The spread of the skipped levels (τ²) is added to the variance.
        """
        assert self.effects is not None
        lv = _Levels.look_up(self.effects, combos, self.unit)
        hyper = self.meta["hyper"]
        t2 = {k_: float(v) for k_, v in hyper.items() if isinstance(v, (int, float))}
        im, iv = lv.intercept(t2)
        sm, sc, extra = lv.slopes(hyper, im, self.p)
        noise = lv.noise(t2)
        n, p = combos.height, self.p
        mean = np.concatenate([im[:, None], sm], axis=1)
        cov = np.zeros((n, p + 1, p + 1))
        cov[:, 0, 0] = iv
        cov[:, 1:, 1:] = sc.reshape(n, p, p)
        diag = np.arange(p)
        cov[:, 1 + diag, 1 + diag] += extra + (noise / self.ridge_lambda)[:, None]
        return mean, cov.reshape(n, (p + 1) ** 2), noise


@dataclass
class _Levels:
    """The pooled effects of each unseen group's levels (one row per group; a level the model
    has not seen is null), and which of them the model knows."""

    unit: str
    glob: dict[str, Any]
    u: pl.DataFrame    # the unit's (species or cluster) effects
    cl: pl.DataFrame   # the species' cluster's
    k: pl.DataFrame    # the compound class's
    cp: pl.DataFrame   # the compound's
    em: pl.DataFrame   # the compound's embedding regression
    u_ok: np.ndarray
    cl_ok: np.ndarray
    k_ok: np.ndarray
    c_ok: np.ndarray
    e_ok: np.ndarray

    @classmethod
    def look_up(cls, eff: pl.DataFrame, combos: pl.DataFrame, unit: str) -> _Levels:
        def level(name: str, key_col: str) -> pl.DataFrame:
            tab = eff.filter(pl.col("level") == name).drop("level")
            return combos.select(pl.col(key_col).alias("key")).with_row_index("_i").join(
                tab, on="key", how="left").sort("_i")

        def known(tab: pl.DataFrame) -> np.ndarray:
            return tab["intercept_mean"].is_not_null().to_numpy()

        u = level("species" if unit == "species" else "cluster", unit)
        cl = level("cluster", "species_cluster")
        k, cp = level("class", "compound_class"), level("compound", "compound")
        em = level("embedding", "compound")
        return cls(unit=unit, glob=eff.filter(pl.col("level") == "global").row(0, named=True),
                   u=u, cl=cl, k=k, cp=cp, em=em, u_ok=known(u),
                   cl_ok=known(cl) & (unit == "species"), k_ok=known(k), c_ok=known(cp),
                   e_ok=known(em))

    @property
    def n(self) -> int:
        return self.u.height

    @staticmethod
    def col(tab: pl.DataFrame, name: str) -> np.ndarray:
        return tab[name].fill_null(0.0).to_numpy().astype(np.float64)

    def arr(self, tab: pl.DataFrame, name: str, width: int, fallback: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(fallback, (self.n, width)).copy()
        ok = tab[name].is_not_null().to_numpy()
        if ok.any():
            out[ok] = tab.filter(pl.Series(ok))[name].to_numpy().reshape(-1, width)
        return out

    def intercept(self, t2: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Intercept mean and variance: α0 + unit effect + compound effect (+ the group's
        deviation, τ_group²)."""
        col, u_ok, cl_ok = self.col, self.u_ok, self.cl_ok
        im = np.full(self.n, self.glob["intercept_mean"])
        iv = np.full(self.n, self.glob["intercept_var"]) + t2["tau_group2"]
        unit_mean = np.where(u_ok, col(self.u, "intercept_mean"),
                             np.where(cl_ok, col(self.cl, "intercept_mean"), 0.0))
        unit_var = np.where(u_ok, col(self.u, "intercept_var"), np.where(
            cl_ok, col(self.cl, "intercept_var") + t2["tau_species2"],
            t2["tau_species2"] + (t2["tau_cluster2"] if self.unit == "species" else 0.0)))
        emb_mean = np.where(self.e_ok, col(self.em, "intercept_mean"), 0.0)
        emb_var = np.where(self.e_ok, col(self.em, "intercept_var"), 0.0)
        cpd_mean = np.where(self.c_ok, col(self.cp, "intercept_mean"),
                            np.where(self.k_ok, col(self.k, "intercept_mean"), 0.0) + emb_mean)
        cpd_var = np.where(self.c_ok, col(self.cp, "intercept_var"), np.where(
            self.k_ok, col(self.k, "intercept_var"), t2["tau_class2"]) + emb_var
            + t2["tau_compound2"])
        return im + unit_mean + cpd_mean, iv + unit_var + cpd_var

    def slopes(self, hyper: dict[str, Any], im: np.ndarray, p: int,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slope mean (the unit's, else the cluster's, else the global one, plus the part
        that follows the compound's RT), its covariance and the skipped levels' variance."""
        u_ok, cl_ok = self.u_ok, self.cl_ok
        g_slope = np.asarray(self.glob["slope_mean"], dtype=np.float64)
        g_cov = np.asarray(self.glob["slope_cov"], dtype=np.float64)
        tsp = np.asarray(hyper["tau_slope_species2"], dtype=np.float64)
        tsc = np.asarray(hyper["tau_slope_cluster2"], dtype=np.float64)
        sm = np.where(u_ok[:, None], self.arr(self.u, "slope_mean", p, g_slope),
                      np.where(cl_ok[:, None], self.arr(self.cl, "slope_mean", p, g_slope),
                               g_slope))
        sc = np.where(u_ok[:, None], self.arr(self.u, "slope_cov", p * p, g_cov),
                      np.where(cl_ok[:, None], self.arr(self.cl, "slope_cov", p * p, g_cov),
                               g_cov))
        if "slope_prior" in hyper:
            # the slope prior mean follows the compound's RT: a known compound's own part, an
            # unseen compound's from the spline at its predicted intercept
            from rtprep.models.slopes import spline_basis

            sp = hyper["slope_prior"]
            along = spline_basis(im - float(sp["centre"]), np.asarray(sp["knots"], float)) @ (
                np.asarray(sp["kappa"], dtype=np.float64).reshape(-1, p))
            sm = sm + np.where(self.c_ok[:, None],
                               self.arr(self.cp, "slope_mean", p, np.zeros(p)), along)
        elif "slope_rt" in hyper:
            # models written before the spline: slopes linear along the gradient
            sm = sm + (im - float(hyper["slope_rt_centre"]))[:, None] * np.asarray(
                hyper["slope_rt"], dtype=np.float64)[None, :]
        extra = np.where(u_ok[:, None], 0.0, tsp[None, :]) + np.where(
            (u_ok | cl_ok)[:, None] | (self.unit != "species"), 0.0, tsc[None, :])
        return sm, sc, extra

    def noise(self, t2: dict[str, float]) -> np.ndarray:
        """Noise variance: log sd = log σ0 + unit, class and compound effects; unseen levels
        add their spread."""
        lsd = (self.glob["log_noise_sd"] + np.where(self.u_ok, self.col(self.u, "log_noise_sd"),
                                                    0.0)
               + np.where(self.k_ok, self.col(self.k, "log_noise_sd"), 0.0)
               + np.where(self.c_ok, self.col(self.cp, "log_noise_sd"), 0.0))
        lvar = (np.where(self.u_ok, 0.0, t2["tau_noise_species2"])
                + np.where(self.k_ok, 0.0, t2["tau_noise_class2"])
                + np.where(self.c_ok, 0.0, t2.get("tau_noise_compound2", 0.0)))
        return np.exp(2 * lsd + 2 * lvar)


def apply_groups(mean: np.ndarray, cov: np.ndarray, noise_var: np.ndarray, g_idx: np.ndarray,
                 x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mean and variance per row: zᵀθ and zᵀΣz + σ², in bounded-memory chunks.

    Rows of groups with at least ``_GROUP_RUN`` rows are taken a group at a time (one matrix
    product with the group's Σ); the others gather their group's Σ row by row. Gathering a
    (p+1)² matrix for every row of a 3 M-row library moved ~28 GB through memory.
    """
    n, p = x.shape
    pred = np.empty(n)
    var = np.empty(n)
    counts = np.bincount(g_idx, minlength=len(mean)) if n else np.zeros(len(mean), np.int64)
    big = counts[g_idx] >= _GROUP_RUN if n else np.zeros(0, bool)
    rest = np.flatnonzero(~big)
    for start in range(0, len(rest), _APPLY_CHUNK):
        rows = rest[start:start + _APPLY_CHUNK]
        z = np.concatenate([np.ones((len(rows), 1)), x[rows]], axis=1)
        g = g_idx[rows]
        pred[rows] = np.einsum("ri,ri->r", mean[g], z)
        sig = cov[g].reshape(-1, p + 1, p + 1)
        # a batched matrix-vector product (BLAS), then the dot: 2.5x faster than one einsum
        var[rows] = np.einsum("ri,ri->r", np.matmul(sig, z[:, :, None])[:, :, 0],
                              z) + noise_var[g]
    order = np.flatnonzero(big)
    order = order[np.argsort(g_idx[order], kind="stable")]
    gs = g_idx[order]
    z = np.empty((len(order), p + 1))
    z[:, 0] = 1.0
    z[:, 1:] = x[order]
    bounds = np.flatnonzero(gs[1:] != gs[:-1]) + 1
    sig = cov.reshape(-1, p + 1, p + 1)
    p_sorted, v_sorted = np.empty(len(order)), np.empty(len(order))
    for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)], strict=True):
        if a == b:
            continue
        g, zg = int(gs[a]), z[a:b]  # the rows of one group, sorted together
        p_sorted[a:b] = zg @ mean[g]
        v_sorted[a:b] = np.einsum("ri,ri->r", zg @ sig[g], zg)
    pred[order] = p_sorted
    var[order] = v_sorted + noise_var[gs]
    return pred, np.maximum(var, 0.0)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
