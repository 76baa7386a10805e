"""The embedded demo export (rtprep.demo.generate_demo).

The core check re-derives every drop count of the manifest from the files on disk with plain
eager polars, implementing the pipeline's drop rules independently of rtprep.demo.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.demo import EXPORTS, generate_demo, load_structures, structures_path

ROWS = 20_000
LIBS = (208, 209)
H1, H2 = "5684639a28c04bc5af7c4fd1a75e62b5", "de194c2cc2114efaa1075ccf7539d0cb"
INTS = ("sample_set_id", "task_id", "worksheet_id", "comp_id")
FLOATS = ("apex_rt", "peak_area", "fit_scores")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo_a") / "demo"
    manifest = generate_demo(out, rows=ROWS, seed=7, libs=LIBS)
    return out, manifest


def _hive(path: Path, key: str) -> str:
    for part in path.parts:
        if part.startswith(key + "="):
            return part.split("=", 1)[1]
    raise AssertionError(f"no {key}= in {path}")


def read_peaks(out: Path) -> pl.DataFrame:
    """Every peak shard, normalised (Int64 ids, Float64 floats), with lib_id/group from paths."""
    frames = []
    for export in sorted((out / "repo_export").glob("*/create_training_data")):
        for f in sorted(export.rglob("*.parquet")):
            df = pl.read_parquet(f)
            assert "lib_id" not in df.columns and "group" not in df.columns  # hive keys not inside
            if "correct" in df.columns:
                df = df.rename({"correct": "comp_id"})
            frames.append(df.with_columns(
                [pl.col(c).cast(pl.Int64) for c in INTS]
                + [pl.col(c).cast(pl.Float64) for c in FLOATS]
                + [pl.lit(int(_hive(f, "lib_id"))).alias("lib_id"),
                   pl.lit(int(_hive(f, "group"))).alias("group")]
            ))
    return pl.concat(frames, how="diagonal")


def read_predictors(out: Path) -> pl.DataFrame:
    frames = []
    for f in sorted((out / "repo_export").glob("*/combine_predictors/*/*/*.parquet")):
        df = pl.read_parquet(f)
        assert "lib_id" not in df.columns and "species_matrix_type" not in df.columns
        frames.append(df.with_columns(
            [pl.col(c).cast(pl.Int64) for c in ("sample_set_id", "task_id")]
            + [pl.col(c).cast(pl.Float64) for c in df.columns if c[:2] in ("IS", "RS", "ES")]
            + [pl.lit(int(_hive(f, "lib_id"))).alias("lib_id"),
               pl.lit(_hive(f, "species_matrix_type")).alias("species_matrix_type")]
        ))
    return pl.concat(frames, how="diagonal")


def rederive(out: Path, lib: int) -> tuple[dict[str, int], dict[str, list[int]], int]:
    """The pipeline's drop rules, in order, on the rows as written (plain eager polars)."""
    export = next(h for h, libs in EXPORTS.items() if lib in libs)
    peaks = read_peaks(out).filter(pl.col("lib_id") == lib)
    pred = read_predictors(out).filter(pl.col("lib_id") == lib)
    key = ["lib_id", "sample_set_id", "task_id", "species_matrix_type"]
    assert pred.select(key).is_duplicated().sum() == 0  # one predictor row per injection
    drops: dict[str, int] = {}
    ids: dict[str, list[int]] = {}

    def keep(df: pl.DataFrame, reason: str, mask: pl.Expr, id_col: str | None = None):
        kept = df.filter(mask)
        drops[reason] = df.height - kept.height
        if id_col:
            ids[reason] = sorted(df.filter(~mask)[id_col].unique().to_list())
        return kept

    x = peaks.unique()  # all columns, lib_id and group included: duplicates within a partition
    drops["duplicate_row"] = peaks.height - x.height
    x = keep(x, "cpd_status_not_kept", pl.col("cpd_status").is_in(["Complete", "Complete - NFS"]))
    x = keep(x, "sample_type_excluded", pl.col("sample_type") != "PRCS")
    joined = x.join(pred, on=key, how="inner")
    drops["no_predictor_row"] = x.height - joined.height
    x = joined
    rt = pl.col("apex_rt")
    x = keep(x, "apex_rt_invalid", ~(rt.is_null() | rt.is_nan() | rt.is_infinite() | (rt < 0)))
    x = keep(x, "apex_rt_out_of_range", rt <= 40.0)
    mapping = pl.read_csv(out / "repo_export" / f"lib_comp_chem_mapping_lib{lib}.csv")
    assert mapping.columns == ["lib_id", "comp_id", "chemical_id"]
    x = keep(x, "comp_id_unmapped", pl.col("comp_id").is_in(mapping["comp_id"].implode()),
             "comp_id")
    n_chem = mapping.group_by("comp_id").agg(pl.col("chemical_id").n_unique().alias("n"))
    amb = n_chem.filter(pl.col("n") > 1)["comp_id"]
    x = keep(x, "comp_id_ambiguous", ~pl.col("comp_id").is_in(amb.implode()), "comp_id")
    x = x.join(mapping.unique(["comp_id", "chemical_id"]).select("comp_id", "chemical_id"),
               on="comp_id", how="left")
    emb = pl.read_parquet(out / "resources/metabolites/embeddings_chemberta_pca20.parquet")
    x = keep(x, "chem_id_no_class", pl.col("chemical_id").is_in(emb["chem_id"].implode()),
             "chemical_id")
    species = pl.read_csv(
        out / "repo_export" / f"merged_training_{export}_lib{lib}_species_mapping.csv")
    x = keep(x, "sample_set_no_species",
             pl.col("sample_set_id").is_in(species["sample_set_id"].implode()), "sample_set_id")
    return drops, ids, x.height


