"""Stage 4: cap the rows per ``(species_matrix_type, comp_id)`` pair, and sample-set folds.

The cap keeps, within each pair, the ``min(n, cap_per_pair)`` rows with the smallest portable row
hash (:func:`~.hashing.with_row_hash`, splitmix64 over the peak identity and the seed), ties
broken by identity ``(sample_set_id, task_id, comp_id, apex_rt)``, then by the other columns. As
the choice depends only on each row's own hash, the sample is

- exact (``min(n, cap)`` rows per pair, every pair kept),
- nested across caps (the cap-5 rows of a seed are among its cap-10 rows),
- independent of row order, sharding and thread count,

and any engine can reproduce it (the tests do, in DuckDB, with ``QUALIFY row_number() OVER
(PARTITION BY species_matrix_type, comp_id ORDER BY hash, identity) <= cap``).

Memory: ``over()`` in polars' streaming engine holds its whole input, so the cap is computed in
streamed passes. Pass 1 reads only the pair and identity columns and finds, per pair, the cap-th
smallest hash (the threshold): a table with one row per pair, read off a few candidate rows per
pair drawn under a hash bound, so it grows with pairs × cap, not with the input rows. Pass 2
streams the full rows through a join with that table and keeps ``hash <= threshold``: at least
``min(n, cap)`` rows per pair, more only if hashes tie exactly. Exact ties are resolved, and the
output sorted by identity, on that small set. Where the lib file's row groups come in
``sample_set_id`` order (as split writes them) and more than ``CAP_CHUNK_ROWS`` rows are kept,
pass 2 runs one range of sample sets at a time (runs of row groups, read by their range), so only
a range's kept rows are held: ``sample_set_id`` leads the identity, so the ranges in order are
the whole sort, the same bytes. The pairs that tie are then decided first from the key
columns (how many rows each group of equal hash and identity keeps) and resolved in the range
that holds the group: one identity, one sample set.

Folds are whole sample sets, drawn by one of two splits (``eval.splits``): ``random``, the
``round(test_fraction * n)`` sample sets with the smallest ``id_hash("sample_set_id", fold_seed)``
are ``test``, the others ``train``; ``time``, the latest ``round(test_fraction * n)`` of the n
worksheets in the order of ``eval.time_column`` are held out whole, with every sample set on them
(a model is trained on the past and scored on what came after).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from rtprep.core.artifacts import (
    ROW_GROUP_SIZE,
    RowAccount,
    atomic_output,
    hashed_file,
    write_sidecars,
)
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import (
    frames_source,
    read_csv_checked,
    require_columns,
    row_groups_ordered,
)
from rtprep.core.hashing import (
    IDENTITY_COLUMNS,
    MASK64,
    id_hash,
    with_row_hash,
)
from rtprep.core.settings import choices

log = logging.getLogger(__name__)

#: The pair within which rows are capped.
PAIR_COLUMNS: tuple[str, ...] = ("species_matrix_type", "comp_id")
#: Fold labels of the folds CSV.
FOLDS: tuple[str, ...] = ("train", "test")
#: How the folds are drawn (``eval.splits``, as the schema allows): whole sample sets at random,
#: or the latest worksheets in time order.
SPLITS: tuple[str, ...] = choices("eval", "splits")

_HASH = "_row_hash"
_ORDER = "_time"
#: Text the time split reads as a date or time (ISO 8601, without a time zone).
_ISO_FORMATS: tuple[str, ...] = tuple(
    f"%Y-%m-%d{t}" for t in ("", "T%H:%M", " %H:%M", "T%H:%M:%S", " %H:%M:%S", "T%H:%M:%S%.f",
                             " %H:%M:%S%.f")
)
_THRESHOLD = "_threshold"
_UNDER = "_under"
_PAIR_INDEX = "_pair_index"
_PAIR_KEY = "_pair_key"
_KEY_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys((*PAIR_COLUMNS, *IDENTITY_COLUMNS)))

#: Pass 2 holds, sorts and writes the kept rows a range of sample sets at a time, about this
#: many rows a range (the ranges cut the lib file into runs of row groups of similar size),
#: where the row groups come in ``sample_set_id`` order (as split writes them): a range's scan
#: reads its row groups only.
CAP_CHUNK_ROWS = 25000

PathLike = str | Path


# --- helpers ----------------------------------------------------------------------------------
def _margin(cap: int) -> float:
    """Expected number of candidate rows drawn per pair in pass 1 (λ of a Poisson count).

    Hashes are uniform on [0, 2**64): keeping ``hash <= λ/n * 2**64`` of a pair's n rows draws
    about λ of them. A pair that draws fewer than ``cap`` is rescanned in full (a second scan
    of the key columns, for those pairs only), so λ trades memory (candidates: about pairs ×
    λ) for that scan, never correctness. With λ = cap + 2·√cap + 2 about 1-2% of the drawn
    pairs fall short (Poisson: cap 5: 1.1%, cap 10: 1.3%, cap 100: 1.8%) and are rescanned:
    a tight margin with a cheap second scan holds less than a margin wide enough never to
    rescan (cap + 6·√cap + 12, < 1e-8 a pair: 2.6× the candidates at cap 5, measured in
    benchmarks/README.md).
    """
    return cap + 2.0 * math.sqrt(cap) + 2.0


def _pair_thresholds(keys: pl.LazyFrame, cap: int, seed: int, label: object) -> pl.DataFrame:
    """Per pair: ``n`` (rows), ``_threshold`` (its cap-th smallest hash, or the largest hash
    when ``n <= cap``) and ``_under`` (its rows with a hash at or under the threshold: the rows
    pass 2 selects), from the key columns alone, in memory bounded by pairs × cap.

    A per-pair ``bottom_k`` in one group-by would hold every key row; instead (a) a streamed
    group-by counts rows per pair, (b) a streamed join keeps only the rows under a per-pair hash
    bound chosen to draw about ``_margin(cap)`` of them, and (c) the exact threshold is read off
    those few candidates. A pair that drew fewer than ``min(n, cap)`` is rescanned in full.
    """
    info = keys.select(
        pl.any_horizontal(pl.col(IDENTITY_COLUMNS).is_null()).sum().alias("n_null"),
        pl.col("comp_id").cast(pl.Int64).min().alias("lo"),
        pl.col("comp_id").cast(pl.Int64).max().alias("hi"),
        pl.col("species_matrix_type").drop_nulls().unique().sort().implode().alias("smts"),
    ).collect(engine="streaming").row(0, named=True)
    n_null = int(info["n_null"])
    if n_null:
        nulls = keys.select(pl.col(IDENTITY_COLUMNS).null_count()).collect(engine="streaming")
        col = next(c for c in IDENTITY_COLUMNS if nulls[c].item())
        raise input_error(
            label, f"{n_null} row(s) have an empty peak identity (sample_set_id, task_id, "
            "comp_id, apex_rt); such rows cannot be sampled reproducibly", column=col,
        )
    pair_key, pairs_of = _pair_key(info["smts"], info["lo"], info["hi"],
                                   keys.collect_schema()["comp_id"])
    counts = pairs_of(keys.select(pair_key).group_by(_PAIR_KEY).len("n")
                      .collect(engine="streaming"))
    lam = _margin(cap)
    bounds = counts.select(
        *PAIR_COLUMNS,
        _PAIR_KEY,
        "n",
        # Pairs of at most λ rows take every row; a larger one draws about λ of its n (a
        # binomial draw, tighter than the Poisson the margin is set for).
        pl.when(pl.col("n") <= lam)
        .then(pl.lit(MASK64, dtype=pl.UInt64))
        .otherwise((lam / pl.col("n") * 2.0**64).cast(pl.UInt64))
        .alias("_bound"),
    )

    def thresholds(bounds: pl.DataFrame) -> pl.DataFrame:
        indexed = bounds.with_row_index(_PAIR_INDEX)
        cand = (
            with_row_hash(keys, seed)
            .select(pair_key, _HASH)
            .join(indexed.lazy().select(_PAIR_KEY, "_bound", _PAIR_INDEX), on=_PAIR_KEY,
                  how="inner", build_side="force_right")
            .filter(pl.col(_HASH) <= pl.col("_bound"))
            .select(_PAIR_INDEX, _HASH)
            .collect(engine="streaming")
        )
        cand = cand.sort(_PAIR_INDEX, _HASH)  # polars' sort: ~5x numpy's lexsort at 33 M rows
        got = _bottom_k_stats(cand[_PAIR_INDEX].to_numpy(), cand[_HASH].to_numpy(), cap)
        del cand
        return (indexed.join(got, on=_PAIR_INDEX, how="left").drop(_PAIR_INDEX)
                .with_columns(pl.col("n_cand").fill_null(0)))

    stats = thresholds(bounds)
    short = stats.filter(pl.col("n_cand") < pl.min_horizontal("n", pl.lit(cap)))
    if short.height:
        # The pairs that drew fewer than the cap: rescan them with no bound (all their rows).
        log.info("cap: %d pair(s) drew too few candidates; rescanning them", short.height)
        redo = thresholds(short.select(*PAIR_COLUMNS, _PAIR_KEY, "n",
                                       pl.lit(MASK64, dtype=pl.UInt64).alias("_bound")))
        stats = pl.concat([stats.join(short, on=PAIR_COLUMNS, how="anti", nulls_equal=True),
                           redo.select(stats.columns)])
    return stats.select(*PAIR_COLUMNS, "n", _THRESHOLD, _UNDER)


def _pair_key(smts: list[str], lo: int | None, hi: int | None, comp_dtype: pl.DataType
              ) -> tuple[pl.Expr, Callable[[pl.DataFrame], pl.DataFrame]]:
    """One Int64 per pair, ``comp_id * k + code(species_matrix_type)`` (k: the types, and
    null, coded in sorted order), to group and join the pairs on: a streamed group-by on it
    holds a fifth of what one on the text and id columns does (wide lib, 5.3 M rows: +105 vs
    +250 MB). Returns the key expression (``_PAIR_KEY``) and a function that adds the pair
    columns back to a frame with the key. When ``comp_id`` is too large for the product, the
    key is a struct of the pair columns (the plain group-by)."""
    k = len(smts) + 1
    lo, hi = lo or 0, hi or 0
    if max(abs(lo), abs(hi)) >= (2**62) // k:
        key = pl.struct(*PAIR_COLUMNS).alias(_PAIR_KEY)
        return key, lambda df: df.with_columns(pl.col(_PAIR_KEY).struct.unnest())
    code = (pl.col("species_matrix_type").cast(pl.Enum(smts)).to_physical().cast(pl.Int64)
            .fill_null(k - 1))
    key = (pl.col("comp_id").cast(pl.Int64) * k + code).alias(_PAIR_KEY)
    names = pl.Series(smts, dtype=pl.String)

    def pairs_of(df: pl.DataFrame) -> pl.DataFrame:
        comp = pl.col(_PAIR_KEY) // k  # floor division: code = key - comp * k is in [0, k)
        smt_code = pl.col(_PAIR_KEY) - comp * k
        return df.with_columns(
            pl.when(smt_code < k - 1).then(smt_code).otherwise(None)
            .replace_strict(dict(enumerate(names.to_list())), default=None,
                            return_dtype=pl.String).alias("species_matrix_type"),
            comp.cast(comp_dtype).alias("comp_id"))

    return key, pairs_of


def _bottom_k_stats(pair: np.ndarray, hashes: np.ndarray, cap: int) -> pl.DataFrame:
    """Per pair index of the candidates, sorted by (pair, hash): ``n_cand``, ``_threshold`` (the
    cap-th smallest hash, or the largest of fewer) and ``_under`` (candidates at or under it:
    more than ``cap`` only when hashes tie at it), by run arithmetic on the sorted arrays. (A
    per-pair ``bottom_k`` in a group-by held ~0.55 GB for 5.2 M candidates, the wide
    benchmark's lib at 16 M peaks.)"""
    n = len(pair)
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]]) if n else np.zeros(0, np.int64)
    lens = np.diff(np.r_[starts, n])
    threshold = hashes[starts + np.minimum(lens, cap) - 1] if n else hashes[:0]
    run = np.repeat(np.arange(len(starts), dtype=np.int32), lens)  # 4 bytes a candidate
    selected = hashes <= threshold[run]  # sorted in its run: the first cap, and ties at the cap-th
    under = np.bincount(run[selected], minlength=len(starts))
    del run
    return pl.DataFrame({
        _PAIR_INDEX: pl.Series(pair[starts], dtype=pl.UInt32),
        "n_cand": pl.Series(lens, dtype=pl.UInt32),
        _THRESHOLD: pl.Series(threshold, dtype=pl.UInt64),
        _UNDER: pl.Series(under.astype(np.int64), dtype=pl.UInt32),
    })


