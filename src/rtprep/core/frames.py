"""Small frame and Parquet helpers shared by the stages."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from rtprep.core.artifacts import ROW_GROUP_SIZE, atomic_output
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.settings import default

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
