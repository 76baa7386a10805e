"""Seed step 6: attach CHEM_ID and compound_class to capped rows; drop what cannot be mapped.

``comp_id -> chemical_id`` comes from the lib's mapping CSV (``lib_id, comp_id, chemical_id``; only
the rows of the input's lib are used), ``chemical_id -> compound_class`` from the classes Parquet of
step 5. Rows are dropped, and counted in this order:

1. ``comp_id_unmapped``: the comp_id has no mapping row;
2. ``comp_id_ambiguous``: the mapping gives the comp_id two different chemical_ids;
3. ``chem_id_no_class``: the chemical_id has no class (CHEM_ID 0, chemicals without embedding).

The transform itself is :func:`attach_lazy` (a lazy frame in, a lazy frame out, streaming-safe),
reused by :func:`rtprep.rtcsv.write_test_rows` on the streamed test rows; the counts come from a
small aggregation over ``comp_id`` alone (:func:`count_attach_drops`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from rtprep.artifacts import (
    ROW_GROUP_SIZE,
    RowAccount,
    atomic_output,
    hashed_file,
    write_sidecars,
)
from rtprep.errors import RtprepError, input_error
from rtprep.frames import read_csv_checked, require_columns

log = logging.getLogger(__name__)

MAPPING_COLUMNS: tuple[str, ...] = ("lib_id", "comp_id", "chemical_id")
CLASSES_COLUMNS: tuple[str, ...] = ("chem_id", "compound_class")
#: Drop reasons of the attach step, in the order they are applied.
ATTACH_REASONS: tuple[str, ...] = ("comp_id_unmapped", "comp_id_ambiguous", "chem_id_no_class")
_ID_COLUMNS = ("lib_id", "comp_id", "sample_set_id", "task_id", "worksheet_id", "chemical_id",
               "compound_class")


# --- reading the side tables ------------------------------------------------------------------
def checked_int_column(df: pl.DataFrame, column: str, path: str | Path, *,
                       allow_null: bool = False) -> pl.Series:
    """Parse a CSV column read as strings into Int64, or raise naming the file, column, line and
    value that is not an integer (or is empty, unless ``allow_null``)."""
    raw = df[column].cast(pl.String).str.strip_chars()
    parsed = raw.cast(pl.Int64, strict=False)
    line = pl.int_range(2, df.height + 2, eager=True)  # header is line 1
    bad = (parsed.is_null() & raw.is_not_null() & (raw != "")).arg_true()
    if bad.len():
        i = bad[0]
        raise input_error(
            path,
            f"value {raw[i]!r} on line {line[i]} is not an integer"
            + (f" ({bad.len()} such values)" if bad.len() > 1 else ""),
            column=column,
        )
    if not allow_null:
        empty = parsed.is_null().arg_true()
        if empty.len():
            raise input_error(
                path, f"empty value on line {line[empty[0]]}; every row needs a value",
                column=column,
            )
    return parsed.alias(column)


def read_lib_mapping(path: str | Path) -> pl.DataFrame:
    """Read and validate a ``lib_comp_chem_mapping_lib<lib>.csv``.

    Returns its distinct ``lib_id, comp_id, chemical_id`` rows (Int64). A header-only file is an
    error: it would leave every comp_id unmapped, i.e. drop every row.
    """
    df = read_csv_checked(path, MAPPING_COLUMNS,
                          schema_overrides={c: pl.String for c in MAPPING_COLUMNS})
    df = pl.DataFrame([checked_int_column(df, c, path) for c in MAPPING_COLUMNS])
    if df.height == 0:
        raise input_error(path, "has a header but no rows: every comp_id would be unmapped and "
                          "every row dropped; fill in the lib's lib_id, comp_id, chemical_id rows")
    return df.unique().sort(list(MAPPING_COLUMNS))


def read_classes(path: str | Path) -> pl.DataFrame:
    """Read and validate a classes Parquet (``chem_id, compound_class``, one class per chem_id)."""
    path = Path(path)
    if not path.is_file():
        raise RtprepError(f"{path}: classes file not found (build it with `rtprep chem-classes`)")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # several error types for a non-Parquet file
        raise input_error(path, f"cannot be read as Parquet: {exc}") from exc
    require_columns(schema, CLASSES_COLUMNS, path, "a chem classes table")
    for c in CLASSES_COLUMNS:
        if not schema[c].is_integer():
            raise input_error(path, f"must be integer, found {schema[c]}", column=c)
    df = (
        pl.read_parquet(path, columns=list(CLASSES_COLUMNS))
        .select(pl.col(c).cast(pl.Int64) for c in CLASSES_COLUMNS)
        .unique()
        .sort(list(CLASSES_COLUMNS))
    )
    for c in CLASSES_COLUMNS:
        if df[c].null_count():
            raise input_error(path, "contains empty (null) values", column=c)
    dup = df.filter(pl.col("chem_id").is_duplicated())
    if dup.height:
        cid = dup["chem_id"][0]
        classes = dup.filter(pl.col("chem_id") == cid)["compound_class"].to_list()
        raise input_error(path, f"chem_id {cid} has two classes {classes}", column="chem_id")
    return df


def mapping_for_lib(mapping_df: pl.DataFrame, lib: int | None) -> pl.DataFrame:
    """The mapping rows of one lib (``comp_id, chemical_id``); other libs' rows are ignored."""
    if lib is None:
        return mapping_df.select("comp_id", "chemical_id").clear()
    return mapping_df.filter(pl.col("lib_id") == lib).select("comp_id", "chemical_id").unique()


