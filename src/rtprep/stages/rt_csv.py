"""Stage rt_csv: RT production CSVs (the ridge trainers' input) and the held-out test rows.

The RT CSV has exactly the columns of docs/contracts.md, "The RT CSV" (:func:`rt_columns`):
``sampleset_id, worksheet_id, task_id, species, species_cluster, compound, compound_class``, the
covariates of the configured families (family order, natural order inside: IS2 before IS10),
then ``rt``; with ``sampleset_id = sample_set_id``, ``compound = chemical_id``, ``rt = apex_rt``.
``species`` and ``species_cluster`` come from the species mapping CSV (``sample_set_id, species,
species_cluster``); rows of sample sets it does not list are dropped (``sample_set_no_species``).

:func:`write_test_rows` builds the evaluation set: every row of a lib file whose sample set is in
the ``test`` fold, attached and filtered exactly like the training rows, sorted by peak identity
in bounded memory (chunks of whole sample sets, :data:`TEST_ROWS_CHUNK` rows at most), streamed to
Parquet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import polars as pl

from rtprep.core.artifacts import (
    ROW_GROUP_SIZE,
    RowAccount,
    atomic_output,
    hashed_file,
    scratch_files,
    write_sidecars,
)
from rtprep.core.errors import input_error
from rtprep.core.frames import (
    DEFAULT_COVARIATE_FAMILIES,
    assign_chunks,
    checked_int_column,
    comp_counts_lazy,
    covariate_columns,
    frames_source,
    parquet_rows,
    read_csv_checked,
    row_groups_ordered,
    scan_checked,
)
from rtprep.core.hashing import IDENTITY_COLUMNS
from rtprep.stages.attach import ChemAttach

log = logging.getLogger(__name__)

SPECIES_COLUMNS: tuple[str, ...] = ("sample_set_id", "species", "species_cluster")
FOLDS_COLUMNS: tuple[str, ...] = ("sample_set_id", "fold")
FOLDS: tuple[str, ...] = ("train", "test")
#: The leading RT CSV columns, in order (covariates and ``rt`` follow).
ID_COLUMNS: tuple[str, ...] = (
    "sampleset_id", "worksheet_id", "task_id", "species", "species_cluster", "compound",
    "compound_class",
)
_SHOW = 5
#: Most test-fold rows :func:`write_test_rows` sorts in memory at once: the rows are cut into
#: chunks of whole sample sets (a contiguous range of ``sample_set_id``; a sample set with more
#: rows is a chunk of its own). ~600 bytes a row with 30 covariates.
TEST_ROWS_CHUNK = 100_000
#: Most scratch files the chunked sort writes at once (each open file buffers a record batch of
#: :data:`_BATCH` rows): with more chunks, rows are first cut into groups of chunks.
_FANOUT = 16
_BATCH = 4096
# Helper columns of the chunked sort (the output has no comp_id; chunk and partition keys).
_COMP = "__comp_id"
_CHUNK = "__chunk"
_PART = "__part"


def _show(values: Sequence[object]) -> str:
    vals = list(values)
    return ", ".join(repr(v) for v in vals[:_SHOW]) + (
        f" (and {len(vals) - _SHOW} more)" if len(vals) > _SHOW else "")


# --- side tables ------------------------------------------------------------------------------
def read_species_mapping(path: str | Path) -> pl.DataFrame:
    """Read and validate a species mapping CSV.

    Returns one row per sample set: ``sample_set_id`` (Int64), ``species`` (String),
    ``species_cluster`` (as inferred from the file). Extra columns are ignored, identical repeated
    rows are fine; a header-only file, a species in two clusters, or a sample set with two
    species is an error.
    """
    df = read_csv_checked(path, SPECIES_COLUMNS,
                          schema_overrides={"sample_set_id": pl.String, "species": pl.String})
    if df.height == 0:
        raise input_error(path, "has a header but no rows: every sample set would be dropped "
                          "(no species); fill in sample_set_id, species, species_cluster rows")
    df = df.select(
        checked_int_column(df, "sample_set_id", path),
        pl.col("species").str.strip_chars(),
        pl.col("species_cluster"),
    )
    for c in ("species", "species_cluster"):
        empty = df[c].is_null() | (df[c].cast(pl.String).str.strip_chars() == "")
        if empty.any():
            line = int(empty.arg_true()[0]) + 2
            raise input_error(path, f"empty value on line {line}; every sample set needs a "
                              "species and a species cluster", column=c)
    df = df.unique().sort("sample_set_id", "species")
    two = _first_with_two(df, "species", "species_cluster")
    if two is not None:
        raise input_error(path, f"species {two[0]!r} is in two or more clusters {two[1]}; a "
                          "species must belong to exactly one species_cluster",
                          column="species_cluster")
    two = _first_with_two(df, "sample_set_id", "species")
    if two is not None:
        raise input_error(path, f"sample_set_id {two[0]} is listed with different species "
                          f"{two[1]}", column="species")
    return df


def _first_with_two(df: pl.DataFrame, key: str, value: str) -> tuple[object, list[object]] | None:
    """The first ``key`` (in order) with two or more values of ``value``, and those values."""
    many = (df.group_by(key).agg(pl.col(value).unique().sort())
            .filter(pl.col(value).list.len() > 1).sort(key))
    return (many.row(0)[0], many.row(0)[1]) if many.height else None


def read_folds(path: str | Path) -> pl.DataFrame:
    """Read and validate a folds CSV: ``sample_set_id`` (Int64), ``fold`` (train/test), one row
    per sample set."""
    df = read_csv_checked(path, FOLDS_COLUMNS,
                          schema_overrides={"sample_set_id": pl.String, "fold": pl.String})
    df = df.select(checked_int_column(df, "sample_set_id", path),
                   pl.col("fold").str.strip_chars()).unique()
    bad = df.filter(~pl.col("fold").is_in(list(FOLDS)) | pl.col("fold").is_null())
    if bad.height:
        raise input_error(path, f"fold {bad['fold'][0]!r} is not one of {list(FOLDS)}",
                          column="fold")
    dup = df.filter(pl.col("sample_set_id").is_duplicated())["sample_set_id"].unique().sort()
    if dup.len():
        raise input_error(path, f"sample_set_id {_show(dup.to_list())} is in both folds",
                          column="sample_set_id")
    return df.sort("sample_set_id")


# --- columns ----------------------------------------------------------------------------------
def rt_columns(columns: Sequence[str], families: Sequence[str] = DEFAULT_COVARIATE_FAMILIES
               ) -> list[str]:
    """The RT CSV's columns for an input with ``columns``: ids, covariates, ``rt``."""
    return [*ID_COLUMNS, *covariate_columns(columns, families), "rt"]


