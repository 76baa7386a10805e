"""Seed step 5: global chemistry classes (``chem_id -> compound_class``) by k-means on embeddings.

Input: an embeddings Parquet with ``chem_id`` (integer), ``smiles`` (ignored here) and
``embedding20`` (a list or array of 20 finite floats per chemical). Output, in the embeddings' own
folder so that different embedding sources never overwrite each other:
``chem_classes_k<k>.parquet`` and ``chem_classes_k<k>.csv``, both ``chem_id, compound_class``
sorted by ``chem_id``.

Labels are canonical: k-means runs on the chemicals sorted by ``chem_id`` (so the input's row
order does not matter) on one thread (so the floating-point reductions, and hence the clusters,
do not depend on the thread count), and the clusters are then renumbered by size (largest = 0),
ties broken by the centroid compared lexicographically. A rerun gives identical labels.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import polars as pl

from rtprep.core.artifacts import ROW_GROUP_SIZE, RowAccount, atomic_output, write_sidecars
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import require_columns
from rtprep.core.paths import classes_files

log = logging.getLogger(__name__)

#: Length of every embedding vector.
EMBEDDING_DIM = 20
EMBEDDING_COLUMN = "embedding20"
_SHOW = 5  # how many offending ids an error message names
_RECOMPUTE = "; recompute these chemicals' embeddings (rtprep embed) or remove their rows"


def classes_paths(embeddings: str | Path, n_clusters: int) -> tuple[Path, Path]:
    """The class files built from ``embeddings`` with ``n_clusters`` clusters:
    ``<embeddings folder>/chem_classes_k<k>.parquet`` and ``.csv`` (:mod:`rtprep.core.paths`)."""
    pq, csv = classes_files(embeddings, n_clusters)
    return Path(pq), Path(csv)


def _ids(values: pl.Series) -> str:
    shown = ", ".join(str(v) for v in values.head(_SHOW).to_list())
    more = f" (and {values.len() - _SHOW} more)" if values.len() > _SHOW else ""
    return shown + more


def read_embeddings(path: str | Path) -> tuple[pl.DataFrame, int]:
    """Read and validate an embeddings Parquet.

    Returns ``(frame, n_rows_read)`` where ``frame`` has one row per chemical, sorted by
    ``chem_id``: ``chem_id`` (Int64) and ``embedding20`` (List(Float64) of length 20). Identical
    duplicate rows are dropped; anything else wrong raises :class:`RtprepError` naming the file,
    the column and the chem_ids concerned.
    """
    path = Path(path)
    if not path.is_file():
        raise RtprepError(f"{path}: embeddings file not found")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # pyarrow/polars raise several types for a non-Parquet file
        raise input_error(path, f"cannot be read as Parquet: {exc}") from exc
    require_columns(schema, ["chem_id", EMBEDDING_COLUMN], path, "an embeddings table")

    id_type = schema["chem_id"]
    if not id_type.is_integer():
        raise input_error(path, f"chem_id must be integer, found {id_type}", column="chem_id")
    emb_type = schema[EMBEDDING_COLUMN]
    if isinstance(emb_type, pl.Array):
        emb = pl.col(EMBEDDING_COLUMN).arr.to_list()
        inner = emb_type.inner
    elif isinstance(emb_type, pl.List):
        emb = pl.col(EMBEDDING_COLUMN)
        inner = emb_type.inner
    else:
        raise input_error(path, f"expected a list of {EMBEDDING_DIM} floats per row, found "
                          f"{emb_type}", column=EMBEDDING_COLUMN)
    if inner is None or not inner.is_numeric():
        raise input_error(path, f"expected numeric values, found {emb_type}",
                          column=EMBEDDING_COLUMN)

    df = pl.read_parquet(path, columns=["chem_id", EMBEDDING_COLUMN]).select(
        pl.col("chem_id").cast(pl.Int64), emb.cast(pl.List(pl.Float64)).alias(EMBEDDING_COLUMN)
    )
    n_read = df.height

    null_ids = df.filter(pl.col("chem_id").is_null())
    if null_ids.height:
        raise input_error(path, f"{null_ids.height} row(s) have no chem_id", column="chem_id")
    e = pl.col(EMBEDDING_COLUMN)
    checks = df.select(
        "chem_id",
        e.is_null().alias("null"),
        e.list.len().alias("len"),
        e.list.eval(pl.element().is_null()).list.any().alias("has_null"),
        e.list.eval(pl.element().is_finite().not_()).list.any().alias("non_finite"),
    )
    bad = checks.filter(pl.col("null"))
    if bad.height:
        raise input_error(path, f"no embedding (null) for chem_id {_ids(bad['chem_id'])}"
                          + _RECOMPUTE, column=EMBEDDING_COLUMN)
    bad = checks.filter(pl.col("len") != EMBEDDING_DIM)
    if bad.height:
        first_len = bad["len"][0]
        raise input_error(
            path,
            f"embedding of length {first_len} (expected {EMBEDDING_DIM}) for chem_id "
            f"{_ids(bad['chem_id'])}" + _RECOMPUTE,
            column=EMBEDDING_COLUMN,
        )
    bad = checks.filter(pl.col("has_null"))
    if bad.height:
        raise input_error(path, f"embedding contains null values for chem_id "
                          f"{_ids(bad['chem_id'])}" + _RECOMPUTE, column=EMBEDDING_COLUMN)
    bad = checks.filter(pl.col("non_finite"))
    if bad.height:
        raise input_error(path, f"embedding contains NaN or infinite values for chem_id "
                          f"{_ids(bad['chem_id'])}" + _RECOMPUTE, column=EMBEDDING_COLUMN)

    # Identical duplicate rows are harmless (a re-export); two different vectors are not.
    df = df.unique(maintain_order=False).sort("chem_id")
    dup = df.filter(pl.col("chem_id").is_duplicated())["chem_id"].unique(maintain_order=True)
    if dup.len():
        raise input_error(
            path,
            f"chem_id {_ids(dup)} has two different embeddings; keep one row per chem_id",
            column="chem_id",
        )
    return df, n_read


def _canonical_labels(labels: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber k-means clusters: largest first, ties by centroid (lexicographic).

    Returns ``(new_labels, sizes)`` with ``sizes[i]`` the size of canonical class ``i``.
    """
    k = centers.shape[0]
    sizes = np.bincount(labels, minlength=k)
    # np.lexsort sorts by the last key first: -size, then centroid coordinate 0, 1, ...
    keys = [centers[:, j] for j in range(centers.shape[1] - 1, -1, -1)] + [-sizes]
    order = np.lexsort(keys)  # order[new] = old
    new_of_old = np.empty(k, dtype=np.int64)
    new_of_old[order] = np.arange(k, dtype=np.int64)
    return new_of_old[labels], sizes[order]


