"""What peak assignment needs: picking the right compound among its isomers by retention time.

Isomers (compounds of one molecular formula, from RDKit on the structures) share their mass, so
a peak at their m/z is assigned by RT alone. For every held-out peak of a compound with isomers
among the compounds the model knows, the model predicts each isomer in that injection (same
species, same standards); the choice is right when the peak's own compound has the highest
predictive density at the observed RT. The baseline picks the isomer whose median training RT
is nearest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.models.fitted import FittedModel

log = logging.getLogger(__name__)


def formulas(embeddings: str | Path) -> dict[str, str]:
    """Molecular formula per ``chem_id`` from the embeddings table's ``smiles`` (RDKit); an
    empty map when the table has no structures."""
    path = Path(embeddings)
    if "smiles" not in pl.read_parquet_schema(path):
        return {}
    from rdkit import Chem, RDLogger
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    RDLogger.DisableLog("rdApp.*")
    table = pl.read_parquet(path, columns=["chem_id", "smiles"])
    out = {}
    for chem_id, smiles in table.iter_rows():  # a loop over compounds (hundreds), RDKit per one
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        if mol is not None:
            out[str(chem_id)] = CalcMolFormula(mol)
    return out


def isomer_choice(model: FittedModel, train: pl.DataFrame, test: pl.DataFrame,
                  formula: dict[str, str]) -> dict[str, Any]:
    """Share of ``test`` peaks (of compounds with isomers the model knows) whose compound the
    model picks among its isomers, beside the nearest-median baseline (see the module)."""
    known = model.groups.select("compound", "compound_class").unique("compound")
    known = known.with_columns(pl.col("compound").replace_strict(formula, default=None)
                               .alias("formula")).drop_nulls("formula")
    sizes = known.group_by("formula").len().filter(pl.col("len") >= 2)
    iso = known.join(sizes.select("formula"), on="formula")
    rows = (test.with_row_index("_peak")
            .join(iso.select("compound", "formula"), on="compound", how="inner"))
    if rows.height == 0:
        return {"peaks": 0, "formulas": sizes.height}
    # every isomer of each peak's compound, in that peak's injection
    grid = (rows.drop("compound", "compound_class")
            .join(iso.rename({"compound": "candidate"}), on="formula")
            .with_columns(pl.col("candidate").alias("compound")))
    pred = model.predict_frame(grid)
    dens = _density(grid["rt"].to_numpy(), pred["rt_pred"].to_numpy(),
                    pred["rt_sd"].to_numpy())
    medians = train.group_by("compound").agg(pl.col("rt").median().alias("median"))
    scored = grid.select("_peak", "candidate", "rt").with_columns(
        pl.Series("density", dens)).join(
        medians.rename({"compound": "candidate"}), on="candidate", how="left")
    pick_model = (scored.sort("_peak", pl.col("density").fill_nan(-np.inf),
                              descending=[False, True])
                  .group_by("_peak", maintain_order=True).first().select("_peak", "candidate"))
    pick_median = (scored.with_columns((pl.col("median") - pl.col("rt")).abs().alias("dist"))
                   .sort("_peak", pl.col("dist").fill_null(np.inf))
                   .group_by("_peak", maintain_order=True).first().select("_peak", "candidate"))
    truth = rows.select("_peak", "compound")
    right_model = truth.join(pick_model, on="_peak").select(
        (pl.col("compound") == pl.col("candidate")).mean()).item()
    right_median = truth.join(pick_median, on="_peak").select(
        (pl.col("compound") == pl.col("candidate")).mean()).item()
    return {"peaks": rows.height, "formulas": sizes.height,
            "compounds_with_isomers": iso.height,
            "model_right": float(right_model), "nearest_median_right": float(right_median)}


def _density(y: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.log(sd) - 0.5 * ((y - mean) / sd) ** 2