def _covariates(schema: pl.Schema, families: Sequence[str], path: str | Path) -> list[str]:
    covs = covariate_columns(schema.names(), families)
    for c in covs:
        if not schema[c].is_numeric():
            raise input_error(path, f"covariate must be numeric, found {schema[c]}", column=c)
    return covs


def _rt_select(covs: Sequence[str]) -> list[pl.Expr]:
    """Expressions building the RT CSV columns from attached, species-joined rows."""
    return [
        pl.col("sample_set_id").alias("sampleset_id"),
        pl.col("worksheet_id"),
        pl.col("task_id"),
        pl.col("species"),
        pl.col("species_cluster"),
        pl.col("chemical_id").alias("compound"),
        pl.col("compound_class"),
        *(pl.col(c).cast(pl.Float64) for c in covs),
        pl.col("apex_rt").alias("rt"),
    ]


def _join_species(lf: pl.LazyFrame, species_df: pl.DataFrame) -> pl.LazyFrame:
    return lf.join(species_df.lazy(), on="sample_set_id", how="inner", maintain_order="left")


def _count_no_species(ss_counts: pl.DataFrame, species_df: pl.DataFrame,
                      account: RowAccount) -> None:
    """Record ``sample_set_no_species`` from ``ss_counts`` (``sample_set_id, n``)."""
    missing = ss_counts.join(species_df.select("sample_set_id"), on="sample_set_id", how="anti")
    ids = missing["sample_set_id"].unique().to_list()
    account.drop("sample_set_no_species", int(missing["n"].sum()), column="sample_set_id",
                 ids=ids or None)


