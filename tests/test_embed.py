"""Embeddings from SMILES with RDKit: contract, accounting, determinism, projection,
errors, CLI, and the acceptance test: classes from RDKit embeddings explain compounds' RT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.chem.classes import build_chem_classes
from rtprep.chem.embed import (
    DESCRIPTORS,
    load_projection,
    projection_paths,
    rdkit_embeddings,
)
from rtprep.cli import build_parser
from rtprep.core.artifacts import read_meta
from rtprep.core.errors import RtprepError

DEMO_STRUCTURES = Path(__file__).resolve().parents[1] / "resources/metabolites/demo_structures.csv"
SCHEMA = {"chem_id": pl.Int64, "smiles": pl.String, "embedding20": pl.List(pl.Float64)}


@pytest.fixture(scope="module")
def structures() -> pl.DataFrame:
    """The demo's real structures: chem_id, smiles (429 metabolites, 19 families)."""
    if not DEMO_STRUCTURES.is_file():
        pytest.skip(f"{DEMO_STRUCTURES} is missing")
    return pl.read_csv(DEMO_STRUCTURES).select("chem_id", "smiles")


def _write(df: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.write_parquet(path)
    else:
        df.write_csv(path)
    return path


def _emb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    df = pl.read_parquet(path)
    return df["chem_id"].to_numpy(), np.asarray(df["embedding20"].to_list(), dtype=np.float64)


def _with_bad_rows(good: pl.DataFrame) -> pl.DataFrame:
    """``good`` + three invalid SMILES (unparseable, empty, null) + one identical duplicate."""
    bad = pl.DataFrame(
        {"chem_id": [900001, 900002, 900003], "smiles": ["C1CC(", "", None]},
        schema={"chem_id": pl.Int64, "smiles": pl.String},
    )
    return pl.concat([bad, good, good.head(1)])


# --- contract and accounting --------------------------------------------------------------------
def test_output_contract_invalid_smiles_listed_and_counted(structures, tmp_path):
    table = _write(_with_bad_rows(structures.head(40)), tmp_path / "smiles.csv")
    out = tmp_path / "emb" / "embeddings_rdkit_pca20.parquet"
    acc = rdkit_embeddings(table, out)

    df = pl.read_parquet(out)
    assert dict(df.schema) == SCHEMA
    assert df.height == 40
    assert df["chem_id"].to_list() == sorted(structures.head(40)["chem_id"].to_list())
    assert df["smiles"].to_list() == structures.head(40).sort("chem_id")["smiles"].to_list()
    assert set(df["embedding20"].list.len().to_list()) == {20}
    assert np.isfinite(_emb(out)[1]).all()

    assert acc.rows_in == 44 and acc.rows_out == 40
    meta = read_meta(out)
    assert meta["rows_in"] == 44 and meta["rows_out"] == 40
    assert meta["drops"] == {"duplicate_row": 1, "invalid_smiles": 3}
    assert meta["config"]["radius"] == 2 and meta["config"]["n_bits"] == 2048
    assert meta["config"]["descriptor_names"] == list(DESCRIPTORS)
    with open(str(out) + ".dropped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"reason": "invalid_smiles", "column": "chem_id", "id": str(i)}
                    for i in (900001, 900002, 900003)]

    # The fitted projection is saved beside it, as plain data.
    pq, js = projection_paths(out)
    assert pq.name == "embeddings_rdkit_pca20.projection.parquet" and pq.is_file()
    saved = json.loads(js.read_text())
    assert saved["n_features"] == 2048 + len(DESCRIPTORS) and saved["n_components"] == 20
    assert saved["fitted_on"]["n_chemicals"] == 40
    # Stage chem_classes takes the file as it is.
    build_chem_classes(out, n_clusters=4, seed=0)
    assert pl.read_parquet(out.parent / "chem_classes_k4.parquet").height == 40


def test_parquet_input_and_fingerprint_only(structures, tmp_path):
    table = _write(structures.head(30), tmp_path / "smiles.parquet")
    out = tmp_path / "e.parquet"
    rdkit_embeddings(table, out, radius=1, n_bits=512, descriptors=False, n_components=5)
    df = pl.read_parquet(out)
    assert df.height == 30 and set(df["embedding20"].list.len().to_list()) == {5}
    proj = load_projection(projection_paths(out)[1])
    assert len(proj.features) == 512 and set(proj.blocks) == {"morgan"}
    assert proj.settings["descriptors"] is False and proj.settings["radius"] == 1


def test_embeddings_are_centred_pca_scores(structures, tmp_path):
    """The fitted chemicals' scores are centred, uncorrelated and ordered by variance."""
    out = tmp_path / "e.parquet"
    rdkit_embeddings(_write(structures, tmp_path / "s.csv"), out)
    _, e = _emb(out)
    np.testing.assert_allclose(e.mean(axis=0), 0.0, atol=1e-10)
    cov = np.cov(e, rowvar=False)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-10)
    assert (np.diff(np.diag(cov)) <= 1e-12).all()


