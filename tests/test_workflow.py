"""The real Snakemake workflow on config/test.yaml: DAG, a real run, row accounting against the demo
generator's manifest, and "edit the config, only the dependent artifacts rebuild"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.workflow_util import REPO, copy_workflow, planned_jobs, snakemake

HASHES = {208: "5684639a28c04bc5af7c4fd1a75e62b5", 209: "de194c2cc2114efaa1075ccf7539d0cb"}
DATA = "demo/tiny/repo_export"
BIG_CAP = 1_000_000  # keeps every row: the counts then equal the generator's manifest exactly

# The test config (on the tiny demo, demo.eval) evaluates both splits: per lib and split its own
# folds, train-fold cap, attach and RT CSV, test rows, evaluation and model-quality figure.
SPLITS = ("random", "time")
FULL_DAG = Counter(
    demo=1, chem_classes=1, merge=2, split=2, coverage=2, folds=4, cap=2, cap_train=4,
    attach=6, rt_csv=6, test_rows=4, train=2, evaluate=4, accounting=1, all=1,
    plot_coverage=2, plot_funnel=2, plot_classes=1, plot_model_quality=4, plot_shrinkage=2,
    table_metrics=2, table_accounting=2,
)  # fmt: skip


def lib_file(lib: int, suffix: str) -> str:
    return f"{DATA}/merged_training_{HASHES[lib]}_lib{lib}{suffix}"


def meta(workdir: Path, rel: str) -> dict:
    return json.loads((workdir / f"{rel}.meta.json").read_text())


@pytest.fixture(scope="module")
def run_dir(test_config_run: Path) -> Path:
    """The real run of the test config, plus the uncapped files used for exact accounting."""
    wd = test_config_run
    targets = [lib_file(lib, f"_cap{BIG_CAP}_chemclass_rt_prod.csv") for lib in HASHES]
    snakemake(wd, "--cores", "2", *targets)
    return wd


def test_dry_run_plans_every_stage(tmp_path: Path) -> None:
    wd = copy_workflow(tmp_path)
    proc = snakemake(wd, "--dry-run", "--cores", "2")
    assert planned_jobs(proc) == FULL_DAG


def test_model_caps_picks_the_caps_that_get_models(tmp_path: Path) -> None:
    """Data for caps 5 and 7, models only for cap 5 (as the shipped demo: data for 5 and 10)."""
    wd = copy_workflow(tmp_path)
    proc = snakemake(wd, "--dry-run", "--cores", "2",
                     overlay={"caps": [5, 7], "model": {"caps": [5]}})
    planned = planned_jobs(proc)
    assert planned == FULL_DAG + Counter(cap=2, attach=2, rt_csv=2, plot_funnel=2)
    text = proc.stdout + proc.stderr
    assert "lib208_cap7_chemclass_rt_prod.csv" in text
    assert "lib208_cap7/model.json" not in text and "lib208_cap5/model.json" in text
    # model caps none of which is among the caps (a config of one's own over the shipped one):
    # every cap gets models
    proc = snakemake(wd, "--dry-run", "--cores", "2", overlay={"caps": [7], "model": {"caps": [5]}})
    text = proc.stdout + proc.stderr
    assert "lib208_cap7/model.json" in text and "lib208_cap5/model.json" not in text


def test_lint_and_format_clean() -> None:
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO,
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr
    fmt = subprocess.run(["snakefmt", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_bad_config_names_key(tmp_path: Path) -> None:
    wd = copy_workflow(tmp_path)
    proc = snakemake(wd, "--dry-run", "--cores", "1", overlay={"caps": [0]}, check=False)
    assert proc.returncode != 0
    assert "caps" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_real_run_writes_every_artifact(run_dir: Path) -> None:
    for lib, h in HASHES.items():
        for suffix in ("_species_compounds.csv", "_cap5.parquet", "_cap5_chemclass.parquet",
                       "_cap5_chemclass_rt_prod.csv"):
            assert (run_dir / lib_file(lib, suffix)).is_file(), suffix
        for split in SPLITS:  # each split: its folds, train-fold chain, test rows, evaluation
            for suffix in ("_folds.csv", "_train_cap5.parquet", "_train_cap5_chemclass.parquet",
                           "_train_cap5_chemclass_rt_prod.csv", "_test_chemclass_rt_prod.parquet"):
                assert (run_dir / lib_file(lib, f"_{split}{suffix}")).is_file(), (split, suffix)
            ev = run_dir / f"results/rt_prod/{h}/lib{lib}_cap5/eval/{split}"
            for name in ("metrics.json", "metrics.csv", "predictions.parquet", "truth.json",
                         "model/model.json"):
                assert (ev / name).is_file(), (split, name)
            assert (run_dir / f"results/report/{h}/lib{lib}_cap5_model_quality_{split}.png"
                    ).is_file()
        csv = pl.read_csv(run_dir / lib_file(lib, "_cap5_chemclass_rt_prod.csv"))
        assert csv.columns[:7] == ["sampleset_id", "worksheet_id", "task_id", "species",
                                   "species_cluster", "compound", "compound_class"]
        assert csv.columns[-1] == "rt"
        assert csv.height > 0
        for split in SPLITS:  # the train-fold CSVs keep the RT CSV's columns
            train_csv = lib_file(lib, f"_{split}_train_cap5_chemclass_rt_prod.csv")
            train = pl.read_csv(run_dir / train_csv, n_rows=1)
            assert train.columns == csv.columns, split
        # the time split holds out the latest worksheets (time_column worksheet_id), whole
        folds = pl.read_csv(run_dir / lib_file(lib, "_time_folds.csv"))
        ws = (pl.read_parquet(run_dir / lib_file(lib, ".parquet"),
                              columns=["sample_set_id", "worksheet_id"]).unique()
              .join(folds, on="sample_set_id"))
        per_ws = ws.group_by("worksheet_id").agg(pl.col("fold").n_unique().alias("n"),
                                                 pl.col("fold").first())
        assert per_ws["n"].max() == 1  # no worksheet in both folds
        test_ws = per_ws.filter(pl.col("fold") == "test")["worksheet_id"]
        train_ws = per_ws.filter(pl.col("fold") == "train")["worksheet_id"]
        assert test_ws.len() == round(0.2 * per_ws.height + 1e-9)
        assert train_ws.max() < test_ws.min()
        # and the random split's test fold is another set of sample sets
        rnd = pl.read_csv(run_dir / lib_file(lib, "_random_folds.csv"))
        assert rnd["sample_set_id"].to_list() == folds["sample_set_id"].to_list()
        assert rnd["fold"].to_list() != folds["fold"].to_list()
        # at most 5 rows per (species_matrix_type, comp_id) pair
        capped = pl.read_parquet(run_dir / lib_file(lib, "_cap5.parquet"))
        assert capped.group_by("species_matrix_type", "comp_id").len()["len"].max() <= 5
        # no temporary file is left anywhere
    leftovers = [p for p in (run_dir / DATA).rglob("*.tmp")]
    assert leftovers == []
    nothing = snakemake(run_dir, "--dry-run", "--cores", "2")
    assert planned_jobs(nothing) == Counter()


@pytest.mark.slow
def test_drop_counts_equal_the_generator_manifest(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "demo/tiny/manifest.json").read_text())
    for lib, h in HASHES.items():
        want = manifest["libs"][str(lib)]["drops"]
        merged = meta(run_dir, f"{DATA}/merged_training_{h}.parquet")
        got_merge = merged["extra"]["per_lib"][str(lib)]
        for reason in ("duplicate_row", "cpd_status_not_kept", "sample_type_excluded",
                       "no_predictor_row"):
            assert got_merge["drops"].get(reason, 0) == want[reason], (lib, reason)
        split = meta(run_dir, lib_file(lib, ".parquet"))["drops"]
        for reason in ("apex_rt_invalid", "apex_rt_out_of_range"):
            assert split.get(reason, 0) == want[reason], (lib, reason)
        attach = meta(run_dir, lib_file(lib, f"_cap{BIG_CAP}_chemclass.parquet"))["drops"]
        for reason in ("comp_id_unmapped", "comp_id_ambiguous", "chem_id_no_class"):
            assert attach.get(reason, 0) == want[reason], (lib, reason)
        rt = meta(run_dir, lib_file(lib, f"_cap{BIG_CAP}_chemclass_rt_prod.csv"))["drops"]
        assert rt.get("sample_set_no_species", 0) == want["sample_set_no_species"]
    # the run-wide table gathers the same counts, per artifact and lib
    table = pl.read_csv(run_dir / "results/row_accounting.csv", schema_overrides={"lib": pl.String})
    for lib in HASHES:
        want = manifest["libs"][str(lib)]["drops"]
        merge_rows = table.filter(pl.col("stage") == "merge", pl.col("lib") == str(lib))
        assert dict(zip(merge_rows["reason"], merge_rows["dropped"], strict=True)) == {
            r: want[r] for r in ("duplicate_row", "cpd_status_not_kept", "sample_type_excluded",
                                 "no_predictor_row")}
        attach = table.filter(pl.col("stage") == "attach", pl.col("lib") == str(lib),
                              pl.col("artifact").str.contains("_cap5_"))
        assert set(attach["reason"]) == {"comp_id_unmapped", "comp_id_ambiguous",
                                         "chem_id_no_class"}


@pytest.mark.slow
def test_every_file_a_rule_writes_is_declared(run_dir: Path) -> None:
    """Every file under the data folder, results/, logs/ and benchmarks/runs/ after a real run is
    a declared output or log of a rule (Snakemake's --summary), inside a declared directory(),
    a benchmark file, or a sidecar (.meta.json, .dropped.csv) that the shared mechanism
    (rtprep.core.artifacts.write_sidecars) writes beside a declared output."""
    from rtprep.core.paths import SIDECAR_SUFFIXES

    extra = [lib_file(lib, f"_cap{BIG_CAP}_chemclass_rt_prod.csv") for lib in HASHES]
    proc = snakemake(run_dir, "--summary", "--cores", "1", "all", *extra)
    declared: set[str] = set()
    for line in proc.stdout.splitlines()[1:]:
        cells = line.split("\t")
        if len(cells) >= 4:
            declared.add(cells[0])
            declared.update(f.strip() for f in cells[3].split(",") if f.strip() != "-")
    folders = [d for d in declared if (run_dir / d).is_dir()]
    for split in SPLITS:
        assert any(d.endswith(f"eval/{split}/model") for d in folders), split
    undeclared = []
    for root in ("demo/tiny", "results", "logs", "benchmarks/runs"):
        for f in (run_dir / root).rglob("*"):
            if not f.is_file():
                continue
            rel = f.relative_to(run_dir).as_posix()
            base = next((rel.removesuffix(s) for s in SIDECAR_SUFFIXES if rel.endswith(s)), rel)
            if (base in declared or rel.startswith("benchmarks/runs/")
                    or any(rel.startswith(d + "/") for d in folders)):
                continue
            undeclared.append(rel)
    assert not undeclared, undeclared[:20]


@pytest.mark.slow
def test_a_finished_run_ends_with_where_the_results_are(run_dir: Path) -> None:
    # (Snakemake runs onsuccess after jobs ran: rebuild the accounting table, a second's job)
    proc = snakemake(run_dir, "--cores", "1", "--forcerun", "accounting")
    out = proc.stdout + proc.stderr
    tail = out[out.index("rtprep: finished."):]
    for lib in HASHES:
        csv = lib_file(lib, "_cap5_chemclass_rt_prod.csv")
        rows = meta(run_dir, csv)["rows_out"]
        assert f"lib {lib}, cap 5: {csv} ({rows:,} rows)" in tail
    # per lib, one block of scores per split
    assert tail.count("pooled RMSE") == 4 and tail.count("ridge  RMSE") == 4
    assert tail.count("random split, 20% of sample sets held out (results/rt_prod/") == 2
    assert tail.count("time split, latest 20% of worksheets by acquisition_date held out") == 2
    assert tail.index("/eval/random/metrics.json") < tail.index("/eval/time/metrics.json")
    assert "95% coverage" in tail and "snakemake --report report.html" in tail
    assert "results/row_accounting.csv" in tail


def test_eval_metrics_csv_is_a_target_of_its_own(tmp_path: Path) -> None:
    """A declared output can be asked for by name: `snakemake <...>/eval/<split>/metrics.csv`;
    it builds that split's folds and train-fold chain only."""
    wd = copy_workflow(tmp_path)
    for split in SPLITS:
        target = f"results/rt_prod/{HASHES[209]}/lib209_cap5/eval/{split}/metrics.csv"
        proc = snakemake(wd, "--dry-run", "--cores", "2", target)
        jobs = planned_jobs(proc)
        assert jobs["evaluate"] == 1 and jobs["train"] == 0
        assert jobs["folds"] == jobs["cap_train"] == jobs["test_rows"] == 1
        other = "time" if split == "random" else "random"
        assert f"_{split}_folds.csv" in proc.stdout and f"_{other}_folds.csv" not in proc.stdout


def test_eval_splits_choose_the_evaluations(tmp_path: Path) -> None:
    """eval.splits: [time] runs the time split alone, [random] (production's default) the random
    split alone: one folds, train-fold chain, test rows and evaluation per lib."""
    wd = copy_workflow(tmp_path)
    one_split = FULL_DAG - Counter(folds=2, cap_train=2, attach=2, rt_csv=2, test_rows=2,
                                   evaluate=2, plot_model_quality=2)
    for split in SPLITS:
        proc = snakemake(wd, "--dry-run", "--cores", "2", overlay={"eval": {"splits": [split]}})
        assert planned_jobs(proc) == one_split, split
        other = "time" if split == "random" else "random"
        assert f"/eval/{split}/metrics.json" in proc.stdout
        assert f"/eval/{other}/" not in proc.stdout and f"_{other}_" not in proc.stdout


def _plan_after_edit(run_dir: Path, overlay: dict) -> Counter[str]:
    return planned_jobs(snakemake(run_dir, "--dry-run", "--cores", "2", overlay=overlay))


DOWNSTREAM_OF_CAP = Counter(cap=2, cap_train=4, attach=6, rt_csv=6, train=2, evaluate=4,
                            accounting=1, all=1, plot_funnel=2, plot_model_quality=4,
                            plot_shrinkage=2, table_metrics=2, table_accounting=2)
DOWNSTREAM_OF_CLASSES = Counter(chem_classes=1, attach=6, rt_csv=6, test_rows=4, train=2,
                                evaluate=4, accounting=1, all=1, plot_classes=1, plot_funnel=2,
                                plot_model_quality=4, plot_shrinkage=2, table_metrics=2,
                                table_accounting=2)
# One split's folds and what follows them (per lib): fold_seed redraws the random split only,
# eval.time_column the time split only; the production RT CSVs and models stay.
DOWNSTREAM_OF_ONE_SPLIT = Counter(folds=2, cap_train=2, attach=2, rt_csv=2, test_rows=2,
                                  evaluate=2, accounting=1, all=1, plot_model_quality=2,
                                  table_metrics=2, table_accounting=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        # the coverage figure marks the caps, so it is redrawn too
        ({"caps": [5, 7], "model": {"caps": None}}, DOWNSTREAM_OF_CAP + Counter(plot_coverage=2)),
        ({"cap_seed": 43}, DOWNSTREAM_OF_CAP),
        ({"n_clusters": 6}, DOWNSTREAM_OF_CLASSES),
        ({"kmeans_seed": 5}, DOWNSTREAM_OF_CLASSES),
        ({"fold_seed": 2}, DOWNSTREAM_OF_ONE_SPLIT),
        ({"eval": {"time_column": "task_id"}}, DOWNSTREAM_OF_ONE_SPLIT),
    ],
    ids=["new-cap", "cap_seed", "n_clusters", "kmeans_seed", "fold_seed", "time_column"],
)
def test_config_edit_rebuilds_only_dependents(run_dir: Path, overlay: dict,
                                              expected: Counter[str]) -> None:
    assert _plan_after_edit(run_dir, overlay) == expected


