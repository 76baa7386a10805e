"""Stage attach: attach CHEM_ID and compound_class to capped rows; drop what cannot be mapped.

``comp_id -> chemical_id`` comes from the lib's mapping CSV (``lib_id, comp_id, chemical_id``; only
the rows of the input's lib are used), ``chemical_id -> compound_class`` from the classes Parquet of
step 5. Rows are dropped, and counted in this order:

1. ``comp_id_unmapped``: the comp_id has no mapping row;
2. ``comp_id_ambiguous``: the mapping gives the comp_id two different chemical_ids;
3. ``chem_id_no_class``: the chemical_id has no class (CHEM_ID 0, chemicals without embedding).

The step is :class:`ChemAttach` (side tables read and checked once; the transform
:func:`attach_lazy`, a lazy frame in, a lazy frame out, streaming-safe; the counts from a small
aggregation over ``comp_id`` alone, :func:`count_attach_drops`), shared by
:func:`attach_chem_classes` and :func:`rtprep.stages.rt_csv.write_test_rows` on the streamed
test rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from rtprep.core.artifacts import (
    ROW_GROUP_SIZE,
    RowAccount,
    atomic_output,
    hashed_file,
    write_sidecars,
)
from rtprep.core.errors import input_error
from rtprep.core.frames import (
    checked_int_column,
    comp_counts_lazy,
    lib_ids_from_statistics,
    parquet_rows,
    parquet_schema,
    read_csv_checked,
    require_columns,
    scan_checked,
)

log = logging.getLogger(__name__)

MAPPING_COLUMNS: tuple[str, ...] = ("lib_id", "comp_id", "chemical_id")
CLASSES_COLUMNS: tuple[str, ...] = ("chem_id", "compound_class")
#: Drop reasons of the attach step, in the order they are applied.
ATTACH_REASONS: tuple[str, ...] = ("comp_id_unmapped", "comp_id_ambiguous", "chem_id_no_class")


# --- reading the side tables ------------------------------------------------------------------
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
    schema = parquet_schema(path, "classes file not found (build it with `rtprep chem-classes`)",
                            "cannot be read as Parquet")
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
    """The single ``lib_id`` of a per-lib Parquet (None when it has no rows): from the row-group
    statistics when they settle it (a split output's), else a streamed ``unique``."""
    known = lib_ids_from_statistics(path)
    if known is not None:
        libs = pl.Series("lib_id", sorted(known), dtype=pl.Int64)
    else:
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


# --- the stage --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChemAttach:
    """The attach step for one lib's rows: its side tables, the transform and its counts.

    :func:`attach_chem_classes` applies it to capped rows,
    :func:`rtprep.stages.rt_csv.write_test_rows` to the streamed test rows: one definition of
    which rows are kept and why the others are dropped.
    """

    lib: int | None  # the input's lib (None: no rows)
    mapping: pl.DataFrame  # comp_id, chemical_id of the lib (mapping_for_lib)
    classes: pl.DataFrame  # chem_id, compound_class

    @classmethod
    def load(cls, lf: pl.LazyFrame, input_path: str | Path, lib_mapping: str | Path,
             classes: str | Path) -> ChemAttach:
        """Read and check the side tables for the rows of ``lf`` (a per-lib peak table at
        ``input_path``). A mapping without rows for the input's lib is an error: every row
        would be dropped as unmapped, so it is another lib's mapping."""
        mapping_all = read_lib_mapping(lib_mapping)
        classes_df = read_classes(classes)
        lib = input_lib(lf, input_path)
        mapping_df = mapping_for_lib(mapping_all, lib)
        if lib is not None and mapping_df.height == 0:
            listed = ", ".join(map(str, mapping_all["lib_id"].unique().sort().to_list()))
            raise input_error(lib_mapping, f"has no rows for lib {lib} (the lib of "
                              f"{input_path}); it lists lib_id {listed}: give the mapping of "
                              f"lib {lib}", column="lib_id")
        return cls(lib, mapping_df, classes_df)

    def count_drops(self, comp_counts: pl.DataFrame, account: RowAccount) -> None:
        """Record the attach drops (:func:`count_attach_drops`) of rows counted per comp_id."""
        count_attach_drops(comp_counts, self.mapping, self.classes, account)

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        """``lf`` with ``chemical_id`` and ``compound_class``, mappable rows only
        (:func:`attach_lazy`)."""
        return attach_lazy(lf, self.mapping, self.classes)


def attach_chem_classes(
    input: str | Path,
    lib_mapping: str | Path,
    classes: str | Path,
    output: str | Path,
) -> RowAccount:
    """Stage attach: add ``chemical_id`` and ``compound_class`` to a capped Parquet.

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
    step = ChemAttach.load(lf, input_path, lib_mapping, classes)
    comp_counts = comp_counts_lazy(lf).collect(engine="streaming")
    account = RowAccount("attach", rows_in=int(comp_counts["n"].sum()))
    step.count_drops(comp_counts, account)

    out = step.apply(lf)
    with atomic_output(output) as tmp:
        with hashed_file(tmp) as fh:
            out.sink_parquet(fh, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                             statistics=True)
        account.rows_out = parquet_rows(tmp)
        write_sidecars(output, account, inputs=[input_path, lib_mapping, classes],
                       config={"lib_id": step.lib})
    log.info("attach: %s (%.1fs)", account.funnel(), time.perf_counter() - t0)
    return account
