"""Reading the RT training / test rows, covariate centring and per-group sufficient statistics.

Everything the models need from the rows is reduced once to per-group sufficient statistics
(n, Σy, Σx, XᵀX, Xᵀy, yᵀy). After that, fitting and inference never touch rows again, so their
cost depends on the number of groups and covariates only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.core.artifacts import RowAccount
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import covariate_columns, require_columns

log = logging.getLogger(__name__)

#: Identifier columns of the RT CSV contract (before the covariates and ``rt``).
ID_COLUMNS: tuple[str, ...] = (
    "sampleset_id", "worksheet_id", "task_id", "species", "species_cluster", "compound",
    "compound_class",
)
#: Key columns, kept as strings inside the models (ids of any dtype join the same way).
KEY_COLUMNS: tuple[str, ...] = ("species", "species_cluster", "compound", "compound_class")


def read_rows(path: str | Path, families: tuple[str, ...], *,
              required: tuple[str, ...] = (*KEY_COLUMNS, "rt"),
              features: list[str] | None = None,
              account: RowAccount | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Read an RT CSV or test-rows Parquet: key columns as String, covariates and ``rt`` Float64.

    Rows whose ``rt`` is null or not finite are dropped (counted in ``account``). Returns the
    frame and the covariate columns found (``features`` when given: they must all be present).
    """
    source = _RowSource.open(path, families, required, features)
    df = source.clean(source.read(), account)
    return df, source.covs


def iter_rows(path: str | Path, families: tuple[str, ...], *, features: list[str],
              chunk_rows: int, required: tuple[str, ...] = (*KEY_COLUMNS, "rt"),
              account: RowAccount | None = None) -> Iterator[pl.DataFrame]:
    """The rows :func:`read_rows` reads, ``chunk_rows`` at a time (a Parquet file batch by
    batch, so memory follows the chunk, not the file; a CSV is read whole, then sliced). Yields
    at least one frame (empty for a file with no rows), in the file's row order."""
    source = _RowSource.open(path, families, required, features)
    if not source.is_parquet:
        df = source.clean(source.read(), account)
        for lo in range(0, max(df.height, 1), chunk_rows):
            yield df.slice(lo, chunk_rows)
        return
    import pyarrow.parquet as pq

    yielded = False
    with pq.ParquetFile(source.path) as pf:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=source.columns,
                                     use_threads=False):
            df = pl.from_arrow(batch)
            assert isinstance(df, pl.DataFrame)
            yielded = True
            yield source.clean(source.cast(df.lazy()), account)
    if not yielded:
        yield source.clean(source.read(), account)


@dataclass
class _RowSource:
    """An RT rows file checked against what the models need: its columns and their casts."""

    path: Path
    is_parquet: bool
    keep: list[str]
    covs: list[str]

    @classmethod
    def open(cls, path: str | Path, families: tuple[str, ...], required: tuple[str, ...],
             features: list[str] | None) -> _RowSource:
        path = Path(path)
        if not path.is_file():
            raise RtprepError(f"{path}: file not found")
        is_parquet = path.suffix.lower() in (".parquet", ".pq")
        try:
            schema = (pl.read_parquet_schema(path) if is_parquet
                      else pl.read_csv(path, n_rows=0, infer_schema_length=0).schema)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise input_error(path, f"cannot be read: {exc}") from exc
        require_columns(schema, required, path, "RT rows")
        covs = covariate_columns(schema.keys(), families) if features is None else list(features)
        require_columns(schema, covs, path, "covariates the model was trained on")
        keep = [c for c in (*ID_COLUMNS, "rt") if c in schema]
        return cls(path, is_parquet, keep, covs)

    @property
    def columns(self) -> list[str]:
        return [*self.keep, *self.covs]

    def cast(self, lf: pl.LazyFrame) -> pl.DataFrame:
        """Key columns as String, covariates and ``rt`` as Float64 (a value that is not a
        number is an input error)."""
        casts = {c: pl.String for c in self.keep if c != "rt"}
        casts.update({c: pl.Float64 for c in [*self.covs, "rt"] if c in self.keep + self.covs})
        try:
            return (lf.select(self.columns)
                    .with_columns([pl.col(c).cast(t, strict=True) for c, t in casts.items()])
                    .collect())
        except pl.exceptions.PolarsError as exc:
            raise input_error(self.path, f"a covariate or 'rt' value is not a number: {exc}"
                              ) from exc

    def read(self) -> pl.DataFrame:
        """The whole file, cast."""
        lf = (pl.scan_parquet(self.path) if self.is_parquet else
              pl.scan_csv(self.path, infer_schema_length=10_000,
                          schema_overrides={c: pl.String for c in self.keep if c != "rt"}))
        return self.cast(lf)

    def clean(self, df: pl.DataFrame, account: RowAccount | None) -> pl.DataFrame:
        """Drop rows with no finite ``rt`` (counted), refuse rows with no species or compound,
        fill a missing cluster or class with ``<none>``."""
        path = self.path
        n_in = df.height
        if "rt" in df.columns:
            df = df.filter(pl.col("rt").is_not_null() & pl.col("rt").is_finite())
        for c in ("species", "compound"):
            if c in df.columns and df[c].null_count():
                raise input_error(path, f"{df[c].null_count()} row(s) have no value", column=c)
        for c in ("species_cluster", "compound_class"):
            if c in df.columns:
                df = df.with_columns(pl.col(c).fill_null("<none>"))
        if account is not None:
            account.rows_in += n_in
            if n_in - df.height:
                account.drop("rt missing or not finite", n_in - df.height)
        return df