# --------------------------------------------------------------------------------------------
def test_layout(demo: tuple[Path, dict]) -> None:
    out, manifest = demo
    assert (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert set(manifest["exports"]) == {H1, H2}
    assert manifest["exports"][H1]["libs"] == [208] and manifest["exports"][H2]["libs"] == [209]
    for lib, h in ((208, H1), (209, H2)):
        groups = sorted((out / "repo_export" / h / "create_training_data" / f"lib_id={lib}").glob(
            "group=*"))
        assert len(groups) == 4
        assert all(len(list(g.glob("part-*.parquet"))) >= 3 for g in groups)
        smts = list((out / "repo_export" / h / "combine_predictors" / f"lib_id={lib}").glob(
            "species_matrix_type=*/part-0.parquet"))
        assert 10 <= len(smts) <= 150
        assert all(re.fullmatch(r"[a-z0-9_]+", _hive(p, "species_matrix_type")) for p in smts)
        assert (out / "repo_export" / f"lib_comp_chem_mapping_lib{lib}.csv").is_file()
        sp = pl.read_csv(out / "repo_export" / f"merged_training_{h}_lib{lib}_species_mapping.csv")
        assert sp.columns == ["sample_set_id", "species", "species_cluster", "tissue"]
        assert 30 <= sp["species"].n_unique() <= 100
        assert 5 <= sp["species_cluster"].n_unique() <= 8
        # a species is in one cluster only
        assert sp.group_by("species").agg(pl.col("species_cluster").n_unique()).max()[0, 1] == 1
    # the second export names comp_id "correct"
    f2 = next((out / "repo_export" / H2 / "create_training_data").rglob("*.parquet"))
    f1 = next((out / "repo_export" / H1 / "create_training_data").rglob("*.parquet"))
    assert "correct" in pl.read_parquet_schema(f2) and "comp_id" not in pl.read_parquet_schema(f2)
    assert list(pl.read_parquet_schema(f1)) == [
        "sample_set_id", "task_id", "worksheet_id", "sample_type", "cpd_status", "comp_id",
        "species_matrix_type", "apex_rt", "peak_area", "fit_scores", "acquisition_date"]
    for rel in ("truth/truth.json", "truth/truth_peaks.parquet",
                "resources/metabolites/embeddings_chemberta_pca20.parquet"):
        assert (out / rel).is_file()
    assert not list(out.glob(".demo-staging-*"))


def test_realistic_shape(demo: tuple[Path, dict]) -> None:
    out, _ = demo
    peaks = read_peaks(out)
    pred = read_predictors(out)
    assert set(peaks["sample_type"].unique()) == {"Sample", "QC", "PRCS"}
    assert set(peaks["cpd_status"].unique()) == {"Complete", "Complete - NFS", "Incomplete",
                                                 "Not Found"}
    # task ids unique across the export: a task belongs to one sample set and lib
    assert peaks.group_by("task_id").agg(pl.col("sample_set_id").n_unique(),
                                         pl.col("lib_id").n_unique()).select(
        pl.col("sample_set_id").max(), pl.col("lib_id").max()).row(0) == (1, 1)
    per_lib = peaks.group_by("lib_id").agg(
        pl.col("sample_set_id").n_unique().alias("n_ss"),
        pl.col("comp_id").n_unique().alias("n_comp"),
        pl.col("species_matrix_type").n_unique().alias("n_smt"),
        pl.col("worksheet_id").n_unique().alias("n_ws"),
    )
    assert per_lib["n_ss"].min() >= 150
    assert per_lib["n_comp"].min() >= 200
    assert per_lib["n_smt"].min() >= 20
    assert per_lib["n_ws"].min() >= 10
    inj = pred.group_by("lib_id", "sample_set_id").agg(pl.col("task_id").n_unique().alias("n"))
    assert inj["n"].min() >= 1 and inj["n"].max() <= 6
    cov = [c for c in pred.columns if re.match(r"^(IS\d+|RS\d+|ES_\w+)$", c)]
    assert len([c for c in cov if c.startswith("IS")]) == 8
    assert len([c for c in cov if c.startswith("RS")]) == 4
    assert "ES_creatinine" in cov and len([c for c in cov if c.startswith("ES_")]) == 6
    assert pred.select(pl.col(cov).null_count()).sum_horizontal()[0] > 0


def test_hive_scan_gives_rows_written(demo: tuple[Path, dict]) -> None:
    out, manifest = demo
    counts = {}
    for h, exp in manifest["exports"].items():
        comp = exp["comp_id_column"]
        schema = {c: pl.Int64 for c in ("sample_set_id", "task_id", "worksheet_id", comp)}
        schema |= {c: pl.Float64 for c in FLOATS}
        schema |= {c: pl.String for c in ("sample_type", "cpd_status", "species_matrix_type")}
        schema |= {"acquisition_date": pl.Date}
        lf = pl.scan_parquet(
            out / "repo_export" / h / "create_training_data", hive_partitioning=True,
            hive_schema={"lib_id": pl.Int64, "group": pl.Int64}, schema=schema,
            cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),
        )
        got = lf.group_by("lib_id").agg(pl.len()).collect()
        counts |= dict(got.iter_rows())
    assert counts == {lib: manifest["libs"][str(lib)]["rows_written"] for lib in LIBS}


