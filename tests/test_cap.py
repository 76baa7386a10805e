"""Stage 4: the capped sampler per (species_matrix_type, comp_id) and sample-set folds."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtprep.core.artifacts import read_meta
from rtprep.core.errors import RtprepError
from rtprep.core.hashing import MASK64, row_hash_int, splitmix64_int
from rtprep.stages import cap as sample_mod
from rtprep.stages.cap import assign_folds, cap_species_compounds

IDENT = ["sample_set_id", "task_id", "comp_id", "apex_rt"]
PAIR = ["species_matrix_type", "comp_id"]


def _frame(rows: list[tuple]) -> pl.DataFrame:
    """Peak rows in the split stage's schema from (ssid, task, comp, smt, rt[, IS1])."""
    rows = [r if len(r) == 6 else (*r, float(i)) for i, r in enumerate(rows)]
    return pl.DataFrame(
        [(209, r[0], r[1], 100 + r[0], "Sample", "Complete", r[2], r[3], r[4], r[5]) for r in rows],
        schema={"lib_id": pl.Int64, "sample_set_id": pl.Int64, "task_id": pl.Int64,
                "worksheet_id": pl.Int64, "sample_type": pl.String, "cpd_status": pl.String,
                "comp_id": pl.Int64, "species_matrix_type": pl.String, "apex_rt": pl.Float64,
                "IS1": pl.Float64},
        orient="row",
    )


HAND = _frame([
    # ssid, task, comp, species_matrix_type, apex_rt      row_hash(seed=42)
    (1, 11, 10, "plasma", 2.5),   # 5184589005959295000
    (1, 12, 10, "plasma", 2.6),   # 3140906226170411430  kept (2nd)
    (2, 21, 10, "plasma", 2.4),   # 15721324027561696096
    (3, 31, 10, "plasma", 2.55),  # 4320899083868255590   kept at cap 3
    (4, 41, 10, "plasma", 2.45),  # 2528096274637021646  kept (1st)
    (1, 11, 10, "urine", 3.1),    # 7643603117330912616  kept (2nd)
    (2, 22, 10, "urine", 3.0),    # 15713260644076911307  kept at cap 3
    (3, 32, 10, "urine", 3.2),    # 6652931740188921202  kept (1st)
    (4, 42, 20, "plasma", 7.75),  # 8281806474884603792  kept (a pair of one row)
])


def _write(df: pl.DataFrame, path: Path) -> Path:
    df.write_parquet(path)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- exact output on a hand-made frame --------------------------------------------------------
def test_hand_made_frame_cap2(tmp_path: Path) -> None:
    src = _write(HAND, tmp_path / "merged_training_ab12_lib209.parquet")
    out = tmp_path / "merged_training_ab12_lib209_cap2.parquet"
    acc = cap_species_compounds(src, out, cap_per_pair=2, seed=42)
    got = pl.read_parquet(out)
    # Smallest two hashes per pair, then sorted by identity.
    assert got["task_id"].to_list() == [11, 12, 32, 41, 42]
    assert got["species_matrix_type"].to_list() == ["urine", "plasma", "urine", "plasma", "plasma"]
    assert got.columns == HAND.columns and got.schema == HAND.schema  # no hash column
    assert got.equals(HAND.filter(
        pl.struct("task_id", "species_matrix_type").is_in(
            got.select(pl.struct("task_id", "species_matrix_type")).to_series().implode()
        )
    ).sort(IDENT))
    assert (acc.rows_in, acc.drops, acc.rows_out) == (9, {"over_cap": 4}, 5)
    meta = read_meta(out)
    assert meta["stage"] == "cap"
    assert meta["config"]["cap_per_pair"] == 2 and meta["seeds"]["cap_seed"] == 42
    assert (meta["rows_in"], meta["rows_out"], meta["drops"]) == (9, 5, {"over_cap": 4})
    assert meta["inputs"][0]["path"].endswith("_lib209.parquet")
    assert _leftovers(tmp_path) == []


def test_hand_made_frame_cap3_and_a_large_cap(tmp_path: Path) -> None:
    src = _write(HAND, tmp_path / "lib.parquet")
    cap_species_compounds(src, tmp_path / "cap3.parquet", cap_per_pair=3, seed=42)
    assert pl.read_parquet(tmp_path / "cap3.parquet")["task_id"].to_list() == [
        11, 12, 22, 31, 32, 41, 42]
    acc = cap_species_compounds(src, tmp_path / "cap99.parquet", cap_per_pair=99, seed=42)
    assert acc.drops == {"over_cap": 0}
    assert pl.read_parquet(tmp_path / "cap99.parquet").equals(HAND.sort(IDENT))


