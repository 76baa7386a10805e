"""Each streamed data stage returns the rows of a plain eager polars reference kept here.

One small, messy export (two libs, one with the ``correct`` column name and an Int32/Float32
shard; re-processed shards repeating rows; duplicates with -0.0/0.0 and NaN; bad statuses and
sample types; injections without predictors; invalid and out-of-range RTs; unmapped, ambiguous
and classless compounds; sample sets without species) goes through merge, split, coverage,
folds, cap and the test-fold rows. Each stage's output is compared, rows and order, with the same
work written eagerly (read everything, ``unique``, filter, join, ``over``, sort) in this file; the
test-fold rows also sorted in many chunks (bounded memory), to the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import rtprep.stages.merge as merge_mod
import rtprep.stages.rt_csv as rtcsv
from rtprep.core.hashing import IDENTITY_COLUMNS, id_hash, with_row_hash
from rtprep.stages.cap import assign_folds, cap_species_compounds
from rtprep.stages.coverage import species_compound_coverage
from rtprep.stages.merge import merge_export
from rtprep.stages.rt_csv import write_test_rows
from rtprep.stages.split import split_lib

LIBS = (208, 209)
SMTS = ("plasma", "urine", "liver")
KEY = ["lib_id", "sample_set_id", "task_id", "species_matrix_type"]
RT_RANGE = (0.0, 40.0)
PAIR = ["species_matrix_type", "comp_id"]
IDENT = list(IDENTITY_COLUMNS)


# --- the export ---------------------------------------------------------------------------------
def _peaks(rng: np.random.Generator, lib: int, n: int) -> pl.DataFrame:
    task = rng.integers(0, 60, n) + lib * 1000
    rt = np.round(rng.uniform(0.3, 39.0, n), 3)
    kind = rng.choice(["ok", "null", "nan", "inf", "neg", "late"], n,
                      p=[0.88, 0.02, 0.02, 0.02, 0.03, 0.03])
    rt = np.where(kind == "nan", np.nan, rt)
    rt = np.where(kind == "inf", np.inf, rt)
    rt = np.where(kind == "neg", -rt, rt)
    rt = np.where(kind == "late", rt + 45.0, rt)
    return pl.DataFrame({
        "sample_set_id": task // 3, "task_id": task, "worksheet_id": task // 10,
        "sample_type": rng.choice(["Sample", "QC", "PRCS"], n, p=[0.85, 0.1, 0.05]).tolist(),
        "cpd_status": rng.choice(["Complete", "Complete - NFS", "Not Found"], n,
                                 p=[0.8, 0.15, 0.05]).tolist(),
        "comp_id": rng.integers(1, 13, n),
        "species_matrix_type": rng.choice(SMTS, n).tolist(),
        "apex_rt": rt,
        "peak_area": rng.uniform(1, 1e6, n),
        "fit_scores": rng.uniform(size=n),
    }).with_columns(
        pl.when(pl.Series(kind == "null")).then(None).otherwise(pl.col("apex_rt"))
        .alias("apex_rt")
    )


def _write(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)


def _make_export(root: Path) -> Path:
    rng = np.random.default_rng(11)
    exp = root / "export"
    for lib in LIBS:
        tasks = np.arange(60) + lib * 1000
        for i, smt in enumerate(SMTS):
            pred = pl.DataFrame({
                "sample_set_id": tasks // 3, "task_id": tasks,
                "IS10": rng.normal(5, 1, 60), "IS2": rng.normal(2, 1, 60),
                "RS1": rng.normal(9, 1, 60), "ES_a": rng.normal(3, 1, 60),
            }).with_columns(
                # null standards on some injections; tasks 55.. have no liver predictors
                pl.when(pl.col("task_id") % 7 == i).then(None).otherwise(pl.col("IS2"))
                .alias("IS2"))
            if smt == "liver":
                pred = pred.filter(pl.col("task_id") % 60 < 55)
            _write(pred, exp / f"combine_predictors/lib_id={lib}/species_matrix_type={smt}/"
                   "part-0.parquet")
        for g in range(2):
            df = _peaks(rng, lib, 900)
            # exact duplicates across parts and inside one part, incl. -0.0 vs 0.0 and NaN rts
            zero = df.head(2).with_columns(apex_rt=pl.Series([0.0, -0.0]),
                                           comp_id=pl.lit(7, pl.Int64), peak_area=pl.lit(1.0),
                                           fit_scores=pl.lit(0.5))
            nan = df.slice(2, 1).with_columns(apex_rt=pl.lit(float("nan")))
            parts = [df.slice(0, 300), pl.concat([df.slice(300, 300), df.slice(310, 20)]),
                     pl.concat([df.slice(600, 300), zero, nan, nan]),
                     pl.concat([df.slice(50, 40), df.slice(650, 30), zero])]  # re-processed
            comp = "correct" if lib == 209 else "comp_id"
            for k, part in enumerate(parts):
                part = part.rename({"comp_id": comp})
                if lib == 209 and k == 1:  # a shard written with Int32 ids and Float32 floats
                    part = part.with_columns(pl.col(pl.Int64).cast(pl.Int32),
                                             pl.col(pl.Float64).cast(pl.Float32))
                _write(part, exp / f"create_training_data/lib_id={lib}/group={g}/"
                       f"part-{k}.parquet")
    return exp


def _side_files(root: Path, lib: int, no_species: int) -> dict[str, Path]:
    mapping = root / f"lib_comp_chem_mapping_lib{lib}.csv"
    # comp 12 unmapped, comp 11 ambiguous, comp 10 -> chem 0 (no class)
    rows = [(lib, c, 1000 + c) for c in range(1, 10)] + [(lib, 10, 0), (lib, 11, 2000),
                                                         (lib, 11, 2001), (999, 12, 5)]
    pl.DataFrame(rows, schema=["lib_id", "comp_id", "chemical_id"], orient="row"
                 ).write_csv(mapping)
    classes = root / "classes.parquet"
    pl.DataFrame({"chem_id": [*range(1001, 1010), 2000, 2001],
                  "compound_class": [c % 3 for c in range(11)]}).write_parquet(classes)
    species = root / f"species_lib{lib}.csv"
    ss = np.arange(lib * 1000 // 3, (lib * 1000 + 60) // 3 + 1)
    ss = ss[ss != no_species]  # one (test) sample set without species
    pl.DataFrame({"sample_set_id": ss, "species": [f"sp{s % 4}" for s in ss],
                  "species_cluster": [s % 4 // 2 for s in ss]}).write_csv(species)
    return {"lib_mapping": mapping, "classes": classes, "species_mapping": species}


# --- eager references -------------------------------------------------------------------------
def _read_shard(path: Path, root: Path) -> pl.DataFrame:
    hive = dict(p.split("=") for p in path.relative_to(root).parts[:-1])
    df = pl.read_parquet(path).rename({"correct": "comp_id"}, strict=False)
    return df.with_columns(
        pl.col(pl.Int32, pl.Int64).cast(pl.Int64), pl.col(pl.Float32, pl.Float64).cast(pl.Float64),
        *(pl.lit(int(v) if k == "lib_id" else v).alias(k) for k, v in hive.items()),
    )


def merge_reference(exp: Path) -> pl.DataFrame:
    """Everything read at once; shards in (lib, group, file) order, as the merge writes them."""
    root = exp / "create_training_data"
    shards = sorted(root.rglob("*.parquet"), key=lambda p: p.relative_to(root).parts)
    peaks = pl.concat([_read_shard(p, root) for p in shards], how="diagonal_relaxed")
    peaks = peaks.unique(keep="first", maintain_order=True)  # lib_id, group are columns
    peaks = peaks.filter(pl.col("cpd_status").is_in(["Complete", "Complete - NFS"]),
                         pl.col("sample_type") != "PRCS")
    proot = exp / "combine_predictors"
    preds = pl.concat([_read_shard(p, proot) for p in sorted(proot.rglob("*.parquet"))],
                      how="diagonal_relaxed").unique()
    return peaks.join(preds, on=KEY, maintain_order="left").drop("fit_scores", "group")


def split_reference(merged: pl.DataFrame, lib: int) -> pl.DataFrame:
    rt = pl.col("apex_rt")
    return merged.filter(pl.col("lib_id") == lib, rt.is_finite(), rt >= 0,
                         rt.is_between(*RT_RANGE))


def coverage_reference(lib_df: pl.DataFrame) -> pl.DataFrame:
    return lib_df.group_by(PAIR).agg(pl.len().cast(pl.Int64).alias("n_rows")).sort(PAIR)


def folds_reference(lib_df: pl.DataFrame, fraction: float, seed: int) -> pl.DataFrame:
    ids = lib_df.select(pl.col("sample_set_id").unique())
    n_test = int(np.floor(fraction * ids.height + 0.5))
    return (ids.with_columns(id_hash("sample_set_id", seed).alias("h"))
            .sort("h", "sample_set_id")
            .with_columns(pl.when(pl.int_range(pl.len()) < n_test).then(pl.lit("test"))
                          .otherwise(pl.lit("train")).alias("fold"))
            .select("sample_set_id", "fold").sort("sample_set_id"))


def cap_reference(lib_df: pl.DataFrame, cap: int, seed: int) -> pl.DataFrame:
    """The definition with ``over()`` on the whole frame: per pair, the first ``cap`` rows by
    (hash, identity); output in identity order."""
    hashed = with_row_hash(lib_df.lazy(), seed, name="h").collect()
    return (hashed.sort([*PAIR, "h", *IDENT])
            .filter(pl.int_range(pl.len()).over(PAIR) < cap)
            .drop("h").sort(IDENT))


def reference_test_rows(lib_df: pl.DataFrame, folds: pl.DataFrame, side: dict[str, Path],
                        lib: int) -> pl.DataFrame:
    mapping = pl.read_csv(side["lib_mapping"]).filter(pl.col("lib_id") == lib)
    unambiguous = (mapping.group_by("comp_id").agg(pl.col("chemical_id").unique())
                   .filter(pl.col("chemical_id").list.len() == 1)
                   .select("comp_id", pl.col("chemical_id").list.first()))
    classes = pl.read_parquet(side["classes"]).rename({"chem_id": "chemical_id"})
    species = pl.read_csv(side["species_mapping"])
    test = folds.filter(pl.col("fold") == "test")["sample_set_id"]
    covs = ["IS2", "IS10", "RS1", "ES_a"]
    return (
        lib_df.filter(pl.col("sample_set_id").is_in(test.implode()))
        .join(unambiguous, on="comp_id").join(classes, on="chemical_id")
        .join(species, on="sample_set_id")
        .sort(IDENT, maintain_order=True)
        .select(pl.col("sample_set_id").alias("sampleset_id"), "worksheet_id", "task_id",
                "species", "species_cluster", pl.col("chemical_id").alias("compound"),
                "compound_class", *covs, pl.col("apex_rt").alias("rt"))
    )


# --- the chain --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("chain")
    exp = _make_export(root)
    merged = root / "merged.parquet"
    account = merge_export(exp, merged)
    return {"root": root, "export": exp, "merged": merged, "account": account}


def test_merge_equals_eager_reference(chain: dict) -> None:
    got = pl.read_parquet(chain["merged"])
    ref = merge_reference(chain["export"])
    assert set(got.columns) == set(ref.columns)
    assert got.equals(ref.select(got.columns))  # same rows, same order
    # the duplicates were there, including the -0.0/0.0 and NaN ones (one kept per partition)
    assert chain["account"].drops["duplicate_row"] > 4 * (20 + 40 + 30)
    zero = got.filter(pl.col("apex_rt") == 0, pl.col("comp_id") == 7, pl.col("peak_area") == 1)
    assert zero.height <= 2 * len(LIBS) * 2


def test_merge_exact_when_every_hash_collides(chain: dict, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # All rows share one hash: every row is a candidate and is decided by full comparison.
    monkeypatch.setattr(pl.DataFrame, "hash_rows",
                        lambda self, *a, **k: pl.Series(np.zeros(self.height, np.uint64)))
    out = tmp_path / "m.parquet"
    merge_export(chain["export"], out)
    assert out.read_bytes() == Path(chain["merged"]).read_bytes()


def test_merge_small_row_groups_same_rows(chain: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge_mod, "ROW_GROUP_SIZE", 97)
    out = tmp_path / "m.parquet"
    merge_export(chain["export"], out)
    assert pl.read_parquet(out).equals(pl.read_parquet(chain["merged"]))


@pytest.mark.parametrize("lib", LIBS)
def test_split_and_coverage_equal_eager_reference(chain: dict, tmp_path: Path, lib: int) -> None:
    merged = pl.read_parquet(chain["merged"])
    out = tmp_path / f"lib{lib}.parquet"
    acc = split_lib(chain["merged"], lib, out, rt_range=RT_RANGE)
    ref = split_reference(merged, lib)
    got = pl.read_parquet(out)
    assert got.equals(ref)
    assert acc.rows_out == ref.height and acc.drops["apex_rt_out_of_range"] > 0

    csv = tmp_path / "coverage.csv"
    species_compound_coverage(out, csv)
    assert pl.read_csv(csv).equals(coverage_reference(ref))


@pytest.mark.parametrize(("cap", "seed"), [(1, 3), (5, 42)])
def test_cap_equals_eager_reference(chain: dict, tmp_path: Path, cap: int, seed: int) -> None:
    lib_file = tmp_path / "lib.parquet"
    split_lib(chain["merged"], 209, lib_file, rt_range=RT_RANGE)
    lib_df = pl.read_parquet(lib_file)
    out = tmp_path / "cap.parquet"
    cap_species_compounds(lib_file, out, cap_per_pair=cap, seed=seed)
    got = pl.read_parquet(out)
    assert got.equals(cap_reference(lib_df, cap, seed))
    assert got.group_by(PAIR).len()["len"].max() == cap

    # train fold only
    folds = tmp_path / "folds.csv"
    assign_folds(lib_file, folds, test_fraction=0.25, fold_seed=seed)
    fold_df = pl.read_csv(folds)
    assert fold_df.equals(folds_reference(lib_df, 0.25, seed))
    train = fold_df.filter(pl.col("fold") == "train")["sample_set_id"]
    out_train = tmp_path / "cap_train.parquet"
    cap_species_compounds(lib_file, out_train, cap_per_pair=cap, seed=seed,
                                folds_csv=folds, fold="train")
    ref = cap_reference(lib_df.filter(pl.col("sample_set_id").is_in(train.implode())), cap,
                        seed)
    assert pl.read_parquet(out_train).equals(ref)


@pytest.mark.parametrize("lib", LIBS)
def test_test_rows_equal_eager_reference(chain: dict, tmp_path: Path, lib: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    lib_file = tmp_path / "lib.parquet"
    split_lib(chain["merged"], lib, lib_file, rt_range=RT_RANGE)
    lib_df = pl.read_parquet(lib_file)
    folds = tmp_path / "folds.csv"
    assign_folds(lib_file, folds, test_fraction=0.3, fold_seed=1)
    test_ids = pl.read_csv(folds).filter(pl.col("fold") == "test")["sample_set_id"]
    side = _side_files(tmp_path, lib, no_species=int(test_ids.min()))
    out = tmp_path / "test_rows.parquet"
    acc = write_test_rows(lib_file, folds, output=out, **side)
    got = pl.read_parquet(out)
    ref = reference_test_rows(lib_df, pl.read_csv(folds), side, lib)
    assert got.equals(ref.select(got.columns))
    assert acc.rows_out == ref.height > 0
    assert {"comp_id_unmapped", "comp_id_ambiguous", "chem_id_no_class",
            "sample_set_no_species"} <= {k for k, v in acc.drops.items() if v > 0}

    # The chunked sort (bounded memory): every sample set its own chunk, cut in levels of two
    # groups; the same bytes as the one in-memory sort above, and no scratch file left.
    monkeypatch.setattr(rtcsv, "_FANOUT", 2)
    chunked = tmp_path / "chunked" / "test_rows.parquet"
    acc_chunked = write_test_rows(lib_file, folds, output=chunked, chunk_rows=1, **side)
    assert pl.read_parquet(chunked).equals(ref.select(got.columns))
    assert chunked.read_bytes() == out.read_bytes()
    assert acc_chunked == acc
    assert not list(tmp_path.rglob("*.tmp"))
