"""Model accuracy on the demo, against the generator's truth (the acceptance test).

One lib of a small demo goes through the library functions of the data stages (merge, split,
folds, cap 5, classes, attach, RT CSV, test rows); 5% of the compounds are then left out of the
training CSV, so that the same fit also scores the backoff for unseen compounds. The RMSE and
coverage targets are checked on the test rows of the compounds the model has seen (what the
demo's held-out sample sets hold without the hold-out), on all of them (mis-assigned peaks
included, as a user sees them) and on the rows that are not mis-assigned.

The yardstick is the demo's own oracle: the RMS of the truth table's ``noise_sd`` on the clean
held-out rows (what the true parameters score; noise differs per compound). The demo departs from
the model's family (noise per compound, a curvature warp walking over worksheets with a column
change, species x compound matrix effects, near mis-assignments), so the pooled model does not
reach the oracle; the bounds are regression guards at a stated margin over what was measured
(seed 7, 60,000 rows, lib 209, PyMC ADVI 3,000 steps, model seed 0; before the species-slope
shrinkage, the robust fit's start and its leverage fix in brackets):

- clean rows: pooled RMSE 1.18 (1.28) x oracle -> bound 1.30; coverage95 0.958 (0.924) ->
  [0.92, 0.98]; on the rows pooled and ridge both score 1.11 (1.21) -> 1.22;
- support ≤ 5, clean: pooled 1.11 (1.22) x oracle -> 1.22, 0.41 (0.46) x ridge -> 0.5;
  the ≤1-row bin 1.14 (1.43) x oracle, coverage 0.968 -> 1.30;
- all rows: pooled 1.002 x the true parameters' RMSE -> 1.05; coverage 0.944 (0.912) ->
  [0.90, 0.98]; against rt_true 0.20 (0.28) x ridge -> 0.35;
- training rows >= 5 noise sds off: flagged with precision 0.958, recall 0.958 (0.985, 0.90)
  -> 0.93, 0.90.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.chem.classes import build_chem_classes
from rtprep.core.artifacts import read_meta
from rtprep.demo import generate_demo
from rtprep.models import ModelOptions, evaluate
from rtprep.models.calibration import calibration_report, flag_report, read_truth_table
from rtprep.models.truth import LOW_SUPPORT_BINS, truth_report
from rtprep.stages.attach import attach_chem_classes
from rtprep.stages.cap import assign_folds, cap_species_compounds
from rtprep.stages.merge import MergeOptions, merge_export
from rtprep.stages.rt_csv import write_rt_csv, write_test_rows
from rtprep.stages.split import split_lib

LIB = 209
HASH = "de194c2cc2114efaa1075ccf7539d0cb"
#: Test rows of the compounds left out of training.
HELD_OUT_NOVELTY = ["unseen compound", "unseen species and compound"]


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("demo_models")
    demo = root / "demo"
    generate_demo(demo, rows=60_000, seed=7, libs=[LIB])
    data = demo / "repo_export"
    work = root / "work"
    work.mkdir()
    merged = work / f"merged_training_{HASH}.parquet"
    merge_export(data / HASH, merged, MergeOptions())
    lib_pq = work / f"lib{LIB}.parquet"
    split_lib(merged, LIB, lib_pq, rt_range=(0.0, 40.0))
    folds = work / "folds.csv"
    assign_folds(lib_pq, folds, test_fraction=0.25, fold_seed=1)
    capped = work / "train_cap5.parquet"
    cap_species_compounds(lib_pq, capped, cap_per_pair=5, seed=42, folds_csv=folds,
                                fold="train")
    emb = demo / "resources" / "metabolites" / "embeddings_chemberta_pca20.parquet"
    classes = work / "chem_classes_k8.parquet"
    build_chem_classes(emb, n_clusters=8, seed=0, out_parquet=classes,
                       out_csv=work / "chem_classes_k8.csv")
    lib_map = data / f"lib_comp_chem_mapping_lib{LIB}.csv"
    species_map = data / f"merged_training_{HASH}_lib{LIB}_species_mapping.csv"
    attached = work / "train_cap5_chemclass.parquet"
    attach_chem_classes(capped, lib_map, classes, attached)
    train_csv = work / "train_rt_prod.csv"
    write_rt_csv(attached, species_map, train_csv)
    test_rows = work / "test_rows.parquet"
    write_test_rows(lib_pq, folds, lib_map, classes, species_map, test_rows,
                    families=("IS", "RS", "ES_"))
    # leave 5% of the compounds out of training: their test rows score the backoff
    df = pl.read_csv(train_csv, infer_schema_length=10_000)
    cpds = df["compound"].unique().sort()
    hold = cpds.filter(pl.Series(np.random.default_rng(LIB).random(len(cpds)) < 0.05))
    held_csv = work / "train_holdout_rt_prod.csv"
    df.filter(~pl.col("compound").is_in(hold.implode())).write_csv(held_csv)
    opts = ModelOptions(quick_steps=3000, summary_draws=30, seed=0)
    out = root / "eval"
    result = evaluate(None, held_csv, test_rows, out, options=opts, quick=True, embeddings=emb,
                      truth=demo / "truth" / "truth_peaks.parquet")
    pred = pl.read_parquet(out / "predictions.parquet")
    truth = demo / "truth" / "truth_peaks.parquet"
    return {"out": out, "result": result, "pred": pred, "truth": truth,
            "table": demo / "truth" / "truth_table.parquet", "held": held_csv,
            "n_held": hold.len()}


def _oracle_ratio(rows: pl.DataFrame, model: str) -> dict[str, float]:
    """RMSE ÷ oracle (the RMS of the rows' own noise_sd) and 95% coverage of ``model`` on
    ``rows`` (clean rows joined to the truth table)."""
    ok = rows.filter(pl.col(f"{model}_pred").is_not_null())
    rmse = float(np.sqrt(((ok["rt"] - ok[f"{model}_pred"]) ** 2).mean()))
    oracle = float(np.sqrt((ok["noise_sd"] ** 2).mean()))
    cov = float(((ok["rt"] >= ok[f"{model}_lower"]) & (ok["rt"] <= ok[f"{model}_upper"])).mean())
    return {"rows": ok.height, "rmse": rmse, "oracle": oracle, "over_oracle": rmse / oracle,
            "coverage95": cov}


@pytest.mark.slow
def test_demo_pooled_accuracy_against_truth(demo_eval: dict) -> None:
    """Bounds are ratios to the demo's own oracle with a stated margin over what was measured
    (seed 7, 60,000 rows, lib 209; the module docstring gives the numbers)."""
    pred: pl.DataFrame = demo_eval["pred"]  # type: ignore[assignment]
    assert pred["sampleset_id"].n_unique() >= 30
    known = pred.filter(~pl.col("novelty").is_in(HELD_OUT_NOVELTY))
    table = read_truth_table(demo_eval["table"])  # type: ignore[arg-type]
    rows = known.with_columns(pl.col("task_id", "compound").cast(pl.String)).join(
        table, on=["task_id", "compound"])
    assert rows.height == known.height  # every held-out row has its truth row
    assert rows["misassigned"].sum() > 0
    clean = rows.filter(~pl.col("misassigned"))
    # pooled on every clean row: measured 1.18 x the oracle, coverage 0.958
    pooled = _oracle_ratio(clean, "pooled")
    assert pooled["rows"] == clean.height
    assert pooled["over_oracle"] <= 1.30, pooled
    assert 0.92 <= pooled["coverage95"] <= 0.98, pooled
    # the evaluation's own calibration report agrees (rows pooled and ridge both score):
    # measured 1.11 x the oracle
    rep = calibration_report(known, table, models=("pooled", "ridge"))
    assert rep["models"]["pooled"]["rmse_over_oracle"] <= 1.22, rep["models"]["pooled"]
    # support <= 5, clean rows both models score: measured pooled 1.11 x the oracle and 0.41 x
    # ridge; in the <=1-row bin 1.14 x the oracle
    low = clean.filter(pl.col("support_bin").is_in(list(LOW_SUPPORT_BINS))
                       & pl.col("pooled_pred").is_not_null() & pl.col("ridge_pred").is_not_null())
    assert low.height > 1000
    lp, lr = _oracle_ratio(low, "pooled"), _oracle_ratio(low, "ridge")
    assert lp["over_oracle"] <= 1.22, lp
    assert lp["rmse"] <= 0.5 * lr["rmse"], (lp, lr)
    one = _oracle_ratio(low.filter(pl.col("support_bin") == "≤1"), "pooled")
    assert one["rows"] > 300 and one["over_oracle"] <= 1.30, one
    # all rows (mis-assigned peaks included, as a user sees them): the mis-assigned test peaks,
    # which no model can predict, dominate every RMSE, so the yardstick is the true parameters'
    # RMSE (measured pooled 1.002 x) and, against the noise-free rt_true, ridge (measured 0.20 x)
    seen = truth_report(known, demo_eval["truth"])
    block = seen["all"]
    assert block["models"]["pooled"]["scored"] == block["rows"]
    assert block["models"]["pooled"]["rmse"] <= 1.05 * block["truth_rmse"], block
    assert 0.90 <= block["models"]["pooled"]["coverage95"] <= 0.98, block["models"]["pooled"]
    low_all = block["support_le5"]
    assert low_all["truth_over_ridge"] >= 0.9, low_all
    assert low_all["pooled_over_ridge_vs_rt_true"] <= 0.35, low_all


@pytest.mark.slow
def test_demo_backoff_for_unseen_compounds(demo_eval: dict) -> None:
    report = demo_eval["result"]["truth"]  # type: ignore[index]
    for subset in ("all", "clean"):
        un = report[subset]["unseen_compound"]
        assert un["rows"] > 100
        assert un["pooled"]["rmse"] <= un["class_mean"]["rmse"], un
        assert un["pooled"]["rmse"] < un["global_mean"]["rmse"], un
    assert (Path(demo_eval["out"]) / "truth.json").is_file()  # type: ignore[arg-type]
    table = pl.read_csv(Path(demo_eval["out"]) / "truth.csv")  # type: ignore[arg-type]
    assert set(table["model"]) >= {"truth", "pooled", "ridge", "class_mean"}


@pytest.mark.slow
def test_demo_outlier_screen_drops_misassigned_training_rows(demo_eval: dict) -> None:
    model_dir = Path(demo_eval["out"]) / "model"  # type: ignore[arg-type]
    meta = read_meta(model_dir / "pooled" / "groups.parquet")
    manifest = json.loads((model_dir / "model.json").read_text())
    screen = manifest["outlier_screen"]
    assert screen["outliers"] > 0
    assert meta["drops"]["rt_outlier"] == screen["outliers"]
    assert meta["rows_out"] + sum(meta["drops"].values()) == meta["rows_in"]
    # the screened rows are mostly the demo's mis-assigned peaks: 1.5% of the rows, the near
    # ones (5-15 sigma, or an isomer's RT) not all separable; measured 1.17% screened
    assert screen["outliers"] <= 0.02 * screen["rows"]
    # against the truth table (rows >= 5 noise sds off): measured precision 0.958, recall 0.958
    flags = flag_report(pl.read_parquet(model_dir / "rows.parquet"),
                        read_truth_table(demo_eval["table"]))  # type: ignore[arg-type]
    assert flags["precision"] >= 0.93 and flags["recall"] >= 0.90, flags
