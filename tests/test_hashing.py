"""The portable row hash: test vectors, three implementations agree, and DuckDB reproduces it
(and the cap's choice of rows) in plain SQL."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import polars as pl
import pytest

from rtprep.core.hashing import (
    GOLDEN,
    MASK64,
    float_bits,
    id_hash,
    row_hash_int,
    splitmix64,
    splitmix64_int,
    splitmix64_np,
    with_row_hash,
)
from rtprep.stages.cap import cap_species_compounds

# --- splitmix64 test vectors ------------------------------------------------------------------
# The published splitmix64 sequence from state 1234567: each step adds the golden gamma to the
# state and mixes it. `splitmix64_int(x)` is one step from state x (it adds the gamma itself).
SPLITMIX_SEED = 1234567
SPLITMIX_SEQUENCE = [
    6457827717110365317,
    3203168211198807973,
    9817491932198370423,
    4593380528125082431,
    16408922859458223821,
]

# row_hash_int(seed, sample_set_id, task_id, comp_id, apex_rt) on fixed identities; computed once
# with the pure-Python reference and cross-checked against numpy and polars below.
ROW_HASH_VECTORS = [
    ((0, 0, 0, 0, 0.0), 8695987549771912286),
    ((42, 1, 2, 3, 4.5), 13648826865742696789),
    ((42, 123456, 7890, 42, 3.25), 14927844524258556163),
    ((7, -1, -2, -3, -0.0), 12500367930156447763),
    ((7, -1, -2, -3, 0.0), 12500367930156447763),  # -0.0 and 0.0 are one retention time
    ((2**63 - 1, -(2**63), 0, 1, 12.0), 7559424434638820858),
    ((0, 5, 6, 7, 1e-300), 2966630700618628172),
]


def test_splitmix64_published_sequence() -> None:
    state = SPLITMIX_SEED
    out = []
    for _ in SPLITMIX_SEQUENCE:
        out.append(splitmix64_int(state))
        state = (state + GOLDEN) & MASK64
    assert out == SPLITMIX_SEQUENCE


def test_splitmix64_numpy_and_polars_match_the_vectors() -> None:
    states = [(SPLITMIX_SEED + k * GOLDEN) & MASK64 for k in range(len(SPLITMIX_SEQUENCE))]
    assert splitmix64_np(np.array(states, dtype=np.uint64)).tolist() == SPLITMIX_SEQUENCE
    got = pl.DataFrame({"s": pl.Series(states, dtype=pl.UInt64)}).select(splitmix64(pl.col("s")))
    assert got["s"].to_list() == SPLITMIX_SEQUENCE


def _numpy_row_hash(seed: int, df: pl.DataFrame) -> list[int]:
    """The row hash's chain (docs/contracts.md) written directly in numpy (a second, independent
    spelling)."""
    h = splitmix64_np(np.full(df.height, seed & MASK64, dtype=np.uint64))
    for c in ("sample_set_id", "task_id", "comp_id"):
        h = splitmix64_np(h ^ df[c].to_numpy().astype(np.int64).view(np.uint64))
    rt = df["apex_rt"].to_numpy().astype(np.float64) + 0.0  # -0.0 + 0.0 == +0.0
    return splitmix64_np(h ^ rt.view(np.uint64)).tolist()


def _vector_frame() -> tuple[pl.DataFrame, list[int], list[int]]:
    rows = [r for r, _ in ROW_HASH_VECTORS]
    df = pl.DataFrame(
        [r[1:] for r in rows],
        schema={"sample_set_id": pl.Int64, "task_id": pl.Int64, "comp_id": pl.Int64,
                "apex_rt": pl.Float64},
        orient="row",
    )
    return df, [r[0] for r in rows], [h for _, h in ROW_HASH_VECTORS]


def test_row_hash_vectors_pure_python() -> None:
    for (seed, *ident), expected in ROW_HASH_VECTORS:
        assert row_hash_int(seed, *ident) == expected


def test_row_hash_vectors_numpy_and_polars() -> None:
    df, seeds, expected = _vector_frame()
    for seed in sorted(set(seeds)):
        idx = [i for i, s in enumerate(seeds) if s == seed]
        sub = df[idx]
        want = [expected[i] for i in idx]
        assert _numpy_row_hash(seed, sub) == want
        assert with_row_hash(sub.lazy(), seed).collect()["_row_hash"].to_list() == want


def _random_identities(n: int, rng: np.random.Generator) -> pl.DataFrame:
    big = np.iinfo(np.int64)
    ids = np.concatenate([
        rng.integers(big.min, big.max, n // 2, endpoint=True),  # anything, incl. negative
        rng.integers(-5, 5, n - n // 2),  # small, with 0 and negatives
    ])
    rts = np.concatenate([
        rng.uniform(0, 30, n - 6),
        [0.0, -0.0, -1.5, 1e308, 5e-324, -2.2250738585072014e-308],  # zeros, huge, subnormal
    ])
    return pl.DataFrame({
        "sample_set_id": rng.permutation(ids),
        "task_id": rng.permutation(ids),
        "comp_id": rng.permutation(ids),
        "apex_rt": rng.permutation(rts),
    })


@pytest.mark.parametrize("seed", [0, 42, -1, 2**64 - 1])
def test_row_hash_polars_numpy_python_agree_on_random_rows(seed: int) -> None:
    df = _random_identities(300, np.random.default_rng(abs(seed) % 1000))
    py = [row_hash_int(seed, *r) for r in df.iter_rows()]
    assert _numpy_row_hash(seed, df) == py
    assert with_row_hash(df.lazy(), seed).collect()["_row_hash"].to_list() == py


def test_float_bits_folds_negative_zero() -> None:
    assert float_bits(-0.0) == float_bits(0.0) == 0
    assert float_bits(1.0) == 0x3FF0000000000000


def test_id_hash_matches_pure_python() -> None:
    ids = [-3, 0, 1, 2, 10**12, -(2**63)]
    got = pl.DataFrame({"sample_set_id": ids}).select(id_hash("sample_set_id", 7).alias("h"))
    want = [splitmix64_int(splitmix64_int(7) ^ (i & MASK64)) for i in ids]
    assert got["h"].to_list() == want


# --- DuckDB: the same hash and the same cap in SQL --------------------------------------------
TWO64 = 2**64

DUCKDB_MACROS = f"""
CREATE MACRO u64(x) AS (((x::HUGEINT % {TWO64}::HUGEINT) + {TWO64}::HUGEINT) % {TWO64}::HUGEINT)
    ::UBIGINT;