@pytest.mark.parametrize("lib", LIBS)
def test_manifest_counts_rederived(demo: tuple[Path, dict], lib: int) -> None:
    out, manifest = demo
    entry = manifest["libs"][str(lib)]
    drops, ids, rt_rows = rederive(out, lib)
    assert drops == entry["drops"]
    assert list(entry["drops"]) == list(drops)  # pipeline order
    assert rt_rows == entry["rt_rows"]
    for reason, got in ids.items():
        assert got == entry["dropped_ids"][reason], reason
    # stage totals are consistent
    left = entry["rows_written"]
    for stage, name in (("merge", "merged_rows"), ("split", "split_rows"),
                        ("attach", "attached_rows"), ("rt_csv", "rt_rows")):
        left -= sum(entry["stages"][stage]["drops"].values())
        assert entry[name] == left
    # every kind of mess hits rows, the big stages lose a realistic share
    assert all(v > 0 for v in drops.values()), drops
    assert 0 in ids["chem_id_no_class"] and max(ids["chem_id_no_class"]) >= 900000
    assert len(ids["comp_id_ambiguous"]) >= 1
    loss = 1 - entry["attached_rows"] / entry["split_rows"]
    assert 0.05 < loss < 0.25
    assert any("/create_training_data/" in s for s in entry["mess"]["narrow_shards"])
    assert entry["mess"]["duplicate_shards"]


