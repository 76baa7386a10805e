"""Stage rt_csv: RT production CSV (the trainers' columns) and the streamed test-fold rows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from rtprep.core.artifacts import read_meta
from rtprep.core.errors import RtprepError
from rtprep.stages import rt_csv as rtcsv
from rtprep.stages.rt_csv import assign_chunks, rt_columns, write_rt_csv, write_test_rows

RT_COLUMNS = ["sampleset_id", "worksheet_id", "task_id", "species", "species_cluster",
              "compound", "compound_class", "IS2", "IS10", "RS1", "ES_a", "ES_b", "rt"]

SPECIES_CSV = """sample_set_id,species,species_cluster,note
1,human,1,x
2,mouse,2,
1,human,1,x
4,rat,2,
"""


def chemclass_frame() -> pl.DataFrame:
    """A tiny attached table in identity order; sample set 3 has no species mapping."""
    return pl.DataFrame(
        {
            "lib_id": [208] * 5,
            "sample_set_id": [1, 1, 2, 3, 4],
            "task_id": [11, 12, 21, 31, 41],
            "worksheet_id": [7, 7, 8, 9, 9],
            "sample_type": ["Sample"] * 5,
            "cpd_status": ["Complete"] * 5,
            "comp_id": [100, 101, 100, 100, 101],
            "species_matrix_type": ["plasma"] * 5,
            "apex_rt": [1.5, 2.25, 1.625, 9.0, 3.0],
            "peak_area": [1.0, 2.0, 3.0, 4.0, 5.0],
            "IS10": [3.5, 3.25, None, 1.0, 2.0],
            "ES_b": [0.5, 0.5, 0.5, 0.5, 0.5],
            "IS2": [2.0, None, 2.125, 1.0, 2.0],
            "ISOTOPE": [1.0] * 5,
            "RS1": [4.0, 4.0, 4.0, 4.0, 4.0],
            "ES_a": [0.25, 0.25, 0.25, 0.25, 0.25],
            "chemical_id": [1000, 1001, 1000, 1000, 1001],
            "compound_class": [3, 0, 3, 3, 0],
        }
    )


EXPECTED_CSV = """\
sampleset_id,worksheet_id,task_id,species,species_cluster,compound,compound_class,IS2,IS10,RS1,ES_a,ES_b,rt
1,7,11,human,1,1000,3,2.0,3.5,4.0,0.25,0.5,1.5
1,7,12,human,1,1001,0,,3.25,4.0,0.25,0.5,2.25
2,8,21,mouse,2,1000,3,2.125,,4.0,0.25,0.5,1.625
4,9,41,rat,2,1001,0,2.0,2.0,4.0,0.25,0.5,3.0
"""


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _setup(tmp_path: Path, species: str = SPECIES_CSV) -> tuple[Path, Path]:
    inp = tmp_path / "merged_training_abc_lib208_cap5_chemclass.parquet"
    chemclass_frame().write_parquet(inp)
    sp = tmp_path / "merged_training_abc_lib208_species_mapping.csv"
    sp.write_text(species)
    return inp, sp


def test_rt_columns_order() -> None:
    cols = chemclass_frame().columns
    assert rt_columns(cols) == RT_COLUMNS
    assert rt_columns(cols, families=("ES_", "IS")) == [
        *RT_COLUMNS[:7], "ES_a", "ES_b", "IS2", "IS10", "rt"]


def test_rt_csv_exact_content(tmp_path: Path) -> None:
    inp, sp = _setup(tmp_path)
    out = tmp_path / "merged_training_abc_lib208_cap5_chemclass_rt_prod.csv"
    acc = write_rt_csv(inp, sp, out)
    assert out.read_text() == EXPECTED_CSV
    assert acc.rows_in == 5 and acc.rows_out == 4
    assert acc.drops == {"sample_set_no_species": 1}
    assert acc.dropped_ids == {"sample_set_no_species": ("sample_set_id", [3])}
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["config"]["columns"] == RT_COLUMNS
    assert Path(str(out) + ".dropped.csv").read_text().splitlines() == [
        "reason,column,id", "sample_set_no_species,sample_set_id,3"]
    # Rerun: identical bytes.
    out2 = tmp_path / "again.csv"
    write_rt_csv(inp, sp, out2)
    assert out2.read_bytes() == out.read_bytes()


def test_rt_csv_families_subset(tmp_path: Path) -> None:
    inp, sp = _setup(tmp_path)
    out = tmp_path / "is_only.csv"
    write_rt_csv(inp, sp, out, families=("IS",))
    header = out.read_text().splitlines()[0].split(",")
    assert header == [*RT_COLUMNS[:7], "IS2", "IS10", "rt"]


@pytest.mark.parametrize(
    ("species", "message"),
    [
        ("sample_set_id,species,species_cluster\n1,human,1\n2,human,2\n",
         "species 'human' is in two or more clusters \\[1, 2\\]"),
        ("sample_set_id,species,species_cluster\n1,human,1\n1,mouse,1\n",
         "sample_set_id 1 is listed with different species \\['human', 'mouse'\\]"),
        ("sample_set_id,species\n1,human\n", "missing required column.*'species_cluster'"),
        ("sample_set_id,species,species_cluster\nS1,human,1\n",
         "column 'sample_set_id': value 'S1' on line 2 is not an integer"),
        ("sample_set_id,species,species_cluster\n1,,1\n",
         "column 'species': empty value on line 2"),
    ],
)
def test_species_mapping_errors(tmp_path: Path, species: str, message: str) -> None:
    inp, sp = _setup(tmp_path, species)
    before = _files(tmp_path)
    with pytest.raises(RtprepError, match=message) as err:
        write_rt_csv(inp, sp, tmp_path / "out.csv")
    assert str(sp) in str(err.value)
    assert _files(tmp_path) == before


def test_rt_csv_needs_attached_input(tmp_path: Path) -> None:
    inp, sp = _setup(tmp_path)
    chemclass_frame().drop("compound_class").write_parquet(inp)
    with pytest.raises(RtprepError, match=r"missing required column.*'compound_class'"):
        write_rt_csv(inp, sp, tmp_path / "out.csv")
    chemclass_frame().with_columns(pl.lit("x").alias("IS3")).write_parquet(inp)
    with pytest.raises(RtprepError, match="column 'IS3': covariate must be numeric"):
        write_rt_csv(inp, sp, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# --- test-fold rows ---------------------------------------------------------------------------
MAPPING_CSV = """lib_id,comp_id,chemical_id
208,100,1000
208,101,1001
208,102,0
208,103,1002
208,103,1003
209,104,1000
"""
FOLDS_CSV = "sample_set_id,fold\n1,test\n2,train\n3,test\n4,train\n6,test\n"
TEST_SPECIES = "sample_set_id,species,species_cluster\n1,human,1\n2,mouse,2\n6,rat,2\n"


def lib_frame() -> pl.DataFrame:
    """A per-lib file, deliberately not sorted: sample sets 1-6 (5 has no fold, 3 no species),
    comps 100-104 (102 has no class, 103 is ambiguous, 104 unmapped in lib 208)."""
    ss = [3, 1, 2, 6, 1, 5, 4, 1, 6, 3, 1, 2, 6, 1, 1, 6, 3]
    comp = [100, 101, 100, 100, 100, 101, 101, 102, 103, 104, 103, 101, 101, 104, 100, 102, 101]
    n = len(ss)
    return pl.DataFrame(
        {
            "lib_id": [208] * n,
            "sample_set_id": ss,
            "task_id": [10 * s + (i % 3) for i, s in enumerate(ss)],
            "worksheet_id": [s // 2 for s in ss],
            "sample_type": ["Sample"] * n,
            "cpd_status": ["Complete"] * n,
            "comp_id": comp,
            "species_matrix_type": ["plasma"] * n,
            "apex_rt": [0.5 + 0.25 * ((7 * i) % 11) for i in range(n)],
            "IS10": [float(i) for i in range(n)],
            "IS2": [None if i % 4 == 0 else 1.0 + i for i in range(n)],
            "ES_a": [0.125] * n,
        }
    )


def reference_test_rows(lib: pl.DataFrame) -> pl.DataFrame:
    """Eager reference of write_test_rows on the fixtures above."""
    test = [1, 3, 6]
    chem = pl.DataFrame({"comp_id": [100, 101, 102], "chemical_id": [1000, 1001, 0]})
    classes = pl.DataFrame({"chemical_id": [1000, 1001], "compound_class": [3, 0]})
    species = pl.DataFrame({"sample_set_id": [1, 2, 6], "species": ["human", "mouse", "rat"],
                            "species_cluster": [1, 2, 2]})
    return (
        lib.filter(pl.col("sample_set_id").is_in(test))
        .join(chem, on="comp_id")
        .join(classes, on="chemical_id")
        .join(species, on="sample_set_id")
        .sort("sample_set_id", "task_id", "comp_id", "apex_rt")
        .select(
            pl.col("sample_set_id").alias("sampleset_id"), "worksheet_id", "task_id",
            "species", "species_cluster", pl.col("chemical_id").alias("compound"),
            "compound_class", "IS2", "IS10", "ES_a", pl.col("apex_rt").alias("rt"),
        )
    )


def _setup_test_rows(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "lib_parquet": tmp_path / "merged_training_abc_lib208.parquet",
        "folds_csv": tmp_path / "merged_training_abc_lib208_folds.csv",
        "lib_mapping": tmp_path / "lib_comp_chem_mapping_lib208.csv",
        "classes": tmp_path / "chem_classes_k4.parquet",
        "species_mapping": tmp_path / "merged_training_abc_lib208_species_mapping.csv",
    }
    lib_frame().write_parquet(paths["lib_parquet"])
    paths["folds_csv"].write_text(FOLDS_CSV)
    paths["lib_mapping"].write_text(MAPPING_CSV)
    pl.DataFrame({"chem_id": [1000, 1001, 1002, 1003], "compound_class": [3, 0, 1, 1]}
                 ).write_parquet(paths["classes"])
    paths["species_mapping"].write_text(TEST_SPECIES)
    return paths


def test_write_test_rows_matches_reference(tmp_path: Path) -> None:
    paths = _setup_test_rows(tmp_path)
    out = tmp_path / "merged_training_abc_lib208_test_chemclass_rt_prod.parquet"
    acc = write_test_rows(**paths, output=out)
    got = pl.read_parquet(out)
    ref = reference_test_rows(lib_frame())
    assert got.columns == ["sampleset_id", "worksheet_id", "task_id", "species",
                           "species_cluster", "compound", "compound_class", "IS2", "IS10",
                           "ES_a", "rt"]
    assert got.equals(ref)
    assert set(got["sampleset_id"]) == {1, 6}
    # 17 rows: 4 in sample sets 2, 4, 5 (other folds / no fold); of the 13 test rows,
    # 2 unmapped (104), 2 ambiguous (103), 2 without class (102), 2 without species (set 3).
    assert acc.rows_in == 17
    assert list(acc.drops.items()) == [
        ("other_fold", 4), ("comp_id_unmapped", 2), ("comp_id_ambiguous", 2),
        ("chem_id_no_class", 2), ("sample_set_no_species", 2),
    ]
    assert acc.rows_out == got.height == 5
    assert acc.dropped_ids["sample_set_no_species"] == ("sample_set_id", [3])
    assert acc.dropped_ids["comp_id_unmapped"] == ("comp_id", [104])
    assert acc.dropped_ids["chem_id_no_class"] == ("chemical_id", [0])
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["rows_out"] == 5 and meta["drops"]["other_fold"] == 4
    # Rerun: identical bytes.
    out2 = tmp_path / "again.parquet"
    write_test_rows(**paths, output=out2)
    assert out2.read_bytes() == out.read_bytes()


def test_write_test_rows_bad_folds(tmp_path: Path) -> None:
    paths = _setup_test_rows(tmp_path)
    out = tmp_path / "test.parquet"
    paths["folds_csv"].write_text("sample_set_id,fold\n1,test\n2,validation\n")
    before = _files(tmp_path)
    with pytest.raises(RtprepError, match="fold 'validation' is not one of"):
        write_test_rows(**paths, output=out)
    paths["folds_csv"].write_text("sample_set_id,fold\n1,test\n1,train\n")
    with pytest.raises(RtprepError, match="sample_set_id 1 is in both folds"):
        write_test_rows(**paths, output=out)
    assert _files(tmp_path) == before


def test_write_test_rows_warns_about_sample_sets_without_fold(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = _setup_test_rows(tmp_path)
    write_test_rows(**paths, output=tmp_path / "t.parquet")
    assert "1 sample set(s)" in caplog.text and "not in the folds file" in caplog.text
    assert "5" in caplog.text.split("other_fold):")[1].splitlines()[0]


def test_test_rows_equal_the_training_path(tmp_path: Path) -> None:
    """The test rows are exactly what attach + RT CSV make of the same rows."""
    from rtprep.stages.attach import attach_chem_classes

    paths = _setup_test_rows(tmp_path)
    test_out = tmp_path / "test.parquet"
    write_test_rows(**paths, output=test_out)

    capped = tmp_path / "capped.parquet"
    (lib_frame().filter(pl.col("sample_set_id").is_in([1, 3, 6]))
     .sort("sample_set_id", "task_id", "comp_id", "apex_rt").write_parquet(capped))
    chemclass = tmp_path / "capped_chemclass.parquet"
    attach_chem_classes(capped, paths["lib_mapping"], paths["classes"], chemclass)
    csv = tmp_path / "capped_chemclass_rt_prod.csv"
    write_rt_csv(chemclass, paths["species_mapping"], csv)

    got = pl.read_parquet(test_out)
    assert pl.read_csv(csv, schema=got.schema).equals(got)


def test_write_test_rows_without_test_fold(tmp_path: Path) -> None:
    paths = _setup_test_rows(tmp_path)
    paths["folds_csv"].write_text("sample_set_id,fold\n1,train\n2,train\n")
    out = tmp_path / "t.parquet"
    acc = write_test_rows(**paths, output=out)
    assert acc.drops["other_fold"] == 17 and acc.rows_out == 0
    got = pl.read_parquet(out)
    assert got.height == 0
    assert got.columns == rt_columns(lib_frame().columns)


# --- the chunked sort (bounded memory) --------------------------------------------------------
def _setup_many_sets(tmp_path: Path) -> dict[str, Path]:
    """60 sample sets in random file order, many rows with equal identity (told apart by IS10,
    the file position): 40 sets in the test fold, set 7 without species."""
    paths = _setup_test_rows(tmp_path)
    rng = np.random.default_rng(5)
    n = 3000
    ss = rng.integers(1, 61, n)
    pl.DataFrame({
        "lib_id": [208] * n,
        "sample_set_id": ss,
        "task_id": ss * 10 + rng.integers(0, 3, n),
        "worksheet_id": ss // 4,
        "sample_type": ["Sample"] * n,
        "cpd_status": ["Complete"] * n,
        "comp_id": rng.choice([100, 101, 102, 103, 104], n),
        "species_matrix_type": ["plasma"] * n,
        "apex_rt": rng.choice([0.5, 1.25, 2.0], n),
        "IS10": np.arange(n, dtype=np.float64),
        "IS2": np.where(np.arange(n) % 5 == 0, np.nan, rng.normal(size=n)),
        "ES_a": [0.125] * n,
    }).write_parquet(paths["lib_parquet"])
    sets = list(range(1, 61))
    paths["folds_csv"].write_text("sample_set_id,fold\n" + "".join(
        f"{s},{'train' if s % 3 == 0 else 'test'}\n" for s in sets))
    paths["species_mapping"].write_text("sample_set_id,species,species_cluster\n" + "".join(
        f"{s},sp{s % 5},{s % 5 // 2}\n" for s in sets if s != 7))
    return paths


def _eager_test_rows(paths: dict[str, Path]) -> pl.DataFrame:
    lib = pl.read_parquet(paths["lib_parquet"])
    folds = pl.read_csv(paths["folds_csv"])
    test = folds.filter(pl.col("fold") == "test")["sample_set_id"]
    # MAPPING_CSV: 102 maps to chem 0 (no class), 103 is ambiguous, 104 is another lib's
    chem = pl.DataFrame({"comp_id": [100, 101], "chemical_id": [1000, 1001]})
    classes = pl.read_parquet(paths["classes"]).rename({"chem_id": "chemical_id"})
    species = pl.read_csv(paths["species_mapping"])
    return (
        lib.filter(pl.col("sample_set_id").is_in(test.implode()))
        .join(chem, on="comp_id").join(classes, on="chemical_id")
        .join(species, on="sample_set_id")
        .sort("sample_set_id", "task_id", "comp_id", "apex_rt", maintain_order=True)
        .select(pl.col("sample_set_id").alias("sampleset_id"), "worksheet_id", "task_id",
                "species", "species_cluster", pl.col("chemical_id").alias("compound"),
                "compound_class", "IS2", "IS10", "ES_a", pl.col("apex_rt").alias("rt"))
    )


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_assign_chunks() -> None:
    per_set = pl.DataFrame({"sample_set_id": [9, 1, 5, 3, 7], "n": [1, 3, 2, 10, 1]})
    # in id order: 1 (3 rows) | 3 (10 rows: more than a chunk, alone) | 5, 7, 9 (2+1+1 rows)
    assert assign_chunks(per_set, 4).rows() == [(1, 0), (3, 1), (5, 2), (7, 2), (9, 2)]
    assert assign_chunks(per_set, 17)["chunk"].to_list() == [0] * 5
    assert assign_chunks(per_set, 1)["chunk"].to_list() == [0, 1, 2, 3, 4]
    assert assign_chunks(per_set.clear(), 4).height == 0
    with pytest.raises(ValueError, match="at least 1"):
        assign_chunks(per_set, 0)


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(("chunk_rows", "fanout"), [(1, 16), (1, 2), (25, 3), (200, 16)])
def test_write_test_rows_in_chunks_equals_one_sort(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        chunk_rows: int, fanout: int, ordered: bool) -> None:
    """Many chunks (each sample set its own, or a few sets; cut in one pass or in levels of
    groups, or each read by its sample-set range where the lib file's row groups come in that
    order) give the bytes of the single in-memory sort, and leave no scratch file. (A range
    read is right in any file, only slower where the row groups are not in order: forced here.)"""
    paths = _setup_many_sets(tmp_path)
    one = tmp_path / "one" / "t.parquet"
    acc_one = write_test_rows(**paths, output=one)
    assert "chunks of at most" not in caplog.text  # ~1,000 rows: one chunk, sorted in the plan

    monkeypatch.setattr(rtcsv, "_FANOUT", fanout)
    monkeypatch.setattr(rtcsv, "row_groups_ordered", lambda path, column: ordered)
    caplog.set_level(logging.INFO, logger="rtprep.stages.rt_csv")
    out = tmp_path / "chunked" / "t.parquet"
    acc = write_test_rows(**paths, output=out, chunk_rows=chunk_rows)
    assert "chunks of at most" in caplog.text
    assert ("read by sample-set range" in caplog.text) == ordered

    ref = _eager_test_rows(paths)
    got = pl.read_parquet(out)
    assert got.equals(ref)  # rows and order: equal identities keep the file's order (IS10)
    assert got.height == acc.rows_out > 500 and got["sampleset_id"].n_unique() == 39
    assert pq.read_schema(out).equals(pq.read_schema(one), check_metadata=True)
    assert out.read_bytes() == one.read_bytes()
    assert acc == acc_one
    meta, meta_one = read_meta(out), read_meta(one)
    assert meta == meta_one  # same inputs, counts, config (and output name)
    assert _temporaries(tmp_path) == []


def test_write_test_rows_chunked_failure_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _setup_many_sets(tmp_path)
    out = tmp_path / "t.parquet"
    write_test_rows(**paths, output=out)
    before = out.read_bytes()

    def fail(*args: object, **kwargs: object) -> pl.DataFrame:
        raise OSError("disk went away")

    # The chunks are written, then reading one back fails.
    monkeypatch.setattr(rtcsv, "row_groups_ordered", lambda path, column: False)
    monkeypatch.setattr(pl, "read_ipc", fail)
    with pytest.raises(Exception, match="disk went away"):
        write_test_rows(**paths, output=out, chunk_rows=50)
    assert out.read_bytes() == before  # the previous complete version stays
    assert _temporaries(tmp_path) == []


def test_row_groups_ordered(tmp_path: Path) -> None:
    """The check that lets test rows read each chunk by its sample-set range: the footer's
    statistics, row group by row group."""
    f = tmp_path / "f.parquet"
    pl.DataFrame({"sample_set_id": [1, 1, 2, 2, 2, 5, 9]}).write_parquet(f, row_group_size=2)
    assert rtcsv.row_groups_ordered(f, "sample_set_id")  # 1-1 | 2-2 | 2-5 | 9: ties allowed
    pl.DataFrame({"sample_set_id": [1, 3, 2, 4]}).write_parquet(f, row_group_size=2)
    assert not rtcsv.row_groups_ordered(f, "sample_set_id")  # 1-3 | 2-4 overlap
    assert not rtcsv.row_groups_ordered(f, "no_such_column")
    pl.DataFrame({"sample_set_id": [4, 3]}).write_parquet(f, statistics=False)
    assert not rtcsv.row_groups_ordered(f, "sample_set_id")  # no statistics: not known


def test_write_test_rows_removes_a_killed_writers_scratch_files(tmp_path: Path) -> None:
    paths = _setup_many_sets(tmp_path)
    out = tmp_path / "t.parquet"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs, like a writer killed mid-stage
    stale = [tmp_path / f".t.parquet.{gone.pid}.tmp",
             tmp_path / f".t.parquet.{gone.pid}.chunk000003-000000.tmp",
             tmp_path / f".t.parquet.{gone.pid}.group000000-000004-000001.tmp"]
    running = tmp_path / f".t.parquet.{os.getppid()}.chunk000000-000000.tmp"
    other = tmp_path / f".t.parquet.1.csv.{gone.pid}.tmp"  # another output's temporary
    for p in [*stale, running, other]:
        p.write_bytes(b"partial")
    write_test_rows(**paths, output=out, chunk_rows=50)
    assert _temporaries(tmp_path) == sorted([running.name, other.name])
    assert pl.read_parquet(out).equals(_eager_test_rows(paths))