def input_lib(lf: pl.LazyFrame, path: str | Path) -> int | None:
    """The single ``lib_id`` of a per-lib Parquet (None when it has no rows)."""
    libs = lf.select(pl.col("lib_id").unique()).collect(engine="streaming")["lib_id"]
    libs = libs.drop_nulls().sort()
    if libs.len() > 1:
        raise input_error(path, f"expected rows of one lib, found lib_ids {libs.to_list()}; "
                          "split the file by lib first", column="lib_id")
    if libs.len() == 0:
        return None
    return int(libs[0])


# --- the transform ----------------------------------------------------------------------------
def _comp_table(mapping_df: pl.DataFrame) -> pl.DataFrame:
    """Per comp_id of the mapping: its chemical_id and whether it is ambiguous."""
    return (
        mapping_df.select(pl.col("comp_id").cast(pl.Int64), pl.col("chemical_id").cast(pl.Int64))
        .unique()
        .group_by("comp_id")
        .agg(pl.col("chemical_id").min(), (pl.col("chemical_id").n_unique() > 1).alias("ambiguous"))
        .sort("comp_id")
    )


def clean_mapping(mapping_df: pl.DataFrame) -> pl.DataFrame:
    """``comp_id -> chemical_id`` with the ambiguous comp_ids removed (one row per comp_id)."""
    return _comp_table(mapping_df).filter(~pl.col("ambiguous")).select("comp_id", "chemical_id")


def attach_lazy(lf: pl.LazyFrame, mapping_df: pl.DataFrame, classes_df: pl.DataFrame
                ) -> pl.LazyFrame:
    """Add ``chemical_id`` and ``compound_class`` (Int64) to ``lf``, keeping only mappable rows.

    ``mapping_df``: ``comp_id, chemical_id`` of the right lib (see :func:`mapping_for_lib`);
    comp_ids with two different chemical_ids are dropped. ``classes_df``: ``chem_id,
    compound_class``. Rows keep their order; streaming-safe (the side tables are small, eager).
    """
    cmap = clean_mapping(mapping_df).lazy()
    classes = classes_df.select(
        pl.col("chem_id").cast(pl.Int64).alias("chemical_id"),
        pl.col("compound_class").cast(pl.Int64),
    ).lazy()
    return (
        lf.join(cmap, on="comp_id", how="inner", maintain_order="left")
        .join(classes, on="chemical_id", how="inner", maintain_order="left")
    )


def count_attach_drops(comp_counts: pl.DataFrame, mapping_df: pl.DataFrame,
                       classes_df: pl.DataFrame, account: RowAccount) -> None:
    """Record the attach drops in ``account`` from ``comp_counts`` (``comp_id, n``: rows per
    comp_id of the rows that reach the attach step), in :data:`ATTACH_REASONS` order."""
    table = _comp_table(mapping_df)
    status = comp_counts.join(table, on="comp_id", how="left").join(
        classes_df.select(pl.col("chem_id").cast(pl.Int64).alias("chemical_id"),
                          pl.lit(True).alias("has_class")),
        on="chemical_id", how="left",
    )
    unmapped = status.filter(pl.col("ambiguous").is_null())
    ambiguous = status.filter(pl.col("ambiguous").fill_null(False))
    no_class = status.filter(
        pl.col("ambiguous").is_not_null() & ~pl.col("ambiguous") & pl.col("has_class").is_null()
    )
    for reason, frame, column in (
        ("comp_id_unmapped", unmapped, "comp_id"),
        ("comp_id_ambiguous", ambiguous, "comp_id"),
        ("chem_id_no_class", no_class, "chemical_id"),
    ):
        ids = frame[column].unique().to_list()
        account.drop(reason, int(frame["n"].sum()), column=column, ids=ids or None)


