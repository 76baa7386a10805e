"""Seed step 7: RT production CSVs (the ridge trainers' input) and the held-out test rows.

The RT CSV has exactly the columns of DESIGN "RT CSV columns" (:func:`rt_columns`):
``sampleset_id, worksheet_id, task_id, species, species_cluster, compound, compound_class``, the
covariates of the configured families (family order, natural order inside: IS2 before IS10),
then ``rt``; with ``sampleset_id = sample_set_id``, ``compound = chemical_id``, ``rt = apex_rt``.
``species`` and ``species_cluster`` come from the species mapping CSV (``sample_set_id, species,
species_cluster``); rows of sample sets it does not list are dropped (``sample_set_no_species``).

:func:`write_test_rows` builds the evaluation set: every row of a lib file whose sample set is in
the ``test`` fold, attached and filtered exactly like the training rows, streamed to Parquet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from rtprep.artifacts import ROW_GROUP_SIZE, RowAccount, atomic_output, write_sidecars
from rtprep.attach import (
    attach_lazy,
    checked_int_column,
    comp_counts_lazy,
    count_attach_drops,
    input_lib,
    mapping_for_lib,
    parquet_rows,
    read_classes,
    read_lib_mapping,
    scan_checked,
)
from rtprep.errors import input_error
from rtprep.frames import DEFAULT_COVARIATE_FAMILIES, covariate_columns, read_csv_checked
from rtprep.hashing import IDENTITY_COLUMNS

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
    two_clusters = (
        df.group_by("species")
        .agg(pl.col("species_cluster").unique().sort())
        .filter(pl.col("species_cluster").list.len() > 1)
        .sort("species")
    )
    if two_clusters.height:
        sp, cl = two_clusters.row(0)
        raise input_error(path, f"species {sp!r} is in two or more clusters {cl}; a species "
                          "must belong to exactly one species_cluster", column="species_cluster")
    two_species = (
        df.group_by("sample_set_id")
        .agg(pl.col("species").unique().sort())
        .filter(pl.col("species").list.len() > 1)
        .sort("sample_set_id")
    )
    if two_species.height:
        ss, sp = two_species.row(0)
        raise input_error(path, f"sample_set_id {ss} is listed with different species {sp}",
                          column="species")
    return df


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
def make_rt_prod_csv(
    input: str | Path,
    species_mapping: str | Path,
    output: str | Path,
    *,
    families: Sequence[str] = DEFAULT_COVARIATE_FAMILIES,
) -> RowAccount:
    """Seed step 7: write the RT production CSV of an attached (``_chemclass``) Parquet.

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
        df.write_csv(tmp)
        write_sidecars(output, account, inputs=[input_path, species_mapping],
                       config={"families": list(families), "columns": df.columns})
    log.info("rt csv: %s, %d columns (%.1fs)", account.funnel(), df.width,
             time.perf_counter() - t0)
    return account


def write_test_rows(
    lib_parquet: str | Path,
    folds_csv: str | Path,
    lib_mapping: str | Path,
    classes: str | Path,
    species_mapping: str | Path,
    output: str | Path,
    *,
    families: Sequence[str] = DEFAULT_COVARIATE_FAMILIES,
) -> RowAccount:
    """Write every test-fold row of a lib file, attached and filtered like the training rows.

    Output: Parquet with the RT CSV columns, sorted by peak identity, fixed row groups. The lib
    file is streamed (never collected): the small side tables are read first, the drop counts
    come from an aggregation over ``sample_set_id, comp_id`` alone. Reasons, in order:
    ``other_fold``, the attach reasons, ``sample_set_no_species``.
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
    classes_df = read_classes(classes)
    mapping_all = read_lib_mapping(lib_mapping)
    lib = input_lib(lf, lib_path)
    mapping_df = mapping_for_lib(mapping_all, lib)
    test_ids = folds.filter(pl.col("fold") == "test").select("sample_set_id")

    # Counting passes over the key columns only (the test filter is pushed into the scan).
    in_test = pl.col("sample_set_id").is_in(test_ids["sample_set_id"].implode())
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
    count_attach_drops(
        test_counts.group_by("comp_id").agg(pl.col("n").sum()), mapping_df, classes_df, account
    )
    attached = attach_lazy(test_counts.lazy(), mapping_df, classes_df).collect()
    _count_no_species(attached.group_by("sample_set_id").agg(pl.col("n").sum()), species_df,
                      account)

    # A filter (not a semi-join) so that polars pushes it into the Parquet scan: the rows of
    # other folds are never materialised.
    plan = lf.select(*base, *covs).filter(in_test)
    plan = _join_species(attach_lazy(plan, mapping_df, classes_df), species_df)
    # Stable sort: rows with equal identity keep the file's order, so the bytes are fixed.
    plan = plan.sort(list(IDENTITY_COLUMNS), maintain_order=True).select(_rt_select(covs))
    with atomic_output(output) as tmp:
        plan.sink_parquet(tmp, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                          statistics=True)
        account.rows_out = parquet_rows(tmp)
        write_sidecars(
            output, account,
            inputs=[lib_path, folds_csv, lib_mapping, classes, species_mapping],
            config={"lib_id": lib, "families": list(families),
                    "columns": rt_columns(lf.collect_schema().names(), families)},
        )
    log.info("test rows: %s (%.1fs)", account.funnel(), time.perf_counter() - t0)
    return account