# --- input helpers ----------------------------------------------------------------------------
def _as_paths(input: PathLike | Sequence[PathLike]) -> list[Path]:
    paths = [Path(input)] if isinstance(input, str | Path) else [Path(p) for p in input]
    if not paths:
        raise RtprepError("no input Parquet file given")
    for p in paths:
        if not p.is_file():
            raise RtprepError(f"{p}: file not found")
    return paths


def _scan(paths: list[Path]) -> tuple[pl.LazyFrame, pl.Schema]:
    """Scan one or several Parquet shards of the same lib; the schema is checked up front."""
    label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
    try:
        lf = pl.scan_parquet(paths)
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise input_error(label, f"cannot be read as Parquet: {exc}") from exc
    require_columns(schema, _KEY_COLUMNS, label, "needed to cap rows per pair")
    # The hash reads ids as integers and apex_rt as float bits: anything else is not a split output.
    for c in _KEY_COLUMNS:
        dtype = schema[c]
        if c == "apex_rt":
            ok, want = dtype.is_float(), "a float"
        elif c == "species_matrix_type":
            ok, want = dtype == pl.String, "a string"
        else:
            ok, want = dtype.is_integer(), "an integer"
        if not ok:
            raise input_error(label, f"has type {dtype}, expected {want}", column=c)
    return lf, schema


