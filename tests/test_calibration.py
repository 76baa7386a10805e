"""Scoring against a truth table: oracle ratios, calibration per compound, same rows, bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.core.errors import RtprepError
from rtprep.models import ModelOptions, evaluate
from rtprep.models.calibration import (
    MIN_COMPOUND_ROWS,
    calibration_report,
    calibration_table,
    flag_report,
    read_truth_table,
)
from tests.test_models import _small


def _rows(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """40 compounds × 36 rows in 12 sample sets; pooled predicts rt_true with the rows' own sd
    (the oracle), ridge is 0.02 min off with twice the sd and cannot score compound c39; rows
    of compound c00 in sample set 0 are mis-assigned (3 min off)."""
    rng = np.random.default_rng(seed)
    n_cpd, per = 40, 36
    cpd = np.repeat([f"c{i:02d}" for i in range(n_cpd)], per)
    sset = np.tile(np.arange(per) % 12, n_cpd).astype(str)
    task = [f"t{i}" for i in range(n_cpd * per)]
    noise = np.repeat(rng.uniform(0.01, 0.03, n_cpd), per)
    rt_true = rng.uniform(1, 20, n_cpd * per)
    mis = (cpd == "c00") & (sset == "0")
    rt = rt_true + rng.standard_normal(n_cpd * per) * noise + np.where(mis, 3.0, 0.0)
    z = 1.959963984540054
    ridge_ok = cpd != "c39"
    pred = pl.DataFrame({
        "sampleset_id": sset, "task_id": task, "compound": cpd, "rt": rt,
        "pooled_pred": rt_true, "pooled_lower": rt_true - z * noise,
        "pooled_upper": rt_true + z * noise, "pooled_sd": noise,
        "ridge_pred": np.where(ridge_ok, rt_true + 0.02, np.nan),
        "ridge_lower": np.where(ridge_ok, rt_true + 0.02 - 2 * z * noise, np.nan),
        "ridge_upper": np.where(ridge_ok, rt_true + 0.02 + 2 * z * noise, np.nan),
        "ridge_sd": np.where(ridge_ok, 2 * noise, np.nan),
    }).with_columns(pl.col("^ridge_.*$").fill_nan(None))
    truth = pl.DataFrame({"task_id": task, "compound": cpd, "rt_true": rt_true,
                          "noise_sd": noise, "misassigned": mis})
    return pred, truth


def test_scores_on_clean_rows_every_model_scores() -> None:
    pred, truth = _rows()
    rep = calibration_report(pred, truth, seed=3)
    clean = truth.filter(~pl.col("misassigned"))
    assert rep["misassigned_rows"] == 3 and rep["clean_rows"] == clean.height
    assert rep["same_rows"] == clean.filter(pl.col("compound") != "c39").height
    assert rep["models"]["ridge"]["share_scored"] == pytest.approx(
        rep["same_rows"] / rep["clean_rows"])
    # an independent computation of the headline numbers on the same rows
    same = pred.join(truth, on=["task_id", "compound"]).filter(
        ~pl.col("misassigned") & pl.col("ridge_pred").is_not_null())
    y, noise = same["rt"].to_numpy(), same["noise_sd"].to_numpy()
    oracle = np.sqrt(np.mean(noise**2))
    for model in ("pooled", "ridge"):
        p, lo, hi, sd = (same[f"{model}_{c}"].to_numpy() for c in ("pred", "lower", "upper", "sd"))
        got = rep["models"][model]
        # sums of a few thousand floats: equal to ~1e-12 relative whatever the summation order
        np.testing.assert_allclose(got["rmse_over_oracle"],
                                   np.sqrt(np.mean((y - p) ** 2)) / oracle, rtol=1e-9)
        np.testing.assert_allclose(got["coverage95"], np.mean((y >= lo) & (y <= hi)), rtol=1e-12)
        score = (hi - lo) + 40 * (np.clip(lo - y, 0, None) + np.clip(y - hi, 0, None))
        np.testing.assert_allclose(got["interval_score"], score.mean(), rtol=1e-9)
        lpd = -0.5 * np.log(2 * np.pi) - np.log(sd) - 0.5 * ((y - p) / sd) ** 2
        np.testing.assert_allclose(got["log_density"], lpd.mean(), rtol=1e-9)
        np.testing.assert_allclose(got["width_over_oracle"],
                                   np.mean(hi - lo) / (3.919927969080108 * noise.mean()),
                                   rtol=1e-9)
        per_cpd = same.with_columns(((pl.col("rt") >= pl.col(f"{model}_lower"))
                                     & (pl.col("rt") <= pl.col(f"{model}_upper"))).alias("c"))
        cov = (per_cpd.group_by("compound").agg(pl.len().alias("n"), pl.col("c").mean())
               .filter(pl.col("n") >= MIN_COMPOUND_ROWS)["c"].to_numpy())
        # c00 keeps 33 clean rows (>= 30), c39 is not on the same rows (ridge cannot score it)
        assert got["coverage95_by_compound"]["compounds"] == len(cov) == 39
        np.testing.assert_allclose(got["coverage95_by_compound"]["p05"], np.quantile(cov, 0.05))
    pooled, ridge = rep["models"]["pooled"], rep["models"]["ridge"]
    assert 0.85 < pooled["rmse_over_oracle"] < 1.15  # the oracle itself, up to sampling noise
    assert ridge["rmse_over_oracle"] > 1.2 and ridge["log_density"] < pooled["log_density"]
    lo, hi = pooled["ci95"]["rmse_over_oracle"]
    assert lo < pooled["rmse_over_oracle"] < hi
    lo, hi = pooled["ci95"]["coverage95"]
    assert lo <= pooled["coverage95"] <= hi
    table = calibration_table(rep)
    assert table["model"].to_list() == ["pooled", "ridge"]
    assert calibration_report(pred, truth, seed=3) == rep  # seeded bootstrap: deterministic


def test_flags_of_training_rows_against_the_truth() -> None:
    truth = pl.DataFrame({"task_id": [f"t{i}" for i in range(10)], "compound": ["c"] * 10,
                          "rt_true": [5.0] * 10, "noise_sd": [0.01] * 10,
                          "misassigned": [False] * 10})
    # rows 0-2 lie ≥ 5 sd off; the model flagged rows 0, 1 and 5
    rt = [5.3, 4.9, 5.06, 5.0, 5.01, 5.02, 5.0, 4.99, 5.0, 5.0]
    rows = truth.select("task_id", "compound").with_columns(
        pl.Series("rt", rt), pl.Series("rt_outlier", [i in (0, 1, 5) for i in range(10)]))
    rep = flag_report(rows, truth)
    assert rep["off_rows"] == 3 and rep["flagged_rows"] == 3
    assert rep["precision"] == pytest.approx(2 / 3) and rep["recall"] == pytest.approx(2 / 3)
    assert rep["good_rows_left_out"] == pytest.approx(1 / 7)


def test_truth_table_is_checked(tmp_path: Path) -> None:
    _, truth = _rows()
    bad = tmp_path / "t.parquet"
    truth.drop("noise_sd").write_parquet(bad)
    with pytest.raises(RtprepError, match="noise_sd"):
        read_truth_table(bad)
    pl.concat([truth, truth.head(1)]).write_parquet(bad)
    with pytest.raises(RtprepError, match="more than once"):
        read_truth_table(bad)


def test_evaluate_scores_against_any_truth_table(tmp_path: Path) -> None:
    """`rtprep evaluate --truth` with a truth table: truth.json and truth.csv per model."""
    data = _small(seed=4, n_sample_sets=70, n_test_sets=12)
    paths = data.write(tmp_path / "d")
    truth = (data.test.join(data.truth.select("species", "compound", "noise_sd"),
                            on=["species", "compound"], how="left")
             .select("task_id", "compound", "rt_true", "noise_sd",
                     pl.lit(False).alias("misassigned")).unique(["task_id", "compound"]))
    # the training rows too (their rt_true unknown here: taken as their rt, so none is off)
    train = (data.train.join(data.truth.select("species", "compound", "noise_sd"),
                             on=["species", "compound"], how="left")
             .select("task_id", "compound", pl.col("rt").alias("rt_true"), "noise_sd",
                     pl.lit(False).alias("misassigned")))
    truth = (pl.concat([truth, train]).unique(["task_id", "compound"], keep="first")
             .with_columns(pl.col("noise_sd").fill_null(pl.col("noise_sd").mean())))
    truth.write_parquet(tmp_path / "truth.parquet")
    res = evaluate(None, paths["train"], paths["test"], tmp_path / "ev",
                   options=ModelOptions(quick_steps=600, summary_draws=10, seed=2),
                   quick=True, embeddings=paths["embeddings"], truth=tmp_path / "truth.parquet")
    block = json.loads((tmp_path / "ev" / "truth.json").read_text())
    assert block["kind"] == "truth_table" and res["truth"]["same_rows"] == block["same_rows"]
    assert set(block["models"]) == {"pooled", "ridge"}
    assert 0.8 <= block["models"]["pooled"]["coverage95"] <= 1.0
    table = pl.read_csv(tmp_path / "ev" / "truth.csv")
    assert table["model"].to_list() == ["pooled", "ridge"]
    assert {"pooled_sd", "ridge_sd"} <= set(pl.read_parquet(tmp_path / "ev" /
                                                            "predictions.parquet").columns)
    # the training rows, with those the screen left out, beside the trained models
    rows = pl.read_parquet(tmp_path / "ev" / "model" / "rows.parquet")
    manifest = json.loads((tmp_path / "ev" / "model" / "model.json").read_text())
    assert rows.height == manifest["input"]["rows"] + manifest["outlier_screen"]["outliers"]
    assert int(rows["rt_outlier"].sum()) == manifest["outlier_screen"]["outliers"]
    flags = block["training_rows_flagged"]
    assert flags["rows"] == rows.height and flags["flagged_rows"] == rows["rt_outlier"].sum()
    assert flags["off_rows"] == 0
    # every synthetic compound has the structure "C": all are isomers of one another, and the
    # pooled model picks the right one by RT far more often than the nearest training median
    choice = res["isomer_choice"]
    assert choice["peaks"] > 0 and choice["formulas"] == 1
    assert choice["model_right"] > choice["nearest_median_right"] + 0.2
    assert choice["pooled_right"] == choice["model_right"] and 0 <= choice["ridge_right"] <= 1
    # bootstrap intervals by sample set hold the point estimates, and the gain's excludes 0
    ci = choice["ci95"]
    for key in ("pooled_right", "ridge_right", "nearest_median_right"):
        assert ci[key][0] <= choice[key] <= ci[key][1]
    assert ci["pooled_gain"][0] > 0


def test_formulas_from_structures(tmp_path: Path) -> None:
    from rtprep.models.isomers import formulas

    emb = tmp_path / "e.parquet"
    pl.DataFrame({"chem_id": [1, 2, 3, 4], "smiles": ["CCO", "COC", "CCCO", "not a smiles"],
                  "embedding20": [[0.0] * 3] * 4}).write_parquet(emb)
    assert formulas(emb) == {"1": "C2H6O", "2": "C2H6O", "3": "C3H8O"}


def test_isomer_choice_blocks_give_the_whole_grids_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peak × isomer grid is scored a block at a time (memory bound for large isomer
    groups): any block size gives the same shares and intervals, and no block exceeds it."""
    import numpy as np

    from rtprep.models import isomers

    rng = np.random.default_rng(3)
    compounds = [f"c{i}" for i in range(12)]
    centre = {c: 1.0 + 0.4 * i for i, c in enumerate(compounds)}
    # formula A: 7 isomers, B: 4, C: 1 (no isomers, so its peaks are not scored)
    formula = {c: ("A" if i < 7 else "B" if i < 11 else "C") for i, c in enumerate(compounds)}
    n = 400
    comp = rng.choice(compounds, n)
    test = pl.DataFrame({"compound": comp, "compound_class": 0,
                         "rt": [centre[c] + rng.normal(0, 0.25) for c in comp],
                         "sampleset_id": rng.integers(0, 20, n)})
    train = pl.DataFrame({"compound": compounds[:-2], "rt": [centre[c] for c in compounds[:-2]]})
    seen: list[int] = []

    class NoCovariates:
        @staticmethod
        def matrix(df: pl.DataFrame) -> np.ndarray:
            return np.zeros((df.height, 0))

    class Model:  # the members isomer_choice uses, with a compound-wise prediction
        groups = pl.DataFrame({"compound": compounds, "compound_class": 0})
        covariates = NoCovariates()

        def __init__(self, shift: float) -> None:
            self.shift = shift

        def predict_frame(self, grid: pl.DataFrame, x: np.ndarray) -> pl.DataFrame:
            assert x.shape == (grid.height, 0)  # the peaks' covariates, one row per candidate
            seen.append(grid.height)
            mean = grid["compound"].replace_strict(centre, return_dtype=pl.Float64) + self.shift
            return pl.DataFrame({"rt_pred": mean, "rt_sd": pl.Series([0.3] * grid.height)})

    models = {"pooled": Model(0.0), "ridge": Model(0.15)}
    whole = isomers.isomer_choice(models, train, test, formula, seed=1)
    assert len(seen) == 2  # at the default size, one block for each model
    assert whole["peaks"] == int(sum(formula[c] != "C" for c in comp))
    for size in (1, 5, 64):
        seen.clear()
        monkeypatch.setattr(isomers, "GRID_ROWS", size)
        assert isomers.isomer_choice(models, train, test, formula, seed=1) == whole
        assert max(seen) <= max(size, 7) and len(seen) > 2
    # held-out rows fed in pieces (as evaluate streams them) give the same shares too
    monkeypatch.setattr(isomers, "GRID_ROWS", 64)
    for piece in (1, 37, 400):
        choice = isomers.IsomerChoice(models, train, formula)
        for lo in range(0, n, piece):
            choice.add(test.slice(lo, piece))
        assert choice.result(seed=1) == whole
