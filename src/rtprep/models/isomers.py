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

#: Bootstrap resamples of whole sample sets for the intervals (as :mod:`.calibration`).
BOOTSTRAP = 200
#: Peak × isomer rows scored at a time (each carries the test row's covariates): bounds the
#: isomer choice's memory whatever the size of the isomer groups.
GRID_ROWS = 500_000


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


def isomer_choice(models: FittedModel | dict[str, FittedModel], train: pl.DataFrame,
                  test: pl.DataFrame, formula: dict[str, str], *,
                  seed: int = 0) -> dict[str, Any]:
    """Share of ``test`` peaks (of compounds with isomers the first model knows) whose compound
    each model picks among its isomers, beside the nearest-median baseline (see the module).

    ``models``: one model (reported as ``model_right``) or ``{name: model}``, the first of which
    (the pooled model) defines the isomers and is reported as ``model_right``; every model gets
    ``<name>_right`` on the same peaks. ``ci95``: bootstrap intervals (``BOOTSTRAP`` resamples of
    whole sample sets, seeded) of each share and of each model's gain over the baseline. The
    same as :class:`IsomerChoice` fed ``test`` in one piece."""
    choice = IsomerChoice(models, train, formula)
    choice.add(test)
    return choice.result(seed)


class IsomerChoice:
    """:func:`isomer_choice` over test rows that come in pieces (:meth:`add` each, in order;
    then :meth:`result`): each peak's choice is its own, so the pieces give the picks the
    whole would, and memory follows the piece."""

    def __init__(self, models: FittedModel | dict[str, FittedModel], train: pl.DataFrame,
                 formula: dict[str, str]) -> None:
        self.models = models if isinstance(models, dict) else {"pooled": models}
        first = next(iter(self.models.values()))
        known = first.groups.select("compound", "compound_class").unique("compound")
        known = known.with_columns(pl.col("compound").replace_strict(formula, default=None)
                                   .alias("formula")).drop_nulls("formula")
        self.sizes = known.group_by("formula").len().filter(pl.col("len") >= 2)
        self.iso = known.join(self.sizes.select("formula"), on="formula")
        self.medians = train.group_by("compound").agg(pl.col("rt").median().alias("median"))
        self._right: dict[str, list[np.ndarray]] = {
            n: [] for n in ("nearest_median", *self.models)}
        self._sets: list[np.ndarray] = []

    def add(self, test: pl.DataFrame, x: dict[str, np.ndarray] | None = None) -> None:
        """Score the peaks of ``test``. ``x``: per model name, its covariate matrix of the rows
        of ``test`` when the caller has it (else computed here)."""
        x = dict(x or {})
        rows = (test.with_row_index("_peak")
                .join(self.iso.select("compound", "formula"), on="compound", how="inner")
                .sort("_peak"))
        if rows.height == 0:
            return
        for name, model in self.models.items():
            if name not in x:  # the peaks' covariates (an isomer's are its peak's)
                x[name] = model.covariates.matrix(test)
        truth = rows.select("_peak", "compound")
        self._sets.append((rows["sampleset_id"] if "sampleset_id" in rows.columns
                           else pl.repeat(0, rows.height, eager=True)).to_numpy())
        # Each peak meets every isomer of its compound, in its own injection: a grid of peaks ×
        # isomers, built and scored a block of peaks at a time so that large isomer groups (tens
        # of compounds one formula) stay within memory.
        keys = [c for c in ("species", "species_cluster", "sampleset_id") if c in rows.columns]
        n_cand = (rows.join(self.sizes, on="formula", how="left", maintain_order="left")["len"]
                  .to_numpy())
        picks: dict[str, list[pl.DataFrame]] = {n: [] for n in self._right}
        for lo, hi in _blocks(n_cand, GRID_ROWS):
            block = rows.slice(lo, hi - lo).select("_peak", "formula", "rt", *keys)
            grid = (block.join(self.iso.rename({"compound": "candidate"}), on="formula")
                    .with_columns(pl.col("candidate").alias("compound")))
            peak = grid["_peak"].to_numpy()
            base = grid.select("_peak", "candidate", "rt").join(
                self.medians.rename({"compound": "candidate"}), on="candidate", how="left")
            # a candidate without a median (or, below, a density) is not a choice: a peak none
            # of whose candidates has one counts as not right; ties go to the first candidate
            # by name
            picks["nearest_median"].append(
                base.with_columns((pl.col("median") - pl.col("rt")).abs().alias("dist"))
                .filter(pl.col("dist").is_not_null())
                .sort("_peak", "dist", "candidate")
                .group_by("_peak", maintain_order=True).first().select("_peak", "candidate"))
            for name, model in self.models.items():
                pred = model.predict_frame(grid, x=x[name][peak])
                dens = _density(grid["rt"].to_numpy(), pred["rt_pred"].to_numpy(),
                                pred["rt_sd"].to_numpy())
                picks[name].append(
                    base.with_columns(pl.Series("density", dens))
                    .filter(pl.col("density").is_finite())
                    .sort("_peak", "density", "candidate", descending=[False, True, False])
                    .group_by("_peak", maintain_order=True).first()
                    .select("_peak", "candidate"))
        for name, p in picks.items():
            self._right[name].append(_right(truth, pl.concat(p)))

    def result(self, seed: int = 0) -> dict[str, Any]:
        """The shares right and their intervals over every peak added."""
        if not self._sets:
            return {"peaks": 0, "formulas": self.sizes.height}
        right = {n: np.concatenate(v) for n, v in self._right.items()}
        sets = np.concatenate(self._sets)
        out: dict[str, Any] = {"peaks": len(sets), "formulas": self.sizes.height,
                               "compounds_with_isomers": self.iso.height}
        names = list(self.models)
        out["model_right"] = float(right[names[0]].mean())
        out["nearest_median_right"] = float(right["nearest_median"].mean())
        for name in names:
            out[f"{name}_right"] = float(right[name].mean())
        out["ci95"] = _bootstrap(sets, right, names, seed)
        return out