def test_hash_ties_broken_by_identity_then_other_columns(tmp_path: Path) -> None:
    # One identity three times (equal hashes), differing only in IS1, plus two other peaks.
    # Seed 0: hash(5, 50, 7, 1.25) = 11119337929866330646 < hash(6, 61, ...) = 11190422377029961781
    # < hash(6, 60, ...) = 12525323993496085783.
    rows = [(5, 50, 7, "plasma", 1.25, v) for v in (3.0, -1.0, 2.0)]
    rows += [(6, 60, 7, "plasma", 1.5, 0.0), (6, 61, 7, "plasma", 1.5, 0.0)]
    df = _frame(rows)
    cases = ((2, [50, 50], [-1.0, 2.0]), (4, [50, 50, 50, 61], [-1.0, 2.0, 3.0, 0.0]))
    for cap, tasks, is1 in cases:
        outs = []
        for i, perm in enumerate(([0, 1, 2, 3, 4], [4, 2, 3, 0, 1], [3, 0, 4, 1, 2])):
            src = _write(df[perm], tmp_path / f"in{i}.parquet")
            out = tmp_path / f"cap{cap}_{i}.parquet"
            cap_species_compounds(src, out, cap_per_pair=cap, seed=0)
            outs.append(out.read_bytes())
        assert outs[0] == outs[1] == outs[2]
        got = pl.read_parquet(tmp_path / f"cap{cap}_0.parquet")
        assert got["task_id"].to_list() == tasks and got["IS1"].to_list() == is1


# --- properties (hypothesis) ------------------------------------------------------------------
SMT = ["plasma", "urine", "tissue"]

peak_rows = st.lists(
    st.tuples(
        st.integers(-3, 6),  # sample_set_id (negative ids too)
        st.integers(0, 5),  # task_id
        st.integers(1, 4),  # comp_id
        st.sampled_from(SMT),
        st.sampled_from([0.5, 1.25, 2.0, 7.5, 0.0]),  # apex_rt: repeats make identity ties
        st.sampled_from([0.0, 1.0, -2.5]),  # IS1
    ),
    min_size=0,
    max_size=50,
)

PROPS = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _reference(df: pl.DataFrame, cap: int, seed: int) -> pl.DataFrame:
    """The definition, row by row in Python: per pair the first `cap` by (hash, identity, rest)."""
    rows = sorted(
        df.iter_rows(named=True),
        key=lambda r: (
            r["species_matrix_type"], r["comp_id"],
            row_hash_int(seed, r["sample_set_id"], r["task_id"], r["comp_id"], r["apex_rt"]),
            tuple(r[c] for c in IDENT), tuple(r[c] for c in df.columns if c not in IDENT),
        ),
    )
    kept, seen = [], {}
    for r in rows:
        k = (r["species_matrix_type"], r["comp_id"])
        seen[k] = seen.get(k, 0) + 1
        if seen[k] <= cap:
            kept.append(r)
    return pl.DataFrame(kept, schema=df.schema).sort([*IDENT, *(c for c in df.columns
                                                            if c not in IDENT)])


@PROPS
@given(rows=peak_rows, cap=st.integers(1, 5), seed=st.integers(0, 2**64 - 1))
def test_exact_counts_all_pairs_and_the_definition(rows: list[tuple], cap: int, seed: int) -> None:
    df = _frame(rows)
    with tempfile.TemporaryDirectory() as d:
        src = _write(df, Path(d) / "lib.parquet")
        out = Path(d) / "cap.parquet"
        acc = cap_species_compounds(src, out, cap_per_pair=cap, seed=seed)
        got = pl.read_parquet(out)
    n_in = df.group_by(PAIR).len()
    n_out = got.group_by(PAIR).len()
    both = n_in.join(n_out, on=PAIR, how="left", suffix="_out")
    assert both.height == n_in.height == n_out.height  # every pair kept, no new pair
    assert (both["len_out"] == both["len"].clip(upper_bound=cap)).all()  # min(n, cap)
    assert got.equals(_reference(df, cap, seed))
    assert (acc.rows_in, acc.rows_out, acc.drops["over_cap"]) == (
        df.height, got.height, df.height - got.height)


@PROPS
@given(rows=peak_rows, caps=st.tuples(st.integers(1, 4), st.integers(0, 3)),
       seed=st.integers(0, 1000))
def test_nested_across_caps(rows: list[tuple], caps: tuple[int, int], seed: int) -> None:
    small, big = caps[0], caps[0] + caps[1]
    with tempfile.TemporaryDirectory() as d:
        src = _write(_frame(rows), Path(d) / "lib.parquet")
        cap_species_compounds(src, Path(d) / "a.parquet", cap_per_pair=small, seed=seed)
        cap_species_compounds(src, Path(d) / "b.parquet", cap_per_pair=big, seed=seed)
        a = pl.read_parquet(Path(d) / "a.parquet")
        b = pl.read_parquet(Path(d) / "b.parquet")
    # Multiset inclusion: every row of cap `small` is among the rows of cap `big`.
    ca = a.group_by(a.columns).len()
    cb = b.group_by(b.columns).len()
    j = ca.join(cb, on=a.columns, how="left", suffix="_b", nulls_equal=True)
    assert (j["len_b"].fill_null(0) >= j["len"]).all()


