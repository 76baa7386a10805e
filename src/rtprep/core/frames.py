"""Small frame and Parquet helpers shared by the stages."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from rtprep.core.artifacts import ROW_GROUP_SIZE, atomic_output
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.settings import default

#: Integer id columns of the peak tables and side tables: read as Int64 (:func:`scan_checked`).
_ID_COLUMNS = ("lib_id", "comp_id", "sample_set_id", "task_id", "worksheet_id", "chemical_id",
               "compound_class")

#: Covariate families in the order the RT CSV lists them (``covariates.families``).
DEFAULT_COVARIATE_FAMILIES: tuple[str, ...] = tuple(default("covariates", "families"))


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders IS2 before IS10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def covariate_columns(
    columns: Iterable[str], families: Sequence[str] = DEFAULT_COVARIATE_FAMILIES
) -> list[str]:
    """The covariate columns among ``columns``: family by family in the order given, natural
    order inside a family. A column belongs to the first family whose prefix it starts with
    (``IS`` also requires the rest of the name to start with a digit or ``_``, so that a column
    like ``ISOTOPE`` is not taken for an internal standard)."""
    picked: list[list[str]] = [[] for _ in families]
    for c in columns:
        for i, fam in enumerate(families):
            if c.startswith(fam):
                rest = c[len(fam):]
                if fam.endswith("_") or rest[:1].isdigit() or rest[:1] == "_":
                    picked[i].append(c)
                    break
    return [c for group in picked for c in sorted(group, key=natural_key)]


def write_parquet_atomic(
    df: pl.DataFrame, path: str | Path, *, row_group_size: int = ROW_GROUP_SIZE
) -> None:
    """Write a frame to Parquet atomically, with a fixed row-group size (deterministic bytes)."""
    with atomic_output(path) as tmp:
        df.write_parquet(tmp, compression="zstd", row_group_size=row_group_size, statistics=True)


def sink_parquet_atomic(
    lf: pl.LazyFrame, path: str | Path, *, row_group_size: int | None = ROW_GROUP_SIZE
) -> None:
    """Stream a lazy frame to Parquet atomically (streaming engine)."""
    with atomic_output(path) as tmp:
        lf.sink_parquet(tmp, compression="zstd", row_group_size=row_group_size, statistics=True)


def write_csv_atomic(df: pl.DataFrame, path: str | Path) -> None:
    """Write a frame to CSV atomically."""
    with atomic_output(path) as tmp:
        df.write_csv(tmp)


def parquet_schema(path: str | Path, missing: str,
                   unreadable: str = "not a readable Parquet file") -> pl.Schema:
    """The schema of a Parquet input, or an error naming the file: ``missing`` when it is not
    there, ``unreadable: <reason>`` when it is not Parquet."""
    path = Path(path)
    if not path.is_file():
        raise RtprepError(f"{path}: {missing}")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # pyarrow/polars raise several types for a non-Parquet file
        raise input_error(path, f"{unreadable}: {exc}") from exc
    return pl.Schema(schema)


def require_columns(schema: pl.Schema | dict[str, pl.DataType], columns: Iterable[str],
                    path: str | Path, what: str = "") -> None:
    """Raise a clear error naming the file and the missing columns."""
    missing = [c for c in columns if c not in schema]
    if missing:
        have = ", ".join(schema.keys()) if hasattr(schema, "keys") else ""
        raise input_error(
            path,
            f"missing required column(s) {', '.join(repr(m) for m in missing)}"
            + (f" ({what})" if what else "")
            + f"; the file has: {have}",
        )


def read_csv_checked(path: str | Path, required: Sequence[str],
                     schema_overrides: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Read a small CSV, checking that it exists, parses and has the required columns."""
    path = Path(path)
    if not path.is_file():
        raise RtprepError(f"{path}: file not found")
    try:
        df = pl.read_csv(path, schema_overrides=schema_overrides, infer_schema_length=10_000)
    except pl.exceptions.PolarsError as exc:
        raise input_error(path, f"cannot be read as CSV: {exc}") from exc
    require_columns(df.schema, required, path)
    return df


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


def comp_counts_lazy(lf: pl.LazyFrame, keys: Sequence[str] = ("comp_id",)) -> pl.LazyFrame:
    """Rows per key combination (column ``n``): a small aggregation over the key columns only."""
    return lf.select(list(keys)).group_by(list(keys)).agg(pl.len().cast(pl.Int64).alias("n"))


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


def lib_ids_from_statistics(path: str | Path) -> set[int] | None:
    """The ``lib_id`` values of a Parquet file from its row-group statistics (no data read), or
    None when a row group holds several libs, has nulls or no statistics, and the column must be
    read."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    if "lib_id" not in names:
        return None
    idx = names.index("lib_id")
    libs: set[int] = set()
    for rg in range(md.num_row_groups):
        col = md.row_group(rg).column(idx)
        stats = col.statistics
        if md.row_group(rg).num_rows == 0:
            continue
        if stats is None or not stats.has_min_max or stats.min != stats.max or stats.null_count:
            return None
        libs.add(int(stats.min))
    return libs


def assign_chunks(rows_per_set: pl.DataFrame, max_rows: int) -> pl.DataFrame:
    """Cut sample sets into chunks of at most ``max_rows`` rows.

    ``rows_per_set``: ``sample_set_id, n``. Returns ``sample_set_id, chunk`` (UInt32, from 0),
    sorted by ``sample_set_id``: each chunk is a run of consecutive sample sets, filled greedily
    in ``sample_set_id`` order; a sample set of more than ``max_rows`` rows is a chunk of its own.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    df = rows_per_set.select("sample_set_id", "n").sort("sample_set_id")
    chunks: list[int] = []
    k, rows = 0, 0
    for n in df["n"].to_list():
        if rows and rows + n > max_rows:
            k, rows = k + 1, 0
        rows += n
        chunks.append(k)
    return df.select("sample_set_id", pl.Series("chunk", chunks, dtype=pl.UInt32))


def row_groups_ordered(path: str | Path, column: str) -> bool:
    """Whether the row groups of a Parquet file come in ``column`` order: each one's minimum
    at least the previous one's maximum (from the footer's statistics; False when a row group
    has none)."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    if column not in names:
        return False
    idx = names.index(column)
    last = None
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(idx).statistics
        if st is None or not st.has_min_max:
            return False
        if last is not None and st.min < last:
            return False
        last = st.max
    return True


def frames_source(frames: Callable[[], Iterator[pl.DataFrame]], schema: pl.Schema
                   ) -> pl.LazyFrame:
    """A lazy frame over the frames ``frames()`` yields, one at a time (an IO plugin: the sink
    pulls them as it writes, so one is in memory at once)."""

    def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               batch_size: int | None) -> Iterator[pl.DataFrame]:
        left = n_rows
        for df in frames():
            if predicate is not None:
                df = df.filter(predicate)
            if with_columns is not None:
                df = df.select(with_columns)
            if left is not None:
                df = df.head(left)
                left -= df.height
            yield df
            del df
            if left == 0:
                return

    return register_io_source(source, schema=schema)
