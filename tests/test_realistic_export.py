"""The models on an independent realistic export (tests/data/realistic_export, with its truth):
production settings, cap 5, both libs, scored on the clean held-out rows against the rows' own
noise (the oracle). The thresholds are the project's targets for realistic data; the
phenomena-free version of this export scores 1.02-1.04x the oracle, so they leave room for the
groups' limited data (measured on the random split: pooled 1.07 / 1.05x, coverage 0.951 /
0.957, per-compound 5th percentile 0.885 / 0.898, width 1.11 / 1.12x, flags precision 1.0 and
recall 1.0 / 0.995)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.workflow_util import copy_workflow, snakemake

DATA = Path(__file__).parent / "data" / "realistic_export"
EXPORT = "2c62a0b1d4e5f60718293a4b5c6d7e8f"
LIBS = (611, 612)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("realistic")
    data = root / "export"
    shutil.copytree(DATA, data)
    wd = copy_workflow(root / "wf")
    out = root / "out"
    overlay = {
        "data_dir": str(data), "out_dir": str(out), "exports": [EXPORT], "libs": list(LIBS),
        "caps": [5], "n_clusters": 16,
        "embeddings": {"source": "rdkit", "path": str(root / "emb" / "embeddings.parquet"),
                       "smiles": str(data / "resources" / "metabolites" / "smiles.csv")},
        "model": {"caps": [5], "train": True, "evaluate": True, "quick": False},
        "eval": {"truth": str(data / "truth.parquet"), "splits": ["random", "time"]},
    }
    snakemake(wd, "--cores", "2", overlay=overlay, timeout=1800)
    return out


def _metrics(out: Path, lib: int, split: str = "random") -> dict[str, Any]:
    path = (out / "results" / "rt_prod" / EXPORT / f"lib{lib}_cap5" / "eval" / split
            / "metrics.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("lib", LIBS)
def test_pooled_accuracy_and_calibration(run: Path, lib: int) -> None:
    truth = _metrics(run, lib)["truth"]
    pooled, ridge = truth["models"]["pooled"], truth["models"]["ridge"]
    assert pooled["share_scored"] == 1.0 and truth["same_rows"] > 10_000
    assert pooled["rmse_over_oracle"] <= 1.15
    assert 0.93 <= pooled["coverage95"] <= 0.97
    assert pooled["width_over_oracle"] <= 1.25
    by_cpd = pooled["coverage95_by_compound"]
    assert by_cpd["compounds"] >= 100 and by_cpd["p05"] >= 0.85
    # tuned ridge on the same rows, with its interval: reported, and behind the pooled model
    assert ridge["rows"] == pooled["rows"]
    assert ridge["ci95"]["rmse_over_oracle"][0] > pooled["ci95"]["rmse_over_oracle"][1]


@pytest.mark.parametrize("lib", LIBS)
def test_time_split_holds_forward_in_time(run: Path, lib: int) -> None:
    """Trained on the earlier worksheets, scored on the latest (after the column change's
    drift): measured 1.09 / 1.07x the oracle, coverage 0.949 / 0.952."""
    pooled = _metrics(run, lib, "time")["truth"]["models"]["pooled"]
    assert pooled["share_scored"] == 1.0
    assert pooled["rmse_over_oracle"] <= 1.3
    assert 0.90 <= pooled["coverage95"] <= 0.97


@pytest.mark.parametrize("lib", LIBS)
def test_misassigned_training_rows_flagged(run: Path, lib: int) -> None:
    flags = _metrics(run, lib)["truth"]["training_rows_flagged"]
    assert flags["off_rows"] > 100  # ~1.3% of the 15,600 training rows
    assert flags["precision"] >= 0.9 and flags["recall"] >= 0.8
    assert flags["good_rows_left_out"] <= 0.005


@pytest.mark.parametrize("lib", LIBS)
def test_isomer_choice_beats_nearest_median(run: Path, lib: int) -> None:
    choice = _metrics(run, lib)["isomer_choice"]
    assert choice["peaks"] > 500
    assert choice["ci95"]["pooled_gain"][0] > 0