@PROPS
@given(rows=peak_rows, cap=st.integers(1, 4), seed=st.integers(0, 2**32),
       order_seed=st.integers(0, 2**16), n_shards=st.integers(1, 4))
def test_invariant_to_row_order_and_shards_byte_identical(
    rows: list[tuple], cap: int, seed: int, order_seed: int, n_shards: int
) -> None:
    df = _frame(rows)
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=order_seed)
    with tempfile.TemporaryDirectory() as d:
        dd = Path(d)
        src = _write(df, dd / "lib.parquet")
        cap_species_compounds(src, dd / "one.parquet", cap_per_pair=cap, seed=seed)
        cap_species_compounds(src, dd / "two.parquet", cap_per_pair=cap, seed=seed)
        bounds = np.linspace(0, shuffled.height, n_shards + 1).astype(int)
        shards = [_write(shuffled[int(lo):int(hi)], dd / f"shard{i}.parquet")
                  for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]
        cap_species_compounds(shards, dd / "sharded.parquet", cap_per_pair=cap, seed=seed)
        one = (dd / "one.parquet").read_bytes()
        assert (dd / "two.parquet").read_bytes() == one
        assert (dd / "sharded.parquet").read_bytes() == one


def test_fallback_rescan_when_candidates_fall_short(tmp_path: Path, monkeypatch) -> None:
    # Force a hopelessly small candidate margin: the rescan path must still give exact results.
    df = _frame([(s, t, c, smt, 1.0 + t / 10) for s in range(3) for t in range(8)
                 for c in (1, 2) for smt in ("plasma", "urine")])
    src = _write(df, tmp_path / "lib.parquet")
    cap_species_compounds(src, tmp_path / "normal.parquet", cap_per_pair=3, seed=5)
    monkeypatch.setattr(sample_mod, "_margin", lambda cap: 0.01)
    cap_species_compounds(src, tmp_path / "forced.parquet", cap_per_pair=3, seed=5)
    assert (tmp_path / "forced.parquet").read_bytes() == (tmp_path / "normal.parquet").read_bytes()
    assert pl.read_parquet(tmp_path / "forced.parquet").equals(_reference(df, 3, 5))


