"""The `rtprep` command line: help, every stage through the CLI on a tiny demo, errors without
tracebacks, and `rtprep run` through Snakemake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.workflow_util import copy_workflow

H208 = "5684639a28c04bc5af7c4fd1a75e62b5"


def rtprep(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rtprep.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_help_lists_the_steps() -> None:
    proc = rtprep("--help")
    assert proc.returncode == 0
    for cmd in ("merge", "split", "coverage", "cap", "embed", "chem-classes", "attach", "rt-csv",
                "folds", "train", "evaluate", "predict", "run", "demo", "summarize", "sample"):
        assert cmd in proc.stdout
    # the original scripts' names are aliases of the stages' own
    for name in ("cap", "sample"):
        cap = rtprep(name, "--help")
        assert cap.returncode == 0
        assert "--cap-per-pair" in cap.stdout and "--seed" in cap.stdout
        assert cap.stdout.startswith("usage: rtprep cap ")
    for name in ("coverage", "summarize"):
        assert rtprep(name, "--help").stdout.startswith("usage: rtprep coverage ")


def test_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = rtprep("merge", "-i", str(tmp_path / "no_such_export"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "no_such_export" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "demo"
    proc = rtprep("demo", "--out", str(out), "--rows", "20000", "--libs", "208")
    assert proc.returncode == 0, proc.stderr
    return out


def test_every_step_through_the_cli(demo_dir: Path) -> None:
    data = demo_dir / "repo_export"
    steps = [
        ("merge", "-i", str(data / H208)),
        ("split", str(data / f"merged_training_{H208}.parquet"), "--rt-range", "0", "40"),
        ("coverage", str(data / f"merged_training_{H208}_lib208.parquet")),
        ("cap", str(data / f"merged_training_{H208}_lib208.parquet"), "--cap-per-pair", "5",
         "--seed", "42"),
        ("chem-classes", "--embeddings",
         str(demo_dir / "resources/metabolites/embeddings_chemberta_pca20.parquet"),
         "--n-clusters", "8"),
        ("attach", "--input", str(data / f"merged_training_{H208}_lib208_cap5.parquet"),
         "--lib-mapping", str(data / "lib_comp_chem_mapping_lib208.csv"),
         "--classes", str(demo_dir / "resources/metabolites/chem_classes_k8.parquet")),
        ("rt-csv", "--input", str(data / f"merged_training_{H208}_lib208_cap5_chemclass.parquet"),
         "--species-mapping", str(data / f"merged_training_{H208}_lib208_species_mapping.csv")),
        ("folds", str(data / f"merged_training_{H208}_lib208.parquet")),
        ("folds", str(data / f"merged_training_{H208}_lib208.parquet"), "--split", "time",
         "--test-fraction", "0.25"),
    ]
    for step in steps:
        proc = rtprep(*step)
        assert proc.returncode == 0, (step[0], proc.stderr)
    csv = pl.read_csv(data / f"merged_training_{H208}_lib208_cap5_chemclass_rt_prod.csv")
    assert csv.columns[:7] == ["sampleset_id", "worksheet_id", "task_id", "species",
                               "species_cluster", "compound", "compound_class"]
    assert csv.columns[-1] == "rt"
    assert csv.height > 0
    assert (data / f"merged_training_{H208}_lib208_species_compounds.csv").is_file()
    assert (data / f"merged_training_{H208}_lib208_cap5_chemclass_rt_prod.csv.meta.json").is_file()
    # folds beside the lib file, one file per split (random by default)
    for split in ("random", "time"):
        folds = pl.read_csv(data / f"merged_training_{H208}_lib208_{split}_folds.csv")
        assert folds.columns == ["sample_set_id", "fold"] and folds.height > 0
    proc = rtprep("folds", str(data / f"merged_training_{H208}_lib208.parquet"), "--split",
                  "time", "--time-column", "acquired_on")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "column(s) 'acquired_on'" in proc.stderr and "lib208.parquet" in proc.stderr


def test_run_dry_run_goes_through_snakemake(tmp_path: Path) -> None:
    wd = copy_workflow(tmp_path)
    proc = rtprep("run", "--libs", "209", "--cap", "100", "--quick", "--dry-run",
                  "--configfile", "config/test.yaml", "--cores", "1", cwd=wd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lib209_cap100_chemclass_rt_prod.csv" in proc.stdout
    assert "lib208" not in proc.stdout


def test_model_commands_log_no_dependency_noise(tmp_path: Path) -> None:
    """`rtprep -v evaluate` logs rtprep's progress only: no PyTensor BLAS warning, no ArviZ
    notices, no batched_dot deprecation (each printed on every run before)."""
    from rtprep.models.synthetic import generate

    data = generate(n_species=4, n_clusters=2, n_compounds=40, n_classes=3, n_covariates=3,
                    n_sample_sets=40, n_test_sets=8, seed=5)
    paths = data.write(tmp_path / "d")
    proc = rtprep("-v", "evaluate", "--train", str(paths["train"]), "--test",
                  str(paths["test"]), "--out", str(tmp_path / "ev"), "--quick", "--steps", "200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.splitlines()
             if any(w in line for w in ("BLAS", "ArviZ", "arviz", "batched_dot", "FutureWarning"))]
    assert noise == []
    assert "evaluate:" in proc.stderr  # rtprep's own progress is still there
