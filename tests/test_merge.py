"""Stage merge: merge a Pachyderm export (hand-made tiny exports in tmp_path)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import rtprep.stages.merge as merge_mod
from rtprep.core.artifacts import read_meta
from rtprep.core.errors import RtprepError
from rtprep.stages.merge import DROP_REASONS, MergeOptions, merge_export

HASH = "abc123"
PEAK_COLS = ["sample_set_id", "task_id", "worksheet_id", "sample_type", "cpd_status", "comp_id",
             "species_matrix_type", "apex_rt"]

# lib 208, group 0: (ss, task, ws, sample_type, cpd_status, comp, smt, rt, peak_area, fit_scores)
G0 = [
    (1, 10, 100, "Sample", "Complete", 1, "plasma", 1.5, 10.0, 0.9),  # kept
    (1, 10, 100, "Sample", "Complete - NFS", 2, "plasma", 2.5, 20.0, 0.8),  # kept
    (1, 10, 100, "Sample", "Failed", 3, "plasma", 3.5, 30.0, 0.7),  # cpd_status_not_kept
    (1, 11, 100, "PRCS", "Complete", 1, "plasma", 1.6, 40.0, 0.6),  # sample_type_excluded
    (2, 20, 101, "Sample", "Complete", 1, "urine", 1.75, 50.0, 0.5),  # kept (urine predictors)
    (3, 30, 101, "Sample", "Complete", 2, "plasma", 2.25, 60.0, 0.4),  # no_predictor_row
    (1, 10, 100, "Sample", "Complete", 1, "plasma", 1.5, 10.0, 0.9),  # duplicate of row 0
    (1, 10, 100, "Sample", None, 5, "plasma", 5.5, 70.0, 0.3),  # null cpd_status: not kept
    (1, 10, 100, None, "Complete", 4, "plasma", 4.0, 80.0, 0.2),  # null sample_type: kept
]


def _peaks_frame(rows: list[tuple], *, fit: bool = True, area: bool = True) -> pl.DataFrame:
    cols = [*PEAK_COLS, "peak_area", "fit_scores"]
    df = pl.DataFrame([dict(zip(cols, r, strict=True)) for r in rows],
                      schema={c: t for c, t in zip(cols, [pl.Int64] * 3 + [pl.String] * 2
                              + [pl.Int64, pl.String, pl.Float64, pl.Float64, pl.Float64],
                              strict=True)})
    if not fit:
        df = df.drop("fit_scores")
    if not area:
        df = df.drop("peak_area")
    return df


def _write(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)


def _preds(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows).with_columns(
        pl.col("sample_set_id", "task_id").cast(pl.Int64)
    )


def build_export(root: Path, *, layout: str = "default") -> Path:
    """The tiny export. ``layout="resharded"`` writes the same rows in other shards / names."""
    exp = root / HASH
    ctd = exp / "create_training_data"
    g0 = _peaks_frame(G0)
    if layout == "default":
        _write(g0, ctd / "lib_id=208/group=0/part-0.parquet")
        _write(g0, ctd / "lib_id=208/group=0/part-0-copy.parquet")  # a re-processed datum
    else:  # same rows, split in three shards named in another order
        _write(g0.slice(5), ctd / "lib_id=208/group=0/a.parquet")
        _write(g0.slice(0, 5), ctd / "lib_id=208/group=0/z.parquet")
        _write(pl.concat([g0.slice(3), g0.slice(0, 3)]), ctd / "lib_id=208/group=0/m.parquet")
    # group 1: an int32/float32 shard that calls comp_id 'correct' and has no fit_scores or
    # peak_area, and an int64 shard repeating one of its rows (a duplicate after normalisation)
    g1 = pl.DataFrame(
        {"sample_set_id": [2, 2], "task_id": [21, 21], "worksheet_id": [102, 102],
         "sample_type": ["Sample", "Sample"], "cpd_status": ["Complete", "Complete"],
         "correct": [5, 6], "species_matrix_type": ["urine", "urine"], "apex_rt": [5.25, 6.5]},
        schema_overrides={"sample_set_id": pl.Int32, "task_id": pl.Int32,
                          "worksheet_id": pl.Int32, "correct": pl.Int32, "apex_rt": pl.Float32},
    )
    g1_dup = g1.slice(0, 1).rename({"correct": "comp_id"}).cast(
        {"sample_set_id": pl.Int64, "task_id": pl.Int64, "worksheet_id": pl.Int64,
         "comp_id": pl.Int64, "apex_rt": pl.Float64})
    if layout == "default":
        _write(g1, ctd / "lib_id=208/group=1/a.parquet")
        _write(g1_dup, ctd / "lib_id=208/group=1/b.parquet")
    else:
        _write(g1_dup, ctd / "lib_id=208/group=1/0.parquet")
        _write(g1, ctd / "lib_id=208/group=1/1.parquet")
    # lib 209: species_matrix_type as a categorical
    g209 = _peaks_frame([
        (5, 50, 200, "Sample", "Complete", 1, "plasma", 1.1, 1.0, 0.1),
        (5, 51, 200, "Sample", "Complete", 2, "plasma", 2.2, 2.0, 0.1),
    ]).with_columns(pl.col("species_matrix_type").cast(pl.Categorical))
    _write(g209, ctd / "lib_id=209/group=0/part-0.parquet")

    cp = exp / "combine_predictors"
    _write(_preds([
        {"sample_set_id": 1, "task_id": 10, "IS10": 1.0, "IS2": 0.5, "ES_a": 3.0, "RS1": 2.0},
        {"sample_set_id": 1, "task_id": 11, "IS10": 1.1, "IS2": 0.6, "ES_a": 3.1, "RS1": 2.1},
    ]), cp / "lib_id=208/species_matrix_type=plasma/p.parquet")
    # urine: no ES_a column (a missing predictor column becomes null)
    _write(_preds([
        {"sample_set_id": 2, "task_id": 20, "IS10": 1.2, "IS2": 0.7, "RS1": 2.2},
        {"sample_set_id": 2, "task_id": 21, "IS10": 1.3, "IS2": 0.8, "RS1": 2.3},
    ]), cp / "lib_id=208/species_matrix_type=urine/p.parquet")
    p209 = [
        {"sample_set_id": 5, "task_id": 50, "IS10": 1.4, "IS2": 0.9, "ES_a": 3.4, "RS1": 2.4,
         "ES_b": 4.4},
        {"sample_set_id": 5, "task_id": 51, "IS10": 1.5, "IS2": 1.0, "ES_a": 3.5, "RS1": 2.5,
         "ES_b": 4.5},
    ]
    _write(_preds(p209[:1]), cp / "lib_id=209/species_matrix_type=plasma/p.parquet")
    _write(_preds(p209), cp / "lib_id=209/species_matrix_type=plasma/p2.parquet")  # exact dup
    return exp


EXPECTED_COLUMNS = ["lib_id", *PEAK_COLS, "peak_area", "IS2", "IS10", "RS1", "ES_a", "ES_b"]

EXPECTED = pl.DataFrame(
    [
        (208, 1, 10, 100, "Sample", "Complete", 1, "plasma", 1.5, 10.0, 0.5, 1.0, 2.0, 3.0, None),
        (208, 1, 10, 100, "Sample", "Complete - NFS", 2, "plasma", 2.5, 20.0, 0.5, 1.0, 2.0, 3.0,
         None),
        (208, 2, 20, 101, "Sample", "Complete", 1, "urine", 1.75, 50.0, 0.7, 1.2, 2.2, None, None),
        (208, 1, 10, 100, None, "Complete", 4, "plasma", 4.0, 80.0, 0.5, 1.0, 2.0, 3.0, None),
        (208, 2, 21, 102, "Sample", "Complete", 5, "urine", 5.25, None, 0.8, 1.3, 2.3, None, None),
        (208, 2, 21, 102, "Sample", "Complete", 6, "urine", 6.5, None, 0.8, 1.3, 2.3, None, None),
        (209, 5, 50, 200, "Sample", "Complete", 1, "plasma", 1.1, 1.0, 0.9, 1.4, 2.4, 3.4, 4.4),
        (209, 5, 51, 200, "Sample", "Complete", 2, "plasma", 2.2, 2.0, 1.0, 1.5, 2.5, 3.5, 4.5),
    ],
    schema={"lib_id": pl.Int64, "sample_set_id": pl.Int64, "task_id": pl.Int64,
            "worksheet_id": pl.Int64, "sample_type": pl.String, "cpd_status": pl.String,
            "comp_id": pl.Int64, "species_matrix_type": pl.String, "apex_rt": pl.Float64,
            "peak_area": pl.Float64, "IS2": pl.Float64, "IS10": pl.Float64, "RS1": pl.Float64,
            "ES_a": pl.Float64, "ES_b": pl.Float64},
    orient="row",
)


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(df.columns, nulls_last=True)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return build_export(tmp_path / "repo_export")


def test_merge_rows_columns_and_counts(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / f"merged_training_{HASH}.parquet"
    acc = merge_export(export, out)
    got = pl.read_parquet(out)
    assert got.columns == EXPECTED_COLUMNS
    assert got.schema == EXPECTED.schema
    assert _sorted(got).equals(_sorted(EXPECTED))
    assert got["lib_id"].to_list() == sorted(got["lib_id"].to_list())

    assert acc.rows_in == 23
    assert list(acc.drops) == list(DROP_REASONS)
    assert acc.drops == {"duplicate_row": 11, "cpd_status_not_kept": 2,
                         "sample_type_excluded": 1, "no_predictor_row": 1}
    assert acc.rows_out == 8
    assert acc.extra["libs"] == [208, 209]
    assert acc.extra["per_lib"][208] == {
        "rows_in": 21,
        "drops": {"duplicate_row": 11, "cpd_status_not_kept": 2, "sample_type_excluded": 1,
                  "no_predictor_row": 1},
        "rows_out": 6}
    assert acc.extra["per_lib"][209] == {"rows_in": 2, "drops": dict.fromkeys(DROP_REASONS, 0),
                                         "rows_out": 2}
    assert acc.extra["per_lib"][209]["rows_out"] == 2
    assert acc.extra["predictor_duplicate_rows"] == 1

    meta = read_meta(out)
    assert meta["rows_in"] == 23 and meta["rows_out"] == 8
    assert list(meta["drops"]) == list(DROP_REASONS)
    assert meta["extra"]["per_lib"]["208"]["rows_out"] == 6
    assert meta["config"]["key"] == ["lib_id", "sample_set_id", "task_id", "species_matrix_type"]
    dropped = pl.read_csv(str(out) + ".dropped.csv")
    assert dropped.rows() == [("no_predictor_row", "task_id", 30)]
    assert _leftovers(out.parent) == []


def test_row_groups_never_span_libs(export: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge_mod, "ROW_GROUP_SIZE", 4)
    out = tmp_path / "m.parquet"
    merge_export(export, out)
    md = pq.ParquetFile(out).metadata
    idx = [md.schema.column(i).name for i in range(md.num_columns)].index("lib_id")
    stats = [md.row_group(i).column(idx).statistics for i in range(md.num_row_groups)]
    groups = [(s.min, s.max, md.row_group(i).num_rows) for i, s in enumerate(stats)]
    # lib 208 (6 rows) → 4 + 2; lib 209 (2 rows) → 2
    assert groups == [(208, 208, 4), (208, 208, 2), (209, 209, 2)]
    assert _sorted(pl.read_parquet(out)).equals(_sorted(EXPECTED))


def test_same_rows_whatever_the_sharding(tmp_path: Path) -> None:
    a = merge_export(build_export(tmp_path / "a"), tmp_path / "a.parquet")
    b = merge_export(build_export(tmp_path / "b", layout="resharded"), tmp_path / "b.parquet")
    fa, fb = pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    assert fa.columns == fb.columns
    assert _sorted(fa).equals(_sorted(fb))
    assert a.drops == b.drops and a.rows_in == b.rows_in == 23


def test_deterministic_bytes(export: Path, tmp_path: Path) -> None:
    merge_export(export, tmp_path / "1.parquet")
    merge_export(export, tmp_path / "2.parquet")
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()


def test_options_from_config_and_filters(export: Path, tmp_path: Path) -> None:
    opts = MergeOptions.from_config({
        "key": ["lib_id", "sample_set_id", "task_id", "species_matrix_type"],
        "cpd_status_keep": ["Complete", "Complete - NFS", "Failed"],
        "sample_type_exclude": [],
        "renames": {"correct": "comp_id"},
        "drop_columns": ["group"],
    })
    assert opts.cpd_status_keep == ("Complete", "Complete - NFS", "Failed")
    assert opts.sample_type_exclude == ()
    assert opts.peaks_glob == "create_training_data/**/*.parquet"
    assert MergeOptions.from_config({}) == MergeOptions()
    assert MergeOptions.from_config({"drop_columns": None, "renames": None}).renames == {}
    out = tmp_path / "m.parquet"
    acc = merge_export(export, out, opts)
    # row 3 (Failed) is kept now; the PRCS row has a predictor row (task 11) and is kept too
    assert acc.drops == {"duplicate_row": 11, "cpd_status_not_kept": 1,
                         "sample_type_excluded": 0, "no_predictor_row": 1}
    got = pl.read_parquet(out)
    assert "fit_scores" in got.columns and got.height == 10
    assert got.filter(pl.col("sample_type") == "PRCS")["IS2"].to_list() == [0.6]


def test_options_from_config_rejects_bad_values() -> None:
    with pytest.raises(RtprepError, match="renames"):
        MergeOptions.from_config({"renames": ["correct"]})
    with pytest.raises(RtprepError, match="key"):
        MergeOptions.from_config({"key": []})


# ---------------------------------------------------------------------------------------------
# bad input: a clear error, no output, no temp file


def _assert_fails(export: Path, tmp_path: Path, *keywords: str) -> RtprepError:
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    out = outdir / "merged.parquet"
    with pytest.raises(RtprepError) as info:
        merge_export(export, out)
    msg = str(info.value)
    for k in keywords:
        assert k in msg, (k, msg)
    assert list(outdir.iterdir()) == []
    return info.value


def test_error_export_missing(tmp_path: Path) -> None:
    _assert_fails(tmp_path / "nope", tmp_path, "nope", "not found")


def test_error_export_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _assert_fails(tmp_path / "empty", tmp_path, "empty")


@pytest.mark.parametrize("sub", ["create_training_data", "combine_predictors"])
def test_error_subfolder_missing(export: Path, tmp_path: Path, sub: str) -> None:
    shutil.rmtree(export / sub)
    _assert_fails(export, tmp_path, sub, "missing")


def test_error_no_shards(export: Path, tmp_path: Path) -> None:
    shutil.rmtree(export / "combine_predictors")
    (export / "combine_predictors" / "lib_id=208").mkdir(parents=True)
    _assert_fails(export, tmp_path, "combine_predictors", "no Parquet shards")


def test_error_not_parquet(export: Path, tmp_path: Path) -> None:
    bad = export / "create_training_data/lib_id=208/group=0/notes.parquet"
    bad.write_text("sample_set_id,task_id\n1,2\n")
    _assert_fails(export, tmp_path, "notes.parquet", "not a readable Parquet")


def test_error_truncated_shard(export: Path, tmp_path: Path) -> None:
    shard = export / "combine_predictors/lib_id=208/species_matrix_type=urine/p.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    _assert_fails(export, tmp_path, str(shard), "truncated")


@pytest.mark.parametrize("column", ["sample_set_id", "task_id", "comp_id", "species_matrix_type",
                                    "apex_rt", "cpd_status", "sample_type", "worksheet_id"])
def test_error_required_column_missing(export: Path, tmp_path: Path, column: str) -> None:
    shard = export / "create_training_data/lib_id=209/group=0/part-0.parquet"
    pl.read_parquet(shard).drop(column).write_parquet(shard)
    _assert_fails(export, tmp_path, str(shard), f"'{column}'", "missing")


@pytest.mark.parametrize("column", ["apex_rt", "comp_id", "sample_set_id"])
def test_error_numeric_column_is_text(export: Path, tmp_path: Path, column: str) -> None:
    shard = export / "create_training_data/lib_id=209/group=0/part-0.parquet"
    pl.read_parquet(shard).with_columns(pl.col(column).cast(pl.String)).write_parquet(shard)
    _assert_fails(export, tmp_path, str(shard), f"'{column}'", "number")


def test_error_predictor_key_missing(export: Path, tmp_path: Path) -> None:
    shard = export / "combine_predictors/lib_id=208/species_matrix_type=urine/p.parquet"
    pl.read_parquet(shard).drop("task_id").write_parquet(shard)
    _assert_fails(export, tmp_path, str(shard), "'task_id'", "predictor")


def test_error_fractional_float_id(export: Path, tmp_path: Path) -> None:
    shard = export / "create_training_data/lib_id=209/group=0/part-0.parquet"
    pl.read_parquet(shard).with_columns(
        pl.Series("task_id", [50.0, 51.5])).write_parquet(shard)
    _assert_fails(export, tmp_path, str(shard), "'task_id'", "51.5", "whole number")


def test_float_ids_with_whole_values_are_accepted(export: Path, tmp_path: Path) -> None:
    shard = export / "create_training_data/lib_id=209/group=0/part-0.parquet"
    pl.read_parquet(shard).with_columns(pl.col("task_id").cast(pl.Float64)).write_parquet(shard)
    merge_export(export, tmp_path / "m.parquet")
    assert _sorted(pl.read_parquet(tmp_path / "m.parquet")).equals(_sorted(EXPECTED))


def test_error_conflicting_predictor_rows(export: Path, tmp_path: Path) -> None:
    folder = export / "combine_predictors/lib_id=208/species_matrix_type=plasma"
    _write(_preds([
        {"sample_set_id": 1, "task_id": 10, "IS10": 9.0, "IS2": 0.5, "ES_a": 3.0, "RS1": 2.0},
        {"sample_set_id": 1, "task_id": 11, "IS10": 9.1, "IS2": 0.6, "ES_a": 3.1, "RS1": 2.1},
    ]), folder / "reprocessed.parquet")
    err = _assert_fails(export, tmp_path, HASH, "2 key(s)", "sample_set_id=1", "task_id=10",
                        "species_matrix_type='plasma'", "reprocessed.parquet")
    assert "lib_id=208" in str(err)


def test_error_rename_collision(export: Path, tmp_path: Path) -> None:
    shard = export / "create_training_data/lib_id=209/group=0/part-0.parquet"
    pl.read_parquet(shard).with_columns(pl.col("comp_id").alias("correct")).write_parquet(shard)
    _assert_fails(export, tmp_path, str(shard), "'correct'", "'comp_id'")


def test_error_leaves_previous_output(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    merge_export(export, out)
    before = out.read_bytes()
    (export / "create_training_data/lib_id=208/group=0/x.parquet").write_text("garbage")
    with pytest.raises(RtprepError):
        merge_export(export, out)
    assert out.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_corrupt_data_page_removes_temp_file(export: Path, tmp_path: Path) -> None:
    # A shard whose footer is intact but whose data are damaged fails while writing: the
    # temporary output must go away.
    shard = export / "create_training_data/lib_id=209/group=0/part-0.parquet"
    df = pl.read_parquet(shard)
    df.write_parquet(shard, compression="uncompressed")
    data = bytearray(shard.read_bytes())
    for i in range(8, len(data) // 3):
        data[i] = 0xFF
    shard.write_bytes(bytes(data))
    outdir = tmp_path / "out"
    outdir.mkdir()
    with pytest.raises(RtprepError, match="cannot be read") as info:
        merge_export(export, outdir / "m.parquet")
    assert str(shard) in str(info.value)
    assert list(outdir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# equivalence with an eager reference on a random export


def _random_export(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    exp = root / "rnd"
    smts = ["plasma", "urine", "liver"]
    for lib in (208, 305):
        tasks = np.arange(40) + lib * 1000
        preds = pl.DataFrame({
            "sample_set_id": tasks // 4, "task_id": tasks,
            "IS2": rng.normal(size=40), "RS1": rng.normal(size=40), "ES_x": rng.normal(size=40),
        })
        for i, smt in enumerate(smts):
            # task ids 35..39 have no predictors for 'liver'
            part = preds if smt != "liver" else preds.filter(pl.col("task_id") % 40 < 35)
            _write(part.with_columns(pl.col("IS2") + i),
                   exp / f"combine_predictors/lib_id={lib}/species_matrix_type={smt}/p.parquet")
        for g in range(3):
            n = 300
            t = rng.choice(tasks, n)
            df = pl.DataFrame({
                "sample_set_id": t // 4, "task_id": t, "worksheet_id": t // 10,
                "sample_type": rng.choice(["Sample", "PRCS", "QC"], n).tolist(),
                "cpd_status": rng.choice(["Complete", "Complete - NFS", "Failed"], n).tolist(),
                "comp_id": rng.integers(0, 30, n),
                "species_matrix_type": rng.choice(smts, n).tolist(),
                "apex_rt": np.round(rng.uniform(0, 10, n), 1),
                "fit_scores": rng.uniform(size=n),
            })
            df = pl.concat([df, df.sample(50, seed=seed + g)])  # duplicates within the partition
            for k, idx in enumerate(np.array_split(rng.permutation(df.height), 3)):
                _write(df[idx.tolist()], exp / f"create_training_data/lib_id={lib}/group={g}/"
                       f"s{k}.parquet")
    return exp


def _eager_reference(exp: Path) -> pl.DataFrame:
    peaks = pl.read_parquet(exp / "create_training_data/**/*.parquet", hive_partitioning=True)
    peaks = peaks.with_columns(pl.col("lib_id").cast(pl.Int64), pl.col("group").cast(pl.String))
    peaks = peaks.unique()  # lib_id and group are columns: per-partition duplicates
    peaks = peaks.filter(pl.col("cpd_status").is_in(["Complete", "Complete - NFS"]),
                         pl.col("sample_type") != "PRCS")
    preds = pl.read_parquet(exp / "combine_predictors/**/*.parquet", hive_partitioning=True)
    preds = preds.with_columns(pl.col("lib_id").cast(pl.Int64),
                               pl.col("species_matrix_type").cast(pl.String)).unique()
    key = ["lib_id", "sample_set_id", "task_id", "species_matrix_type"]
    return peaks.join(preds, on=key).drop("fit_scores", "group")


@pytest.mark.parametrize("seed", [1, 2])
def test_equals_eager_reference(tmp_path: Path, seed: int,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge_mod, "ROW_GROUP_SIZE", 100)
    exp = _random_export(tmp_path, seed)
    out = tmp_path / "m.parquet"
    acc = merge_export(exp, out)
    got = pl.read_parquet(out)
    ref = _eager_reference(exp).select(got.columns)
    assert got.columns[-3:] == ["IS2", "RS1", "ES_x"]
    assert _sorted(got).equals(_sorted(ref))
    assert acc.rows_in == 2 * 3 * 350
    assert acc.rows_out == ref.height
    assert acc.rows_in - sum(acc.drops.values()) == acc.rows_out
    assert not any(math.isnan(v) for v in got["apex_rt"].to_list())
    assert json.loads((tmp_path / "m.parquet.meta.json").read_text())["extra"]["libs"] == [
        208, 305]


def test_merge_then_split(export: Path, tmp_path: Path) -> None:
    from rtprep.stages.split import libs_in_merged, split_lib

    out = tmp_path / f"merged_training_{HASH}.parquet"
    merge_export(export, out)
    assert libs_in_merged(out) == [208, 209]
    acc = split_lib(out, 208, tmp_path / f"merged_training_{HASH}_lib208.parquet")
    got = pl.read_parquet(tmp_path / f"merged_training_{HASH}_lib208.parquet")
    assert got.equals(pl.read_parquet(out).filter(pl.col("lib_id") == 208))
    assert acc.rows_out == 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seen_hashes_match_a_set(seed: int) -> None:
    # The sorted runs answer as a plain set of (hash, shard) would, whatever the shard sizes
    # (the binary-counter merges happen at every size pattern here).
    rng = np.random.default_rng(seed)
    seen = merge_mod._SeenHashes()
    where: dict[int, set[int]] = {}
    for shard in range(40):
        h = np.sort(rng.integers(0, 500, rng.integers(0, 60)).astype(np.uint64))
        q = np.sort(rng.integers(0, 500, 50).astype(np.uint64))
        assert seen.contains(q).tolist() == [int(v) in where for v in q]
        uq = np.unique(q)
        assert seen.shards_of(uq) == sorted({s for v in uq.tolist() for s in where.get(v, ())})
        seen.add(h, shard)
        for v in h.tolist():
            where.setdefault(v, set()).add(shard)
    assert len(seen._runs) <= 1 + int(np.log2(40 * 60))


def test_duplicates_of_a_shard_far_back(tmp_path: Path) -> None:
    # A re-processed datum repeating the first of five shards (a re-read, not the previous
    # shard) and rows repeated within one shard: the same rows as a whole-partition unique.
    rng = np.random.default_rng(5)
    exp = tmp_path / "exp"
    n = 200
    frames = []
    for _ in range(5):
        t = rng.integers(0, 20, n) + 208000
        frames.append(pl.DataFrame({
            "sample_set_id": t // 4, "task_id": t, "worksheet_id": t // 10,
            "sample_type": ["Sample"] * n, "cpd_status": ["Complete"] * n,
            "comp_id": rng.integers(0, 30, n), "species_matrix_type": ["plasma"] * n,
            "apex_rt": np.round(rng.uniform(0, 10, n), 1)}))
    frames.append(frames[0].sample(120, seed=1))          # repeats shard 0, far back
    frames[2] = pl.concat([frames[2], frames[2].head(7)])  # repeats within shard 2
    for k, df in enumerate(frames):
        _write(df, exp / f"create_training_data/lib_id=208/group=0/s{k}.parquet")
    tasks = np.arange(20) + 208000
    _write(pl.DataFrame({"sample_set_id": tasks // 4, "task_id": tasks,
                         "IS1": rng.normal(size=20)}),
           exp / "combine_predictors/lib_id=208/species_matrix_type=plasma/p.parquet")
    acc = merge_export(exp, tmp_path / "m.parquet")
    got = pl.read_parquet(tmp_path / "m.parquet")
    ref = pl.concat(frames).unique(keep="first", maintain_order=True)
    assert acc.drops["duplicate_row"] == sum(f.height for f in frames) - ref.height
    assert got.select(ref.columns).equals(ref)