@dataclass
class Covariates:
    """Covariate names, the training centre of each and how a null is filled.

    ``fill`` is the value a null takes (the training mean, median or zero). With ``cov`` (fill
    ``impute``) a row's nulls take instead their expected value given the row's other
    covariates, under a normal fitted to the training rows (mean ``centre``, covariance
    ``cov``): the standards of one injection move together (a gradient that runs late moves
    them all), so its other standards say where a missing one would have been.
    """

    names: list[str]
    centre: np.ndarray
    fill: np.ndarray
    scale: np.ndarray
    cov: np.ndarray | None = None

    @classmethod
    def fit(cls, df: pl.DataFrame, names: list[str], how: str = "mean") -> Covariates:
        """Centre on the training rows' non-null values; drop covariates that are all null."""
        stats = df.select(
            *[pl.col(c).mean().alias(f"m{i}") for i, c in enumerate(names)],
            *[pl.col(c).median().alias(f"d{i}") for i, c in enumerate(names)],
            *[pl.col(c).std().alias(f"s{i}") for i, c in enumerate(names)],
        ).row(0)
        k = len(names)
        means = np.array([np.nan if v is None else v for v in stats[:k]], dtype=float)
        medians = np.array([np.nan if v is None else v for v in stats[k:2 * k]], dtype=float)
        sds = np.array([np.nan if v is None else v for v in stats[2 * k:]], dtype=float)
        ok = np.isfinite(means)
        dropped = [n for n, o in zip(names, ok, strict=True) if not o]
        if dropped:
            log.warning("covariates with no value in the training rows are left out: %s", dropped)
        means, medians, sds = means[ok], medians[ok], sds[ok]
        kept = [n for n, o in zip(names, ok, strict=True) if o]
        fill = {"mean": means, "median": medians, "zero": np.zeros_like(means),
                "impute": means}[how]
        sds = np.where(np.isfinite(sds) & (sds > 0), sds, 1.0)
        cov = _covariance(df, kept, means) if how == "impute" and kept else None
        return cls(kept, means, fill, sds, cov)

    def matrix(self, df: pl.DataFrame) -> np.ndarray:
        """The centred, filled covariate matrix (rows × p, float64, C order)."""
        if not self.names:
            return np.zeros((df.height, 0))
        if self.cov is not None:
            raw = df.select([pl.col(c).cast(pl.Float64) for c in self.names]).to_numpy()
            x = np.ascontiguousarray(raw - self.centre[None, :])
            _impute_centred(x, self.cov)
            return x
        exprs = [(pl.col(c).fill_null(float(f)) - float(m)).alias(c)
                 for c, f, m in zip(self.names, self.fill, self.centre, strict=True)]
        return np.ascontiguousarray(df.select(exprs).to_numpy().astype(np.float64, copy=False))

    def same_as(self, other: Covariates) -> bool:
        """Whether ``other`` makes the same matrix of any rows (same names, centre, fill and
        imputation)."""
        return (self.names == other.names and np.array_equal(self.centre, other.centre)
                and np.array_equal(self.fill, other.fill)
                and (self.cov is None) == (other.cov is None)
                and (self.cov is None or np.array_equal(self.cov, other.cov)))

    def to_json(self) -> dict[str, Any]:
        out = {"names": self.names, "centre": self.centre.tolist(), "fill": self.fill.tolist(),
               "scale": self.scale.tolist()}
        if self.cov is not None:
            out["impute_cov"] = self.cov.tolist()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Covariates:
        cov = d.get("impute_cov")
        return cls(list(d["names"]), np.asarray(d["centre"], float), np.asarray(d["fill"], float),
                   np.asarray(d["scale"], float),
                   None if cov is None else np.asarray(cov, float))


#: Ridge on the imputation covariance, relative to its mean variance (keeps it invertible).
IMPUTE_RIDGE = 1e-6