# --- determinism ---------------------------------------------------------------------------------
def test_byte_identical_reruns_whatever_the_row_order(structures, tmp_path):
    a = tmp_path / "a" / "embeddings_rdkit_pca20.parquet"
    b = tmp_path / "b" / "embeddings_rdkit_pca20.parquet"
    table = _write(structures.head(80), tmp_path / "s.csv")
    shuffled = _write(structures.head(80).sample(fraction=1.0, shuffle=True, seed=3),
                      tmp_path / "s2.csv")
    rdkit_embeddings(table, a)
    first = a.read_bytes()
    rdkit_embeddings(table, a)  # rerun in place
    rdkit_embeddings(shuffled, b)
    assert a.read_bytes() == first == b.read_bytes()
    assert projection_paths(a)[0].read_bytes() == projection_paths(b)[0].read_bytes()


# --- projection of new chemicals -----------------------------------------------------------------
def test_projection_of_new_chemicals_equals_fitted_embedding(structures, tmp_path):
    fit_set = structures.head(120)
    new_set = pl.concat([structures.slice(100, 20), structures.slice(300, 15)])  # 20 seen, 15 new
    fitted = tmp_path / "fit" / "embeddings_rdkit_pca20.parquet"
    rdkit_embeddings(_write(fit_set, tmp_path / "fit.csv"), fitted)
    projected = tmp_path / "new" / "embeddings_new.parquet"
    table = pl.concat([new_set, pl.DataFrame({"chem_id": [999999], "smiles": ["not a smiles"]})])
    acc = rdkit_embeddings(_write(table, tmp_path / "new.csv"), projected,
                           project_with=projection_paths(fitted)[1])

    assert acc.drops["invalid_smiles"] == 1 and acc.rows_out == 35
    ids_f, e_f = _emb(fitted)
    ids_p, e_p = _emb(projected)
    seen = np.isin(ids_p, ids_f)
    assert seen.sum() == 20
    # Same features, same axes: the same chemical gets the same embedding.
    np.testing.assert_allclose(e_p[seen], e_f[np.isin(ids_f, ids_p)], rtol=0, atol=1e-12)
    assert np.isfinite(e_p).all()
    # Projecting fits nothing: no projection files beside the projected output.
    assert not projection_paths(projected)[1].exists()
    meta = read_meta(projected)
    assert meta["config"]["project_with"].endswith("embeddings_rdkit_pca20.projection.json")
    # The embeddings file itself, or the projection Parquet, name the same projection.
    again = tmp_path / "again.parquet"
    rdkit_embeddings(_write(table, tmp_path / "new.csv"), again, project_with=fitted)
    assert again.read_bytes() == projected.read_bytes()


def test_projection_refuses_other_settings_and_tampered_files(structures, tmp_path):
    fitted = tmp_path / "e.parquet"
    table = _write(structures.head(40), tmp_path / "s.csv")
    rdkit_embeddings(table, fitted, n_bits=1024)
    saved = projection_paths(fitted)[1]
    with pytest.raises(RtprepError, match="n_bits=2048 differs from the saved projection's"):
        rdkit_embeddings(table, tmp_path / "x.parquet", n_bits=2048, project_with=saved)
    # The same explicit value is fine.
    rdkit_embeddings(table, tmp_path / "x.parquet", n_bits=1024, project_with=saved)
    with pytest.raises(RtprepError, match="no saved projection found"):
        rdkit_embeddings(table, tmp_path / "y.parquet", project_with=tmp_path / "nope.json")
    pq = projection_paths(fitted)[0]
    pl.read_parquet(pq).with_columns(pl.col("pc1") * 2).write_parquet(pq)
    with pytest.raises(RtprepError, match="does not match the checksum"):
        rdkit_embeddings(table, tmp_path / "z.parquet", project_with=saved)
    assert not (tmp_path / "y.parquet").exists() and not (tmp_path / "z.parquet").exists()


def test_non_finite_features_are_dropped_and_listed(structures, tmp_path, monkeypatch):
    import rtprep.chem.embed as embed

    real = embed.descriptor_matrix

    def one_nan(mols):  # as if RDKit could not compute a descriptor for the 3rd structure
        d = real(mols)
        d[2, 0] = np.nan
        return d

    monkeypatch.setattr(embed, "descriptor_matrix", one_nan)
    sub = structures.head(30)
    out = tmp_path / "e.parquet"
    acc = rdkit_embeddings(_write(sub, tmp_path / "s.csv"), out)
    third = sorted(sub["chem_id"].to_list())[2]
    assert acc.drops["non_finite_features"] == 1 and acc.rows_out == 29
    assert third not in pl.read_parquet(out)["chem_id"].to_list()
    assert f"non_finite_features,chem_id,{third}" in Path(str(out) + ".dropped.csv").read_text()