def test_pairs_short_of_the_cap_are_rescanned_with_the_default_margin(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 400 pairs of 100 rows, cap 5: each pair draws about λ = 11.5 of its rows, and ~1% of the
    # pairs draw fewer than 5 (the margin is tight on purpose): those are rescanned in full.
    df = _frame([(s, t, c, smt, 1.0 + t / 7 + s / 100) for s in range(25) for t in range(4)
                 for c in range(200) for smt in ("plasma", "urine")])
    src = _write(df, tmp_path / "lib.parquet")
    with caplog.at_level("INFO", logger="rtprep.stages.cap"):
        cap_species_compounds(src, tmp_path / "out.parquet", cap_per_pair=5, seed=3)
    assert "drew too few candidates; rescanning them" in caplog.text
    assert pl.read_parquet(tmp_path / "out.parquet").equals(_reference(df, 5, 3))


def test_seed_changes_the_sample(tmp_path: Path) -> None:
    df = _frame([(s, t, 1, "plasma", 1.0 + t) for s in range(5) for t in range(10)])
    src = _write(df, tmp_path / "lib.parquet")
    picks = []
    for seed in (1, 2):
        cap_species_compounds(src, tmp_path / f"s{seed}.parquet", cap_per_pair=5, seed=seed)
        picks.append(pl.read_parquet(tmp_path / f"s{seed}.parquet").select(IDENT).rows())
    assert len(picks[0]) == len(picks[1]) == 5 and picks[0] != picks[1]


# --- folds ------------------------------------------------------------------------------------
def _lib_with_sample_sets(n_sets: int, path: Path) -> pl.DataFrame:
    df = _frame([(s, 10 * s + t, c, smt, 1.0 + t + c / 10)
                 for s in range(100, 100 + n_sets) for t in range(2) for c in (1, 2, 3)
                 for smt in ("plasma", "urine")])
    _write(df, path)
    return df


def _fold_hash(ssid: int, seed: int) -> int:
    return splitmix64_int(splitmix64_int(seed & MASK64) ^ (ssid & MASK64))


@pytest.mark.parametrize(("fraction", "n_test"), [(0.0, 0), (0.2, 2), (0.25, 3), (0.3, 3),
                                                  (0.5, 5), (0.99, 10)])
def test_folds_fraction_and_whole_sample_sets(tmp_path: Path, fraction: float,
                                              n_test: int) -> None:
    _lib_with_sample_sets(10, tmp_path / "lib.parquet")
    folds_csv = tmp_path / "merged_training_ab12_lib209_folds.csv"
    acc = assign_folds(tmp_path / "lib.parquet", folds_csv, test_fraction=fraction, fold_seed=3)
    folds = pl.read_csv(folds_csv)
    assert folds.columns == ["sample_set_id", "fold"]
    assert folds["sample_set_id"].to_list() == list(range(100, 110))  # one row per set, sorted
    assert (folds["fold"] == "test").sum() == n_test
    expected_test = sorted(sorted(range(100, 110), key=lambda s: (_fold_hash(s, 3), s))[:n_test])
    assert folds.filter(pl.col("fold") == "test")["sample_set_id"].to_list() == expected_test
    assert acc.extra["test"] == n_test and acc.extra["train"] == 10 - n_test
    meta = read_meta(folds_csv)
    assert meta["seeds"] == {"fold_seed": 3} and meta["config"]["test_fraction"] == fraction
    assert meta["extra"]["test"] == n_test


def test_folds_deterministic_and_seeded(tmp_path: Path) -> None:
    _lib_with_sample_sets(30, tmp_path / "lib.parquet")
    for name, seed in (("a.csv", 1), ("b.csv", 1), ("c.csv", 2)):
        assign_folds(tmp_path / "lib.parquet", tmp_path / name, test_fraction=0.3, fold_seed=seed)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()


def test_train_cap_excludes_test_sample_sets(tmp_path: Path) -> None:
    df = _lib_with_sample_sets(10, tmp_path / "lib.parquet")
    folds_csv = tmp_path / "folds.csv"
    assign_folds(tmp_path / "lib.parquet", folds_csv, test_fraction=0.3, fold_seed=7)
    folds = pl.read_csv(folds_csv)
    test_ids = folds.filter(pl.col("fold") == "test")["sample_set_id"].to_list()
    out = tmp_path / "lib_train_cap2.parquet"
    acc = cap_species_compounds(tmp_path / "lib.parquet", out, cap_per_pair=2, seed=42,
                                      folds_csv=folds_csv, fold="train")
    got = pl.read_parquet(out)
    assert not set(got["sample_set_id"].to_list()) & set(test_ids)
    n_test_rows = df.filter(pl.col("sample_set_id").is_in(test_ids)).height
    assert list(acc.drops) == ["other_fold", "over_cap"]
    assert acc.drops["other_fold"] == n_test_rows
    assert acc.rows_in == df.height and acc.rows_out == got.height == 6 * 2  # 6 pairs × cap 2
    # The same as capping a file that holds only the train sample sets.
    train_only = _write(df.filter(~pl.col("sample_set_id").is_in(test_ids)),
                        tmp_path / "train_only.parquet")
    cap_species_compounds(train_only, tmp_path / "ref.parquet", cap_per_pair=2, seed=42)
    assert out.read_bytes() == (tmp_path / "ref.parquet").read_bytes()
    meta = read_meta(out)
    assert meta["config"]["fold"] == "train" and meta["drops"]["other_fold"] == n_test_rows
    dropped = pl.read_csv(str(out) + ".dropped.csv")
    assert dropped["id"].to_list() == sorted(test_ids)
    assert set(dropped["reason"].to_list()) == {"other_fold"}


def test_stale_folds_file_is_an_error(tmp_path: Path) -> None:
    _lib_with_sample_sets(4, tmp_path / "lib.parquet")
    pl.DataFrame({"sample_set_id": [100, 101, 102], "fold": ["train", "test", "train"]}).write_csv(
        tmp_path / "folds.csv")
    out = tmp_path / "train_cap2.parquet"
    with pytest.raises(RtprepError, match=r"folds.csv, column 'sample_set_id'.*103"):
        cap_species_compounds(tmp_path / "lib.parquet", out, cap_per_pair=2, seed=1,
                                    folds_csv=tmp_path / "folds.csv", fold="train")
    assert not out.exists() and not Path(str(out) + ".meta.json").exists()


def test_bad_folds_values_are_errors(tmp_path: Path) -> None:
    _lib_with_sample_sets(2, tmp_path / "lib.parquet")
    pl.DataFrame({"sample_set_id": [100, 101], "fold": ["train", "holdout"]}).write_csv(
        tmp_path / "folds.csv")
    with pytest.raises(RtprepError, match=r"column 'fold'.*holdout"):
        cap_species_compounds(tmp_path / "lib.parquet", tmp_path / "o.parquet",
                                    cap_per_pair=2, seed=1, folds_csv=tmp_path / "folds.csv",
                                    fold="train")
    with pytest.raises(RtprepError, match="fold must be one of"):
        cap_species_compounds(tmp_path / "lib.parquet", tmp_path / "o.parquet",
                                    cap_per_pair=2, seed=1, folds_csv=tmp_path / "folds.csv",
                                    fold="validation")
    with pytest.raises(RtprepError, match="go together"):
        cap_species_compounds(tmp_path / "lib.parquet", tmp_path / "o.parquet",
                                    cap_per_pair=2, seed=1, folds_csv=tmp_path / "folds.csv")
    assert not (tmp_path / "o.parquet").exists()


# --- the time split -----------------------------------------------------------------------------
def _lib_on_worksheets(path: Path, sets: list[tuple[int, int, object]],
                       time_dtype: pl.DataType | None = None) -> pl.DataFrame:
    """Two peaks per sample set; ``sets``: (sample_set_id, worksheet_id, acquisition_date)."""
    rows = [(ss, 10 * ss + t, 5, "plasma", 1.0 + t) for ss, _, _ in sets for t in range(2)]
    ws = {ss: w for ss, w, _ in sets}
    when = {ss: d for ss, _, d in sets}
    df = _frame(rows).with_columns(
        pl.col("sample_set_id").replace_strict(ws, return_dtype=pl.Int64).alias("worksheet_id"),
        pl.col("sample_set_id").replace_strict(when, return_dtype=time_dtype)
        .alias("acquisition_date"),
    )
    _write(df, path)
    return df


def _folds_of(path: Path) -> dict[int, str]:
    folds = pl.read_csv(path)
    assert folds.columns == ["sample_set_id", "fold"]
    return dict(zip(folds["sample_set_id"], folds["fold"], strict=True))


def test_time_split_holds_out_the_latest_worksheets_whole(tmp_path: Path) -> None:
    """10 worksheets (ids in no time order), 1-3 sample sets each: the 2 latest by date are held
    out (0.2 x 10), every sample set on them and nothing else; ties by worksheet_id."""
    ws_dates = {907: "2024-01-05", 901: "2024-03-01", 905: "2024-01-20", 903: "2024-02-11",
                902: "2024-02-02", 908: "2024-01-02", 904: "2024-02-20", 906: "2024-02-20",
                909: "2024-01-11", 900: "2024-01-01"}
    sets, ss = [], 100
    for i, (w, d) in enumerate(ws_dates.items()):
        for _ in range(1 + i % 3):
            sets.append((ss, w, d))
            ss += 1
    src = tmp_path / "merged_training_ab12_lib209.parquet"
    _lib_on_worksheets(src, sets, pl.String)
    out = tmp_path / "time_folds.csv"
    acc = assign_folds(src, out, test_fraction=0.2, split="time", time_column="acquisition_date")
    got = _folds_of(out)
    # latest: 901 (March), then 904 and 906 tie on 2024-02-20: the higher worksheet_id is later
    test_ws = {901, 906}
    assert got == {
        s: "test" if w in test_ws else "train" for s, w, _ in sets}
    assert acc.extra["worksheets"] == {"test": 2, "train": 8}
    assert acc.extra["test"] == sum(w in test_ws for _, w, _ in sets)
    assert acc.extra["test_from"].startswith("2024-02-20")
    meta = read_meta(out)
    assert meta["config"] == {"split": "time", "test_fraction": 0.2,
                              "time_column": "acquisition_date"}
    assert meta["seeds"] == {}  # fold_seed plays no part


def test_time_split_orders_dates_numbers_and_worksheet_ids(tmp_path: Path) -> None:
    """A Date column, an integer column and worksheet_id itself (the default) give the same
    folds when they order the worksheets alike; the test fold is the latest 30%."""
    import datetime as dt

    sets = [(100 + i, 500 + i, dt.date(2024, 1, 1) + dt.timedelta(days=3 * i)) for i in range(10)]
    src = tmp_path / "lib.parquet"
    _lib_on_worksheets(src, sets, pl.Date)
    assign_folds(src, tmp_path / "date.csv", test_fraction=0.3, split="time",
                 time_column="acquisition_date")
    assign_folds(src, tmp_path / "ws.csv", test_fraction=0.3, split="time")
    days = pl.read_parquet(src).with_columns(pl.col("acquisition_date").cast(pl.Int32).alias("day"))
    days.write_parquet(tmp_path / "d.parquet")
    assign_folds(tmp_path / "d.parquet", tmp_path / "day.csv", test_fraction=0.3, split="time",
                 time_column="day")
    want = {100 + i: "test" if i >= 7 else "train" for i in range(10)}
    assert _folds_of(tmp_path / "date.csv") == want
    assert (tmp_path / "date.csv").read_bytes() == (tmp_path / "ws.csv").read_bytes() == (
        tmp_path / "day.csv").read_bytes()


def test_time_split_is_deterministic_and_ignores_row_order_and_seed(tmp_path: Path) -> None:
    sets = [(100 + i, 700 + i // 3, f"2024-05-{1 + i // 3:02d}") for i in range(30)]
    df = _lib_on_worksheets(tmp_path / "lib.parquet", sets, pl.String)
    _write(df.sample(fraction=1.0, shuffle=True, seed=5), tmp_path / "shuffled.parquet")
    for name, src, seed in (("a.csv", "lib.parquet", 1), ("b.csv", "lib.parquet", 1),
                            ("c.csv", "shuffled.parquet", 2)):
        assign_folds(tmp_path / src, tmp_path / name, test_fraction=0.25, fold_seed=seed,
                     split="time", time_column="acquisition_date")
    a = (tmp_path / "a.csv").read_bytes()
    assert a == (tmp_path / "b.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()
    # 10 worksheets of 3 sample sets: round(2.5) = 3 latest (halves up) -> 9 sample sets
    assert sorted(s for s, f in _folds_of(tmp_path / "a.csv").items() if f == "test") == list(
        range(121, 130))


def test_time_split_holds_out_a_sample_set_that_spans_a_held_out_worksheet(
        tmp_path: Path) -> None:
    """Folds are whole sample sets: one with rows on a train and a test worksheet is test."""
    sets = [(100 + i, 800 + i, f"2024-06-{1 + i:02d}") for i in range(5)]
    df = _lib_on_worksheets(tmp_path / "lib.parquet", sets, pl.String)
    # sample set 102 also has a row on the latest worksheet (804)
    extra = df.filter(pl.col("sample_set_id") == 102).head(1).with_columns(
        pl.lit(804, dtype=pl.Int64).alias("worksheet_id"),
        pl.lit("2024-06-05").alias("acquisition_date"),
        pl.lit(999, dtype=pl.Int64).alias("task_id"))
    _write(pl.concat([df, extra]), tmp_path / "lib.parquet")
    acc = assign_folds(tmp_path / "lib.parquet", tmp_path / "f.csv", test_fraction=0.2,
                       split="time", time_column="acquisition_date")
    assert _folds_of(tmp_path / "f.csv") == {100: "train", 101: "train", 102: "test",
                                             103: "train", 104: "test"}
    assert acc.extra["sample_sets_on_several_worksheets"] == 1


def test_time_split_errors_name_the_file_and_column(tmp_path: Path) -> None:
    sets = [(100 + i, 800 + i, f"2024-06-{1 + i:02d}") for i in range(5)]
    df = _lib_on_worksheets(tmp_path / "lib.parquet", sets, pl.String)
    src = _write(df.drop("acquisition_date"), tmp_path / "merged_training_ab12_lib209.parquet")
    with pytest.raises(RtprepError, match=r"merged_training_ab12_lib209.parquet: missing required "
                       r"column\(s\) 'acquisition_date' \(the time split orders worksheets by "
                       r"eval.time_column 'acquisition_date'\)"):
        assign_folds(src, tmp_path / "f.csv", test_fraction=0.2, split="time",
                     time_column="acquisition_date")
    nulls = _write(df.with_columns(pl.when(pl.col("sample_set_id") == 103).then(None)
                                   .otherwise(pl.col("acquisition_date"))
                                   .alias("acquisition_date")), tmp_path / "nulls.parquet")
    with pytest.raises(RtprepError, match=r"nulls.parquet, column 'acquisition_date': has rows "
                       "without a value"):
        assign_folds(nulls, tmp_path / "f.csv", test_fraction=0.2, split="time",
                     time_column="acquisition_date")
    words = _write(df.with_columns(pl.lit("last tuesday").alias("acquisition_date")),
                   tmp_path / "words.parquet")
    with pytest.raises(RtprepError, match=r"words.parquet, column 'acquisition_date': 1 value.*"
                       "'last tuesday'"):
        assign_folds(words, tmp_path / "f.csv", test_fraction=0.2, split="time",
                     time_column="acquisition_date")
    flags = _write(df.with_columns(pl.lit(True).alias("acquisition_date")),
                   tmp_path / "flags.parquet")
    with pytest.raises(RtprepError, match=r"column 'acquisition_date': has type Boolean"):
        assign_folds(flags, tmp_path / "f.csv", test_fraction=0.2, split="time",
                     time_column="acquisition_date")
    with pytest.raises(RtprepError, match="split must be one of random, time"):
        assign_folds(src, tmp_path / "f.csv", test_fraction=0.2, split="future")
    with pytest.raises(RtprepError, match="the random split needs fold_seed"):
        assign_folds(src, tmp_path / "f.csv", test_fraction=0.2)
    assert not (tmp_path / "f.csv").exists() and _leftovers(tmp_path) == []


def test_random_split_is_todays_assignment(tmp_path: Path) -> None:
    """split='random' (the default) writes the folds of the fold_seed hash, byte for byte the
    file written before splits existed (its rows fixed here), whatever a time column says."""
    _lib_with_sample_sets(10, tmp_path / "lib.parquet")
    assign_folds(tmp_path / "lib.parquet", tmp_path / "r.csv", test_fraction=0.3, fold_seed=3,
                 split="random", time_column="no_such_column")
    expected_test = sorted(sorted(range(100, 110), key=lambda s: (_fold_hash(s, 3), s))[:3])
    lines = ["sample_set_id,fold"] + [
        f"{s},{'test' if s in expected_test else 'train'}" for s in range(100, 110)]
    assert (tmp_path / "r.csv").read_text() == "\n".join(lines) + "\n"


# --- errors: nothing left behind --------------------------------------------------------------
@pytest.mark.parametrize("cap", [0, -1, 2.5, True])
def test_bad_cap_is_an_error_and_writes_nothing(tmp_path: Path, cap: object) -> None:
    src = _write(HAND, tmp_path / "lib.parquet")
    out = tmp_path / "cap.parquet"
    with pytest.raises(RtprepError, match="cap_per_pair must be a whole number >= 1"):
        cap_species_compounds(src, out, cap_per_pair=cap, seed=1)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.parquet"]


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, math.nan, "0.2"])
def test_bad_test_fraction_is_an_error_and_writes_nothing(tmp_path: Path,
                                                          fraction: object) -> None:
    _lib_with_sample_sets(3, tmp_path / "lib.parquet")
    with pytest.raises(RtprepError, match=r"test_fraction must be a number in \[0, 1\)"):
        assign_folds(tmp_path / "lib.parquet", tmp_path / "folds.csv",
                     test_fraction=fraction, fold_seed=1)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.parquet"]


def test_missing_column_and_null_identity_are_errors(tmp_path: Path) -> None:
    src = _write(HAND.drop("species_matrix_type"), tmp_path / "nosmt.parquet")
    with pytest.raises(RtprepError, match=r"nosmt.parquet: missing required column.*species_m"):
        cap_species_compounds(src, tmp_path / "o.parquet", cap_per_pair=2, seed=1)
    src = _write(HAND.with_columns(pl.when(pl.col("task_id") == 21).then(None)
                                   .otherwise(pl.col("apex_rt")).alias("apex_rt")),
                 tmp_path / "nullrt.parquet")
    with pytest.raises(RtprepError, match=r"nullrt.parquet, column 'apex_rt': 1 row"):
        cap_species_compounds(src, tmp_path / "o.parquet", cap_per_pair=2, seed=1)
    with pytest.raises(RtprepError, match="file not found"):
        cap_species_compounds(tmp_path / "absent.parquet", tmp_path / "o.parquet",
                                    cap_per_pair=2, seed=1)
    assert not (tmp_path / "o.parquet").exists() and _leftovers(tmp_path) == []


def test_empty_input_gives_an_empty_output(tmp_path: Path) -> None:
    src = _write(HAND.head(0), tmp_path / "lib.parquet")
    acc = cap_species_compounds(src, tmp_path / "o.parquet", cap_per_pair=2, seed=1)
    got = pl.read_parquet(tmp_path / "o.parquet")
    assert got.height == 0 and got.schema == HAND.schema and acc.rows_out == 0
    assert json.loads((tmp_path / "o.parquet.meta.json").read_text())["rows_in"] == 0


def test_independent_of_thread_count(tmp_path: Path) -> None:
    # polars sizes its pool at import: run one side in a subprocess with a single thread.
    df = _frame([(s, t, c, smt, 1.0 + t / 7 + c / 3) for s in range(-2, 6) for t in range(9)
                 for c in range(1, 6) for smt in SMT])
    src = _write(df, tmp_path / "lib.parquet")
    cap_species_compounds(src, tmp_path / "many.parquet", cap_per_pair=3, seed=11)
    code = ("from rtprep.stages.cap import cap_species_compounds as f; "
            f"f({str(src)!r}, {str(tmp_path / 'one.parquet')!r}, cap_per_pair=3, seed=11)")
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "many.parquet").read_bytes()


def test_null_species_matrix_type_is_a_pair_of_its_own(tmp_path: Path) -> None:
    df = _frame([(1, t, 3, "plasma", 1.0 + t) for t in range(4)]).vstack(
        _frame([(2, t, 3, "plasma", 1.0 + t) for t in range(4)])
        .with_columns(pl.lit(None, dtype=pl.String).alias("species_matrix_type")))
    src = _write(df, tmp_path / "lib.parquet")
    cap_species_compounds(src, tmp_path / "o.parquet", cap_per_pair=2, seed=3)
    got = pl.read_parquet(tmp_path / "o.parquet")
    assert got.group_by("species_matrix_type").len().sort("species_matrix_type")["len"].to_list() \
        == [2, 2]


def test_wrong_column_types_are_errors(tmp_path: Path) -> None:
    src = _write(HAND.with_columns(pl.col("apex_rt").cast(pl.String)), tmp_path / "s.parquet")
    with pytest.raises(RtprepError, match=r"s.parquet, column 'apex_rt': has type String"):
        cap_species_compounds(src, tmp_path / "o.parquet", cap_per_pair=2, seed=1)
    src = _write(HAND.with_columns(pl.col("sample_set_id").cast(pl.String)), tmp_path / "t.parquet")
    with pytest.raises(RtprepError, match=r"t.parquet, column 'sample_set_id': has type String"):
        assign_folds(src, tmp_path / "folds.csv", test_fraction=0.2, fold_seed=1)
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "folds.csv").exists()