def _covariance(df: pl.DataFrame, names: list[str], means: np.ndarray) -> np.ndarray:
    """Covariance of the covariates on the training rows where all are present (pairwise
    where too few rows are complete), with a small ridge."""
    raw = df.select([pl.col(c).cast(pl.Float64) for c in names]).to_numpy()
    complete = raw[np.isfinite(raw).all(axis=1)]
    p = len(names)
    if len(complete) >= max(10, 2 * p):
        c = complete - complete.mean(axis=0)
        cov = c.T @ c / max(len(complete) - 1, 1)
    else:
        cov = pl.DataFrame(raw - means, schema=names).fill_nan(None).select(
            [pl.cov(a, b).alias(f"{i}_{j}") for i, a in enumerate(names)
             for j, b in enumerate(names)]).to_numpy().reshape(p, p)
        cov = np.nan_to_num(cov)
    ridge = IMPUTE_RIDGE * max(float(np.trace(cov)) / p, 1e-12)
    return cov + ridge * np.eye(p)


def _impute_centred(x: np.ndarray, cov: np.ndarray) -> None:
    """Fill the NaNs of centred rows ``x`` in place by ``E[x_m | x_o] = S_mo S_oo⁻¹ x_o``: one
    solve per distinct pattern of missing values (rows with none missing are untouched; a row
    with all missing gets 0, the mean)."""
    miss = ~np.isfinite(x)
    rows = np.flatnonzero(miss.any(axis=1))
    if not len(rows):
        return
    codes = _pattern_codes(miss[rows])
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(codes[order][1:] != codes[order][:-1]) + 1
    for r_pos in np.split(order, bounds):  # a loop over the few distinct patterns
        r = rows[r_pos]
        pat = miss[r[0]]
        obs = ~pat
        if not obs.any():
            x[np.ix_(r, pat)] = 0.0
            continue
        coef = np.linalg.solve(cov[np.ix_(obs, obs)], cov[np.ix_(obs, pat)])  # S_oo⁻¹ S_om
        x[np.ix_(r, pat)] = x[np.ix_(r, obs)] @ coef


def _pattern_codes(miss: np.ndarray) -> np.ndarray:
    """One sortable key per row of a boolean matrix (equal rows, equal keys): the row's bits
    packed into bytes, read as one unsigned integer (or as raw bytes past 64 columns). Sorting
    these is ~30x faster than ``np.unique(miss, axis=0)``'s lexicographic sort of rows."""
    packed = np.packbits(miss, axis=1)
    width = packed.shape[1]
    if width <= 8:
        wide = np.zeros((len(packed), 8), dtype=np.uint8)
        wide[:, :width] = packed
        return wide.view(np.uint64).ravel()
    return np.ascontiguousarray(packed).view(np.dtype((np.void, width))).ravel()


def unit_column(group_by: str) -> str:
    """The level a group's intercept and slopes are pooled at first: species or cluster."""
    return "species" if group_by == "species" else "species_cluster"


@dataclass
class GroupStats:
    """Per-group sufficient statistics on centred covariates, y centred on each group's mean.

    ``groups`` is the table of groups (unit, compound, species_cluster, compound_class, n_obs),
    sorted by (unit, compound); row ``g`` of every array belongs to group ``g``.
    """

    groups: pl.DataFrame
    n: np.ndarray        # (G,)
    ybar: np.ndarray     # (G,) group mean of y
    sx: np.ndarray       # (G, p) Σx
    xtx: np.ndarray      # (G, p, p) XᵀX
    xty: np.ndarray      # (G, p) Xᵀ(y - ybar)
    yty: np.ndarray      # (G,) Σ(y - ybar)²

    @property
    def p(self) -> int:
        return int(self.sx.shape[1])


def group_table(df: pl.DataFrame, unit: str, path: str | Path) -> tuple[pl.DataFrame, np.ndarray]:
    """Groups (sorted by unit, compound) and each row's group index.

    A group's species_cluster and compound_class must be unique (a species in two clusters, or
    a compound in two classes, is an input error).
    """
    keys = [unit, "compound"]
    per_group = [pl.len().alias("n_obs")]
    if unit == "species":
        per_group += [pl.col("species_cluster").n_unique().alias("_nc"),
                      pl.col("species_cluster").first()]
    else:
        per_group.append(pl.lit(1, dtype=pl.UInt32).alias("_nc"))
    per_group += [pl.col("compound_class").n_unique().alias("_nk"),
                  pl.col("compound_class").first()]
    groups = df.group_by(keys).agg(per_group).sort(keys)
    for col, what in (("_nc", "species_cluster"), ("_nk", "compound_class")):
        bad = groups.filter(pl.col(col) > 1)
        if bad.height:
            row = bad.row(0, named=True)
            raise input_error(path, f"group ({row[unit]}, {row['compound']}) has "
                              f"{row[col]} different values; each must have exactly one",
                              column=what)
    if unit == "species":
        multi = (df.group_by("species").agg(pl.col("species_cluster").n_unique().alias("k"))
                 .filter(pl.col("k") > 1))
        if multi.height:
            raise input_error(path, f"species {multi['species'][0]!r} is in "
                              f"{multi['k'][0]} clusters; give each species one cluster",
                              column="species_cluster")
    multi = (df.group_by("compound").agg(pl.col("compound_class").n_unique().alias("k"))
             .filter(pl.col("k") > 1))
    if multi.height:
        raise input_error(path, f"compound {multi['compound'][0]!r} is in {multi['k'][0]} "
                          "classes; give each compound one class", column="compound_class")
    groups = groups.drop("_nc", "_nk").with_row_index("group_index")
    gid = (df.select(keys).with_row_index("_row")
           .join(groups.select([*keys, "group_index"]), on=keys, how="left")
           .sort("_row")["group_index"].to_numpy().astype(np.int64))
    cols = [unit, "compound"] + (["species_cluster"] if unit == "species" else []) + [
        "compound_class", "n_obs"]
    return groups.select(cols), gid