def _check_cap(cap_per_pair: int) -> int:
    if isinstance(cap_per_pair, bool) or not isinstance(cap_per_pair, int) or cap_per_pair < 1:
        raise RtprepError(
            f"cap_per_pair must be a whole number >= 1 (rows kept per species_matrix_type × "
            f"comp_id pair), got {cap_per_pair!r}"
        )
    return cap_per_pair


def _first_ids(values: pl.Series, k: int = 5) -> str:
    shown = ", ".join(str(v) for v in values.head(k).to_list())
    return shown + (", ..." if values.len() > k else "")


def read_folds(folds_csv: PathLike) -> pl.DataFrame:
    """Read and validate a folds CSV (``sample_set_id, fold``; one row per sample set)."""
    df = read_csv_checked(
        folds_csv, ["sample_set_id", "fold"],
        schema_overrides={"sample_set_id": pl.Int64, "fold": pl.String},
    ).select("sample_set_id", "fold")
    for column in ("sample_set_id", "fold"):
        if df[column].null_count():
            raise input_error(folds_csv, "has empty values; re-run the folds step", column=column)
    bad = df.filter(~pl.col("fold").is_in(FOLDS))["fold"].unique(maintain_order=True)
    if bad.len():
        raise input_error(
            folds_csv, f"unknown fold(s) {_first_ids(bad)}; expected one of {', '.join(FOLDS)}",
            column="fold",
        )
    dup = df.filter(pl.col("sample_set_id").is_duplicated())["sample_set_id"].unique().sort()
    if dup.len():
        raise input_error(
            folds_csv, f"sample set(s) listed more than once: {_first_ids(dup)}",
            column="sample_set_id",
        )
    return df


