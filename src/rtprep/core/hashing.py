"""The portable row hash that defines every sample rtprep draws.

A peak's identity is ``(sample_set_id, task_id, comp_id, apex_rt)`` after schema normalisation:
three Int64 ids and a Float64 retention time. Each part is read as an unsigned 64-bit word (ids in
two's complement, ``apex_rt`` as its IEEE-754 bits with ``-0.0`` folded onto ``0.0``), and the hash
of a row under seed ``s`` is::

    h = splitmix64(s)
    for w in (sample_set_id, task_id, comp_id, bits(apex_rt)):
        h = splitmix64(h XOR w)

with Steele/Vigna's splitmix64 finaliser, all arithmetic modulo 2**64::

    z = x + 0x9E3779B97F4A7C15
    z = (z XOR (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z XOR (z >> 27)) * 0x94D049BB133111EB
    return z XOR (z >> 31)

It is written here three times: in polars (:func:`with_row_hash`, vectorised and streaming-safe;
what the stages use), in numpy (a reference) and in pure Python (the test vectors). Any engine
with 64-bit integers can reproduce it (the tests do it in DuckDB). ``Expr.hash`` is deliberately
not used: polars does not keep it stable across versions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB

#: The columns of a peak's identity, in hashing order.
IDENTITY_COLUMNS: tuple[str, ...] = ("sample_set_id", "task_id", "comp_id", "apex_rt")


# --- pure Python reference -------------------------------------------------------------------
def splitmix64_int(x: int) -> int:
    """splitmix64 of one unsigned 64-bit integer (pure Python; the definition)."""
    z = (x + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * MUL1) & MASK64
    z = ((z ^ (z >> 27)) * MUL2) & MASK64
    return z ^ (z >> 31)


def float_bits(x: float) -> int:
    """IEEE-754 bits of a float64 as an unsigned int, with -0.0 read as 0.0."""
    return int(np.array([x + 0.0], dtype=np.float64).view(np.uint64)[0])


def row_hash_int(seed: int, sample_set_id: int, task_id: int, comp_id: int, apex_rt: float) -> int:
    """The hash of one peak's identity under ``seed`` (pure Python reference)."""
    h = splitmix64_int(seed & MASK64)
    for w in (sample_set_id & MASK64, task_id & MASK64, comp_id & MASK64, float_bits(apex_rt)):
        h = splitmix64_int(h ^ w)
    return h


# --- numpy ------------------------------------------------------------------------------------
def splitmix64_np(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 over a uint64 array."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MUL1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MUL2)
        return z ^ (z >> np.uint64(31))


# --- polars -----------------------------------------------------------------------------------
def _u64(value: int) -> pl.Expr:
    return pl.lit(value & MASK64, dtype=pl.UInt64)


def _shr(e: pl.Expr, k: int) -> pl.Expr:
    # Logical right shift of a UInt64: floor division by a power of two.
    return e // _u64(1 << k)


def splitmix64(e: pl.Expr) -> pl.Expr:
    """splitmix64 of a UInt64 expression (polars UInt64 arithmetic wraps modulo 2**64)."""
    z = e + _u64(GOLDEN)
    z = (z ^ _shr(z, 30)) * _u64(MUL1)
    z = (z ^ _shr(z, 27)) * _u64(MUL2)
    return z ^ _shr(z, 31)


def as_word(e: pl.Expr, *, is_float: bool = False) -> pl.Expr:
    """An identity part as a UInt64 word: Int64 in two's complement, Float64 as its bits."""
    if is_float:
        f = e.cast(pl.Float64)
        # Fold -0.0 onto 0.0 (an optimiser may drop a plain "+ 0.0").
        return pl.when(f == 0.0).then(pl.lit(0.0)).otherwise(f).reinterpret(dtype=pl.UInt64)
    return e.cast(pl.Int64).reinterpret(dtype=pl.UInt64)


def hash_words(words: Sequence[pl.Expr], seed: int) -> pl.Expr:
    """Chain splitmix64 over UInt64 words, starting from the seed, as one expression.

    Only for one or two words (see :func:`with_row_hash` for why); :func:`id_hash` uses it."""
    h = splitmix64(_u64(seed))
    for w in words:
        h = splitmix64(h ^ w)
    return h


def with_row_hash(
    lf: pl.LazyFrame,
    seed: int,
    columns: Sequence[str] = IDENTITY_COLUMNS,
    name: str = "_row_hash",
) -> pl.LazyFrame:
    """Add column ``name``: the hash of each row's identity under ``seed`` (UInt64).

    ``columns`` are the identity columns; ``apex_rt`` is hashed by its float bits. Computed one
    ``with_columns`` per step: written as a single expression, every xor-shift repeats its input,
    so five chained splitmix64 rounds nest 8**5 copies of the leaves and polars spends seconds
    planning each query. Step by step the plan stays linear and the arithmetic is identical.
    """
    h = pl.col(name)
    lf = lf.with_columns(_u64(splitmix64_int(seed & MASK64)).alias(name))
    for c in columns:
        word = as_word(pl.col(c), is_float=(c == "apex_rt"))
        lf = lf.with_columns(((h ^ word) + _u64(GOLDEN)).alias(name))
        lf = lf.with_columns(((h ^ _shr(h, 30)) * _u64(MUL1)).alias(name))
        lf = lf.with_columns(((h ^ _shr(h, 27)) * _u64(MUL2)).alias(name))
        lf = lf.with_columns((h ^ _shr(h, 31)).alias(name))
    return lf


def id_hash(column: str, seed: int) -> pl.Expr:
    """Hash of a single integer id column under ``seed`` (used for fold assignment)."""
    return hash_words([as_word(pl.col(column))], seed)
