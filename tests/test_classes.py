"""Stage chem_classes: chemistry classes by k-means, canonical labels, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.chem.classes import build_chem_classes, classes_paths
from rtprep.core.errors import RtprepError

DIM = 20


def _vec(center: float, jitter: float = 0.0, axis: int = 0) -> list[float]:
    v = [0.0] * DIM
    v[axis] = center
    v[(axis + 1) % DIM] = jitter
    return v


def _blobs() -> pl.DataFrame:
    """Three well-separated blobs: 5 chemicals near axis 0 = 100, 3 near axis 1 = 100,
    2 near axis 2 = 100 (chem_ids deliberately not in blob order)."""
    rows = []
    big = [11, 3, 27, 8, 15]
    mid = [2, 40, 9]
    small = [5, 33]
    for i, cid in enumerate(big):
        rows.append((cid, _vec(100.0, 0.1 * i, axis=0)))
    for i, cid in enumerate(mid):
        rows.append((cid, _vec(100.0, 0.1 * i, axis=1)))
    for i, cid in enumerate(small):
        rows.append((cid, _vec(100.0, 0.1 * i, axis=2)))
    return pl.DataFrame(
        {
            "chem_id": [r[0] for r in rows],
            "smiles": ["C"] * len(rows),
            "embedding20": [r[1] for r in rows],
        },
        schema={"chem_id": pl.Int64, "smiles": pl.String, "embedding20": pl.List(pl.Float64)},
    )


EXPECTED = {11: 0, 3: 0, 27: 0, 8: 0, 15: 0, 2: 1, 40: 1, 9: 1, 5: 2, 33: 2}


def _write(df: pl.DataFrame, folder: Path, name: str = "emb.parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    df.write_parquet(p)
    return p


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_paths_are_beside_the_embeddings(tmp_path: Path) -> None:
    pq, csv = classes_paths(tmp_path / "res" / "emb.parquet", 32)
    assert pq == tmp_path / "res" / "chem_classes_k32.parquet"
    assert csv == tmp_path / "res" / "chem_classes_k32.csv"


def test_blobs_give_canonical_classes(tmp_path: Path) -> None:
    emb = _write(_blobs(), tmp_path)
    acc = build_chem_classes(emb, n_clusters=3, seed=1)
    pq, csv = classes_paths(emb, 3)
    out = pl.read_parquet(pq)
    assert out.schema == pl.Schema({"chem_id": pl.Int64, "compound_class": pl.Int64})
    assert out["chem_id"].to_list() == sorted(EXPECTED)
    assert dict(zip(out["chem_id"], out["compound_class"], strict=True)) == EXPECTED
    lines = csv.read_text().splitlines()
    assert lines[0] == "chem_id,compound_class"
    assert lines[1:] == [f"{c},{EXPECTED[c]}" for c in sorted(EXPECTED)]
    assert acc.rows_in == 10 and acc.rows_out == 10
    for p in (pq, csv):
        meta = json.loads(Path(str(p) + ".meta.json").read_text())
        assert meta["extra"]["class_sizes"] == {"0": 5, "1": 3, "2": 2}
        assert meta["seeds"] == {"kmeans_seed": 1}
        assert meta["rows_out"] == 10
    assert _files(tmp_path) == sorted(
        ["emb.parquet", "chem_classes_k3.parquet", "chem_classes_k3.csv",
         "chem_classes_k3.parquet.meta.json", "chem_classes_k3.csv.meta.json"]
    )


def test_permuted_rows_and_seeds_give_identical_files(tmp_path: Path) -> None:
    df = _blobs()
    a = _write(df, tmp_path / "a")
    b = _write(df.sample(fraction=1.0, shuffle=True, seed=7), tmp_path / "b")
    build_chem_classes(a, n_clusters=3, seed=1)
    build_chem_classes(b, n_clusters=3, seed=1)
    c_pq = tmp_path / "c.parquet"
    c_csv = tmp_path / "c.csv"
    build_chem_classes(a, n_clusters=3, seed=99, out_parquet=c_pq, out_csv=c_csv)
    for suffix in ("parquet", "csv"):
        assert (tmp_path / "a" / f"chem_classes_k3.{suffix}").read_bytes() == (
            tmp_path / "b" / f"chem_classes_k3.{suffix}").read_bytes()
    # Another seed finds the same (obvious) clusters and therefore the same canonical labels.
    assert c_csv.read_bytes() == (tmp_path / "a" / "chem_classes_k3.csv").read_bytes()


def test_equal_sizes_are_ordered_by_centroid(tmp_path: Path) -> None:
    # Two blobs of 2: the one with the smaller first coordinate of its centroid is class 0.
    df = pl.DataFrame(
        {"chem_id": [1, 2, 3, 4], "smiles": ["C"] * 4,
         "embedding20": [_vec(50.0, axis=0), _vec(51.0, axis=0), _vec(-50.0, axis=0),
                         _vec(-51.0, axis=0)]},
    )
    emb = _write(df, tmp_path)
    build_chem_classes(emb, n_clusters=2, seed=3)
    out = pl.read_parquet(classes_paths(emb, 2)[0])
    assert out["compound_class"].to_list() == [1, 1, 0, 0]


def test_array_dtype_and_identical_duplicates(tmp_path: Path) -> None:
    df = _blobs()
    df = pl.concat([df, df.head(2)]).with_columns(
        pl.col("embedding20").cast(pl.Array(pl.Float32, DIM)), pl.col("chem_id").cast(pl.Int32)
    )
    emb = _write(df, tmp_path)
    acc = build_chem_classes(emb, n_clusters=3, seed=1)
    out = pl.read_parquet(classes_paths(emb, 3)[0])
    assert dict(zip(out["chem_id"], out["compound_class"], strict=True)) == EXPECTED
    assert acc.rows_in == 12
    assert acc.drops == {"duplicate_row": 2}
    assert acc.rows_out == 10


def _broken(kind: str) -> pl.DataFrame:
    df = _blobs()
    emb = df["embedding20"].to_list()
    if kind == "short":
        emb[3] = emb[3][:19]
    elif kind == "nan":
        emb[3][4] = float("nan")
    elif kind == "inf":
        emb[3][4] = float("-inf")
    elif kind == "null_element":
        emb[3][4] = None
    elif kind == "null":
        emb[3] = None
    return df.with_columns(pl.Series("embedding20", emb, dtype=pl.List(pl.Float64)))


def test_the_width_is_the_files_own(tmp_path: Path) -> None:
    """A 5-component embeddings file (``rtprep embed --n-components 5``) gives the same classes
    as the 20-wide one: the blobs lie in the first three coordinates."""
    df = _blobs().with_columns(pl.col("embedding20").list.head(5))
    emb = _write(df, tmp_path)
    build_chem_classes(emb, n_clusters=3, seed=1)
    out = pl.read_parquet(classes_paths(emb, 3)[0])
    assert dict(zip(out["chem_id"], out["compound_class"], strict=True)) == EXPECTED
    # one vector of another width is still refused, against the file's own width
    short = df["embedding20"].to_list()
    short[3] = short[3][:4]
    emb = _write(df.with_columns(pl.Series("embedding20", short)), tmp_path, "short.parquet")
    with pytest.raises(RtprepError, match=r"length 4 \(expected 5\) for chem_id 8"):
        build_chem_classes(emb, n_clusters=3, seed=1)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("short", "embedding of length 19 (expected 20) for chem_id 8"),
        ("nan", "NaN or infinite values for chem_id 8"),
        ("inf", "NaN or infinite values for chem_id 8"),
        ("null_element", "null values for chem_id 8"),
        ("null", "no embedding (null) for chem_id 8"),
    ],
)
def test_bad_embeddings_are_named(tmp_path: Path, kind: str, message: str) -> None:
    emb = _write(_broken(kind), tmp_path)
    with pytest.raises(RtprepError) as err:
        build_chem_classes(emb, n_clusters=3, seed=1)
    text = str(err.value)
    assert str(emb) in text and "'embedding20'" in text and message in text
    assert _files(tmp_path) == ["emb.parquet"]


def test_two_vectors_for_one_chem_id(tmp_path: Path) -> None:
    df = _blobs()
    clash = df.filter(pl.col("chem_id") == 11).with_columns(
        pl.Series("embedding20", [_vec(1.0)], dtype=pl.List(pl.Float64))
    )
    emb = _write(pl.concat([df, clash]), tmp_path)
    with pytest.raises(RtprepError, match="chem_id 11 has two different embeddings"):
        build_chem_classes(emb, n_clusters=3, seed=1)
    assert _files(tmp_path) == ["emb.parquet"]


def test_missing_column_and_null_chem_id(tmp_path: Path) -> None:
    emb = _write(_blobs().drop("embedding20"), tmp_path)
    with pytest.raises(RtprepError, match=r"missing required column.*'embedding20'"):
        build_chem_classes(emb, n_clusters=3, seed=1)
    df = _blobs().with_columns(
        pl.when(pl.col("chem_id") == 11).then(None).otherwise(pl.col("chem_id")).alias("chem_id")
    )
    emb = _write(df, tmp_path, "null_id.parquet")
    with pytest.raises(RtprepError, match=r"column 'chem_id'.*1 row"):
        build_chem_classes(emb, n_clusters=3, seed=1)
    with pytest.raises(RtprepError, match="not found"):
        build_chem_classes(tmp_path / "nope.parquet", n_clusters=3, seed=1)


@pytest.mark.parametrize(("k", "message"), [
    (0, "at least 1"),
    (-2, "at least 1"),
    (11, "larger than the number of embedded chemicals \\(10\\)"),
])
def test_bad_n_clusters(tmp_path: Path, k: int, message: str) -> None:
    emb = _write(_blobs(), tmp_path)
    with pytest.raises(RtprepError, match=message):
        build_chem_classes(emb, n_clusters=k, seed=1)
    assert _files(tmp_path) == ["emb.parquet"]


def test_more_clusters_than_distinct_vectors(tmp_path: Path) -> None:
    df = pl.DataFrame({"chem_id": [1, 2, 3], "smiles": ["C"] * 3,
                       "embedding20": [_vec(1.0), _vec(1.0), _vec(2.0)]})
    emb = _write(df, tmp_path)
    with pytest.raises(RtprepError, match="distinct embeddings \\(2 among 3"):
        build_chem_classes(emb, n_clusters=3, seed=1)
    assert _files(tmp_path) == ["emb.parquet"]


def test_single_cluster(tmp_path: Path) -> None:
    emb = _write(_blobs(), tmp_path)
    build_chem_classes(emb, n_clusters=1, seed=0)
    out = pl.read_parquet(classes_paths(emb, 1)[0])
    assert out["compound_class"].to_list() == [0] * 10
    assert np.all(out["chem_id"].to_numpy()[:-1] < out["chem_id"].to_numpy()[1:])