_APEX_BITS = "_apex_rt_bits"


def _apex_bits() -> pl.Expr:
    """``apex_rt``'s float bits (``_APEX_BITS``): tells apart what compares equal (-0.0, 0.0)."""
    return pl.col("apex_rt").cast(pl.Float64).reinterpret(dtype=pl.UInt64).alias(_APEX_BITS)


def _identity_keys() -> list[pl.Expr]:
    """Sort keys of the peak identity. polars sorts ``-0.0`` and ``0.0`` as equal, so the bits of
    ``apex_rt`` follow it: rows that differ only in the sign of a zero still have a fixed order."""
    return [*(pl.col(c) for c in IDENTITY_COLUMNS), _apex_bits()]


def _full_keys(schema: pl.Schema) -> list[pl.Expr]:
    """Identity, then every other column (floats followed by their bits): a total order."""
    keys = _identity_keys()
    for c, dtype in schema.items():
        if c in IDENTITY_COLUMNS or c == _HASH:
            continue
        keys.append(pl.col(c))
        if dtype == pl.Float64:
            keys.append(pl.col(c).reinterpret(dtype=pl.UInt64).alias(f"_bits_{c}"))
        elif dtype == pl.Float32:
            keys.append(pl.col(c).reinterpret(dtype=pl.UInt32).alias(f"_bits_{c}"))
    return keys


def _identity_order(selected: pl.DataFrame) -> pl.Series:
    """The positions of ``selected``'s rows sorted by identity, then by the other columns.

    One index sort on the identity keys; rows whose identity repeats (rare: neighbours in that
    order) are then ranked by all their columns (:func:`_full_keys`) and put back into the
    places their identities hold: the order of a sort on every column, at the cost of a sort on
    five keys."""
    ident = _identity_keys()
    order = selected.select(pl.arg_sort_by(ident, nulls_last=True)).to_series()
    keys = selected.select(ident).select(pl.all().gather(order))
    same_as_next = pl.all_horizontal(pl.col(c).eq_missing(pl.col(c).shift(-1))
                                     for c in keys.columns)
    repeated = keys.select(same_as_next.fill_null(False) | same_as_next.shift(1).fill_null(False)
                           ).to_series()
    if repeated.any():
        slots = repeated.arg_true()
        few = selected.with_row_index("_pos").select(pl.all().gather(order.gather(slots)))
        ranked = few.sort(_full_keys(selected.schema), nulls_last=True)["_pos"]
        order = order.scatter(slots, ranked)
    return order


def _pair_rank() -> pl.Expr:
    """A row's rank in its pair (from 0), in a frame sorted by :func:`_pair_ranked`."""
    return pl.int_range(pl.len()).over(PAIR_COLUMNS)


