"""Stage chem_classes: global chemistry classes (``chem_id -> compound_class``) by k-means on
embeddings.

Input: an embeddings table (:mod:`rtprep.core.embeddings`: ``chem_id``, ``embedding20``, a list
of finite floats per chemical, of the file's own width). Output, in the embeddings' own
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
from rtprep.core.embeddings import EMBEDDING_COLUMN, embedding_matrix, read_embeddings
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.paths import classes_files

log = logging.getLogger(__name__)


def classes_paths(embeddings: str | Path, n_clusters: int) -> tuple[Path, Path]:
    """The class files built from ``embeddings`` with ``n_clusters`` clusters:
    ``<embeddings folder>/chem_classes_k<k>.parquet`` and ``.csv`` (:mod:`rtprep.core.paths`)."""
    pq, csv = classes_files(embeddings, n_clusters)
    return Path(pq), Path(csv)


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


def _check_n_clusters(n_clusters: int, x: np.ndarray, embeddings: Path) -> None:
    """``n_clusters`` must be a whole number from 1 to the number of distinct vectors."""
    if not isinstance(n_clusters, int | np.integer) or isinstance(n_clusters, bool):
        raise RtprepError(f"n_clusters must be an integer, got {n_clusters!r}")
    if n_clusters < 1:
        raise RtprepError(f"n_clusters must be at least 1, got {n_clusters}")
    n_chem = x.shape[0]
    if n_clusters > n_chem:
        raise input_error(
            embeddings,
            f"n_clusters={n_clusters} is larger than the number of embedded chemicals "
            f"({n_chem}); lower n_clusters",
            column=EMBEDDING_COLUMN,
        )
    n_distinct = np.unique(x, axis=0).shape[0]
    if n_clusters > n_distinct:
        # k-means would leave classes empty; the class numbers would then have gaps.
        raise input_error(
            embeddings,
            f"n_clusters={n_clusters} is larger than the number of distinct embeddings "
            f"({n_distinct} among {n_chem} chemicals); lower n_clusters",
            column=EMBEDDING_COLUMN,
        )


def _kmeans(x: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Canonical k-means labels of the rows of ``x``, the class sizes and the inertia."""
    # Imported only now: the input is checked first, without waiting for scikit-learn.
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # One thread: scikit-learn's Lloyd iterations reduce per-thread partial sums in scheduling
    # order, so more threads could move a borderline chemical between runs.
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10, algorithm="lloyd")
        raw = km.fit_predict(x)
    labels, sizes = _canonical_labels(np.asarray(raw, dtype=np.int64), km.cluster_centers_)
    return labels, sizes, float(km.inertia_)


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
    x = embedding_matrix(df)
    _check_n_clusters(n_clusters, x, embeddings)
    labels, sizes, inertia = _kmeans(x, n_clusters, seed)

    out = pl.DataFrame(
        {"chem_id": df["chem_id"], "compound_class": pl.Series(labels, dtype=pl.Int64)}
    )
    account = RowAccount("chem_classes", rows_in=n_read)
    account.drop("duplicate_row", n_read - df.height)
    account.rows_out = out.height
    account.extra = {
        "n_clusters": int(n_clusters),
        "class_sizes": {str(i): int(s) for i, s in enumerate(sizes)},
        "inertia": inertia,
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
        df.height, n_clusters, sizes.tolist(), time.perf_counter() - t0, out_parquet, out_csv,
    )
    return account