CREATE MACRO addmod(a, b) AS ((a::UHUGEINT + b::UHUGEINT) % {TWO64}::UHUGEINT)::UBIGINT;
CREATE MACRO mulmod(a, b) AS ((a::UHUGEINT * b::UHUGEINT) % {TWO64}::UHUGEINT)::UBIGINT;
-- IEEE-754 bits of a normal double (or zero, either sign, as +0.0), from its value alone
CREATE MACRO exp2(x) AS floor(log2(abs(x)))::INTEGER
    - (pow(2.0, floor(log2(abs(x)))) > abs(x))::INTEGER
    + (pow(2.0, floor(log2(abs(x))) + 1) <= abs(x))::INTEGER;
CREATE MACRO f64bits(x) AS CASE WHEN x = 0 THEN 0::UBIGINT ELSE (
    (CASE WHEN x < 0 THEN 9223372036854775808 ELSE 0 END)::UHUGEINT
    + (exp2(x) + 1023)::UHUGEINT * 4503599627370496::UHUGEINT
    + ((abs(x) / pow(2.0, exp2(x)) - 1.0) * 4503599627370496.0)::UHUGEINT)::UBIGINT END;
"""


def _splitmix_steps(inner: str, word: str | None) -> str:
    """SQL for one splitmix64 round on column h (xor-ing in ``word`` first), one SELECT per step
    so that h is never repeated inside an expression."""
    first = f"xor(h, {word})" if word else "h"
    steps = [
        f"addmod({first}, {GOLDEN}::UBIGINT)",
        f"mulmod(xor(h, h >> 30), {0xBF58476D1CE4E5B9}::UBIGINT)",
        f"mulmod(xor(h, h >> 27), {0x94D049BB133111EB}::UBIGINT)",
        "xor(h, h >> 31)",
    ]
    q = inner
    for s in steps:
        q = f"SELECT * REPLACE ({s} AS h) FROM ({q})"
    return q


def duckdb_row_hash_sql(table: str, seed: int) -> str:
    """A query adding column ``h`` (UBIGINT), the row hash of each row of ``table``."""
    q = f"SELECT *, u64({seed}) AS h FROM {table}"
    q = _splitmix_steps(q, None)
    for word in ("u64(sample_set_id)", "u64(task_id)", "u64(comp_id)", "f64bits(apex_rt)"):
        q = _splitmix_steps(q, word)
    return q


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute(DUCKDB_MACROS)
    yield c
    c.close()


def test_duckdb_float_bits(con: duckdb.DuckDBPyConnection) -> None:
    xs = [0.0, -0.0, 1.0, -1.5, 3.25, 0.1, 17.123456789, 1e-300, 1e300, 2.0**-1022]
    got = [con.execute("SELECT f64bits(?::DOUBLE)", [x]).fetchone()[0] for x in xs]
    assert got == [float_bits(x) for x in xs]


def test_duckdb_reproduces_the_vectors(con: duckdb.DuckDBPyConnection) -> None:
    df, seeds, expected = _vector_frame()
    for seed in sorted(set(seeds)):
        idx = [i for i, s in enumerate(seeds) if s == seed]
        sub = df[idx].with_row_index("i")  # noqa: F841 (read by DuckDB)
        got = con.execute(f"SELECT h FROM ({duckdb_row_hash_sql('sub', seed)}) ORDER BY i")
        assert [r[0] for r in got.fetchall()] == [expected[i] for i in idx]


def test_duckdb_hash_agrees_on_random_rows(con: duckdb.DuckDBPyConnection) -> None:
    df = _random_identities(200, np.random.default_rng(5))
    # f64bits covers normal numbers and zeros: leave the subnormals to the other tests.
    tiny = df["apex_rt"].abs() < 2.2250738585072014e-308
    sub = df.filter(~tiny | (pl.col("apex_rt") == 0)).with_row_index("i")
    got = con.execute(f"SELECT h FROM ({duckdb_row_hash_sql('sub', 99)}) ORDER BY i").fetchall()
    assert [r[0] for r in got] == [row_hash_int(99, *r[1:]) for r in sub.iter_rows()]


def _peaks(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "lib_id": np.full(n, 209),
        "sample_set_id": rng.integers(-3, 40, n),
        "task_id": rng.integers(0, 500, n),
        "comp_id": rng.integers(1, 15, n),
        "species_matrix_type": rng.choice(["plasma", "urine", "tissue"], n),
        "apex_rt": np.round(rng.uniform(0.5, 12.0, n), 4),
        "IS1": rng.normal(5, 1, n),
    })


@pytest.mark.parametrize(("cap", "seed"), [(1, 1), (3, 42), (7, 2**40)])
def test_duckdb_qualify_picks_the_same_rows(
    con: duckdb.DuckDBPyConnection, tmp_path, cap: int, seed: int
) -> None:
    df = _peaks(600, seed % 97)
    assert df.select("sample_set_id", "task_id", "comp_id", "apex_rt").is_unique().all()
    src = tmp_path / "lib.parquet"
    df.write_parquet(src)
    out = tmp_path / f"cap{cap}.parquet"
    cap_species_compounds(src, out, cap_per_pair=cap, seed=seed)
    ours = pl.read_parquet(out)

    peaks = pl.read_parquet(src)  # noqa: F841 (read by DuckDB)
    sql = (
        f"SELECT * EXCLUDE (h) FROM ({duckdb_row_hash_sql('peaks', seed)}) "
        "QUALIFY row_number() OVER (PARTITION BY species_matrix_type, comp_id "
        f"ORDER BY h, sample_set_id, task_id, comp_id, apex_rt) <= {cap} "
        "ORDER BY sample_set_id, task_id, comp_id, apex_rt"
    )
    theirs = con.sql(sql).pl()
    assert theirs.height == ours.height
    assert theirs.equals(ours)
    assert not math.isnan(float(ours["apex_rt"].sum()))