def test_narrow_shards_and_truth(demo: tuple[Path, dict]) -> None:
    out, manifest = demo
    narrow = [s for e in manifest["libs"].values() for s in e["mess"]["narrow_shards"]]
    schema = pl.read_parquet_schema(out / "repo_export" / narrow[0])
    assert pl.Int32 in schema.values() and pl.Float32 in schema.values()
    truth = pl.read_parquet(out / "truth/truth_peaks.parquet")
    peaks = read_peaks(out)
    for lib in LIBS:
        e = manifest["libs"][str(lib)]
        n = truth.filter(pl.col("lib_id") == lib).height
        assert n == e["rows_written"] - e["mess"]["duplicate_copies_written"]
    # every written peak with a finite apex_rt has its truth row (identity, as written)
    key = ["lib_id", "sample_set_id", "task_id", "comp_id", "apex_rt"]
    fin = peaks.filter(pl.col("apex_rt").is_finite()).unique(key)
    assert fin.join(truth, on=key, how="anti").height == 0
    ok = truth.filter(pl.col("apex_rt").is_between(0, 40) & ~pl.col("is_misassigned"))
    resid = (ok["apex_rt"] - ok["rt_true"]).to_numpy()
    doc = json.loads((out / "truth/truth.json").read_text())
    # noise per compound: log-normal around noise_sd; each peak's sd is in the truth
    z = resid / ok["noise_sd"].to_numpy()
    assert abs(z.std() - 1.0) < 0.05
    cpd = pl.read_parquet(out / "truth/truth_compounds.parquet")["noise_sd"].to_numpy()
    assert abs(np.median(cpd) / doc["noise_sd"] - 1.0) < 0.15
    assert abs(np.log(cpd).std() - doc["noise_log_sd"]) < 0.1
    far = truth.filter(pl.col("misassignment") == "far")
    assert 0.002 < far.height / truth.height < 0.01
    assert ((far["apex_rt"] - far["rt_true"]).abs() >= 3.0).all()
    # near mis-assignments: 5-15 sigma off, or an isomer's RT in the same injection
    near = truth.filter(pl.col("misassignment") == "near")
    iso = truth.filter(pl.col("misassignment") == "isomer")
    assert 0.005 < (near.height + iso.height) / truth.height < 0.015
    off = (near["apex_rt"] - near["rt_true"]).abs() / doc["noise_sd"]
    assert off.min() >= 5.0 - 1e-3 and off.max() <= 15.0 + 1e-3  # (Float32 shards round)
    assert iso.height > 0
    assert truth["is_misassigned"].to_list() == (truth["misassignment"] != "none").to_list()
    cpds = pl.read_parquet(out / "truth/truth_compounds.parquet")
    with_iso = cpds.filter(pl.col("n_isomers") > 0).select("lib_id", "comp_id")
    assert iso.join(with_iso, on=["lib_id", "comp_id"], how="anti").height == 0
    assert near.join(with_iso, on=["lib_id", "comp_id"], how="semi").height == 0
    for lib in LIBS:
        kinds = manifest["libs"][str(lib)]["mess"]["misassigned_by_kind"]
        assert sum(kinds.values()) == manifest["libs"][str(lib)]["mess"]["misassigned_peaks"]


def test_truth_table(demo: tuple[Path, dict]) -> None:
    """truth/truth_table.parquet: one row per generated peak (chem id 0 aside), in the format
    ``rtprep evaluate --truth`` reads."""
    from rtprep.models.calibration import TRUTH_TABLE_COLUMNS, is_truth_table, read_truth_table

    out, manifest = demo
    path = out / manifest["truth"]["table"]
    assert is_truth_table(path)
    table = read_truth_table(path)  # raises on a (task_id, compound) twice
    assert tuple(pl.read_parquet_schema(path)) == TRUTH_TABLE_COLUMNS
    peaks = pl.read_parquet(out / "truth/truth_peaks.parquet").filter(pl.col("chem_id") != 0)
    assert table.height == peaks.height
    j = peaks.with_columns(pl.col("task_id").cast(pl.String),
                           pl.col("chem_id").cast(pl.String).alias("compound")).join(
        table, on=["task_id", "compound"])
    assert j.height == peaks.height
    assert (j["rt_true"] == j["rt_true_right"]).all()
    assert (j["noise_sd"] == j["noise_sd_right"]).all()
    assert (j["is_misassigned"] == j["misassigned"]).all()


