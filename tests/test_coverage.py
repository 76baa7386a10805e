"""Stage coverage: species × compound coverage of a lib file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.core.artifacts import read_meta
from rtprep.core.errors import RtprepError
from rtprep.stages import coverage
from rtprep.stages.coverage import species_compound_coverage

# (species_matrix_type, comp_id, n_rows)
PAIRS = [
    ("plasma", 1, 3),
    ("plasma", 2, 12),
    ("plasma", 7, 1),
    ("urine", 1, 25),
    ("urine", 3, 60),
    ("liver", 2, 150),
]


def _lib_frame() -> pl.DataFrame:
    rows = [(smt, comp) for smt, comp, n in PAIRS for _ in range(n)]
    df = pl.DataFrame(rows, schema={"species_matrix_type": pl.String, "comp_id": pl.Int64},
                      orient="row")
    # shuffle so that the counts cannot rely on input order
    return df.with_columns(apex_rt=pl.int_range(pl.len()).cast(pl.Float64) / 10).sample(
        fraction=1.0, shuffle=True, seed=3)


@pytest.fixture
def lib_file(tmp_path: Path) -> Path:
    path = tmp_path / "merged_training_abc_lib208.parquet"
    _lib_frame().write_parquet(path, row_group_size=50)
    return path


def test_table_pairs_and_retained_totals(lib_file: Path, tmp_path: Path) -> None:
    csv_out = tmp_path / "merged_training_abc_lib208_species_compounds.csv"
    summary_out = tmp_path / "summary.txt"
    text = species_compound_coverage(lib_file, csv_out, summary_out=summary_out)

    got = pl.read_csv(csv_out)
    assert got.columns == ["species_matrix_type", "comp_id", "n_rows"]
    assert got.rows() == sorted(PAIRS)

    meta = read_meta(csv_out)
    extra = meta["extra"]
    assert extra["n_pairs"] == 6
    assert extra["n_rows"] == 251
    assert extra["species"] == [
        {"species_matrix_type": "liver", "n_compounds": 1, "n_rows": 150},
        {"species_matrix_type": "plasma", "n_compounds": 3, "n_rows": 16},
        {"species_matrix_type": "urine", "n_compounds": 2, "n_rows": 85},
    ]
    # cap 10: 3+10+1+10+10+10 = 44; cap 20: 3+12+1+20+20+20 = 76;
    # cap 50: 3+12+1+25+50+50 = 141; cap 100: 3+12+1+25+60+100 = 201
    assert extra["retained_if_capped"] == {"10": 44, "20": 76, "50": 141, "100": 201}
    assert (meta["rows_in"], meta["rows_out"]) == (251, 6)

    assert summary_out.read_text() == text
    lines = text.splitlines()
    assert lines[0] == "merged_training_abc_lib208.parquet: 251 rows"
    assert lines[1].split() == ["species_matrix_type", "n_compounds", "n_rows"]
    assert [ln.split() for ln in lines[2:5]] == [["liver", "1", "150"], ["plasma", "3", "16"],
                                                 ["urine", "2", "85"]]
    assert "unique (species_matrix_type, comp_id) pairs: 6" in text
    assert "rows retained at cap 10 per pair: 44 (17.5%)" in text
    assert "rows retained at cap 100 per pair: 201 (80.1%)" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_custom_caps_and_no_summary_file(lib_file: Path, tmp_path: Path) -> None:
    csv_out = tmp_path / "cov.csv"
    text = species_compound_coverage(lib_file, csv_out, caps=[1, 5])
    assert read_meta(csv_out)["extra"]["retained_if_capped"] == {"1": 6, "5": 3 + 5 + 1 + 5 + 5
                                                                 + 5}
    assert "cap 5 per pair: 24" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [lib_file.name, "cov.csv", "cov.csv.meta.json"])


def test_nulls_are_their_own_group(tmp_path: Path) -> None:
    path = tmp_path / "lib.parquet"
    pl.DataFrame({"species_matrix_type": ["a", None, None, "a"], "comp_id": [1, 1, 1, None]},
                 schema={"species_matrix_type": pl.String, "comp_id": pl.Int64}
                 ).write_parquet(path)
    species_compound_coverage(path, tmp_path / "c.csv", caps=[1])
    assert pl.read_csv(tmp_path / "c.csv").rows() == [("a", 1, 1), ("a", None, 1),
                                                      (None, 1, 2)]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "lib.parquet"
    _lib_frame().clear().write_parquet(path)
    text = species_compound_coverage(path, tmp_path / "c.csv")
    assert "pairs: 0" in text
    assert read_meta(tmp_path / "c.csv")["extra"]["retained_if_capped"]["10"] == 0


def test_bad_inputs(tmp_path: Path) -> None:
    out = tmp_path / "c.csv"
    with pytest.raises(RtprepError, match="not found"):
        species_compound_coverage(tmp_path / "none.parquet", out)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(RtprepError, match="not a readable Parquet"):
        species_compound_coverage(bad, out)
    nocomp = tmp_path / "nocomp.parquet"
    pl.DataFrame({"species_matrix_type": ["a"]}).write_parquet(nocomp)
    with pytest.raises(RtprepError, match="comp_id"):
        species_compound_coverage(nocomp, out)
    good = tmp_path / "good.parquet"
    _lib_frame().write_parquet(good)
    with pytest.raises(RtprepError, match="caps"):
        species_compound_coverage(good, out, caps=[0, 10])
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("seed", "slice_rows"), [(0, 4_000_000), (1, 4_000_000), (0, 777),
                                                 (1, 1000)])
def test_equals_eager_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int,
                                slice_rows: int) -> None:
    """The counts of the whole file, also when it is counted in many slices (cutting across
    row groups, or along them) and the slices' counts summed."""
    monkeypatch.setattr(coverage, "SLICE_ROWS", slice_rows)
    rng = np.random.default_rng(seed)
    n = 20_000
    df = pl.DataFrame({
        "species_matrix_type": rng.choice(["plasma", "urine", "liver", "csf"], n).tolist(),
        "comp_id": rng.zipf(1.5, n) % 400,
        "apex_rt": rng.uniform(0, 10, n),
    })
    path = tmp_path / "lib.parquet"
    df.write_parquet(path, row_group_size=1000)
    caps = (10, 20, 50, 100)
    species_compound_coverage(path, tmp_path / "c.csv", caps=caps)
    got = pl.read_csv(tmp_path / "c.csv")
    ref = df.group_by("species_matrix_type", "comp_id").len("n_rows").sort(
        "species_matrix_type", "comp_id")
    assert got.rows() == ref.rows()
    extra = read_meta(tmp_path / "c.csv")["extra"]
    counts = ref["n_rows"].to_numpy()
    assert extra["retained_if_capped"] == {str(c): int(np.minimum(counts, c).sum()) for c in caps}
    per_species = ref.group_by("species_matrix_type").agg(
        pl.len().alias("n_compounds"), pl.col("n_rows").sum()).sort("species_matrix_type")
    assert extra["species"] == per_species.to_dicts()
