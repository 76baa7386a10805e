"""Bad input, end to end: each case goes through the real ``rtprep`` command line (or
``snakemake`` for the config) on tiny hand-made inputs.

An error case must exit non-zero with one message naming the file, the column, the value or count
and what to do, show no Python traceback, and leave nothing behind: no output, no sidecar, no
hidden ``.<name>.<pid>.tmp``. Where the design drops rows instead (counted), the case checks the
reason and count in the output's ``.meta.json`` and the ids in its ``.dropped.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.workflow_util import copy_workflow, snakemake

H = "abc123"
LIB = 7
SMT = "rat_liver"


# --- running the command line -----------------------------------------------------------------
def rtprep(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rtprep.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def files(root: Path) -> set[str]:
    """Every file under ``root`` (hidden ones too), relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def assert_error(proc: subprocess.CompletedProcess[str], *words: str,
                 root: Path | None = None, before: set[str] | None = None) -> str:
    """A clean failure: non-zero exit, ``words`` in the message, no traceback, and (with
    ``root``) exactly the files that were there before."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    for w in words:
        assert w in out, f"{w!r} not in:\n{out}"
    if root is not None:
        assert before is not None
        after = files(root)
        assert after == before, f"left behind: {sorted(after - before)}"
    return out


def cli_error(root: Path, *args: str, words: tuple[str, ...]) -> str:
    """Run ``rtprep *args`` and check it fails cleanly, naming ``words``, writing nothing."""
    before = files(root)
    proc = rtprep(*args)
    out = assert_error(proc, *words, root=root, before=before)
    # One error line, from the CLI (warnings may precede it).
    assert proc.stderr.strip().splitlines()[-1].startswith(f"rtprep {args[0]}: error: "), out
    return out


def cli_ok(*args: str) -> subprocess.CompletedProcess[str]:
    proc = rtprep(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def meta(output: Path) -> dict:
    return json.loads(Path(f"{output}.meta.json").read_text())


def dropped(output: Path) -> list[tuple[str, str, str]]:
    with open(f"{output}.dropped.csv", newline="") as fh:
        return [(r["reason"], r["column"], r["id"]) for r in csv.DictReader(fh)]


def no_temporaries(root: Path) -> None:
    assert not [f for f in files(root) if f.endswith(".tmp")]


# --- tiny inputs ------------------------------------------------------------------------------
def peaks_frame() -> pl.DataFrame:
    """Six peaks of lib 7: sample sets 1-3, one task each except set 1 (two)."""
    return pl.DataFrame({
        "sample_set_id": [1, 1, 1, 2, 2, 3],
        "task_id": [11, 11, 12, 21, 21, 31],
        "worksheet_id": [5, 5, 5, 6, 6, 7],
        "sample_type": ["Sample"] * 6,
        "cpd_status": ["Complete"] * 6,
        "comp_id": [100, 101, 100, 100, 102, 101],
        "species_matrix_type": [SMT] * 6,
        "apex_rt": [1.5, 2.5, 1.6, 1.4, 3.5, 2.4],
        "peak_area": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
    })


def preds_frame() -> pl.DataFrame:
    """One predictor row per injection (task) of :func:`peaks_frame`."""
    return pl.DataFrame({
        "sample_set_id": [1, 1, 2, 3],
        "task_id": [11, 12, 21, 31],
        "IS1": [0.5, 0.51, 0.49, 0.5],
        "RS1": [4.0, 4.1, 3.9, 4.0],
        "ES_a": [9.0, None, 9.1, 9.2],
    })


def write_export(root: Path, peaks: pl.DataFrame | None = None,
                 preds: pl.DataFrame | None = None) -> Path:
    exp = root / H
    shard = exp / f"create_training_data/lib_id={LIB}/group=0/part-0.parquet"
    pshard = exp / f"combine_predictors/lib_id={LIB}/species_matrix_type={SMT}/part-0.parquet"
    for path, df in ((shard, peaks_frame() if peaks is None else peaks),
                     (pshard, preds_frame() if preds is None else preds)):
        path.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path, compression="zstd")
    return exp


def merged_frame() -> pl.DataFrame:
    """What merge writes for :func:`write_export`: lib_id, the peaks, then the predictors."""
    return (
        peaks_frame()
        .join(preds_frame(), on=["sample_set_id", "task_id"], how="left", maintain_order="left")
        .select(pl.lit(LIB, dtype=pl.Int64).alias("lib_id"), pl.all())
    )


def chemclass_frame() -> pl.DataFrame:
    return merged_frame().with_columns(
        pl.col("comp_id").replace_strict({100: 1000, 101: 1001, 102: 1002}).alias("chemical_id"),
        pl.col("comp_id").replace_strict({100: 0, 101: 1, 102: 0}).alias("compound_class"),
    )


MAPPING = f"lib_id,comp_id,chemical_id\n{LIB},100,1000\n{LIB},101,1001\n{LIB},102,1002\n"
SPECIES = "sample_set_id,species,species_cluster\n1,rat,rodent\n2,mouse,rodent\n3,cow,bovid\n"


def write_attach_inputs(root: Path, mapping: str = MAPPING) -> tuple[Path, Path, Path]:
    capped = root / f"merged_training_{H}_lib{LIB}_cap5.parquet"
    merged_frame().write_parquet(capped)
    mp = root / f"lib_comp_chem_mapping_lib{LIB}.csv"
    mp.write_text(mapping)
    classes = root / "chem_classes_k2.parquet"
    pl.DataFrame({"chem_id": [1000, 1001, 1002], "compound_class": [0, 1, 0]}).write_parquet(
        classes)
    return capped, mp, classes


def write_rt_csv_inputs(root: Path, species: str = SPECIES) -> tuple[Path, Path]:
    inp = root / f"merged_training_{H}_lib{LIB}_cap5_chemclass.parquet"
    chemclass_frame().write_parquet(inp)
    sp = root / f"merged_training_{H}_lib{LIB}_species_mapping.csv"
    sp.write_text(species)
    return inp, sp


def embeddings_frame(n: int = 12) -> pl.DataFrame:
    """``n`` chemicals on a line in 20 dimensions (distinct vectors)."""
    return pl.DataFrame(
        {
            "chem_id": list(range(1, n + 1)),
            "smiles": ["C"] * n,
            "embedding20": [[float(i) + 0.01 * j for j in range(20)] for i in range(n)],
        },
        schema_overrides={"embedding20": pl.List(pl.Float64)},
    )


# --- 1. the export (merge) --------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_page(path: Path) -> None:
    """Garble the data pages but keep the footer: the schema reads, the rows do not."""
    data = bytearray(path.read_bytes())
    for i in range(4, len(data) // 2):
        data[i] = 0xAB
    path.write_bytes(bytes(data))


PEAK_SHARD = f"create_training_data/lib_id={LIB}/group=0/part-0.parquet"
PRED_SHARD = f"combine_predictors/lib_id={LIB}/species_matrix_type={SMT}/part-0.parquet"
PRED_SHARD_2 = f"combine_predictors/lib_id={LIB}/species_matrix_type={SMT}/part-1.parquet"

Mutation = Callable[[Path], object]

MERGE_CASES: list[tuple[str, Mutation, tuple[str, ...]]] = [
    ("export_missing", lambda e: shutil.rmtree(e),
     (H, "export folder not found", "check the path")),
    ("export_empty", lambda e: (shutil.rmtree(e), e.mkdir()),
     (H, "export folder is empty", "create_training_data/", "combine_predictors/")),
    ("only_create_training_data", lambda e: shutil.rmtree(e / "combine_predictors"),
     (H, "'combine_predictors/' is missing", "copy the complete export")),
    ("only_combine_predictors", lambda e: shutil.rmtree(e / "create_training_data"),
     (H, "'create_training_data/' is missing", "copy the complete export")),
    ("shard_not_parquet", lambda e: (e / PEAK_SHARD).write_text("sample_set_id,task_id\n1,2\n"),
     ("part-0.parquet", "not a readable Parquet file", "re-export")),
    ("shard_truncated", lambda e: _truncate(e / PEAK_SHARD),
     ("part-0.parquet", "truncated", "re-export")),
    ("shard_corrupt_data_page", lambda e: _corrupt_page(e / PEAK_SHARD),
     ("part-0.parquet", "cannot be read", "re-export")),
    ("required_column_missing",
     lambda e: peaks_frame().drop("apex_rt").write_parquet(e / PEAK_SHARD),
     ("part-0.parquet", "'apex_rt'", "missing required column", "merge.renames")),
    ("column_not_numeric",
     lambda e: peaks_frame().with_columns(pl.col("apex_rt").cast(pl.String))
     .write_parquet(e / PEAK_SHARD),
     ("part-0.parquet", "column 'apex_rt'", "String", "a number is needed")),
    ("predictor_key_missing",
     lambda e: preds_frame().drop("task_id").write_parquet(e / PRED_SHARD),
     ("part-0.parquet", "'task_id'", "missing required column")),
    ("predictor_rows_conflict",
     lambda e: preds_frame().head(1).with_columns(pl.lit(0.7).alias("IS1"))
     .write_parquet(e / PRED_SHARD_2),
     ("1 key(s) have two or more different predictor rows", "sample_set_id=1", "task_id=11",
      "part-1.parquet", "Fix or remove")),
]


@pytest.mark.parametrize(("mutate", "words"), [c[1:] for c in MERGE_CASES],
                         ids=[c[0] for c in MERGE_CASES])
def test_merge_bad_export(tmp_path: Path, mutate: Mutation, words: tuple[str, ...]) -> None:
    exp = write_export(tmp_path)
    mutate(exp)
    cli_error(tmp_path, "merge", "-i", str(exp), words=words)


def test_merge_peaks_without_predictor_row_are_counted(tmp_path: Path) -> None:
    exp = write_export(tmp_path, preds=preds_frame().filter(pl.col("task_id") != 31))
    cli_ok("merge", "-i", str(exp))
    out = tmp_path / f"merged_training_{H}.parquet"
    m = meta(out)
    assert m["drops"]["no_predictor_row"] == 1
    assert (m["rows_in"], m["rows_out"]) == (6, 5)
    assert dropped(out) == [("no_predictor_row", "task_id", "31")]
    assert 31 not in pl.read_parquet(out)["task_id"].to_list()
    no_temporaries(tmp_path)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = rtprep("--debug", "merge", "-i", str(tmp_path / H))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "RtprepError" in proc.stderr
    assert not files(tmp_path)


# --- 2. split: apex_rt, libs ------------------------------------------------------------------
def test_split_invalid_and_out_of_range_apex_rt_are_counted(tmp_path: Path) -> None:
    rts = [1.5, None, math.nan, math.inf, -math.inf, -0.5, 45.0, 0.0, 40.0]
    df = pl.concat([merged_frame().head(1)] * len(rts)).with_columns(
        pl.Series("apex_rt", rts, dtype=pl.Float64), pl.Series("task_id", range(len(rts)))
    )
    merged = tmp_path / f"merged_training_{H}.parquet"
    df.write_parquet(merged)
    cli_ok("split", str(merged), "--rt-range", "0", "40")
    out = tmp_path / f"merged_training_{H}_lib{LIB}.parquet"
    m = meta(out)
    # null, NaN, +inf, -inf, negative: invalid; 45 > 40: out of range; 0 and 40 are inside.
    assert m["drops"] == {"apex_rt_invalid": 5, "apex_rt_out_of_range": 1}
    assert (m["rows_in"], m["rows_out"]) == (9, 3)
    assert sorted(pl.read_parquet(out)["apex_rt"].to_list()) == [0.0, 1.5, 40.0]
    no_temporaries(tmp_path)


def test_split_lib_not_in_the_data(tmp_path: Path) -> None:
    merged = tmp_path / f"merged_training_{H}.parquet"
    merged_frame().write_parquet(merged)
    cli_error(tmp_path, "split", str(merged), "--libs", "99",
              words=(merged.name, "column 'lib_id'", "no rows of lib 99", f"holds lib(s) {LIB}"))


# --- 3. cap -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cap", ["0", "-3"])
def test_cap_below_one(tmp_path: Path, cap: str) -> None:
    lib = tmp_path / f"merged_training_{H}_lib{LIB}.parquet"
    merged_frame().write_parquet(lib)
    cli_error(tmp_path, "cap", str(lib), f"--cap-per-pair={cap}",
              words=("--cap-per-pair", cap, ">= 1"))


# --- 4. chem classes: embeddings and n_clusters -----------------------------------------------
def _vectors(df: pl.DataFrame, chem_id: int, vec: list[float | None]) -> pl.DataFrame:
    emb = [vec if c == chem_id else v for c, v in zip(df["chem_id"], df["embedding20"].to_list(),
                                                        strict=True)]
    return df.with_columns(pl.Series("embedding20", emb, dtype=pl.List(pl.Float64)))


EMB = "embeddings_chemberta_pca20.parquet"
EMBEDDING_CASES: list[tuple[str, Callable[[], pl.DataFrame], int, tuple[str, ...]]] = [
    ("more_clusters_than_chemicals", embeddings_frame, 20,
     (EMB, "n_clusters=20", "number of embedded chemicals (12)", "lower n_clusters")),
    ("n_clusters_zero", embeddings_frame, 0, ("argument --n-clusters", "0 is not >= 1")),
    ("wrong_length", lambda: _vectors(embeddings_frame(), 3, [1.0] * 19), 4,
     (EMB, "column 'embedding20'", "length 19 (expected 20)", "chem_id 3", "recompute")),
    ("nan", lambda: _vectors(embeddings_frame(), 4, [1.0] * 19 + [math.nan]), 4,
     (EMB, "column 'embedding20'", "NaN or infinite", "chem_id 4", "recompute")),
    ("one_chem_id_two_vectors",
     lambda: pl.concat([embeddings_frame(), _vectors(embeddings_frame(), 5, [9.0] * 20)
                        .filter(pl.col("chem_id") == 5)]), 4,
     (EMB, "column 'chem_id'", "chem_id 5 has two different embeddings",
      "keep one row per chem_id")),
]


@pytest.mark.parametrize(("frame", "k", "words"), [c[1:] for c in EMBEDDING_CASES],
                         ids=[c[0] for c in EMBEDDING_CASES])
def test_chem_classes_bad_embeddings(tmp_path: Path, frame: Callable[[], pl.DataFrame], k: int,
                                     words: tuple[str, ...]) -> None:
    emb = tmp_path / EMB
    frame().write_parquet(emb)
    cli_error(tmp_path, "chem-classes", "--embeddings", str(emb), "--n-clusters", str(k),
              words=words)


# --- 5. attach: the lib mapping ---------------------------------------------------------------
@pytest.mark.parametrize(("mapping", "words"), [
    pytest.param("lib_id,comp_id\n7,100\n",
                 ("'chemical_id'", "missing required column", "lib_id, comp_id"),
                 id="missing_column"),
    pytest.param("lib_id,comp_id,chemical_id\n",
                 ("has a header but no rows", "every comp_id would be unmapped"),
                 id="header_only"),
    pytest.param("lib_id,comp_id,chemical_id\n208,100,1000\n",
                 ("no rows for lib 7", "lib_id 208", "the mapping of lib 7"),
                 id="other_lib_only"),
])
def test_attach_bad_mapping(tmp_path: Path, mapping: str, words: tuple[str, ...]) -> None:
    capped, mp, classes = write_attach_inputs(tmp_path, mapping)
    cli_error(tmp_path, "attach", "--input", str(capped), "--lib-mapping", str(mp),
              "--classes", str(classes), words=(mp.name, *words))


def test_attach_identical_duplicate_mapping_rows_are_fine(tmp_path: Path) -> None:
    capped, mp, classes = write_attach_inputs(tmp_path, MAPPING + f"{LIB},100,1000\n" * 2)
    cli_ok("attach", "--input", str(capped), "--lib-mapping", str(mp), "--classes", str(classes))
    out = tmp_path / f"merged_training_{H}_lib{LIB}_cap5_chemclass.parquet"
    m = meta(out)
    assert set(m["drops"].values()) == {0}
    assert m["rows_in"] == m["rows_out"] == 6
    assert pl.read_parquet(out).height == 6
    no_temporaries(tmp_path)


def test_attach_conflicting_mapping_rows_are_counted(tmp_path: Path) -> None:
    # comp 101 (2 rows) maps to two chemicals: unmappable, dropped, listed.
    capped, mp, classes = write_attach_inputs(tmp_path, MAPPING + f"{LIB},101,1009\n")
    cli_ok("attach", "--input", str(capped), "--lib-mapping", str(mp), "--classes", str(classes))
    out = tmp_path / f"merged_training_{H}_lib{LIB}_cap5_chemclass.parquet"
    m = meta(out)
    assert m["drops"] == {"comp_id_unmapped": 0, "comp_id_ambiguous": 2, "chem_id_no_class": 0}
    assert (m["rows_in"], m["rows_out"]) == (6, 4)
    assert dropped(out) == [("comp_id_ambiguous", "comp_id", "101")]
    assert 101 not in pl.read_parquet(out)["comp_id"].to_list()
    no_temporaries(tmp_path)


# --- 6. rt-csv: the species mapping -----------------------------------------------------------
@pytest.mark.parametrize(("species", "words"), [
    pytest.param("sample_set_id,species\n1,rat\n",
                 ("'species_cluster'", "missing required column"), id="missing_column"),
    pytest.param("sample_set_id,species,species_cluster\n",
                 ("has a header but no rows", "every sample set would be dropped"),
                 id="header_only"),
    pytest.param("sample_set_id,species,species_cluster\n1,rat,rodent\n2,rat,primate\n",
                 ("column 'species_cluster'", "species 'rat'", "two or more clusters",
                  "exactly one species_cluster"), id="species_in_two_clusters"),
])
def test_rt_csv_bad_species_mapping(tmp_path: Path, species: str,
                                    words: tuple[str, ...]) -> None:
    inp, sp = write_rt_csv_inputs(tmp_path, species)
    cli_error(tmp_path, "rt-csv", "--input", str(inp), "--species-mapping", str(sp),
              words=(sp.name, *words))


def test_rt_csv_sample_sets_without_species_are_counted(tmp_path: Path) -> None:
    # Sample set 3 (one row) is not in the mapping; a repeated identical row is fine.
    species = "sample_set_id,species,species_cluster\n1,rat,rodent\n" + "2,mouse,rodent\n" * 2
    inp, sp = write_rt_csv_inputs(tmp_path, species)
    cli_ok("rt-csv", "--input", str(inp), "--species-mapping", str(sp))
    out = tmp_path / f"merged_training_{H}_lib{LIB}_cap5_chemclass_rt_prod.csv"
    m = meta(out)
    assert m["drops"] == {"sample_set_no_species": 1}
    assert (m["rows_in"], m["rows_out"]) == (6, 5)
    assert dropped(out) == [("sample_set_no_species", "sample_set_id", "3")]
    assert sorted(set(pl.read_csv(out)["sampleset_id"].to_list())) == [1, 2]
    no_temporaries(tmp_path)


# --- 7. the config, through snakemake and `rtprep run` ----------------------------------------
@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("bad_config"))


@pytest.mark.parametrize(("overlay", "words"), [
    pytest.param({"n_clusters": 0}, ("config key 'n_clusters'", "0", "an integer >= 1"),
                 id="below_minimum"),
    pytest.param({"n_clusterz": 8}, ("unknown config key(s) 'n_clusterz'", "n_clusters"),
                 id="unknown_key"),
])
def test_config_schema_through_snakemake(workflow: Path, overlay: dict,
                                         words: tuple[str, ...]) -> None:
    before = files(workflow)
    proc = snakemake(workflow, "--dry-run", "--cores", "1", overlay=overlay, check=False)
    (workflow / "overlay.yaml").unlink()
    assert_error(proc, *words, "config/README.md")
    assert not [f for f in files(workflow) - before if not f.startswith(".snakemake/")]


def test_config_schema_through_rtprep_run(workflow: Path) -> None:
    cfg = yaml.safe_load((workflow / "config/test.yaml").read_text())
    cfg["libs"] = [-3]
    (workflow / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = rtprep("run", "--configfile", "bad.yaml", "--dry-run", "--cores", "1", cwd=workflow)
    assert_error(proc, "config key 'libs'", "[-3]", '"all" or a list of lib ids')
    proc = rtprep("run", "--configfile", "config/test.yaml", "--cap", "0", "--dry-run",
                  "--cores", "1", cwd=workflow)
    assert_error(proc, "--cap", "0", ">= 1")


def test_run_lib_not_in_the_exports(workflow: Path) -> None:
    proc = rtprep("run", "--libs", "99", "--configfile", "config/test.yaml", "--dry-run",
                  "--cores", "1", cwd=workflow)
    assert_error(proc, "config 'libs'", "[99]", "they hold [208, 209]", "ask for some of those")


@pytest.mark.parametrize(("broken", "words"), [
    pytest.param("mapping", ("lib_comp_chem_mapping_lib7.csv", "missing required column(s) "
                             "'comp_id'", "compound_id"), id="mapping_column"),
    pytest.param("species", ("merged_training_abc123_lib7_species_mapping.csv", "not found"),
                 id="species_mapping_missing"),
    pytest.param("embeddings", ("embedings.parquet", "embeddings file not found"),
                 id="embeddings_typo"),
])
def test_inputs_are_checked_before_any_job(workflow: Path, broken: str,
                                           words: tuple[str, ...]) -> None:
    """Every input the config names that no rule makes is read when the DAG is built: a bad
    one stops the run with the stage's one-line message before any job runs (a dry-run fails),
    even where classes from an earlier run sit beside the embeddings path."""
    data = workflow / "upfront"
    shutil.rmtree(data, ignore_errors=True)  # the workflow copy is shared by the cases
    write_export(data)
    mapping = MAPPING.replace("comp_id", "compound_id") if broken == "mapping" else MAPPING
    (data / f"lib_comp_chem_mapping_lib{LIB}.csv").write_text(mapping)
    if broken != "species":
        (data / f"merged_training_{H}_lib{LIB}_species_mapping.csv").write_text(SPECIES)
    embeddings_frame().write_parquet(data / "embeddings.parquet")
    (data / "chem_classes_k2.parquet").write_text("from an earlier run")
    emb = "upfront/embedings.parquet" if broken == "embeddings" else "upfront/embeddings.parquet"
    cfg = {"data_dir": "upfront", "exports": [H], "libs": "all", "caps": [5], "n_clusters": 2,
           "embeddings": {"source": "file", "path": emb}}
    before = files(data)
    proc = snakemake(workflow, "--dry-run", "--cores", "1", overlay=cfg, check=False)
    (workflow / "overlay.yaml").unlink()
    out = assert_error(proc, *words, root=data, before=before)
    assert "Job stats" not in out  # no job was planned


def test_rule_failure_in_a_real_run(workflow: Path) -> None:
    """A bad export in a real run: the merge job fails with the one-line message in its log and
    on the console, no traceback, and neither the output nor a temporary is left."""
    data = workflow / "data"
    exp = write_export(data)
    preds_frame().head(1).with_columns(pl.lit(0.7).alias("IS1")).write_parquet(exp / PRED_SHARD_2)
    # every other input is fine (they are read when the DAG is built)
    (data / f"lib_comp_chem_mapping_lib{LIB}.csv").write_text(MAPPING)
    (data / f"merged_training_{H}_lib{LIB}_species_mapping.csv").write_text(SPECIES)
    embeddings_frame().write_parquet(data / "embeddings.parquet")
    cfg = {"data_dir": "data", "exports": [H], "libs": "all", "caps": [5], "n_clusters": 2,
           "embeddings": {"source": "file", "path": "data/embeddings.parquet"},
           "model": {"train": False, "evaluate": False}}
    before = files(data)
    proc = snakemake(workflow, "--cores", "1", f"data/merged_training_{H}.parquet",
                     overlay=cfg, check=False)
    (workflow / "overlay.yaml").unlink()
    words = ("different predictor rows", "sample_set_id=1, task_id=11", "part-1.parquet",
             "Fix or remove the conflicting shard")
    assert_error(proc, "Error in rule merge", *words, root=data, before=before)
    log = (workflow / f"logs/merge/{H}.log").read_text()
    assert all(w in log for w in words), log
    assert "Traceback" not in log and "rule merge: failed after" in log
