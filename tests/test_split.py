"""Stage split: split a merged export by lib, with the RT validity filter."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from rtprep.core.artifacts import read_meta
from rtprep.core.errors import RtprepError
from rtprep.stages.split import DROP_REASONS, libs_in_merged, split_lib

INF = math.inf
NAN = math.nan

# lib 208's apex_rt values: 4 invalid (null, NaN, +inf, negative), -inf is invalid too
RT_208 = [1.0, None, NAN, INF, -1.0, 0.0, 5.0, 30.0, -INF, 2.5]


def _merged_frame() -> pl.DataFrame:
    n208 = len(RT_208)
    return pl.DataFrame({
        "lib_id": [208] * n208 + [209] * 3 + [305] * 2,
        "sample_set_id": list(range(n208 + 5)),
        "task_id": list(range(100, 100 + n208 + 5)),
        "comp_id": [1] * (n208 + 5),
        "species_matrix_type": ["plasma"] * (n208 + 5),
        "apex_rt": [*RT_208, 1.0, 2.0, 3.0, 4.0, 5.0],
        # IS2 is all null for lib 208: the column must stay (schema stable)
        "IS2": [None] * n208 + [0.1, 0.2, 0.3, 0.4, 0.5],
        "ES_a": [float(i) for i in range(n208 + 5)],
    }, schema_overrides={"lib_id": pl.Int64, "apex_rt": pl.Float64, "IS2": pl.Float64})


def _write_by_lib(df: pl.DataFrame, path: Path) -> None:
    """As merge writes it: sorted by lib_id, one lib per row group."""
    table = df.to_arrow()
    with pq.ParquetWriter(path, table.schema) as w:
        for lib in df["lib_id"].unique(maintain_order=True).to_list():
            w.write_table(df.filter(pl.col("lib_id") == lib).to_arrow())


@pytest.fixture
def merged(tmp_path: Path) -> Path:
    path = tmp_path / "merged_training_abc_.parquet"
    _write_by_lib(_merged_frame(), path)
    return path


def test_split_one_lib_with_rt_filters(merged: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged_training_abc_lib208.parquet"
    acc = split_lib(merged, 208, out)
    got = pl.read_parquet(out)
    assert got.columns == _merged_frame().columns
    assert got.schema == _merged_frame().schema
    assert got["lib_id"].unique().to_list() == [208]
    assert got["apex_rt"].to_list() == [1.0, 0.0, 5.0, 30.0, 2.5]  # order kept
    assert got["IS2"].null_count() == got.height
    assert acc.rows_in == 10
    assert list(acc.drops) == list(DROP_REASONS)
    assert acc.drops == {"apex_rt_invalid": 5, "apex_rt_out_of_range": 0}
    assert acc.rows_out == 5
    meta = read_meta(out)
    assert (meta["rows_in"], meta["rows_out"]) == (10, 5)
    assert meta["config"] == {"lib": 208, "rt_range": None}


def test_split_rt_range_inclusive(merged: Path, tmp_path: Path) -> None:
    out = tmp_path / "lib208.parquet"
    acc = split_lib(merged, 208, out, rt_range=(1.0, 5.0))
    assert pl.read_parquet(out)["apex_rt"].to_list() == [1.0, 5.0, 2.5]
    assert acc.drops == {"apex_rt_invalid": 5, "apex_rt_out_of_range": 2}
    assert acc.rows_out == 3
    assert read_meta(out)["drops"] == {"apex_rt_invalid": 5, "apex_rt_out_of_range": 2}


def test_split_other_libs(merged: Path, tmp_path: Path) -> None:
    acc = split_lib(merged, 305, tmp_path / "lib305.parquet", rt_range=(0, 4.5))
    got = pl.read_parquet(tmp_path / "lib305.parquet")
    assert got["sample_set_id"].to_list() == [13]
    assert acc.drops == {"apex_rt_invalid": 0, "apex_rt_out_of_range": 1}


def test_split_everything_dropped_still_writes_schema(merged: Path, tmp_path: Path) -> None:
    acc = split_lib(merged, 209, tmp_path / "lib209.parquet", rt_range=(10, 20))
    got = pl.read_parquet(tmp_path / "lib209.parquet")
    assert got.height == 0 and got.schema == _merged_frame().schema
    assert acc.rows_out == 0


def test_unknown_lib_lists_the_libs_held(merged: Path, tmp_path: Path) -> None:
    with pytest.raises(RtprepError, match=r"no rows of lib 999.*208, 209, 305"):
        split_lib(merged, 999, tmp_path / "lib999.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [merged.name]


@pytest.mark.parametrize("rt_range", [(5.0, 1.0), (NAN, 2.0), ("a", "b")])
def test_bad_rt_range(merged: Path, tmp_path: Path, rt_range: tuple) -> None:
    with pytest.raises(RtprepError, match="rt_range"):
        split_lib(merged, 208, tmp_path / "x.parquet", rt_range=rt_range)


def test_bad_merged_inputs(tmp_path: Path) -> None:
    with pytest.raises(RtprepError, match="not found"):
        split_lib(tmp_path / "missing.parquet", 208, tmp_path / "x.parquet")
    notpq = tmp_path / "bad.parquet"
    notpq.write_text("hello")
    with pytest.raises(RtprepError, match=r"bad\.parquet.*not a readable Parquet"):
        split_lib(notpq, 208, tmp_path / "x.parquet")
    no_rt = tmp_path / "nort.parquet"
    pl.DataFrame({"lib_id": [208]}).write_parquet(no_rt)
    with pytest.raises(RtprepError, match="apex_rt"):
        split_lib(no_rt, 208, tmp_path / "x.parquet")
    txt_rt = tmp_path / "txtrt.parquet"
    pl.DataFrame({"lib_id": [208], "apex_rt": ["1.0"]}).write_parquet(txt_rt)
    with pytest.raises(RtprepError, match=r"apex_rt.*number"):
        split_lib(txt_rt, 208, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_libs_in_merged_from_statistics_and_by_scan(merged: Path, tmp_path: Path) -> None:
    assert libs_in_merged(merged) == [208, 209, 305]
    # row groups that mix libs (and no statistics): the column is read instead
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(_merged_frame().to_arrow(), mixed, row_group_size=4, write_statistics=False)
    assert libs_in_merged(mixed) == [208, 209, 305]
    one_group = tmp_path / "one.parquet"
    _merged_frame().sample(fraction=1.0, shuffle=True, seed=1).write_parquet(one_group)
    assert libs_in_merged(one_group) == [208, 209, 305]
    empty = tmp_path / "empty.parquet"
    _merged_frame().clear().write_parquet(empty)
    assert libs_in_merged(empty) == []
    with pytest.raises(RtprepError, match="lib_id"):
        nolib = tmp_path / "nolib.parquet"
        pl.DataFrame({"x": [1]}).write_parquet(nolib)
        libs_in_merged(nolib)


def test_split_prunes_other_libs_row_groups(merged: Path, tmp_path: Path) -> None:
    # Split must not depend on row-group layout for correctness either.
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(_merged_frame().to_arrow(), mixed, row_group_size=3)
    split_lib(mixed, 208, tmp_path / "a.parquet")
    split_lib(merged, 208, tmp_path / "b.parquet")
    assert pl.read_parquet(tmp_path / "a.parquet").equals(pl.read_parquet(tmp_path / "b.parquet"))


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_eager_reference(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    rt = rng.uniform(-1, 12, n)
    rt[rng.random(n) < 0.02] = np.nan
    rt[rng.random(n) < 0.01] = np.inf
    df = pl.DataFrame({
        "lib_id": np.sort(rng.choice([208, 209, 402], n)),
        "comp_id": rng.integers(0, 50, n),
        "apex_rt": rt,
        "IS2": rng.normal(size=n),
    }).with_columns(
        pl.when(pl.Series(rng.random(n) < 0.02)).then(None).otherwise(pl.col("apex_rt"))
        .alias("apex_rt")
    )
    path = tmp_path / "m.parquet"
    pq.write_table(df.to_arrow(), path, row_group_size=700)
    for lib in (208, 402):
        out = tmp_path / f"lib{lib}.parquet"
        acc = split_lib(path, lib, out, rt_range=(0.5, 10.0))
        ref = df.filter(pl.col("lib_id") == lib)
        valid = ref.filter(pl.col("apex_rt").is_not_null() & pl.col("apex_rt").is_finite()
                           & (pl.col("apex_rt") >= 0))
        kept = valid.filter((pl.col("apex_rt") >= 0.5) & (pl.col("apex_rt") <= 10.0))
        assert pl.read_parquet(out).equals(kept)
        assert acc.rows_in == ref.height
        assert acc.drops == {"apex_rt_invalid": ref.height - valid.height,
                             "apex_rt_out_of_range": valid.height - kept.height}