def _pair_ranked(rows: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``rows`` (with ``_HASH``) in the cap's order within each pair: hash, then identity, then
    the other columns of ``schema`` (:func:`_full_keys`); the first ``cap`` of a pair are kept."""
    return rows.sort([*PAIR_COLUMNS, _HASH, *_full_keys(schema)], nulls_last=True)


def _in_pairs(rows: pl.DataFrame, pairs: pl.DataFrame) -> pl.Series:
    """Whether each row of ``rows`` is in one of ``pairs`` (unique ``PAIR_COLUMNS``; null equals
    null), in the rows' order."""
    return (rows.select(PAIR_COLUMNS)
            .join(pairs.select(PAIR_COLUMNS).with_columns(pl.lit(True).alias("_in")),
                  on=PAIR_COLUMNS, how="left", nulls_equal=True, maintain_order="left")["_in"]
            .fill_null(False))


def _capped_order(selected: pl.DataFrame, cap: int, stats: pl.DataFrame) -> pl.Series:
    """From the rows under each pair's threshold, the positions of the first ``cap`` of each pair
    by (hash, identity, other columns), in the output's order: by identity, then the other
    columns.

    A pair has more than ``cap`` rows here only if hashes tie exactly at its threshold (the same
    identity twice): rare, so the full-width ranking runs only on those pairs' rows, and the
    rows it leaves out are taken out of the order (positions, no copy of the rows). The sort is
    an index sort on the identity keys (:func:`_identity_order`). ``stats``: the pairs' rows
    under their thresholds (:func:`_pair_thresholds`), which say which pairs tie.
    """
    over = stats.filter(pl.col(_UNDER) > cap).select(PAIR_COLUMNS)
    rows = selected.drop(_HASH)
    order = _identity_order(rows)
    if over.height:
        pos = _in_pairs(selected, over).arg_true().alias("_pos")
        tied = _pair_ranked(selected.select(pl.all().gather(pos)).with_columns(pos),
                            rows.schema).filter(_pair_rank() >= cap)["_pos"]
        order = order.filter(~order.is_in(tied.implode()))
    return order


def _write_in_order(rows: pl.DataFrame, order: pl.Series, target: Any) -> None:
    """Write ``rows`` gathered in ``order`` to Parquet, one row group at a time (the bytes of
    ``rows[order].write_parquet(...)``, without a sorted copy of the rows in memory)."""

    def gathered() -> Iterator[pl.DataFrame]:
        for lo in range(0, order.len(), ROW_GROUP_SIZE):
            yield rows.select(pl.all().gather(order.slice(lo, ROW_GROUP_SIZE)))

    _write_frames(gathered(), rows.schema, target)


def _write_frames(frames: Iterator[pl.DataFrame], schema: pl.Schema, target: Any) -> None:
    """Write the frames ``frames`` yields, in order, to Parquet in fixed row groups (one frame
    in memory at a time: an IO source the sink pulls from)."""
    frames_source(lambda: frames, schema).sink_parquet(
        target, compression="zstd", row_group_size=ROW_GROUP_SIZE, statistics=True)


_GROUP_COLUMNS: tuple[str, ...] = (*PAIR_COLUMNS, _HASH, "sample_set_id", "task_id", _APEX_BITS)
_TAKE = "_take"


def _tie_takes(lf: pl.LazyFrame, stats: pl.DataFrame, cap: int, seed: int
               ) -> pl.DataFrame | None:
    """For the pairs whose hashes tie at their threshold (more than ``cap`` rows at or under it;
    rare), from the key columns alone: each group of their rows under the threshold that share
    hash and identity (``_GROUP_COLUMNS``), with ``_take``, how many of its rows are kept. None
    when no pair ties.

    The cap's order within a pair is hash, identity, then the other columns
    (:func:`_pair_ranked`), so a group's rows are consecutive in it: a group starting at rank s
    of g rows keeps ``clip(cap - s, 0, g)`` of them, which only a group straddling the cap
    leaves to the other columns to choose. A group is one identity, so it lies in one sample
    set: pass 2 resolves it in that sample set's range (:func:`_take_tied`)."""
    over = stats.filter(pl.col(_UNDER) > cap)
    if not over.height:
        return None
    keys = _rows_under_thresholds(lf.select(_KEY_COLUMNS), over, seed)
    groups = (keys.with_columns(_apex_bits())
              .group_by(_GROUP_COLUMNS).agg(pl.col("apex_rt").first(), pl.len().alias("_g"))
              .sort([*PAIR_COLUMNS, _HASH, *IDENTITY_COLUMNS, _APEX_BITS], nulls_last=True))
    start = pl.col("_g").cum_sum().over(PAIR_COLUMNS) - pl.col("_g")
    return (groups.with_columns(pl.min_horizontal(pl.max_horizontal(cap - start, 0), "_g")
                                .alias(_TAKE))
            .filter(pl.col(_TAKE) > 0).select(*_GROUP_COLUMNS, _TAKE))


def _take_tied(rows: pl.DataFrame, takes: pl.DataFrame) -> pl.DataFrame:
    """``rows`` (under their thresholds, with ``_HASH``) without the tied pairs' rows the cap
    leaves out: each group of :func:`_tie_takes` keeps its first ``_take`` rows by the other
    columns; the tied pairs' other rows are dropped."""
    mask = _in_pairs(rows, takes.select(PAIR_COLUMNS).unique())
    tied = rows.filter(mask)
    if not tied.height:
        return rows
    kept = (_pair_ranked(tied.with_columns(_apex_bits()).join(takes, on=list(_GROUP_COLUMNS),
                                                      how="inner", nulls_equal=True),
                         rows.drop(_HASH).schema)
            .filter(pl.int_range(pl.len()).over(_GROUP_COLUMNS) < pl.col(_TAKE))
            .select(rows.columns))
    return pl.concat([rows.filter(~mask), kept], how="vertical")


def _sample_set_ranges(paths: list[Path], n_chunks: int) -> list[tuple[Any, Any]]:
    """``sample_set_id`` ranges ``[lo, hi)`` (None: open) that cut a lib file into about
    ``n_chunks`` runs of whole row groups with similar row counts, from the footer's statistics;
    ``[(None, None)]`` (one piece) when there is one chunk, several files, or row groups not in
    ``sample_set_id`` order (:func:`~rtprep.core.frames.row_groups_ordered`)."""
    if n_chunks <= 1 or len(paths) != 1 or not row_groups_ordered(paths[0], "sample_set_id"):
        return [(None, None)]
    md = pq.ParquetFile(paths[0]).metadata
    idx = [md.schema.column(i).name for i in range(md.num_columns)].index("sample_set_id")
    rows = np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])
    starts = [md.row_group(i).column(idx).statistics.min for i in range(md.num_row_groups)]
    cuts: list[Any] = []
    for k in range(1, n_chunks):
        g = int(np.searchsorted(rows, rows[-1] * k / n_chunks))  # the row group of the cut
        if g + 1 < len(starts) and (not cuts or starts[g + 1] > cuts[-1]):
            cuts.append(starts[g + 1])
    edges = [None, *cuts, None]
    return list(itertools.pairwise(edges))