# --- stage 7 ----------------------------------------------------------------------------------
def write_rt_csv(
    input: str | Path,
    species_mapping: str | Path,
    output: str | Path,
    *,
    families: Sequence[str] = DEFAULT_COVARIATE_FAMILIES,
) -> RowAccount:
    """Stage rt_csv: write the RT production CSV of an attached (``_chemclass``) Parquet.

    Rows keep the input's (identity) order; the CSV is written atomically with polars' fixed
    float formatting (deterministic bytes), with sidecars listing the sample sets that had no
    species.
    """
    t0 = time.perf_counter()
    input_path, output = Path(input), Path(output)
    log.info("rt csv: %s + %s -> %s", input_path, species_mapping, output)
    base = ["sample_set_id", "worksheet_id", "task_id", "chemical_id", "compound_class",
            "apex_rt"]
    lf = scan_checked(input_path, base, "an attached (_chemclass) peak table")
    covs = _covariates(lf.collect_schema(), families, input_path)
    species_df = read_species_mapping(species_mapping)

    ss_counts = comp_counts_lazy(lf, ["sample_set_id"]).collect(engine="streaming")
    account = RowAccount("rt_csv", rows_in=int(ss_counts["n"].sum()))
    _count_no_species(ss_counts, species_df, account)

    # Only the needed columns go into the join, so an input column named like a mapping column
    # (e.g. a stray `species`) cannot clash with it.
    plan = _join_species(lf.select(*base, *covs), species_df).select(_rt_select(covs))
    df = plan.collect(engine="streaming")
    account.rows_out = df.height
    with atomic_output(output) as tmp:
        with hashed_file(tmp) as fh:
            df.write_csv(fh)
        write_sidecars(output, account, inputs=[input_path, species_mapping],
                       config={"families": list(families), "columns": df.columns})
    log.info("rt csv: %s, %d columns (%.1fs)", account.funnel(), df.width,
             time.perf_counter() - t0)
    return account


def _chunk_files(scratch: Callable[[str], Path], tag: str) -> list[Path]:
    """The scratch files of one partition, in write order (``<tag>-000000``, ``-000001``, ...)."""
    files: list[Path] = []
    while (f := scratch(f"{tag}-{len(files):06d}")).exists():
        files.append(f)
    return files