def _blocks(counts: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive ``[lo, hi)`` ranges of ``counts`` whose sums stay within ``limit`` (a range
    holds at least one item, however large)."""
    out: list[tuple[int, int]] = []
    lo, total = 0, 0
    for i, c in enumerate(counts.tolist()):
        if i > lo and total + c > limit:
            out.append((lo, i))
            lo, total = i, 0
        total += c
    if lo < len(counts):
        out.append((lo, len(counts)))
    return out


def _right(truth: pl.DataFrame, pick: pl.DataFrame) -> np.ndarray:
    """Per peak of ``truth`` (in its order): 1.0 where ``pick`` chose the peak's compound."""
    joined = truth.join(pick, on="_peak", how="left", maintain_order="left")
    return (joined["compound"] == joined["candidate"]).fill_null(False).to_numpy().astype(
        np.float64)


def _bootstrap(sets: np.ndarray, right: dict[str, np.ndarray], names: list[str],
               seed: int) -> dict[str, list[float]]:
    """95% intervals over resamples of whole sample sets of each share right and of each
    model's share minus the baseline's."""
    uniq, inv = np.unique(sets, return_inverse=True)
    k = len(uniq)
    if k < 2:
        return {}
    n = np.bincount(inv, minlength=k).astype(np.float64)
    per_set = {key: np.bincount(inv, weights=v, minlength=k) for key, v in right.items()}
    pick = np.random.default_rng(seed).integers(0, k, size=(BOOTSTRAP, k))
    total = n[pick].sum(axis=1)
    share = {key: v[pick].sum(axis=1) / total for key, v in per_set.items()}
    out = {f"{key}_right": np.quantile(v, [0.025, 0.975]).tolist() for key, v in share.items()}
    for name in names:
        out[f"{name}_gain"] = np.quantile(share[name] - share["nearest_median"],
                                          [0.025, 0.975]).tolist()
    return out


def _density(y: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.log(sd) - 0.5 * ((y - mean) / sd) ** 2