def _kept_by_range(lf: pl.LazyFrame, columns: list[str], stats: pl.DataFrame, cap: int,
                   seed: int, ranges: list[tuple[Any, Any]]) -> Iterator[pl.DataFrame]:
    """Pass 2 by ``sample_set_id`` ranges (:func:`_sample_set_ranges`): each range's rows under
    their pair's threshold, read by themselves (the scan skips the other row groups), sorted by
    identity (:func:`_identity_order`), in row-group slices. As ``sample_set_id`` leads the
    sort, the ranges in order are the whole sort: the rows and bytes of the one-piece path. The
    pairs that tie at their threshold are decided first from the key columns
    (:func:`_tie_takes`) and resolved in each range (:func:`_take_tied`)."""
    log.info("cap: pass 2 in %d sample-set ranges", len(ranges))
    takes = _tie_takes(lf, stats, cap, seed)
    ssid = pl.col("sample_set_id")
    for lo, hi in ranges:
        bounds = [*([] if lo is None else [ssid >= lo]), *([] if hi is None else [ssid < hi])]
        in_range = bounds[0] if len(bounds) == 1 else bounds[0] & bounds[1]
        rows = _rows_under_thresholds(lf.filter(in_range), stats, seed)
        if takes is not None:
            rows = _take_tied(rows, takes)
        rows = rows.select(columns)
        order = _identity_order(rows)
        for start in range(0, order.len(), ROW_GROUP_SIZE):
            yield rows.select(pl.all().gather(order.slice(start, ROW_GROUP_SIZE)))
        del rows, order


def _fold_filter(lf: pl.LazyFrame, folds_csv: PathLike, fold: str, label: object
                 ) -> tuple[pl.LazyFrame, pl.Series]:
    """The rows of ``lf`` in ``fold`` (an ``is_in`` filter on the fold's sample sets, read
    first) and the sorted ids of the input's sample sets in the other fold. Every sample set of
    the input must have a fold."""
    folds = read_folds(folds_csv)
    seen = lf.select("sample_set_id").unique().collect(engine="streaming")["sample_set_id"]
    missing = seen.filter(~seen.is_in(folds["sample_set_id"].implode()) | seen.is_null())
    if missing.len():
        raise input_error(
            folds_csv,
            f"{missing.len()} sample set(s) of {label} have no fold (e.g. "
            f"{_first_ids(missing.sort())}); the folds file is stale, re-run the folds step",
            column="sample_set_id",
        )
    fold_ids = folds.filter(pl.col("fold") == fold)["sample_set_id"]
    other_ids = folds.filter(
        (pl.col("fold") != fold) & pl.col("sample_set_id").is_in(seen.implode())
    )["sample_set_id"].sort()
    return lf.filter(pl.col("sample_set_id").is_in(fold_ids.implode())), other_ids


def _check_fold_args(folds_csv: PathLike | None, fold: str | None) -> None:
    if (folds_csv is None) != (fold is None):
        raise RtprepError(
            "folds_csv and fold go together: give both (e.g. fold='train') or neither"
        )
    if fold is not None and fold not in FOLDS:
        raise RtprepError(f"fold must be one of {', '.join(FOLDS)}, got {fold!r}")