def _write_chunks(source: pl.LazyFrame, lo: int, hi: int, scratch: Callable[[str], Path]
                  ) -> None:
    """Write the rows of ``source`` (chunks ``lo`` to ``hi - 1`` in column :data:`_CHUNK`) to
    scratch files ``chunk<k>-<i>``, each chunk's rows in the source's order.

    At most :data:`_FANOUT` files are written at once (each open file buffers a record batch):
    more chunks are first cut into that many groups of consecutive chunks, each then cut again
    from its own scratch files.
    """
    span = -(-(hi - lo) // _FANOUT)  # chunks per partition of this pass

    def tag(p: int) -> str:
        a, b = lo + p * span, min(hi, lo + (p + 1) * span)
        return f"chunk{a:06d}" if span == 1 else f"group{a:06d}-{b:06d}"

    source.sink_ipc(
        pl.PartitionBy(
            scratch(tag(0)).parent,  # the output's folder; the provider names the files
            key={_PART: (pl.col(_CHUNK).cast(pl.Int64) - lo) // span},
            include_key=False,
            file_path_provider=lambda a: scratch(
                f"{tag(int(a.partition_keys[_PART][0]))}-{a.index_in_partition:06d}"),
        ),
        compression="lz4", record_batch_size=_BATCH, maintain_order=True,
    )
    if span == 1:
        return
    for p in range(-(-(hi - lo) // span)):
        files = _chunk_files(scratch, tag(p))
        if files:
            _write_chunks(pl.scan_ipc(files), lo + p * span, min(hi, lo + (p + 1) * span),
                          scratch)
            for f in files:
                f.unlink()


def _sorted_chunks(plan: pl.LazyFrame, chunks: pl.DataFrame, scratch: Callable[[str], Path],
                   out_columns: Sequence[str]) -> pl.LazyFrame:
    """The rows of ``plan`` (RT CSV columns plus :data:`_COMP`) sorted by identity, chunk by chunk.

    One streaming pass writes each chunk's rows (``chunks``: :func:`assign_chunks`), in the
    file's order, to their own scratch Arrow IPC files (:func:`_write_chunks`); the returned
    frame reads the chunks back in ``sample_set_id`` order, one at a time, and sorts each
    (stable), so that one chunk is in memory while it is sunk. Concatenated, that is the stable
    sort of all the rows: the chunks are consecutive ranges of the first sort key.
    """
    n_chunks = int(chunks["chunk"].max() or 0) + 1 if chunks.height else 0
    # A join with the small chunk table (an expression such as search_sorted would make the
    # streaming engine collect the column).
    keyed = chunks.select(pl.col("sample_set_id").alias("sampleset_id"),
                          pl.col("chunk").alias(_CHUNK))
    _write_chunks(plan.join(keyed.lazy(), on="sampleset_id", how="inner", maintain_order="left"),
                  0, n_chunks, scratch)
    key = ["sampleset_id", "task_id", _COMP, "rt"]  # = IDENTITY_COLUMNS, renamed
    schema = plan.select(out_columns).collect_schema()

    def sorted_chunks() -> Iterator[pl.DataFrame]:
        for k in range(n_chunks):
            files = _chunk_files(scratch, f"chunk{k:06d}")
            if not files:
                continue
            df = pl.concat([pl.read_ipc(f) for f in files], how="vertical")
            for f in files:
                f.unlink()
            # Stable: rows with equal identity keep the file's order, so the bytes are fixed.
            yield df.sort(key, maintain_order=True).select(out_columns)

    return frames_source(sorted_chunks, schema)


def _count_test_rows(lf: pl.LazyFrame, in_test: pl.Expr, folds: pl.DataFrame,
                     step: ChemAttach, species_df: pl.DataFrame,
                     paths: tuple[str | Path, str | Path]) -> tuple[RowAccount, pl.DataFrame]:
    """The test rows' account (``other_fold``, the attach reasons, ``sample_set_no_species``)
    and the output rows per test sample set (``sample_set_id, n``), from counting passes over
    the key columns only (the test filter is pushed into the scan)."""
    lib_path, folds_csv = paths
    rows_in = int(lf.select(pl.len()).collect().item())
    lib_sets = lf.select(pl.col("sample_set_id").unique()).collect(engine="streaming")
    no_fold = lib_sets.join(folds, on="sample_set_id", how="anti")["sample_set_id"]
    if no_fold.len():
        log.warning("%s: %d sample set(s) of %s are not in the folds file (counted as "
                    "other_fold): %s", folds_csv, no_fold.len(), lib_path,
                    _show(no_fold.sort().to_list()))
    test_counts = (
        comp_counts_lazy(lf.filter(in_test), ["sample_set_id", "comp_id"])
        .collect(engine="streaming")
    )
    account = RowAccount("test_rows", rows_in=rows_in)
    account.drop("other_fold", rows_in - int(test_counts["n"].sum()))
    step.count_drops(test_counts.group_by("comp_id").agg(pl.col("n").sum()), account)
    attached = step.apply(test_counts.lazy()).collect()
    _count_no_species(attached.group_by("sample_set_id").agg(pl.col("n").sum()), species_df,
                      account)
    # Output rows per test sample set (after the attach and species drops): the sort's chunks.
    per_set = (
        attached.join(species_df.select("sample_set_id"), on="sample_set_id", how="semi")
        .group_by("sample_set_id").agg(pl.col("n").sum())
    )
    return account, per_set


def _sorted_by_identity(plan_for: Callable[[pl.Expr | None], pl.LazyFrame],
                        covs: Sequence[str], per_set: pl.DataFrame, chunk_rows: int,
                        scratch: Callable[[str], Path], *, ordered: bool) -> pl.LazyFrame:
    """The RT CSV columns of the rows of ``plan_for(None)`` (attached, species joined) sorted
    by identity, stable: in the streaming plan when they fit in one chunk, else chunk by chunk
    (``per_set``: the output rows per sample set). ``ordered``: the lib file's row groups come in
    ``sample_set_id`` order (their statistics say so), so each chunk is read by itself (
    ``plan_for(its range)``: the scan skips the other row groups) and sorted
    (:func:`_sorted_ranges`); else one pass writes the chunks to scratch files first
    (:func:`_sorted_chunks`). Either gives the same rows in the same order."""
    chunks = assign_chunks(per_set, chunk_rows)
    n_chunks = int(chunks["chunk"].max() or 0) + 1 if chunks.height else 0
    if n_chunks <= 1:
        # Stable sort: rows with equal identity keep the file's order, so the bytes are fixed.
        return (plan_for(None).sort(list(IDENTITY_COLUMNS), maintain_order=True)
                .select(_rt_select(covs)))
    log.info("test rows: %d rows to sort in %d chunks of at most %d rows (%s)",
             int(per_set["n"].sum()), n_chunks, chunk_rows,
             "read by sample-set range" if ordered else "through scratch files")
    out_columns = [e.meta.output_name() for e in _rt_select(covs)]
    select = [*_rt_select(covs), pl.col("comp_id").alias(_COMP)]
    if ordered:
        return _sorted_ranges(lambda rng: plan_for(rng).select(select), chunks, out_columns)
    return _sorted_chunks(plan_for(None).select(select), chunks, scratch, out_columns)


def _sorted_ranges(plan_for: Callable[[pl.Expr], pl.LazyFrame], chunks: pl.DataFrame,
                   out_columns: Sequence[str]) -> pl.LazyFrame:
    """The rows sorted by identity, chunk by chunk, each chunk read by itself: ``plan_for``
    (the rows of a ``sample_set_id`` range, in the file's order) collected and sorted (stable),
    one chunk in memory while it is sunk. The same rows and order as :func:`_sorted_chunks`."""
    ranges = (chunks.group_by("chunk").agg(pl.col("sample_set_id").min().alias("lo"),
                                           pl.col("sample_set_id").max().alias("hi"))
              .sort("chunk"))
    key = ["sampleset_id", "task_id", _COMP, "rt"]  # = IDENTITY_COLUMNS, renamed
    first = pl.col("sample_set_id")
    schema = plan_for(first.is_not_null()).select(out_columns).collect_schema()

    def sorted_ranges() -> Iterator[pl.DataFrame]:
        for lo, hi in ranges.select("lo", "hi").iter_rows():
            df = plan_for(first.is_between(lo, hi)).collect()
            # Stable: rows with equal identity keep the file's order, so the bytes are fixed.
            yield df.sort(key, maintain_order=True).select(out_columns)

    return frames_source(sorted_ranges, schema)


def write_test_rows(
    lib_parquet: str | Path,
    folds_csv: str | Path,
    lib_mapping: str | Path,
    classes: str | Path,
    species_mapping: str | Path,
    output: str | Path,
    *,
    families: Sequence[str] = DEFAULT_COVARIATE_FAMILIES,
    chunk_rows: int = TEST_ROWS_CHUNK,
) -> RowAccount:
    """Write every test-fold row of a lib file, attached and filtered like the training rows.

    Output: Parquet with the RT CSV columns, sorted by peak identity (rows with equal identity in
    the lib file's order), fixed row groups, byte-identical reruns. The lib file is streamed
    (never collected): the small side tables are read first, the drop counts come from an
    aggregation over ``sample_set_id, comp_id`` alone. Reasons, in order: ``other_fold``, the
    attach reasons, ``sample_set_no_species``.

    Memory is bounded by ``chunk_rows``, not by the size of the test fold: the counts give the
    output rows of each test sample set, which are cut into chunks of at most ``chunk_rows`` rows
    (consecutive ``sample_set_id`` ranges, whole sample sets: :func:`assign_chunks`). One chunk is
    sorted inside the streaming plan. More chunks, where the lib file's row groups come in
    ``sample_set_id`` order (:func:`row_groups_ordered`): each chunk is read by its range (the scan
    skips the other row groups) and sorted. Otherwise one streaming pass writes the rows to scratch
    files per chunk (hidden ``.<output>.<pid>.chunk<k>-<i>.tmp`` beside the output, Arrow IPC,
    removed on success and failure; beyond 16 chunks, first per group of chunks and then each
    group per chunk, so that at most 16 files are open at once), then the chunks are read back in
    order, one at a time, each sorted (stable) and streamed to the output. Since
    ``sample_set_id`` is the first sort key, the chunks in order are exactly the global sort: same
    rows, order and bytes. Scratch disk: about the compressed size of the test rows.
    """
    t0 = time.perf_counter()
    lib_path, output = Path(lib_parquet), Path(output)
    log.info("test rows: %s (folds %s) -> %s", lib_path, folds_csv, output)
    base = ["lib_id", "sample_set_id", "worksheet_id", "task_id", "comp_id", "apex_rt"]
    lf = scan_checked(lib_path, base, "a per-lib peak table")
    covs = _covariates(lf.collect_schema(), families, lib_path)

    # Small side tables first (one plan that scans the big file twice would buffer it).
    folds = read_folds(folds_csv)
    species_df = read_species_mapping(species_mapping)
    step = ChemAttach.load(lf, lib_path, lib_mapping, classes)
    test_ids = folds.filter(pl.col("fold") == "test")["sample_set_id"]
    # A filter (not a semi-join) so that polars pushes it into the Parquet scan: the rows of
    # other folds are never materialised.
    in_test = pl.col("sample_set_id").is_in(test_ids.implode())
    account, per_set = _count_test_rows(lf, in_test, folds, step, species_df,
                                        (lib_path, folds_csv))

    def plan_for(rng: pl.Expr | None) -> pl.LazyFrame:
        """The test rows (of a ``sample_set_id`` range), attached, species joined."""
        rows = lf.select(*base, *covs).filter(in_test if rng is None else in_test & rng)
        return _join_species(step.apply(rows), species_df)

    ordered = row_groups_ordered(lib_path, "sample_set_id")
    with atomic_output(output) as tmp, scratch_files(output) as scratch:
        plan = _sorted_by_identity(plan_for, covs, per_set, chunk_rows, scratch,
                                   ordered=ordered)
        with hashed_file(tmp) as fh:
            plan.sink_parquet(fh, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                              statistics=True)
        account.rows_out = parquet_rows(tmp)
        write_sidecars(
            output, account,
            inputs=[lib_path, folds_csv, lib_mapping, classes, species_mapping],
            config={"lib_id": step.lib, "families": list(families),
                    "columns": rt_columns(lf.collect_schema().names(), families)},
        )
    log.info("test rows: %s (%.1fs)", account.funnel(), time.perf_counter() - t0)
    return account
