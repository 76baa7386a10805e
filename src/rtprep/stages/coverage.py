"""Stage coverage: species × compound coverage of one lib (a diagnostic, and a plan for caps).

For a lib Parquet: per ``species_matrix_type`` the number of compounds and rows, the number of
unique ``(species_matrix_type, comp_id)`` pairs, and the exact number of rows a cap of N rows per
pair would keep (the sum over pairs of ``min(n, N)``). The pair counts are one streamed
``group_by`` on two columns; everything after works on the (small) table of pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from rtprep.core.artifacts import (
    RowAccount,
    atomic_output,
    hashed_file,
    write_sidecars,
    write_text_atomic,
)
from rtprep.core.errors import RtprepError
from rtprep.core.frames import parquet_rows, parquet_schema, require_columns

log = logging.getLogger(__name__)

PAIR = ("species_matrix_type", "comp_id")


#: Rows counted at a time (:func:`pair_counts`): a slice of the file, read by its row groups.
#: 1 M: 0.25 GB at 1.3 M rows, 0.31 GB at 5.3 M (the wide benchmark's lib at 4 M and 16 M peaks);
#: 4 M slices: 0.25 and 0.37 GB.
SLICE_ROWS = 1_000_000


def pair_counts(lib_parquet: str | Path) -> pl.DataFrame:
    """``species_matrix_type, comp_id, n_rows`` for every pair in the file, sorted (nulls last).

    Counted a slice of :data:`SLICE_ROWS` rows at a time and the counts summed: memory follows
    the slice and the pairs, not the file (polars' streaming group-by over the whole file held
    0.30 GB at 9.4 M rows and 0.59 GB at 33 M; slices of 4 M rows, 0.37 GB at both; slices of
    1 M, 0.27-0.29 GB, in ~2x the time: 3.0 s at 33 M rows)."""
    lib_parquet = Path(lib_parquet)
    schema = parquet_schema(lib_parquet, "lib Parquet not found")
    require_columns(schema, PAIR, lib_parquet, "a per-lib training file")
    count = pl.len().cast(pl.Int64).alias("n_rows")
    total: pl.DataFrame | None = None
    for lo in range(0, max(parquet_rows(lib_parquet), 1), SLICE_ROWS):
        part = (pl.scan_parquet(lib_parquet).slice(lo, SLICE_ROWS).select(PAIR)
                .group_by(list(PAIR)).agg(count).collect())
        total = part if total is None else (
            pl.concat([total, part]).group_by(list(PAIR)).agg(pl.col("n_rows").sum()))
    assert total is not None
    return total.sort(list(PAIR), nulls_last=True)


def species_table(pairs: pl.DataFrame) -> pl.DataFrame:
    """``species_matrix_type, n_compounds, n_rows`` from the pair counts, sorted."""
    return (
        pairs.group_by("species_matrix_type")
        .agg(pl.len().cast(pl.Int64).alias("n_compounds"), pl.col("n_rows").sum())
        .sort("species_matrix_type", nulls_last=True)
    )


def retained_if_capped(pairs: pl.DataFrame, caps: Sequence[int]) -> dict[int, int]:
    """Rows kept by a cap of ``c`` rows per pair, for each ``c``: ``sum(min(n_rows, c))``."""
    if not caps:
        return {}
    row = pairs.select(
        [pl.col("n_rows").clip(upper_bound=c).sum().alias(str(c)) for c in caps]
    ).row(0)
    return {int(c): int(v or 0) for c, v in zip(caps, row, strict=True)}


def _format_summary(name: str, table: pl.DataFrame, n_pairs: int, n_rows: int,
                    retained: dict[int, int]) -> str:
    rows = [(str(r["species_matrix_type"]), f"{r['n_compounds']:,}", f"{r['n_rows']:,}")
            for r in table.iter_rows(named=True)]
    head = ("species_matrix_type", "n_compounds", "n_rows")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = [f"{name}: {n_rows:,} rows"]
    lines.append(f"{head[0]:<{widths[0]}}  {head[1]:>{widths[1]}}  {head[2]:>{widths[2]}}")
    lines += [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.append(f"unique (species_matrix_type, comp_id) pairs: {n_pairs:,}")
    for cap, kept in retained.items():
        share = f" ({100 * kept / n_rows:.1f}%)" if n_rows else ""
        lines.append(f"rows retained at cap {cap} per pair: {kept:,}{share}")
    return "\n".join(lines) + "\n"


def species_compound_coverage(lib_parquet: str | Path, csv_out: str | Path, *,
                                caps: Sequence[int] = (10, 20, 50, 100),
                                summary_out: str | Path | None = None) -> str:
    """Coverage of ``lib_parquet``: writes ``csv_out`` (every ``species_matrix_type, comp_id,
    n_rows``, sorted) atomically with its sidecar, and ``summary_out`` (the text) when given;
    logs and returns the human-readable summary: the per-species table
    (``species_matrix_type, n_compounds, n_rows``), the number of unique pairs and the exact
    rows retained if capped to each of ``caps`` rows per pair."""
    lib_parquet = Path(lib_parquet)
    cap_list = [int(c) for c in caps]
    bad = [c for c in cap_list if c < 1]
    if bad:
        raise RtprepError(f"coverage caps must be positive integers, got {bad}")
    pairs = pair_counts(lib_parquet)
    table = species_table(pairs)
    n_pairs = pairs.height
    n_rows = int(pairs["n_rows"].sum())
    retained = retained_if_capped(pairs, cap_list)
    text = _format_summary(lib_parquet.name, table, n_pairs, n_rows, retained)

    account = RowAccount("coverage", rows_in=n_rows, rows_out=n_pairs)
    account.extra = {
        "n_pairs": n_pairs,
        "n_rows": n_rows,
        "species": table.to_dicts(),
        "retained_if_capped": {str(c): v for c, v in retained.items()},
    }
    with atomic_output(csv_out) as tmp:
        with hashed_file(tmp) as fh:
            pairs.write_csv(fh)
        write_sidecars(csv_out, account, inputs=[lib_parquet], config={"caps": cap_list},
                       balanced=False)
    if summary_out is not None:
        write_text_atomic(summary_out, text)
    log.info("coverage of %s:\n%s", lib_parquet, text.rstrip("\n"))
    return text


__all__ = ["pair_counts", "retained_if_capped", "species_compound_coverage", "species_table"]
