"""Stage 8 accuracy on the demo, against the generator's truth (issue 3's acceptance).

One lib of a small demo goes through the library functions of stages 1-7 (merge, split, folds,
cap 5, classes, attach, RT CSV, test rows); 5% of the compounds are then left out of the
training CSV, so that the same fit also scores the backoff for unseen compounds. The RMSE and
coverage targets are checked on the test rows of the compounds the model has seen (what the
demo's held-out sample sets hold without the hold-out), on all of them (mis-assigned peaks
included, as a user sees them) and on the rows that are not mis-assigned.

Why the clean-row bound is 1.2 and not 1.1: with groups capped at 5 training rows and group
deviations of sd 0.05 min against noise of sd 0.07 min, even the true hyperparameters leave
each group's intercept uncertain: sqrt(σ² + 1/(1/τ² + n/σ²)) averaged over the test rows' support
(about a tenth of them in groups never seen in training) is 1.11-1.13 × σ on this demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.artifacts import read_meta
from rtprep.attach import attach_chem_classes
from rtprep.classes import build_chem_classes
from rtprep.demo import generate_demo
from rtprep.merge import MergeOptions, merge_export
from rtprep.models import ModelOptions, evaluate
from rtprep.models.truth import truth_report
from rtprep.rtcsv import make_rt_prod_csv, write_test_rows
from rtprep.sample import assign_folds, sample_per_species_compound
from rtprep.split import split_lib

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
    sample_per_species_compound(lib_pq, capped, cap_per_pair=5, seed=42, folds_csv=folds,
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
    make_rt_prod_csv(attached, species_map, train_csv)
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
    return {"out": out, "result": result, "pred": pred, "truth": truth, "held": held_csv,
            "n_held": hold.len()}


@pytest.mark.slow
def test_demo_pooled_accuracy_against_truth(demo_eval: dict) -> None:
    pred: pl.DataFrame = demo_eval["pred"]  # type: ignore[assignment]
    assert pred["sampleset_id"].n_unique() >= 30
    known = pred.filter(~pl.col("novelty").is_in(HELD_OUT_NOVELTY))
    seen = truth_report(known, demo_eval["truth"])
    assert seen["rows_matched"] == known.height
    assert seen["misassigned_rows"] > 0
    for subset, bound in (("all", 1.10), ("clean", 1.20)):
        block = seen[subset]
        pooled = block["models"]["pooled"]
        assert pooled["scored"] == block["rows"]
        assert pooled["rmse"] <= bound * block["truth_rmse"], (subset, block)
        assert 0.93 <= pooled["coverage95"] <= 0.97, (subset, pooled)
    # support ≤ 5: on clean rows (on all rows the mis-assigned test peaks, which no model can
    # predict, put pooled, ridge and the truth itself at the same RMSE)
    low = seen["clean"]["support_le5"]
    assert low["rows"] > 1000
    assert low["pooled_rmse"] <= 0.8 * low["ridge_rmse"], low
    # on all rows: the true parameters themselves are within 10% of ridge there, so no model
    # can reach 0.8x on that yardstick; against the noise-free rt_true (what each model got
    # wrong, whatever the peak's noise or mis-assignment) pooled is far below 0.8x ridge
    low_all = seen["all"]["support_le5"]
    assert low_all["truth_over_ridge"] >= 0.9, low_all
    assert low_all["pooled_over_ridge_vs_rt_true"] <= 0.8, low_all


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
    # the screened rows are mostly the demo's mis-assigned peaks: about 0.5% of the rows
    assert screen["outliers"] <= 0.02 * screen["rows"]