@PROPS
@given(rows=peak_rows, cap=st.integers(1, 4), seed=st.integers(0, 2**32),
       chunk=st.integers(1, 6), group=st.integers(1, 7))
def test_pass_two_by_sample_set_ranges_is_the_one_piece_output(
    rows: list[tuple], cap: int, seed: int, chunk: int, group: int
) -> None:
    # A lib file in sample_set_id order in small row groups (as split writes it), read by
    # ranges of row groups: the bytes of the one-piece pass, ties and repeated identities too.
    df = _frame(rows).sort("sample_set_id", maintain_order=True)
    with tempfile.TemporaryDirectory() as d:
        dd = Path(d)
        src = dd / "lib.parquet"
        df.write_parquet(src, row_group_size=group)
        cap_species_compounds(src, dd / "one.parquet", cap_per_pair=cap, seed=seed)
        saved = sample_mod.CAP_CHUNK_ROWS
        sample_mod.CAP_CHUNK_ROWS = chunk
        try:
            ranges = sample_mod._sample_set_ranges([src], math.ceil(max(len(rows), 1) / chunk))
            cap_species_compounds(src, dd / "ranges.parquet", cap_per_pair=cap, seed=seed)
        finally:
            sample_mod.CAP_CHUNK_ROWS = saved
        assert (dd / "ranges.parquet").read_bytes() == (dd / "one.parquet").read_bytes()
        assert pl.read_parquet(dd / "ranges.parquet").equals(_reference(df, cap, seed))
    # the ranges are disjoint, ordered and cover every sample set
    los = [lo for lo, _ in ranges[1:]]
    assert los == sorted(set(los))
    assert ranges[0][0] is None and ranges[-1][1] is None