def comp_counts_lazy(lf: pl.LazyFrame, keys: Sequence[str] = ("comp_id",)) -> pl.LazyFrame:
    """Rows per key combination (column ``n``): a small aggregation over the key columns only."""
    return lf.select(list(keys)).group_by(list(keys)).agg(pl.len().cast(pl.Int64).alias("n"))


# --- the stage --------------------------------------------------------------------------------
def scan_checked(path: str | Path, required: Sequence[str], what: str) -> pl.LazyFrame:
    """Scan a Parquet input, checking that it exists, is Parquet and has ``required`` columns."""
    path = Path(path)
    if not path.is_file():
        raise RtprepError(f"{path}: file not found")
    try:
        lf = pl.scan_parquet(path)
        schema = lf.collect_schema()
    except Exception as exc:  # several error types for a non-Parquet file
        raise input_error(path, f"cannot be read as Parquet: {exc}") from exc
    require_columns(schema, required, path, what)
    casts = []
    for c in required:
        if c in _ID_COLUMNS:
            if not schema[c].is_integer():
                raise input_error(path, f"must be integer, found {schema[c]}", column=c)
            if schema[c] != pl.Int64:
                # Join keys must match the side tables' Int64 (the contract's type).
                casts.append(pl.col(c).cast(pl.Int64))
    return lf.with_columns(casts) if casts else lf


def parquet_rows(path: str | Path) -> int:
    """Number of rows of a Parquet file (from its metadata)."""
    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def attach_chem_classes(
    input: str | Path,
    lib_mapping: str | Path,
    classes: str | Path,
    output: str | Path,
) -> RowAccount:
    """Seed step 6: add ``chemical_id`` and ``compound_class`` to a capped Parquet.

    Output: the input's columns, then ``chemical_id`` and ``compound_class`` (Int64), rows in the
    input's order, fixed row groups (byte-identical reruns), with sidecars listing the dropped
    comp_ids / chemical_ids per reason (:data:`ATTACH_REASONS`).
    """
    t0 = time.perf_counter()
    input_path, output = Path(input), Path(output)
    log.info("attach: %s + %s + %s -> %s", input_path, lib_mapping, classes, output)
    lf = scan_checked(input_path, ["lib_id", "comp_id"], "a capped peak table")
    for c in ("chemical_id", "compound_class"):
        if c in lf.collect_schema():
            raise input_error(input_path, "already present; is this file already attached?",
                              column=c)
    mapping_all = read_lib_mapping(lib_mapping)
    classes_df = read_classes(classes)
    lib = input_lib(lf, input_path)
    mapping_df = mapping_for_lib(mapping_all, lib)
    if lib is not None and mapping_df.height == 0:
        # Every row would be dropped as unmapped: the file is another lib's mapping.
        listed = ", ".join(map(str, mapping_all["lib_id"].unique().sort().to_list()))
        raise input_error(lib_mapping, f"has no rows for lib {lib} (the lib of {input_path}); it "
                          f"lists lib_id {listed}: give the mapping of lib {lib}",
                          column="lib_id")

    comp_counts = comp_counts_lazy(lf).collect(engine="streaming")
    account = RowAccount("attach", rows_in=int(comp_counts["n"].sum()))
    count_attach_drops(comp_counts, mapping_df, classes_df, account)

    out = attach_lazy(lf, mapping_df, classes_df)
    with atomic_output(output) as tmp:
        with hashed_file(tmp) as fh:
            out.sink_parquet(fh, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                             statistics=True)
        account.rows_out = parquet_rows(tmp)
        write_sidecars(output, account, inputs=[input_path, lib_mapping, classes],
                       config={"lib_id": lib})
    log.info("attach: %s (%.1fs)", account.funnel(), time.perf_counter() - t0)
    return account