def build_chem_classes(
    embeddings: str | Path,
    *,
    n_clusters: int,
    seed: int,
    out_parquet: str | Path | None = None,
    out_csv: str | Path | None = None,
) -> RowAccount:
    """Cluster the chemicals of ``embeddings`` into ``n_clusters`` compound classes.

    Writes ``chem_id, compound_class`` (both Int64, sorted by chem_id) to ``out_parquet`` and
    ``out_csv`` (default: :func:`classes_paths`), atomically and with sidecars; class sizes go
    into the sidecars' ``extra``. k-means is scikit-learn's Lloyd algorithm with ``n_init=10``
    and ``random_state=seed``, on one thread, with canonical labels (see the module docstring).
    """
    t0 = time.perf_counter()
    embeddings = Path(embeddings)
    default_pq, default_csv = classes_paths(embeddings, n_clusters)
    out_parquet = Path(out_parquet) if out_parquet is not None else default_pq
    out_csv = Path(out_csv) if out_csv is not None else default_csv
    log.info("chem classes: %s, k=%s, seed=%s", embeddings, n_clusters, seed)

    df, n_read = read_embeddings(embeddings)
    n_chem = df.height
    if not isinstance(n_clusters, int | np.integer) or isinstance(n_clusters, bool):
        raise RtprepError(f"n_clusters must be an integer, got {n_clusters!r}")
    if n_clusters < 1:
        raise RtprepError(f"n_clusters must be at least 1, got {n_clusters}")
    if n_clusters > n_chem:
        raise input_error(
            embeddings,
            f"n_clusters={n_clusters} is larger than the number of embedded chemicals "
            f"({n_chem}); lower n_clusters",
            column=EMBEDDING_COLUMN,
        )
    x = np.asarray(df[EMBEDDING_COLUMN].to_list(), dtype=np.float64).reshape(n_chem, EMBEDDING_DIM)
    n_distinct = np.unique(x, axis=0).shape[0]
    if n_clusters > n_distinct:
        # k-means would leave classes empty; the class numbers would then have gaps.
        raise input_error(
            embeddings,
            f"n_clusters={n_clusters} is larger than the number of distinct embeddings "
            f"({n_distinct} among {n_chem} chemicals); lower n_clusters",
            column=EMBEDDING_COLUMN,
        )

    # Imported only now: the input is checked first, without waiting for scikit-learn.
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # One thread: scikit-learn's Lloyd iterations reduce per-thread partial sums in scheduling
    # order, so more threads could move a borderline chemical between runs.
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10, algorithm="lloyd")
        raw = km.fit_predict(x)
    labels, sizes = _canonical_labels(np.asarray(raw, dtype=np.int64), km.cluster_centers_)

    out = pl.DataFrame(
        {"chem_id": df["chem_id"], "compound_class": pl.Series(labels, dtype=pl.Int64)}
    )
    account = RowAccount("chem_classes", rows_in=n_read)
    account.drop("duplicate_row", n_read - n_chem)
    account.rows_out = out.height
    account.extra = {
        "n_clusters": int(n_clusters),
        "class_sizes": {str(i): int(s) for i, s in enumerate(sizes)},
        "inertia": float(km.inertia_),
    }
    config = {"n_clusters": int(n_clusters), "algorithm": "lloyd", "n_init": 10}
    seeds = {"kmeans_seed": int(seed)}
    # Both files appear together or not at all (the inner block renames first).
    with atomic_output(out_parquet) as tmp_pq, atomic_output(out_csv) as tmp_csv:
        out.write_parquet(tmp_pq, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                          statistics=True)
        out.write_csv(tmp_csv)
        write_sidecars(out_parquet, account, inputs=[embeddings], config=config, seeds=seeds)
        write_sidecars(out_csv, account, inputs=[embeddings], config=config, seeds=seeds)
    log.info(
        "chem classes: %d chemicals -> %d classes (sizes %s) in %.1fs: %s, %s",
        n_chem, n_clusters, sizes.tolist(), time.perf_counter() - t0, out_parquet, out_csv,
    )
    return account