def test_sample_set_ranges_follow_the_row_groups(tmp_path: Path) -> None:
    df = _frame([(s, t, 1, "plasma", 1.0) for s in range(10) for t in range(4)])  # 40 rows
    src = tmp_path / "lib.parquet"
    df.write_parquet(src, row_group_size=8)  # 5 row groups, starting at sets 0, 2, 4, 6, 8
    assert sample_mod._sample_set_ranges([src], 1) == [(None, None)]
    assert sample_mod._sample_set_ranges([src], 2) == [(None, 6), (6, None)]
    assert sample_mod._sample_set_ranges([src], 5) == [(None, 2), (2, 4), (4, 6), (6, 8),
                                                       (8, None)]
    assert sample_mod._sample_set_ranges([src, src], 5) == [(None, None)]  # several files
    df.reverse().write_parquet(src, row_group_size=8)  # not in sample_set_id order
    assert sample_mod._sample_set_ranges([src], 5) == [(None, None)]


@pytest.mark.parametrize("cap", [1, 2, 4])
def test_pass_two_by_ranges_resolves_ties_at_the_threshold(tmp_path: Path, cap: int,
                                                           monkeypatch) -> None:
    # Every identity three times (equal hashes, other columns differ): every pair ties at its
    # threshold, and its tied rows lie in several ranges of sample sets.
    rows = [(s, 10 * s + t, c, "plasma", 1.25, v)
            for s in range(6) for t in range(2) for c in (7, 8) for v in (3.0, -1.0, 2.0)]
    df = _frame(rows).sort("sample_set_id", maintain_order=True)
    src = tmp_path / "lib.parquet"
    df.write_parquet(src, row_group_size=4)
    cap_species_compounds(src, tmp_path / "one.parquet", cap_per_pair=cap, seed=0)
    monkeypatch.setattr(sample_mod, "CAP_CHUNK_ROWS", 1)
    assert len(sample_mod._sample_set_ranges([src], 2 * cap)) > 1
    cap_species_compounds(src, tmp_path / "ranges.parquet", cap_per_pair=cap, seed=0)
    assert (tmp_path / "ranges.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    got = pl.read_parquet(tmp_path / "ranges.parquet")
    assert got.equals(_reference(df, cap, 0)) and got.height == 2 * cap


@pytest.mark.parametrize("big", [1000, 2**61])
def test_pair_key_for_any_comp_id(tmp_path: Path, big: int) -> None:
    # Pairs are grouped on comp_id · k + the type's code; ids too large for that product fall
    # back to a struct key: the same sample either way.
    rows = [(s, t, c, smt, 1.0 + t / 10) for s in range(3) for t in range(6)
            for c in (big, -big + 5, 7) for smt in ("plasma", "urine")]
    df = _frame(rows)
    src = _write(df, tmp_path / "lib.parquet")
    acc = cap_species_compounds(src, tmp_path / "cap.parquet", cap_per_pair=2, seed=3)
    assert pl.read_parquet(tmp_path / "cap.parquet").equals(_reference(df, 2, 3))
    assert acc.extra == {"pairs": 6, "pairs_over_cap": 6}