def _rows_under_thresholds(lf: pl.LazyFrame, stats: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Pass 2: stream the full rows, keep hash <= the pair's threshold (the small table is the
    build side of the join, so memory follows the selected rows, not the input)."""
    return (
        with_row_hash(lf, seed)
        .join(stats.lazy().select(*PAIR_COLUMNS, _THRESHOLD), on=PAIR_COLUMNS, how="inner",
              nulls_equal=True, build_side="force_right")
        .filter(pl.col(_HASH) <= pl.col(_THRESHOLD))
        .drop(_THRESHOLD)
        .collect(engine="streaming")
    )


# --- the cap ----------------------------------------------------------------------------------
def cap_species_compounds(
    input: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    cap_per_pair: int,
    seed: int,
    folds_csv: PathLike | None = None,
    fold: str | None = None,
) -> RowAccount:
    """Keep at most ``cap_per_pair`` rows per ``(species_matrix_type, comp_id)`` pair.

    ``input`` is a per-lib Parquet (or a list of shards of one). Within each pair the
    ``min(n, cap_per_pair)`` rows with the smallest identity hash under ``seed`` are kept (ties by
    identity, then by the other columns). With ``folds_csv`` and ``fold`` only the sample sets of
    that fold are considered (the others are dropped as ``other_fold``). Rows beyond the cap are
    dropped as ``over_cap``. The output has the input's columns, rows sorted by identity, a fixed
    row-group size (byte-identical across runs), and a ``.meta.json`` sidecar; it is written
    atomically.
    """
    t0 = time.perf_counter()
    cap = _check_cap(cap_per_pair)
    _check_fold_args(folds_csv, fold)
    paths = _as_paths(input)
    label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
    lf, schema = _scan(paths)
    log.info("cap: %s -> %s (cap_per_pair=%d, seed=%d%s)", label, output, cap, seed,
             f", fold={fold}" if fold else "")

    account = RowAccount("cap")
    account.rows_in = int(lf.select(pl.len()).collect().item())

    other_ids: pl.Series | None = None
    if folds_csv is not None:
        assert fold is not None
        lf, other_ids = _fold_filter(lf, folds_csv, fold, label)
    # Pass 1: key columns only -> one row per pair: its size and its cap-th smallest hash.
    stats = _pair_thresholds(lf.select(_KEY_COLUMNS), cap, seed, label)
    n_considered = int(stats["n"].sum())
    if other_ids is not None:
        account.drop("other_fold", account.rows_in - n_considered,
                     column="sample_set_id", ids=other_ids.to_list())
    n_kept = int(stats.select(pl.min_horizontal("n", pl.lit(cap))).to_series().sum())
    account.drop("over_cap", n_considered - n_kept)
    account.rows_out = n_kept
    account.extra = {
        "pairs": stats.height,
        "pairs_over_cap": int((stats["n"] > cap).sum()),
    }

    config: dict[str, object] = {"cap_per_pair": cap}
    inputs: list[PathLike] = list(paths)
    if folds_csv is not None:
        config.update({"fold": fold, "folds_csv": str(folds_csv)})
        inputs.append(folds_csv)
    ranges = _sample_set_ranges(paths, math.ceil(n_kept / CAP_CHUNK_ROWS))
    with atomic_output(output) as tmp:
        with hashed_file(tmp) as fh:
            if len(ranges) > 1:
                _write_frames(_kept_by_range(lf, list(schema), stats, cap, seed, ranges),
                              schema, fh)
            else:
                selected = _rows_under_thresholds(lf, stats, seed)
                order = _capped_order(selected, cap, stats)
                rows = selected.select(list(schema))
                del selected
                _write_in_order(rows, order, fh)
        write_sidecars(output, account, inputs=inputs, config=config, seeds={"cap_seed": seed})
    log.info("cap: %s; %d pairs (%d over the cap) in %.1fs", account.funnel(), stats.height,
             account.extra["pairs_over_cap"], time.perf_counter() - t0)
    return account


# --- folds ------------------------------------------------------------------------------------
def _check_fraction(test_fraction: float) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) or not (
        0.0 <= float(test_fraction) < 1.0
    ):
        raise RtprepError(
            f"test_fraction must be a number in [0, 1) (the share of sample sets, or of "
            f"worksheets for the time split, held out for evaluation), got {test_fraction!r}"
        )
    return float(test_fraction)


def _n_test(n: int, test_fraction: float) -> int:
    # Half up, not Python's half-to-even: easy to state and to reproduce in any engine.
    return min(n, math.floor(test_fraction * n + 0.5))


def _fold_label(is_test: pl.Expr) -> pl.Expr:
    return pl.when(is_test).then(pl.lit("test")).otherwise(pl.lit("train")).alias("fold")


def random_folds(sample_sets: pl.Series, *, test_fraction: float, fold_seed: int) -> pl.DataFrame:
    """The ``random`` split: ``sample_set_id, fold`` for the distinct ``sample_sets``.

    The sample sets are ordered by ``id_hash("sample_set_id", fold_seed)`` (ties by id); the first
    ``round(test_fraction * n)`` (halves rounded up) are ``test``, the rest ``train``. Sorted by
    ``sample_set_id``."""
    n_test = _n_test(sample_sets.len(), _check_fraction(test_fraction))
    return (
        sample_sets.rename("sample_set_id").to_frame()
        .with_columns(id_hash("sample_set_id", fold_seed).alias("_h"))
        .sort("_h", "sample_set_id")
        .with_columns(_fold_label(pl.int_range(pl.len()) < n_test))
        .select("sample_set_id", "fold")
        .sort("sample_set_id")
    )


def _worksheets_in_time_order(keys: pl.DataFrame, time_column: str) -> pl.DataFrame:
    """``worksheet_id, start`` (its earliest ``time_column`` value), by (start, worksheet_id)."""
    return (keys.group_by("worksheet_id").agg(pl.col(time_column).min().alias("start"))
            .sort("start", "worksheet_id"))


def time_folds(keys: pl.DataFrame, *, test_fraction: float, time_column: str) -> pl.DataFrame:
    """The ``time`` split: the latest worksheets held out, whole.

    ``keys``: the distinct ``sample_set_id, worksheet_id, <time_column>`` of a lib (no nulls). A
    worksheet's time is the earliest ``time_column`` value of its rows (when it was run); the
    worksheets are ordered by (time, ``worksheet_id``) and the last ``round(test_fraction * n)``
    of the n worksheets (halves rounded up) are held out. A sample set is ``test`` when any of its
    rows is on a held-out worksheet, so folds stay whole sample sets even where one spans two
    worksheets (its earlier rows are held out with it). With ``time_column: worksheet_id`` the
    order is the worksheet ids'. Returns ``sample_set_id, fold`` sorted by ``sample_set_id``.
    """
    fraction = _check_fraction(test_fraction)
    worksheets = _worksheets_in_time_order(keys, time_column)
    n_test = _n_test(worksheets.height, fraction)
    held_out = worksheets["worksheet_id"].tail(n_test)
    return (
        keys.group_by("sample_set_id")
        .agg(pl.col("worksheet_id").is_in(held_out.implode()).any().alias("_test"))
        .select("sample_set_id", _fold_label(pl.col("_test")))
        .sort("sample_set_id")
    )


def _time_keys(lf: pl.LazyFrame, schema: pl.Schema, path: Path, time_column: str) -> pl.DataFrame:
    """The distinct ``sample_set_id, worksheet_id`` of a lib file with ``time_column`` as
    ``_time``, checked: the column exists, is a date, time, number or ISO date text (parsed), and
    no row lacks a value."""
    require_columns(schema, [time_column, "worksheet_id"], path,
                    f"the time split orders worksheets by eval.time_column {time_column!r}")
    for c in dict.fromkeys(["worksheet_id", time_column]):
        dtype = schema[c]
        if c == "worksheet_id" and not dtype.is_integer():
            raise input_error(path, f"has type {dtype}, expected an integer", column=c)
        if not (dtype.is_temporal() or dtype.is_numeric() or dtype == pl.String):
            raise input_error(path, f"has type {dtype}, expected a date, a time or a number "
                              "(eval.time_column orders the worksheets)", column=c)
    cols = list(dict.fromkeys(["sample_set_id", "worksheet_id", time_column]))
    keys = lf.select(pl.col(cols)).unique().collect(engine="streaming")
    for c in cols:
        if keys[c].null_count():
            raise input_error(path, "has rows without a value; the time split needs a time and "
                              "a worksheet for every row", column=c)
    order = keys[time_column]
    if order.dtype == pl.String:
        parsed = pl.select(pl.coalesce(
            [pl.lit(order).str.to_datetime(f, strict=False) for f in _ISO_FORMATS]
        )).to_series()
        bad = order.filter(parsed.is_null())
        if bad.len():
            raise input_error(path, f"{bad.n_unique()} value(s) are not dates or times, e.g. "
                              f"{bad[0]!r} (eval.time_column orders the worksheets; write "
                              "ISO dates, 2024-03-01 or 2024-03-01T09:30)", column=time_column)
        order = parsed
    return keys.select("sample_set_id", "worksheet_id", order.alias(_ORDER))


def assign_folds(
    lib_parquet: PathLike,
    folds_csv: PathLike,
    *,
    test_fraction: float,
    fold_seed: int | None = None,
    split: str = "random",
    time_column: str = "worksheet_id",
) -> RowAccount:
    """Assign whole sample sets of a lib to ``test`` or ``train`` and write ``folds_csv``.

    ``split`` (:data:`SPLITS`): ``random`` holds out ``round(test_fraction * n)`` of the n sample
    sets, chosen by their hash under ``fold_seed`` (:func:`random_folds`); ``time`` holds out the
    latest ``test_fraction`` of the worksheets in ``time_column`` order, whole (:func:`time_folds`;
    ``fold_seed`` plays no part). Writes ``sample_set_id, fold`` sorted by ``sample_set_id``,
    atomically, with a ``.meta.json`` sidecar holding the count per fold (and, for ``time``,
    worksheets per fold and the time where the test fold starts).
    """
    t0 = time.perf_counter()
    fraction = _check_fraction(test_fraction)
    if split not in SPLITS:
        raise RtprepError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "random" and fold_seed is None:
        raise RtprepError("the random split needs fold_seed (which sample sets are held out)")
    paths = _as_paths(lib_parquet)
    try:
        lf = pl.scan_parquet(paths[0])
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise input_error(paths[0], f"cannot be read as Parquet: {exc}") from exc
    require_columns(schema, ["sample_set_id"], paths[0], "needed to assign folds")

    if not schema["sample_set_id"].is_integer():
        raise input_error(paths[0], f"has type {schema['sample_set_id']}, expected an integer",
                          column="sample_set_id")
    lf = lf.with_columns(pl.col("sample_set_id").cast(pl.Int64))
    config: dict[str, object] = {"split": split, "test_fraction": fraction}
    seeds: dict[str, int] = {}
    extra: dict[str, object] = {"split": split}
    if split == "random":
        assert fold_seed is not None
        ids = lf.select("sample_set_id").unique().collect(engine="streaming")["sample_set_id"]
        if ids.null_count():
            raise input_error(paths[0], "has rows without a sample set", column="sample_set_id")
        folds = random_folds(ids, test_fraction=fraction, fold_seed=fold_seed)
        seeds["fold_seed"] = fold_seed
        extra["unit"] = "sample_set_id"
    else:
        keys = _time_keys(lf, schema, paths[0], time_column)
        folds = time_folds(keys, test_fraction=fraction, time_column=_ORDER)
        config["time_column"] = time_column
        worksheets = _worksheets_in_time_order(keys, _ORDER)
        n_ws = worksheets.height
        n_ws_test = _n_test(n_ws, fraction)
        test_from = worksheets["start"][n_ws - n_ws_test] if n_ws_test else None
        spanning = int((keys.group_by("sample_set_id").agg(pl.col("worksheet_id").n_unique())
                        ["worksheet_id"] > 1).sum())
        extra.update({"unit": "worksheet_id", "time_column": time_column,
                      "worksheets": {"test": n_ws_test, "train": n_ws - n_ws_test},
                      "test_from": None if test_from is None else str(test_from),
                      "sample_sets_on_several_worksheets": spanning})
        if spanning:
            log.warning("folds: %s: %d sample set(s) span several worksheets; each is held out "
                        "whole when any of its worksheets is", paths[0], spanning)
    n = folds.height
    n_test = int((folds["fold"] == "test").sum())
    account = RowAccount("folds")
    account.rows_in = n
    account.rows_out = n
    account.extra = {**extra, "test": n_test, "train": n - n_test}
    with atomic_output(folds_csv) as tmp:
        with hashed_file(tmp) as fh:
            folds.write_csv(fh)
        write_sidecars(folds_csv, account, inputs=paths, config=config, seeds=seeds)
    log.info("folds (%s split): %s: %d sample sets -> %d test, %d train (%.1fs)", split,
             lib_parquet, n, n_test, n - n_test, time.perf_counter() - t0)
    return account
