"""Stage split: one lib's rows of a merged export, with the RT validity filter.

The merged file is sorted by ``lib_id`` and no row group spans two libs, so the ``lib_id``
predicate prunes every other lib's row groups from their statistics; the rows stream from the
merged file to the lib's file (``sink_parquet``), memory does not grow with the number of rows.

Drop reasons, in the order applied: ``apex_rt_invalid`` (null, NaN, ±inf or negative), then
``apex_rt_out_of_range`` (outside ``rt_range``, inclusive, when given).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

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
from rtprep.core.frames import lib_ids_from_statistics, parquet_schema, require_columns

log = logging.getLogger(__name__)

#: Drop reasons of the split, in the order they are applied.
DROP_REASONS: tuple[str, ...] = ("apex_rt_invalid", "apex_rt_out_of_range")


def _merged_schema(merged: Path) -> pl.Schema:
    return parquet_schema(merged, "merged Parquet not found")


def libs_in_merged(merged: str | Path) -> list[int]:
    """The distinct ``lib_id`` values of a merged Parquet, sorted.

    Read from the row-group statistics when each row group holds one lib (as merge writes
    them); otherwise a streamed ``unique`` over the one column.
    """
    merged = Path(merged)
    schema = _merged_schema(merged)
    require_columns(schema, ["lib_id"], merged, "a merged export")
    if not schema["lib_id"].is_integer():
        raise input_error(merged, f"has type {schema['lib_id']}, an integer lib id is needed",
                          column="lib_id")
    libs = lib_ids_from_statistics(merged)
    if libs is None:
        values = (
            pl.scan_parquet(merged)
            .select(pl.col("lib_id").unique())
            .collect(engine="streaming")["lib_id"]
        )
        libs = {int(v) for v in values.drop_nulls().to_list()}
    return sorted(libs)


def _check_rt_range(rt_range: tuple[float, float] | None) -> tuple[float, float] | None:
    if rt_range is None:
        return None
    try:
        lo, hi = (float(v) for v in rt_range)
    except (TypeError, ValueError):
        raise RtprepError(f"rt_range: expected [low, high] in minutes, got {rt_range!r}"
                          ) from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise RtprepError(f"rt_range: expected low <= high, got {rt_range!r}")
    return lo, hi


def split_lib(merged: str | Path, lib: int, output: str | Path, *,
              rt_range: tuple[float, float] | None = None) -> RowAccount:
    """Write the rows of ``lib`` in ``merged`` to ``output`` (``..._lib<lib>.parquet``).

    Rows whose ``apex_rt`` is null, NaN, infinite or negative are dropped (``apex_rt_invalid``),
    then, when ``rt_range=(lo, hi)`` is given, rows outside it (inclusive bounds;
    ``apex_rt_out_of_range``). Columns and their order are kept as in ``merged`` (a predictor
    column that is all null for this lib stays). Writes ``output`` atomically with its sidecar
    and returns the row account. A lib that ``merged`` does not hold raises
    :class:`RtprepError` listing the libs it holds.
    """
    t0 = time.perf_counter()
    merged = Path(merged)
    output = Path(output)
    lib = int(lib)
    rng = _check_rt_range(rt_range)
    schema = _merged_schema(merged)
    require_columns(schema, ["lib_id", "apex_rt"], merged, "a merged export")
    if not (schema["apex_rt"].is_float() or schema["apex_rt"].is_integer()):
        raise input_error(merged, f"has type {schema['apex_rt']}, a number is needed",
                          column="apex_rt")
    held = libs_in_merged(merged)
    if lib not in held:
        raise input_error(merged, f"holds no rows of lib {lib}; it holds lib(s) "
                                  f"{', '.join(map(str, held)) or 'none'}: ask for one of those "
                                  "(rtprep split --libs, or libs in the config)", column="lib_id")
    log.info("split: lib %d of %s -> %s (rt_range %s)", lib, merged, output, rng)

    rt = pl.col("apex_rt").cast(pl.Float64)
    invalid = (rt.is_null() | ~rt.is_finite() | (rt < 0)).fill_null(True)
    out_of_range = (~invalid & ~rt.is_between(rng[0], rng[1], closed="both")) if rng else (
        pl.lit(False))
    lf = pl.scan_parquet(merged).filter(pl.col("lib_id") == lib)
    # First pass reads two columns only; the second streams the full rows.
    counts = (
        lf.select(
            pl.len().alias("rows_in"),
            invalid.sum().alias("apex_rt_invalid"),
            out_of_range.sum().alias("apex_rt_out_of_range"),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    account = RowAccount("split", rows_in=int(counts["rows_in"]))
    for reason in DROP_REASONS:
        account.drop(reason, int(counts[reason] or 0))
    account.rows_out = account.rows_in - sum(account.drops.values())
    kept = lf.filter(~invalid & ~out_of_range)

    with atomic_output(output) as tmp:
        with hashed_file(tmp) as fh:
            kept.sink_parquet(fh, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                              statistics=True, engine="streaming")
        written = pq.ParquetFile(tmp).metadata.num_rows
        if written != account.rows_out:
            raise RuntimeError(f"internal error in split: counted {account.rows_out} rows to "
                               f"keep but wrote {written}")
        account.extra = {"lib": lib, "rt_range": list(rng) if rng else None}
        write_sidecars(output, account, inputs=[merged],
                       config={"lib": lib, "rt_range": list(rng) if rng else None})
    log.info("split: lib %d: %s (%.1f s)", lib, account.funnel(), time.perf_counter() - t0)
    return account


__all__ = ["DROP_REASONS", "libs_in_merged", "split_lib"]