# --- bad input -----------------------------------------------------------------------------------
def test_duplicate_chem_id_with_different_smiles_is_an_error(tmp_path):
    table = _write(pl.DataFrame({"chem_id": [1, 2, 2], "smiles": ["CCO", "CCN", "CCC"]}),
                   tmp_path / "s.csv")
    with pytest.raises(RtprepError, match=r"s\.csv, column 'smiles': chem_id 2 has two different"):
        rdkit_embeddings(table, tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists()


def test_fewer_valid_chemicals_than_components(structures, tmp_path):
    table = _write(_with_bad_rows(structures.head(19)), tmp_path / "s.csv")
    with pytest.raises(RtprepError, match=r"only 19 chemical\(s\) with a valid SMILES, fewer "
                                          r"than n_components=20"):
        rdkit_embeddings(table, tmp_path / "e.parquet")
    all_bad = _write(pl.DataFrame({"chem_id": [1], "smiles": ["xx"]}), tmp_path / "bad.csv")
    with pytest.raises(RtprepError, match="no chemical has a valid SMILES"):
        rdkit_embeddings(all_bad, tmp_path / "e.parquet", n_components=1)
    assert not (tmp_path / "e.parquet").exists()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pl.DataFrame({"chem_id": [1], "smi": ["C"]}), r"missing required column\(s\) 'smiles'"),
        (pl.DataFrame({"chem_id": ["A1"], "smiles": ["C"]}),
         r"column 'chem_id': chem_id must be an integer, found String \(e\.g\. 'A1'\)"),
        (pl.DataFrame({"chem_id": [1, None], "smiles": ["C", "CC"]}),
         r"column 'chem_id': 1 row\(s\) have no chem_id"),
    ],
)
def test_bad_tables(tmp_path, frame, message):
    with pytest.raises(RtprepError, match=message):
        rdkit_embeddings(_write(frame, tmp_path / "s.csv"), tmp_path / "e.parquet")


def test_bad_options(structures, tmp_path):
    table = _write(structures.head(30), tmp_path / "s.csv")
    with pytest.raises(RtprepError, match="n_components must be at least 1"):
        rdkit_embeddings(table, tmp_path / "e.parquet", n_components=0)
    with pytest.raises(RtprepError, match="radius must be an integer >= 0"):
        rdkit_embeddings(table, tmp_path / "e.parquet", radius=-1)
    with pytest.raises(RtprepError, match="SMILES table not found"):
        rdkit_embeddings(tmp_path / "missing.csv", tmp_path / "e.parquet")


# --- CLI -----------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


def test_cli_fit_then_project(structures, tmp_path, capsys):
    table = _write(structures.head(40), tmp_path / "s.csv")
    out = tmp_path / "embeddings_rdkit_pca20.parquet"
    _cli(["embed", "--smiles", str(table), "--out", str(out), "--radius", "1", "--n-bits", "256",
          "--no-descriptors"])
    printed = capsys.readouterr().out
    assert "40 out" in printed and "embeddings_rdkit_pca20.projection.json" in printed
    assert read_meta(out)["config"]["n_bits"] == 256
    new = tmp_path / "new.parquet"
    _cli(["embed", "--smiles", str(table), "--out", str(new),
          "--project-with", str(projection_paths(out)[1])])
    # the same projection applied to the same fingerprints: equal up to the summation order of
    # the BLAS product (fit and project multiply different blocks; seen differing in the 16th
    # significant digit on another machine), so 1e-12 relative to the embeddings' scale
    fitted, projected = np.asarray(_emb(out)[1]), np.asarray(_emb(new)[1])
    assert fitted.shape == projected.shape
    np.testing.assert_allclose(projected, fitted, rtol=0,
                               atol=1e-12 * float(np.abs(fitted).max()))
    with pytest.raises(RtprepError, match="RDKit options"):
        _cli(["embed", "--smiles", str(table), "--out", str(new), "--radius", "3",
              "--chemberta-model", str(tmp_path)])