def test_gradient_warp_and_matrix_effects(demo: tuple[Path, dict]) -> None:
    """Departures from the model's family: a curvature warp (mid-gradient shift) that walks over
    worksheets with a column change part-way, followed by the standards; species x compound
    matrix effects on ~30% of the compounds."""
    out, _ = demo
    doc = json.loads((out / "truth/truth.json").read_text())
    sigma = doc["noise_sd"]
    inj = pl.read_parquet(out / "truth/truth_injections.parquet")
    pred = read_predictors(out)
    for lib in LIBS:
        p = doc["libs"][str(lib)]
        w = p["warp"]
        i = inj.filter(pl.col("lib_id") == lib).sort("worksheet_id", "task_id")
        mid = i["warp_mid"].to_numpy()
        assert 0.5 * sigma < np.median(np.abs(mid)) < 3.5 * sigma
        col = i["column"].to_numpy()
        assert col.min() == 0 and col.max() == 1 and (np.diff(col) >= 0).all()  # one change
        assert (i.filter(pl.col("column") == 1)["worksheet_id"] >= w[
            "column_change_worksheet_id"]).all()
        assert abs(abs(w["column_change_offset_jump"]) - 3 * sigma) < 1e-9
        # the offset jump shows in the drift offsets across the change
        by_col = i.group_by("column").agg(pl.col("drift_offset").mean()).sort("column")
        step = by_col["drift_offset"][1] - by_col["drift_offset"][0]
        assert abs(step - w["column_change_offset_jump"]) < 0.1
        # the warp walks: neighbouring worksheets are alike, far ones less so
        ws = i.group_by("worksheet_id").agg(pl.col("warp_mid").mean()).sort("worksheet_id")
        x = ws["warp_mid"].to_numpy()
        assert np.corrcoef(x[:-1], x[1:])[0, 1] > 0.5
        # the standards follow it: a mid-gradient standard, after the linear drift, moves with
        # warp_mid; the end ones do not
        std = p["standards_rt"]
        t0, t_end = p["gradient"]["t0"], p["gradient"]["t_end"]
        j = pred.filter(pl.col("lib_id") == lib).join(i, on=["sample_set_id", "task_id"])
        mid_name = min((n for n in std if n[:2] in ("IS", "RS")),
                       key=lambda n: abs((std[n] - t0) / (t_end - t0) - 0.5))
        lin = j[mid_name] - (std[mid_name] * (1 + j["drift_scale"]) + j["drift_offset"])
        ok = lin.is_not_null()
        r = np.corrcoef(lin.filter(ok).to_numpy(), j["warp_mid"].filter(ok).to_numpy())[0, 1]
        assert r > 0.8, r
    groups = pl.read_parquet(out / "truth/truth_groups.parquet")
    cpd = pl.read_parquet(out / "truth/truth_compounds.parquet")
    share = cpd["matrix_effect"].mean()
    assert 0.2 < share < 0.4
    hit = groups.join(cpd.filter(pl.col("matrix_effect")).select("lib_id", "comp_id"),
                      on=["lib_id", "comp_id"])
    assert abs(hit["matrix_effect"].std() / (1.5 * sigma) - 1) < 0.1
    miss = groups.join(hit.select("lib_id", "comp_id"), on=["lib_id", "comp_id"], how="anti")
    assert (miss["matrix_effect"] == 0).all()


def test_acquisition_date(demo: tuple[Path, dict], tmp_path: Path) -> None:
    """One acquisition date per injection, non-decreasing with worksheet order; merge and split
    carry it through, and the RT CSV's columns do not change."""
    from rtprep.stages.merge import MergeOptions, merge_export
    from rtprep.stages.rt_csv import rt_columns
    from rtprep.stages.split import split_lib

    out, _ = demo
    peaks = read_peaks(out)
    assert peaks.schema["acquisition_date"] == pl.Date
    per = peaks.group_by("lib_id", "task_id").agg(pl.col("acquisition_date").n_unique(),
                                                  pl.col("worksheet_id").first())
    assert (per["acquisition_date"] == 1).all()
    inj = pl.read_parquet(out / "truth/truth_injections.parquet")
    for lib in LIBS:
        ws = (inj.filter(pl.col("lib_id") == lib).group_by("worksheet_id")
              .agg(pl.col("acquisition_date").min().alias("lo"),
                   pl.col("acquisition_date").max().alias("hi")).sort("worksheet_id"))
        assert (ws["lo"] == ws["hi"]).all()
        assert (ws["lo"].diff().drop_nulls().dt.total_days() >= 0).all()
        assert ws["lo"].n_unique() > 10
    merged = tmp_path / f"merged_training_{H1}.parquet"
    merge_export(out / "repo_export" / H1, merged, MergeOptions())
    lib_pq = tmp_path / "lib208.parquet"
    split_lib(merged, 208, lib_pq, rt_range=(0.0, 40.0))
    split = pl.read_parquet(lib_pq)
    assert split.schema["acquisition_date"] == pl.Date
    got = split.select("task_id", "acquisition_date").unique().join(
        inj.select("task_id", "acquisition_date"), on="task_id")
    assert got.height > 0 and (got["acquisition_date"] == got["acquisition_date_right"]).all()
    assert rt_columns(split.columns) == rt_columns(split.drop("acquisition_date").columns)