def sufficient_stats(groups: pl.DataFrame, gid: np.ndarray, x: np.ndarray,
                     y: np.ndarray, w: np.ndarray | None = None) -> GroupStats:
    """Per-group n, mean y, Σx, XᵀX, Xᵀ(y-ȳ), Σ(y-ȳ)², summed in row order (deterministic).

    With row weights ``w`` every sum is weighted (``n = Σw``, ``ȳ`` the weighted mean): the
    statistics of a likelihood in which row i counts ``w_i`` times (the M-step of the robust
    fit's EM, :mod:`rtprep.models.robust`).
    """
    g_count = groups.height
    p = x.shape[1]
    order = np.argsort(gid, kind="stable")
    gs = gid[order]
    ys = y[order]
    ws = None if w is None else np.asarray(w, dtype=np.float64)[order]
    n = (np.bincount(gs, minlength=g_count).astype(np.float64) if ws is None
         else np.bincount(gs, weights=ws, minlength=g_count))
    ybar = np.bincount(gs, weights=ys if ws is None else ws * ys, minlength=g_count) / n
    yc = ys - ybar[gs]
    # covariates by column, in group order (one copy); weighted: a second copy times w, so that
    # every sum has one factor of w (Σ w x, Σ w x yc, Σ (w xᵢ) xⱼ)
    xt_raw = np.ascontiguousarray(x.T[:, order])
    xt = xt_raw if ws is None else xt_raw * ws[None, :]
    sx = np.empty((g_count, p))
    xty = np.empty((g_count, p))
    for j in range(p):  # a loop over covariates (p ≈ 30), each step vectorised over rows
        sx[:, j] = np.bincount(gs, weights=xt[j], minlength=g_count)
        xty[:, j] = np.bincount(gs, weights=xt[j] * yc, minlength=g_count)
    yty = np.bincount(gs, weights=yc * yc if ws is None else ws * yc * yc, minlength=g_count)
    return GroupStats(groups, n, ybar, sx, _group_xtx(gs, xt, xt_raw, g_count), xty, yty)


def _group_xtx(gs: np.ndarray, xt: np.ndarray, xt_raw: np.ndarray, g_count: int) -> np.ndarray:
    """Each group's ``Σ (w x) xᵀ`` from the covariates by column in group order (``gs``
    sorted): the groups of one size stacked and multiplied in one batched product (groups have
    a few sizes: at most the cap), 10x faster than a weighted bincount per (i, j) pair at
    600,000 rows × 36 covariates. The same sums on every run (same shapes, same order)."""
    p = xt.shape[0]
    xtx = np.zeros((g_count, p, p))
    counts = np.bincount(gs, minlength=g_count)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for size in np.unique(counts[counts > 0]).tolist():
        groups = np.flatnonzero(counts == size)
        rows = (starts[groups][:, None] + np.arange(size)[None, :]).ravel()
        at = xt[:, rows].reshape(p, len(groups), size).transpose(1, 0, 2)  # w x: g × cov × row
        b = (at if xt is xt_raw else xt_raw[:, rows].reshape(p, len(groups), size)
             .transpose(1, 0, 2)).transpose(0, 2, 1)                     # x: g × row × cov
        xtx[groups] = np.matmul(np.ascontiguousarray(at), b)
    xtx += xtx.transpose(0, 2, 1).copy()  # exactly symmetric
    xtx *= 0.5
    return xtx


def build_stats(df: pl.DataFrame, covs: Covariates, unit: str,
                path: str | Path) -> GroupStats:
    """Group the rows and reduce them to sufficient statistics."""
    groups, gid = group_table(df, unit, path)
    x = covs.matrix(df)
    y = df["rt"].to_numpy().astype(np.float64)
    return sufficient_stats(groups, gid, x, y)