def test_workflow_embeddings_follow_a_saved_projection(structures, tmp_path):
    """Rule embed (``embed_from_config``): with ``project_with`` the projection's features and
    width are used whatever the config's rdkit block and n_components say (the config holds
    defaults it cannot tell from a user's choice); without, the config's are."""
    from rtprep.chem.routes import embed_from_config

    table = _write(structures.head(40), tmp_path / "s.csv")
    fitted = tmp_path / "fitted.parquet"
    config = {"source": "rdkit", "n_components": 6, "batch_size": 32,
              "rdkit": {"radius": 1, "n_bits": 256, "descriptors": False}}
    embed_from_config(config, table, fitted)
    assert read_meta(fitted)["config"]["n_bits"] == 256
    assert set(pl.read_parquet(fitted)["embedding20"].list.len().to_list()) == {6}
    other = {**config, "n_components": 20,
             "rdkit": {"radius": 2, "n_bits": 2048, "descriptors": True}}
    projected = tmp_path / "projected.parquet"
    embed_from_config(other, table, projected, project_with=projection_paths(fitted)[1])
    meta = read_meta(projected)["config"]
    assert (meta["radius"], meta["n_bits"], meta["n_components"]) == (1, 256, 6)
    a, b = np.asarray(_emb(fitted)[1]), np.asarray(_emb(projected)[1])
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * float(np.abs(a).max()))


# --- acceptance: classes from RDKit embeddings explain compounds' RT ----------------------------
def _eta_squared(labels: np.ndarray, y: np.ndarray) -> float:
    """Between-class share of the variance of y."""
    k = int(labels.max()) + 1
    n = np.bincount(labels, minlength=k)
    means = np.bincount(labels, weights=y, minlength=k) / np.maximum(n, 1)
    return float((n * (means - y.mean()) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _rt_proxy(smiles: list[str]) -> np.ndarray:
    """A compound's mean reversed-phase RT (minutes) from its Crippen logP: more lipophilic,
    later; clipped to a 0.5-22 min gradient."""
    from rdkit import Chem
    from rdkit.Chem import Crippen

    logp = np.array([Crippen.MolLogP(Chem.MolFromSmiles(s)) for s in smiles])
    return np.clip(1.0 + 1.6 * (logp + 3.0), 0.5, 22.0)


@pytest.fixture(scope="module")
def compound_rt(structures, tmp_path_factory) -> dict[str, pl.DataFrame]:
    """Compounds' mean RT (``chem_id, rt``) by source: the demo's truth (``base_rt`` of lib 209's
    compounds, i.e. the logP gradient + family offsets + compound residuals; conjugates left out,
    their logP is shifted) and the plain logP proxy."""
    out = {"logp_proxy": structures.select(
        "chem_id", pl.Series("rt", _rt_proxy(structures["smiles"].to_list())))}
    from rtprep.demo import generate_demo

    folder = tmp_path_factory.mktemp("demo")
    generate_demo(folder, rows=2000, seed=7, libs=[209])
    out["demo_truth"] = (
        pl.read_parquet(folder / "truth" / "truth_compounds.parquet")
        .filter(pl.col("role") != "conjugate")
        .select(pl.col("structure_chem_id").alias("chem_id"), pl.col("base_rt").alias("rt"))
    )
    return out


@pytest.fixture(scope="module")
def rdkit_demo_embeddings(structures, tmp_path_factory) -> dict[bool, Path]:
    """RDKit embeddings of all demo structures, with and without descriptors."""
    out = {}
    for descriptors in (True, False):
        folder = tmp_path_factory.mktemp(f"emb_{descriptors}")
        emb = folder / "embeddings_rdkit_pca20.parquet"
        rdkit_embeddings(_write(structures, folder / "s.csv"), emb, descriptors=descriptors)
        out[descriptors] = emb
    return out


@pytest.mark.parametrize("source", ["demo_truth", "logp_proxy"])
@pytest.mark.parametrize("descriptors", [True, False], ids=["fp+descriptors", "fp-only"])
@pytest.mark.parametrize("k", [8, 16])
def test_rdkit_classes_explain_rt_better_than_random_partitions(
    compound_rt, rdkit_demo_embeddings, tmp_path, k, descriptors, source
):
    """The acceptance test on the demo's real structures: classes (chem_classes' k-means on
    the RDKit embeddings of all 429 structures) explain more of the variance of compounds' mean
    RT than the 99th percentile of 200 random partitions of the same sizes. Fingerprints alone
    too: the descriptors include logP, the RT model's own input."""
    emb = rdkit_demo_embeddings[descriptors]
    classes_pq = tmp_path / f"chem_classes_k{k}.parquet"
    build_chem_classes(emb, n_clusters=k, seed=0, out_parquet=classes_pq,
                       out_csv=tmp_path / f"chem_classes_k{k}.csv")
    classes = pl.read_parquet(classes_pq).join(compound_rt[source], on="chem_id")
    assert classes.height > 200
    labels = classes["compound_class"].to_numpy()
    rt = classes["rt"].to_numpy()

    observed = _eta_squared(labels, rt)
    rng = np.random.default_rng(20240)
    # Random partitions of the same sizes: the same labels, shuffled.
    null = np.array([_eta_squared(rng.permutation(labels), rt) for _ in range(200)])
    p99 = float(np.quantile(null, 0.99))
    assert observed > p99, (observed, p99)
    assert observed > 0.5  # not a marginal win: the classes carry most of the RT variance