def test_truth_rt_follows_logp(demo: tuple[Path, dict]) -> None:
    from rdkit import Chem
    from rdkit.Chem import Crippen

    out, _ = demo
    emb = pl.read_parquet(out / "resources/metabolites/embeddings_chemberta_pca20.parquet")
    logp = pl.DataFrame({
        "chem_id": emb["chem_id"],
        "logp": [Crippen.MolLogP(Chem.MolFromSmiles(s)) for s in emb["smiles"]],
    })
    truth = pl.read_parquet(out / "truth/truth_peaks.parquet")
    per = truth.group_by("lib_id", "chem_id").agg(pl.col("rt_true").median()).join(
        logp, on="chem_id")
    for lib in LIBS:
        d = per.filter(pl.col("lib_id") == lib)
        assert d.height > 150
        rho = d.select(pl.corr("logp", "rt_true", method="spearman")).item()
        assert rho > 0.6


def test_embeddings(demo: tuple[Path, dict]) -> None:
    out, _ = demo
    emb = pl.read_parquet(out / "resources/metabolites/embeddings_chemberta_pca20.parquet")
    assert emb.schema == pl.Schema({"chem_id": pl.Int64, "smiles": pl.String,
                                    "embedding20": pl.List(pl.Float64)})
    assert (emb["embedding20"].list.len() == 20).all()
    x = np.array(emb["embedding20"].to_list())
    assert np.isfinite(x).all() and (x.std(axis=0) > 0).all()
    assert 0 not in emb["chem_id"] and emb["chem_id"].max() < 900000
    structs = load_structures()
    assert emb["chem_id"].to_list() == structs["chem_id"].to_list()


def test_structures_are_real_and_varied() -> None:
    from rdkit import Chem

    s = pl.read_csv(structures_path())
    assert s.columns == ["chem_id", "name", "family", "smiles"]
    assert s.height >= 250
    assert s["chem_id"].n_unique() == s.height and s["chem_id"].min() > 0
    mols = [Chem.MolFromSmiles(x) for x in s["smiles"]]
    assert all(m is not None for m in mols)
    assert len({Chem.MolToSmiles(m) for m in mols}) == s.height  # no structure twice
    fams = set(s["family"])
    for fam in ("amino_acid", "organic_acid", "sugar", "nucleoside_nucleotide", "fatty_acid",
                "acylcarnitine", "bile_acid", "steroid", "lysophosphatidylcholine",
                "lysophosphatidylethanolamine"):
        assert fam in fams, fam
    fa = s.filter(pl.col("family") == "fatty_acid")["name"].to_list()
    assert any("FA 4:0" in n for n in fa) and any("FA 24:0" in n for n in fa)


def test_deterministic_and_only_under_out_dir(
    demo: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_a, manifest_a = demo
    monkeypatch.chdir(tmp_path)
    out_b = tmp_path / "sub" / "demo"
    manifest_b = generate_demo(out_b, rows=ROWS, seed=7, libs=LIBS)
    assert manifest_b == manifest_a
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["demo"]
    files_a = sorted(p.relative_to(out_a) for p in out_a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(out_b) for p in out_b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.suffix == ".parquet":
            assert pl.read_parquet(out_a / rel).equals(pl.read_parquet(out_b / rel)), rel
        else:
            assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes(), rel

    # regenerate in place with one lib: the other export and its side files go away
    manifest_c = generate_demo(out_b, rows=5_000, seed=3, libs=(209,))
    assert list(manifest_c["exports"]) == [H2]
    assert not (out_b / "repo_export" / H1).exists()
    assert not (out_b / "repo_export" / "lib_comp_chem_mapping_lib208.csv").exists()
    drops, _, rt_rows = rederive(out_b, 209)
    assert drops == manifest_c["libs"]["209"]["drops"] and rt_rows == manifest_c["libs"]["209"][
        "rt_rows"]
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]
    assert not list(out_b.glob(".demo-staging-*"))


def test_bad_lib_is_a_clear_error(tmp_path: Path) -> None:
    from rtprep.core.errors import RtprepError

    with pytest.raises(RtprepError, match="lib 999"):
        generate_demo(tmp_path / "demo", rows=1000, libs=(999,))
    assert not (tmp_path / "demo" / "manifest.json").exists()
