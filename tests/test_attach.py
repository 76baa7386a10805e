"""Stage attach: attach CHEM_ID + compound_class, drop what cannot be mapped, count it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from rtprep.core.errors import RtprepError
from rtprep.stages.attach import attach_chem_classes, attach_lazy, read_lib_mapping

# comp_id -> number of rows in the capped input, and what the mapping / classes say about it.
#   100 -> chem 1000 (class 3)       101 -> chem 1001 (class 0)    106 -> chem 1000 (class 3)
#   102 -> chem 0 (no class)         105 -> chem 1004 (no class)
#   103 -> chem 1002 and 1003 (ambiguous)
#   104 -> only mapped in lib 209 (unmapped for lib 208)
COMPS = [100, 101, 102, 103, 104, 105, 106]
ROWS_PER_COMP = {100: 3, 101: 2, 102: 2, 103: 3, 104: 4, 105: 1, 106: 2}


def capped_frame(lib: int = 208) -> pl.DataFrame:
    """A small capped table sorted by identity (sample_set_id, task_id, comp_id, apex_rt)."""
    rows = []
    for comp in COMPS:
        for i in range(ROWS_PER_COMP[comp]):
            ss = 1 + (i % 2)
            rows.append(
                {"lib_id": lib, "sample_set_id": ss, "task_id": 10 * ss + i, "worksheet_id": 7,
                 "sample_type": "Sample", "cpd_status": "Complete", "comp_id": comp,
                 "species_matrix_type": "plasma", "apex_rt": 1.0 + comp / 100 + i / 10,
                 "peak_area": 1e5 + i, "IS10": 3.5, "IS2": None if i == 1 else 2.25,
                 "RS1": 4.125, "ES_b": 5.0}
            )
    schema = {"lib_id": pl.Int64, "sample_set_id": pl.Int64, "task_id": pl.Int64,
              "worksheet_id": pl.Int64, "sample_type": pl.String, "cpd_status": pl.String,
              "comp_id": pl.Int64, "species_matrix_type": pl.String, "apex_rt": pl.Float64,
              "peak_area": pl.Float64, "IS10": pl.Float64, "IS2": pl.Float64,
              "RS1": pl.Float64, "ES_b": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("sample_set_id", "task_id", "comp_id",
                                                   "apex_rt")


MAPPING_CSV = """lib_id,comp_id,chemical_id
208,100,1000
208,100,1000
208,101,1001
208,102,0
208,103,1002
208,103,1003
209,104,1005
208,105,1004
208,106,1000
"""


def classes_frame() -> pl.DataFrame:
    return pl.DataFrame({"chem_id": [1000, 1001, 1002, 1003, 1005],
                         "compound_class": [3, 0, 1, 1, 2]})


def write_inputs(folder: Path, *, lib: int = 208, mapping: str = MAPPING_CSV,
                 capped: pl.DataFrame | None = None) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    inp = folder / f"merged_training_abc_lib{lib}_cap5.parquet"
    (capped if capped is not None else capped_frame(lib)).write_parquet(inp)
    mp = folder / f"lib_comp_chem_mapping_lib{lib}.csv"
    mp.write_text(mapping)
    cl = folder / "chem_classes_k4.parquet"
    classes_frame().write_parquet(cl)
    return inp, mp, cl


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def expected_output() -> pl.DataFrame:
    """Plain eager reference: keep comps 100, 101, 106, in input order."""
    chem = {100: 1000, 101: 1001, 106: 1000}
    cls = {1000: 3, 1001: 0}
    return (
        capped_frame()
        .filter(pl.col("comp_id").is_in([100, 101, 106]))
        .with_columns(pl.col("comp_id").replace_strict(chem, return_dtype=pl.Int64)
                      .alias("chemical_id"))
        .with_columns(pl.col("chemical_id").replace_strict(cls, return_dtype=pl.Int64)
                      .alias("compound_class"))
    )


def test_attach_drops_counts_and_ids(tmp_path: Path) -> None:
    inp, mp, cl = write_inputs(tmp_path)
    out = tmp_path / "merged_training_abc_lib208_cap5_chemclass.parquet"
    acc = attach_chem_classes(inp, mp, cl, out)
    assert acc.rows_in == 17
    assert list(acc.drops.items()) == [
        ("comp_id_unmapped", 4), ("comp_id_ambiguous", 3), ("chem_id_no_class", 3)
    ]
    assert acc.rows_out == 7
    assert acc.dropped_ids == {
        "comp_id_unmapped": ("comp_id", [104]),
        "comp_id_ambiguous": ("comp_id", [103]),
        "chem_id_no_class": ("chemical_id", [0, 1004]),
    }
    got = pl.read_parquet(out)
    assert got.columns == [*capped_frame().columns, "chemical_id", "compound_class"]
    assert got.schema["chemical_id"] == pl.Int64 and got.schema["compound_class"] == pl.Int64
    assert got.equals(expected_output())

    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["rows_in"] == 17 and meta["rows_out"] == 7
    assert meta["drops"] == {"comp_id_unmapped": 4, "comp_id_ambiguous": 3,
                             "chem_id_no_class": 3}
    dropped = Path(str(out) + ".dropped.csv").read_text().splitlines()
    assert dropped == [
        "reason,column,id",
        "comp_id_unmapped,comp_id,104",
        "comp_id_ambiguous,comp_id,103",
        "chem_id_no_class,chemical_id,0",
        "chem_id_no_class,chemical_id,1004",
    ]


def test_attach_is_byte_identical_on_rerun(tmp_path: Path) -> None:
    inp, mp, cl = write_inputs(tmp_path)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    attach_chem_classes(inp, mp, cl, a)
    attach_chem_classes(inp, mp, cl, b)
    assert a.read_bytes() == b.read_bytes()


def test_mapping_of_another_lib_is_used_for_that_lib(tmp_path: Path) -> None:
    # In lib 209 only comp 104 is mapped (chem 1005, class 2); everything else is unmapped.
    inp, mp, cl = write_inputs(tmp_path, lib=209)
    out = tmp_path / "out.parquet"
    acc = attach_chem_classes(inp, mp, cl, out)
    assert list(acc.drops.values()) == [13, 0, 0]
    got = pl.read_parquet(out)
    assert got["comp_id"].to_list() == [104] * 4
    assert got["compound_class"].to_list() == [2] * 4


@pytest.mark.parametrize(("mapping", "message"), [
    # Every row would be dropped as unmapped: an error, not an empty output.
    ("lib_id,comp_id,chemical_id\n", "has a header but no rows"),
    ("lib_id,comp_id,chemical_id\n305,100,1000\n", "no rows for lib 208.*lists lib_id 305"),
])
def test_mapping_without_rows_for_the_lib_is_an_error(tmp_path: Path, mapping: str,
                                                      message: str) -> None:
    inp, mp, cl = write_inputs(tmp_path, mapping=mapping)
    before = _files(tmp_path)
    with pytest.raises(RtprepError, match=message):
        attach_chem_classes(inp, mp, cl, tmp_path / "out.parquet")
    assert _files(tmp_path) == before


def test_null_comp_id_is_unmapped(tmp_path: Path) -> None:
    capped = capped_frame().with_columns(
        pl.when(pl.col("comp_id") == 101).then(None).otherwise(pl.col("comp_id")).alias("comp_id")
    )
    inp, mp, cl = write_inputs(tmp_path, capped=capped)
    acc = attach_chem_classes(inp, mp, cl, tmp_path / "out.parquet")
    assert acc.drops["comp_id_unmapped"] == 6
    assert acc.dropped_ids["comp_id_unmapped"] == ("comp_id", [None, 104])
    assert acc.rows_out == 5


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ("lib_id,comp_id\n208,100\n", "missing required column.*'chemical_id'"),
        ("lib_id,comp_id,chemical_id\n208,100,1000\n208,abc,1001\n",
         "column 'comp_id': value 'abc' on line 3 is not an integer"),
        ("lib_id,comp_id,chemical_id\n208,100,10.5\n",
         "column 'chemical_id': value '10.5' on line 2 is not an integer"),
        ("lib_id,comp_id,chemical_id\n208,100,\n",
         "column 'chemical_id': empty value on line 2"),
        ("", "cannot be read as CSV"),
    ],
)
def test_bad_mapping_is_named(tmp_path: Path, mapping: str, message: str) -> None:
    inp, mp, cl = write_inputs(tmp_path, mapping=mapping)
    before = _files(tmp_path)
    with pytest.raises(RtprepError, match=message) as err:
        attach_chem_classes(inp, mp, cl, tmp_path / "out.parquet")
    assert str(mp) in str(err.value)
    assert _files(tmp_path) == before


def test_bad_classes_and_input(tmp_path: Path) -> None:
    inp, mp, cl = write_inputs(tmp_path)
    pl.DataFrame({"chem_id": [1, 1], "compound_class": [0, 1]}).write_parquet(cl)
    before = _files(tmp_path)
    with pytest.raises(RtprepError, match="chem_id 1 has two classes"):
        attach_chem_classes(inp, mp, cl, tmp_path / "out.parquet")
    with pytest.raises(RtprepError, match="not found"):
        attach_chem_classes(tmp_path / "nope.parquet", mp, cl, tmp_path / "out.parquet")
    capped = pl.concat([capped_frame(208), capped_frame(209)])
    capped.write_parquet(inp)
    classes_frame().write_parquet(cl)
    with pytest.raises(RtprepError, match=r"lib_ids \[208, 209\]"):
        attach_chem_classes(inp, mp, cl, tmp_path / "out.parquet")
    assert _files(tmp_path) == before


def test_read_lib_mapping_dedupes(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text(" lib_id,comp_id,chemical_id\n".strip() + "\n208, 5 ,7\n208,5,7\n")
    assert read_lib_mapping(p).rows() == [(208, 5, 7)]


def test_attach_lazy_streams(tmp_path: Path) -> None:
    mapping = pl.DataFrame({"comp_id": [1, 2, 2, 3], "chemical_id": [10, 20, 21, 30]})
    classes = pl.DataFrame({"chem_id": [10, 20, 21], "compound_class": [5, 6, 6]})
    lf = pl.LazyFrame({"comp_id": [3, 1, 2, 1, 4], "x": [0, 1, 2, 3, 4]})
    got = attach_lazy(lf, mapping, classes).collect(engine="streaming")
    assert got.rows() == [(1, 1, 10, 5), (1, 3, 10, 5)]


def test_narrow_int_input_and_empty_input(tmp_path: Path) -> None:
    capped = capped_frame().with_columns(pl.col("comp_id", "sample_set_id").cast(pl.Int32))
    inp, mp, cl = write_inputs(tmp_path, capped=capped)
    out = tmp_path / "out.parquet"
    acc = attach_chem_classes(inp, mp, cl, out)
    assert acc.rows_out == 7
    assert pl.read_parquet(out).equals(expected_output())

    capped_frame().clear().write_parquet(inp)
    acc = attach_chem_classes(inp, mp, cl, out)
    assert (acc.rows_in, acc.rows_out) == (0, 0)
    assert acc.drops == dict.fromkeys(("comp_id_unmapped", "comp_id_ambiguous",
                                       "chem_id_no_class"), 0)
    assert pl.read_parquet(out).columns == [*capped_frame().columns, "chemical_id",
                                            "compound_class"]
