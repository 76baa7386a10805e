"""The embeddings table, one definition for every reader and writer: a Parquet with ``chem_id``
(integer), optionally ``smiles`` (text), and :data:`EMBEDDING_COLUMN` (a list or fixed-size
array of floats per chemical).

The column keeps the original files' name, ``embedding20``, whatever the vectors' width: the
width is read from the file (every vector of one file has the same length; ``rtprep embed
--n-components 5`` writes a file of width 5, which the classes and the models take as it is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from rtprep.core.errors import input_error
from rtprep.core.frames import parquet_schema, require_columns

#: The embedding column of every embeddings table.
EMBEDDING_COLUMN = "embedding20"
_SHOW = 5  # how many offending ids an error message names
_RECOMPUTE = "; recompute these chemicals' embeddings (rtprep embed) or remove their rows"


def _ids(values: pl.Series) -> str:
    shown = ", ".join(str(v) for v in values.head(_SHOW).to_list())
    more = f" (and {values.len() - _SHOW} more)" if values.len() > _SHOW else ""
    return shown + more


def _embedding_expr(path: Path, schema: pl.Schema) -> pl.Expr:
    """The embedding column as a List(Float64) expression; wrong column types raise."""
    require_columns(schema, ["chem_id", EMBEDDING_COLUMN], path, "an embeddings table")
    id_type = schema["chem_id"]
    if not id_type.is_integer():
        raise input_error(path, f"chem_id must be integer, found {id_type}", column="chem_id")
    emb_type = schema[EMBEDDING_COLUMN]
    if isinstance(emb_type, pl.Array):
        emb = pl.col(EMBEDDING_COLUMN).arr.to_list()
    elif isinstance(emb_type, pl.List):
        emb = pl.col(EMBEDDING_COLUMN)
    else:
        raise input_error(path, f"expected a list of floats per row, found {emb_type}",
                          column=EMBEDDING_COLUMN)
    inner = emb_type.inner
    if inner is None or not inner.is_numeric():
        raise input_error(path, f"expected numeric values, found {emb_type}",
                          column=EMBEDDING_COLUMN)
    return emb.cast(pl.List(pl.Float64)).alias(EMBEDDING_COLUMN)


def _check_vectors(path: Path, df: pl.DataFrame) -> int:
    """Raise on a null vector, vectors of different lengths, null or non-finite values.
    Returns the width (the length every vector has)."""
    e = pl.col(EMBEDDING_COLUMN)
    checks = df.select(
        "chem_id",
        e.is_null().alias("null"),
        e.list.len().alias("len"),
        e.list.eval(pl.element().is_null()).list.any().alias("has_null"),
        e.list.eval(pl.element().is_finite().not_()).list.any().alias("non_finite"),
    )
    bad = checks.filter(pl.col("null"))
    if bad.height:
        raise input_error(path, f"no embedding (null) for chem_id {_ids(bad['chem_id'])}"
                          + _RECOMPUTE, column=EMBEDDING_COLUMN)
    # The width is the file's most common length (the longer on a tie): the others are wrong.
    lengths = checks["len"].value_counts().sort(["count", "len"], descending=True)
    width = int(lengths["len"][0]) if lengths.height else 0
    bad = checks.filter((pl.col("len") != width) | (pl.col("len") == 0))
    if bad.height:
        expected = width if width else "at least 1"
        raise input_error(
            path,
            f"embedding of length {bad['len'][0]} (expected {expected}) for chem_id "
            f"{_ids(bad['chem_id'])}" + _RECOMPUTE,
            column=EMBEDDING_COLUMN,
        )
    for flag, what in (("has_null", "null values"), ("non_finite", "NaN or infinite values")):
        bad = checks.filter(pl.col(flag))
        if bad.height:
            raise input_error(path, f"embedding contains {what} for chem_id "
                              f"{_ids(bad['chem_id'])}" + _RECOMPUTE, column=EMBEDDING_COLUMN)
    return width


def read_embeddings(path: str | Path) -> tuple[pl.DataFrame, int]:
    """Read and validate an embeddings Parquet.

    Returns ``(frame, n_rows_read)`` where ``frame`` has one row per chemical, sorted by
    ``chem_id``: ``chem_id`` (Int64) and :data:`EMBEDDING_COLUMN` (List(Float64), every vector
    of the same length: :func:`embedding_width`). Identical duplicate rows are dropped; anything
    else wrong raises :class:`RtprepError` naming the file, the column and the chem_ids
    concerned.
    """
    path = Path(path)
    schema = parquet_schema(path, "embeddings file not found", "cannot be read as Parquet")
    emb = _embedding_expr(path, schema)
    df = pl.read_parquet(path, columns=["chem_id", EMBEDDING_COLUMN]).select(
        pl.col("chem_id").cast(pl.Int64), emb
    )
    n_read = df.height
    n_null = df["chem_id"].null_count()
    if n_null:
        raise input_error(path, f"{n_null} row(s) have no chem_id", column="chem_id")
    _check_vectors(path, df)
    # Identical duplicate rows are harmless (a re-export); two different vectors are not.
    df = df.unique(maintain_order=False).sort("chem_id")
    dup = df.filter(pl.col("chem_id").is_duplicated())["chem_id"].unique(maintain_order=True)
    if dup.len():
        raise input_error(
            path,
            f"chem_id {_ids(dup)} has two different embeddings; keep one row per chem_id",
            column="chem_id",
        )
    return df, n_read


def embedding_width(frame: pl.DataFrame) -> int:
    """The length of the vectors of a frame :func:`read_embeddings` returned (0 if empty)."""
    return int(frame[EMBEDDING_COLUMN].list.len().max() or 0) if frame.height else 0


def embedding_matrix(frame: pl.DataFrame) -> np.ndarray:
    """The vectors as a float64 matrix, one row per chemical, in the frame's order."""
    width = embedding_width(frame)
    return np.asarray(frame[EMBEDDING_COLUMN].to_list(), dtype=np.float64).reshape(
        frame.height, width)