@pytest.mark.slow
def test_a_time_column_the_data_lacks_stops_the_folds_job_naming_it(run_dir: Path,
                                                                     tmp_path: Path) -> None:
    """eval.time_column names a column the per-lib file does not have (a misspelt date column):
    the time split's folds job fails with one line naming file and column."""
    wd = shutil.copytree(run_dir, tmp_path / "copy", symlinks=True)  # the shared run stays whole
    proc = snakemake(wd, "--cores", "1", lib_file(208, "_time_folds.csv"), check=False,
                     overlay={"eval": {"time_column": "acquired_on"}})
    assert proc.returncode != 0
    log = (wd / f"logs/folds/{HASHES[208]}_lib208_time.log").read_text()
    assert (f"{lib_file(208, '.parquet')}: missing required column(s) 'acquired_on' (the "
            "time split orders worksheets by eval.time_column 'acquired_on')") in log
    assert "Traceback" not in log and not (wd / lib_file(208, "_time_folds.csv")).exists()


def test_shipped_config_is_valid_and_runs_the_demo() -> None:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert cfg["data_dir"].startswith(cfg.get("demo", {}).get("dir", "demo"))


def test_rdkit_embeddings_source_builds_classes_from_smiles(tmp_path: Path) -> None:
    """embeddings.source: rdkit: Snakemake builds the embeddings from the SMILES table, then the
    classes in that folder (and the demo's ChemBERTa stand-in is not used)."""
    wd = copy_workflow(tmp_path)
    overlay = {"embeddings": {"source": "rdkit",
                              "path": "chem/embeddings_rdkit_pca20.parquet",
                              "smiles": "resources/metabolites/demo_structures.csv"}}
    snakemake(wd, "--cores", "2", "chem/chem_classes_k8.parquet", overlay=overlay)
    emb = pl.read_parquet(wd / "chem/embeddings_rdkit_pca20.parquet")
    classes = pl.read_parquet(wd / "chem/chem_classes_k8.parquet")
    assert emb.height >= 250
    assert emb["embedding20"].list.len().unique().to_list() == [20]
    assert classes.height == emb.height
    assert sorted(classes["compound_class"].unique().to_list()) == list(range(8))
    assert not (wd / "demo").exists()
