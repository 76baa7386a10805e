"""Chemistry embeddings from structures: ``chem_id, smiles -> chem_id, smiles, embedding20``.

For a user without the precomputed ChemBERTa Parquet, or with new chemicals, this builds a file
with exactly the same contract (``chem_id`` Int64, ``smiles`` String, ``embedding20``
List(Float64), sorted by ``chem_id``) from the SMILES alone, so that stage chem_classes (compound
classes) runs on it unchanged.

RDKit route (:func:`rdkit_embeddings`), per chemical:

1. Morgan *count* fingerprint (``rdFingerprintGenerator.GetMorganGenerator(radius, fpSize)``,
   no chirality): how often each circular substructure occurs, folded into ``n_bits`` counts;
2. optionally the 2-D descriptors of :data:`DESCRIPTORS` (lipophilicity, size, polarity,
   hydrogen bonding, flexibility, rings, saturation, charge: what drives reversed-phase RT);
3. scaling, in two blocks that each get a total variance of 1 (so 11 descriptors are not drowned
   by 2,048 bits):

   - fingerprint counts are centred per bit and divided by one block-wide factor (the root of the
     summed bit variances). They are *not* divided per bit: a bit seen in one chemical would then
     get a value of ~sqrt(n) and PCA would spend components on single molecules (on the demo's
     429 structures, per-bit scaling put 227 chemicals into one of 12 k-means classes and 4
     chemicals into classes of their own; block scaling gives 83 at most and none alone);
   - descriptors are standardised per column (scikit-learn ``StandardScaler``) and divided by
     the root of the number of descriptors that vary;

   a column that does not vary among the fitted chemicals is centred to 0 and gets no weight on
   the PCA axes (so an unseen bit in a new chemical cannot move it);
4. PCA to ``n_components`` (scikit-learn, ``svd_solver="full"``: exact and deterministic, on one
   BLAS thread).

The fitted scaling and PCA are saved beside the output (:func:`projection_paths`):
``<stem>.projection.parquet`` (one row per feature: ``feature, block, center, scale, pca_mean,
pc1..pcN``) and ``<stem>.projection.json`` (feature settings, explained variance, checksum of the
Parquet). Both are plain data (no pickle), readable without rtprep. ``project_with=<saved>``
projects other chemicals onto the same axes: the embedding a chemical gets by projection equals
the one the fit gave it.

SMILES that RDKit cannot parse (and null or empty ones) get no embedding; they are counted and
listed by chem_id in ``<output>.dropped.csv`` (reason ``invalid_smiles``; a structure whose
features are not finite, which RDKit's descriptors should never give, is dropped the same way as
``non_finite_features``). The ChemBERTa route
(:mod:`rtprep.chem.chemberta`) shares the reading, projection and writing code of this module.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.core.artifacts import (
    ROW_GROUP_SIZE,
    RowAccount,
    atomic_output,
    file_checksum,
    write_sidecars,
)
from rtprep.core.embeddings import EMBEDDING_COLUMN
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.frames import require_columns

log = logging.getLogger(__name__)

DEFAULT_N_COMPONENTS = 20
DEFAULT_RADIUS = 2
DEFAULT_N_BITS = 2048
INVALID_SMILES = "invalid_smiles"
DUPLICATE_ROW = "duplicate_row"
NON_FINITE_FEATURES = "non_finite_features"
PROJECTION_FORMAT = "rtprep-embedding-projection/1"
_SHOW = 5  # how many offending ids an error message names

#: Block scaling modes (see the module docstring).
SCALE_CENTER_BLOCK = "center_block"  # centre per column, one factor for the block
SCALE_STANDARDIZE = "standardize"  # StandardScaler per column, then sqrt(#varying columns)


def _descriptor_functions() -> dict[str, Callable[[Any], float]]:
    """The RDKit 2-D descriptors, by the names used in the projection file (fixed order)."""
    from rdkit import Chem
    from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors

    return {
        "MolLogP": Crippen.MolLogP,  # Wildman-Crippen logP: lipophilicity
        "MolWt": Descriptors.MolWt,  # average molecular weight
        "TPSA": rdMolDescriptors.CalcTPSA,  # topological polar surface area
        "NumHDonors": rdMolDescriptors.CalcNumHBD,
        "NumHAcceptors": rdMolDescriptors.CalcNumHBA,
        "NumRotatableBonds": rdMolDescriptors.CalcNumRotatableBonds,
        "RingCount": rdMolDescriptors.CalcNumRings,
        "NumAromaticRings": rdMolDescriptors.CalcNumAromaticRings,
        "FractionCSP3": rdMolDescriptors.CalcFractionCSP3,
        "HeavyAtomCount": lambda m: m.GetNumHeavyAtoms(),
        "FormalCharge": Chem.GetFormalCharge,  # net charge of the structure as drawn
    }


#: The RDKit 2-D descriptors used with ``descriptors=True``, in column order.
DESCRIPTORS: tuple[str, ...] = (
    "MolLogP", "MolWt", "TPSA", "NumHDonors", "NumHAcceptors", "NumRotatableBonds", "RingCount",
    "NumAromaticRings", "FractionCSP3", "HeavyAtomCount", "FormalCharge",
)


def _ids(values: Sequence[Any] | pl.Series) -> str:
    vals = list(values)
    shown = ", ".join(str(v) for v in vals[:_SHOW])
    return shown + (f" (and {len(vals) - _SHOW} more)" if len(vals) > _SHOW else "")


# --- reading and validating the SMILES table ----------------------------------------------------
@dataclass
class SmilesTable:
    """A validated SMILES table: one row per chem_id, sorted by chem_id."""

    path: Path
    frame: pl.DataFrame  # chem_id (Int64), smiles (String, as given; may be null)
    rows_read: int

    @property
    def duplicate_rows(self) -> int:
        return self.rows_read - self.frame.height


def read_smiles_table(path: str | Path) -> SmilesTable:
    """Read a CSV or Parquet table with ``chem_id`` (integer) and ``smiles`` (text).

    Identical duplicate rows are dropped (counted); the same chem_id with two different SMILES,
    a missing chem_id or a non-integer chem_id raise :class:`RtprepError`.
    """
    path = Path(path)
    if not path.is_file():
        raise RtprepError(f"{path}: SMILES table not found")
    is_parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        if is_parquet:
            df = pl.read_parquet(path)
        else:
            # SMILES as text even when a column is all empty; chem_id inferred, checked below.
            df = pl.read_csv(path, schema_overrides={"smiles": pl.String},
                             infer_schema_length=10_000)
    except Exception as exc:  # polars/pyarrow raise several types for unreadable files
        raise input_error(path, f"cannot be read as {'Parquet' if is_parquet else 'CSV'}: "
                          f"{exc}") from exc
    require_columns(df.schema, ["chem_id", "smiles"], path, "a SMILES table")
    if not df.schema["chem_id"].is_integer():
        bad = df.select(pl.col("chem_id").cast(pl.String)).head(1).item()
        raise input_error(path, f"chem_id must be an integer, found {df.schema['chem_id']} "
                          f"(e.g. {bad!r})", column="chem_id")
    smiles_type = df.schema["smiles"]
    if smiles_type not in (pl.String, pl.Null):
        raise input_error(path, f"smiles must be text, found {smiles_type}", column="smiles")
    df = df.select(pl.col("chem_id").cast(pl.Int64), pl.col("smiles").cast(pl.String))
    n_read = df.height
    n_null = df["chem_id"].null_count()
    if n_null:
        raise input_error(path, f"{n_null} row(s) have no chem_id", column="chem_id")
    # Identical duplicates are harmless (a concatenated table); conflicting ones are not.
    df = df.unique(maintain_order=False).sort("chem_id")
    dup = df.filter(pl.col("chem_id").is_duplicated())["chem_id"].unique().sort()
    if dup.len():
        first = df.filter(pl.col("chem_id") == dup[0])["smiles"].to_list()
        raise input_error(
            path,
            f"chem_id {_ids(dup)} has two different SMILES (chem_id {dup[0]}: "
            f"{' vs '.join(repr(s) for s in first)}); keep one row per chem_id",
            column="smiles",
        )
    return SmilesTable(path=path, frame=df, rows_read=n_read)


def parse_smiles(smiles: Sequence[str | None]) -> list[Any]:
    """RDKit molecules for ``smiles``; ``None`` where a SMILES is null, blank or unparseable.

    A Python loop over molecules is unavoidable here (RDKit parses one structure at a time); the
    tables are one row per chemical (thousands), not per peak.
    """
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():  # RDKit would print one error per bad SMILES to stderr
        return [
            Chem.MolFromSmiles(s.strip()) if s is not None and s.strip() else None for s in smiles
        ]


def split_valid(
    table: SmilesTable, account: RowAccount
) -> tuple[pl.DataFrame, list[Any]]:
    """Parse every SMILES; record the invalid ones in ``account`` (reason ``invalid_smiles``,
    listed by chem_id). Returns the valid rows (sorted by chem_id) and their molecules."""
    mols = parse_smiles(table.frame["smiles"].to_list())
    ok = pl.Series("ok", [m is not None for m in mols], dtype=pl.Boolean)
    bad_ids = table.frame.filter(~ok)["chem_id"]
    # The count always goes into the funnel; the id list only when there is one.
    account.drop(INVALID_SMILES, bad_ids.len(), column="chem_id",
                 ids=bad_ids.to_list() if bad_ids.len() else None)
    if bad_ids.len():
        log.warning("%s: %d SMILES could not be parsed by RDKit (no embedding), chem_id %s",
                    table.path, bad_ids.len(), _ids(bad_ids))
    return table.frame.filter(ok), [m for m in mols if m is not None]


# --- RDKit features -----------------------------------------------------------------------------
def morgan_counts(mols: Sequence[Any], *, radius: int, n_bits: int) -> np.ndarray:
    """Morgan count fingerprints, one row per molecule (float64, shape ``(n, n_bits)``)."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(mols), n_bits), dtype=np.float64)
    for i, m in enumerate(mols):  # per molecule: RDKit has no batch API
        out[i] = gen.GetCountFingerprintAsNumPy(m)
    return out


def descriptor_matrix(mols: Sequence[Any]) -> np.ndarray:
    """The :data:`DESCRIPTORS` of each molecule (float64, shape ``(n, len(DESCRIPTORS))``)."""
    funcs = _descriptor_functions()
    out = np.zeros((len(mols), len(DESCRIPTORS)), dtype=np.float64)
    for i, m in enumerate(mols):  # per molecule: RDKit has no batch API
        out[i] = [funcs[name](m) for name in DESCRIPTORS]
    return out


@dataclass(frozen=True)
class Block:
    """A group of feature columns scaled together."""

    name: str
    features: tuple[str, ...]
    scaling: str  # SCALE_CENTER_BLOCK or SCALE_STANDARDIZE


def rdkit_blocks(radius: int, n_bits: int, descriptors: bool) -> list[Block]:
    """The feature blocks of the RDKit route, in column order."""
    blocks = [Block("morgan", tuple(f"morgan_r{radius}_{j}" for j in range(n_bits)),
                    SCALE_CENTER_BLOCK)]
    if descriptors:
        blocks.append(Block("descriptors", DESCRIPTORS, SCALE_STANDARDIZE))
    return blocks


def rdkit_features(mols: Sequence[Any], *, radius: int, n_bits: int,
                   descriptors: bool) -> np.ndarray:
    """The raw RDKit feature matrix (fingerprint counts, then descriptors when asked)."""
    parts = [morgan_counts(mols, radius=radius, n_bits=n_bits)]
    if descriptors:
        parts.append(descriptor_matrix(mols))
    return np.hstack(parts)


# --- scaling + PCA, saved as plain data ---------------------------------------------------------
@dataclass
class Projection:
    """Fitted scaling and PCA: ``emb = ((x - center) / scale - pca_mean) @ components.T``.

    ``settings`` holds what produced the features (route, radius, bits, descriptors, model), so
    that projecting new chemicals recomputes the same features.
    """

    settings: dict[str, Any]
    features: list[str]
    blocks: list[str]  # block name of each feature
    center: np.ndarray
    scale: np.ndarray
    pca_mean: np.ndarray
    components: np.ndarray  # (n_components, n_features)
    explained_variance_ratio: np.ndarray
    fitted_on: dict[str, Any] = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project a raw feature matrix (rows = chemicals) onto the fitted axes."""
        if x.shape[1] != len(self.features):
            raise RtprepError(
                f"the saved projection expects {len(self.features)} features, got {x.shape[1]}"
            )
        from threadpoolctl import threadpool_limits

        # One BLAS thread: the same chemical gets the same bits however many rows it comes with.
        with threadpool_limits(limits=1):
            z = (x - self.center) / self.scale - self.pca_mean
            return z @ self.components.T

    def to_frame(self) -> pl.DataFrame:
        cols: dict[str, Any] = {
            "feature": pl.Series(self.features, dtype=pl.String),
            "block": pl.Series(self.blocks, dtype=pl.String),
            "center": pl.Series(self.center, dtype=pl.Float64),
            "scale": pl.Series(self.scale, dtype=pl.Float64),
            "pca_mean": pl.Series(self.pca_mean, dtype=pl.Float64),
        }
        for k in range(self.n_components):
            cols[f"pc{k + 1}"] = pl.Series(self.components[k], dtype=pl.Float64)
        return pl.DataFrame(cols)


def fit_projection(
    x: np.ndarray, blocks: Sequence[Block], n_components: int, settings: Mapping[str, Any]
) -> Projection:
    """Fit the block scaling and PCA of the module docstring on ``x`` (rows = chemicals)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    n, p = x.shape
    scaler = StandardScaler().fit(x)
    center = np.asarray(scaler.mean_, dtype=np.float64)
    var = np.asarray(scaler.var_, dtype=np.float64)
    varying = var > 0
    scale = np.ones(p, dtype=np.float64)
    names: list[str] = []
    block_of: list[str] = []
    start = 0
    for b in blocks:
        sl = slice(start, start + len(b.features))
        start += len(b.features)
        names.extend(b.features)
        block_of.extend([b.name] * len(b.features))
        n_varying = int(varying[sl].sum())
        if n_varying == 0:
            continue  # the whole block is constant: centred to 0, scale 1, no weight
        if b.scaling == SCALE_CENTER_BLOCK:
            scale[sl] = math.sqrt(float(var[sl].sum()))
        else:
            # StandardScaler's own scale (1 for a constant column), times sqrt(#varying) so the
            # block's total variance is 1.
            scale[sl] = np.asarray(scaler.scale_[sl]) * math.sqrt(n_varying)
    if start != p:
        raise RuntimeError(f"internal error: blocks name {start} features, matrix has {p}")
    z = (x - center) / scale
    n_info = int(varying.sum())
    if n_info < n_components:
        raise RtprepError(
            f"only {n_info} feature(s) vary among the {n} chemicals, fewer than "
            f"n_components={n_components}; lower n_components or use more features"
        )
    with threadpool_limits(limits=1):  # exact, thread-count independent SVD
        pca = PCA(n_components=n_components, svd_solver="full").fit(z)
    components = np.array(pca.components_, dtype=np.float64)
    # A feature that never varied carries no information on these axes; zero its loadings so
    # that a new chemical with, e.g., a bit unseen in the fit is not moved by rounding noise.
    components[:, ~varying] = 0.0
    return Projection(
        settings=dict(settings),
        features=names,
        blocks=block_of,
        center=center,
        scale=scale,
        pca_mean=np.asarray(pca.mean_, dtype=np.float64),
        components=components,
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_, dtype=np.float64),
    )


def projection_paths(out: str | Path) -> tuple[Path, Path]:
    """Where the projection fitted for ``out`` is saved: ``<stem>.projection.parquet`` and
    ``<stem>.projection.json`` beside it (``<stem>`` = the output's name without ``.parquet``)."""
    out = Path(out)
    stem = out.name.removesuffix(".parquet")
    return out.with_name(f"{stem}.projection.parquet"), out.with_name(f"{stem}.projection.json")


def _resolve_projection(saved: str | Path) -> tuple[Path, Path]:
    """Accept the ``.projection.json``, the ``.projection.parquet`` or the embeddings Parquet
    the projection was saved beside."""
    saved = Path(saved)
    name = saved.name
    if name.endswith(".projection.json"):
        js = saved
    elif name.endswith(".projection.parquet"):
        js = saved.with_name(name.removesuffix(".parquet") + ".json")
    else:
        js = projection_paths(saved)[1]
    if not js.is_file():
        raise RtprepError(
            f"{saved}: no saved projection found (looked for {js}); pass the "
            f"<stem>.projection.json written beside a fitted embeddings file"
        )
    return js.with_name(js.name.removesuffix(".json") + ".parquet"), js


def save_projection(proj: Projection, parquet_tmp: Path, json_tmp: Path,
                    parquet_name: str) -> None:
    """Write the projection's two files (to temporary paths; the caller renames them)."""
    proj.to_frame().write_parquet(parquet_tmp, compression="zstd", statistics=False)
    meta = {
        "format": PROJECTION_FORMAT,
        "formula": "embedding = ((x - center) / scale - pca_mean) @ [pc1..pcN]",
        "parquet": parquet_name,
        "parquet_checksum": file_checksum(parquet_tmp),
        "settings": proj.settings,
        "n_features": len(proj.features),
        "n_components": proj.n_components,
        "explained_variance_ratio": [float(v) for v in proj.explained_variance_ratio],
        "fitted_on": proj.fitted_on,
    }
    json_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_projection(saved: str | Path) -> Projection:
    """Read a projection saved by :func:`rdkit_embeddings` or the ChemBERTa route."""
    pq_path, js_path = _resolve_projection(saved)
    try:
        meta = json.loads(js_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise input_error(js_path, f"cannot be read as a saved projection: {exc}") from exc
    if meta.get("format") != PROJECTION_FORMAT:
        raise input_error(js_path, f"not an rtprep projection (format {meta.get('format')!r}, "
                          f"expected {PROJECTION_FORMAT!r})")
    if not pq_path.is_file():
        raise input_error(js_path, f"its projection table {pq_path} is missing")
    if file_checksum(pq_path) != meta.get("parquet_checksum"):
        raise input_error(pq_path, f"does not match the checksum in {js_path.name}: the "
                          "projection files come from different fits; refit")
    df = pl.read_parquet(pq_path)
    k = int(meta["n_components"])
    pcs = [f"pc{i + 1}" for i in range(k)]
    require_columns(df.schema, ["feature", "block", "center", "scale", "pca_mean", *pcs], pq_path)
    return Projection(
        settings=dict(meta["settings"]),
        features=df["feature"].to_list(),
        blocks=df["block"].to_list(),
        center=df["center"].to_numpy().astype(np.float64),
        scale=df["scale"].to_numpy().astype(np.float64),
        pca_mean=df["pca_mean"].to_numpy().astype(np.float64),
        components=df.select(pcs).to_numpy().astype(np.float64).T.copy(),
        explained_variance_ratio=np.asarray(meta["explained_variance_ratio"], dtype=np.float64),
        fitted_on=dict(meta.get("fitted_on", {})),
    )


# --- the shared driver --------------------------------------------------------------------------
def _check_n_components(n_components: int) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise RtprepError(f"n_components must be an integer, got {n_components!r}")
    if n_components < 1:
        raise RtprepError(f"n_components must be at least 1, got {n_components}")
    return int(n_components)


def _finite_rows(
    table: SmilesTable, valid: pl.DataFrame, x: np.ndarray, account: RowAccount
) -> tuple[pl.DataFrame, np.ndarray]:
    """Drop (and count) the chemicals whose features are not all finite."""
    finite = np.isfinite(x).all(axis=1)
    if finite.all():
        return valid, x
    # A descriptor RDKit cannot compute for a structure (or a model emitting NaN): no
    # embedding rather than NaN axes for everyone.
    bad = valid.filter(pl.Series(~finite))["chem_id"]
    account.drop(NON_FINITE_FEATURES, bad.len(), column="chem_id", ids=bad.to_list())
    log.warning("%s: non-finite features for chem_id %s (no embedding)", table.path, _ids(bad))
    return valid.filter(pl.Series(finite)), x[finite]


def _enough_chemicals(table: SmilesTable, n: int, n_components: int, what: str) -> None:
    """PCA needs at least as many chemicals as components (when it is fitted here)."""
    if n < n_components:
        raise input_error(
            table.path,
            f"only {n} chemical(s) with {what}, fewer than n_components={n_components}: PCA "
            "needs at least as many chemicals as components; add chemicals, lower "
            "n_components, or project them with --project-with onto a projection fitted on a "
            "larger set",
            column="smiles",
        )


def _write_embeddings(out: Path, frame: pl.DataFrame, account: RowAccount,
                      projection: Projection, fitted_here: bool,
                      inputs: Sequence[str | Path], project_with: str | Path | None) -> None:
    """The embeddings, their sidecars and (when fitted here) the projection files, atomically."""
    pq_out, js_out = projection_paths(out)
    config = {**projection.settings, "n_components": projection.n_components,
              "project_with": str(project_with) if project_with is not None else None,
              "projection_files": [pq_out.name, js_out.name] if fitted_here else None}
    # Inner blocks rename first: the projection is in place before the embeddings appear.
    with atomic_output(out) as tmp_out:
        if fitted_here:
            with atomic_output(pq_out) as tmp_pq, atomic_output(js_out) as tmp_js:
                save_projection(projection, tmp_pq, tmp_js, pq_out.name)
        frame.write_parquet(tmp_out, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                            statistics=True)
        write_sidecars(out, account, inputs=inputs, config=config)


def embed_table(
    smiles_table: str | Path,
    out: str | Path,
    *,
    stage: str,
    featurize: Callable[[pl.DataFrame, list[Any], Mapping[str, Any]], np.ndarray],
    blocks: Callable[[Mapping[str, Any]], list[Block]],
    settings: Mapping[str, Any],
    n_components: int,
    project_with: str | Path | None,
    projection: Projection | None,
    extra_inputs: Sequence[str | Path] = (),
) -> RowAccount:
    """Read, validate, featurise, fit (or apply) the projection, write output + sidecars.

    ``featurize(valid_rows, mols, settings)`` returns the raw feature matrix of the valid rows
    (sorted by chem_id). ``projection`` is the loaded ``project_with`` (``None``: fit one on
    these chemicals and save it beside ``out``).
    """
    t0 = time.perf_counter()
    out = Path(out)
    n_components = _check_n_components(n_components)
    table = read_smiles_table(smiles_table)
    account = RowAccount(stage, rows_in=table.rows_read)
    account.drop(DUPLICATE_ROW, table.duplicate_rows)
    valid, mols = split_valid(table, account)
    log.info("%s: %s: %d rows, %d chemicals, %d with valid SMILES", stage, table.path,
             table.rows_read, table.frame.height, valid.height)
    if valid.height == 0:
        raise input_error(table.path, "no chemical has a valid SMILES; nothing to embed",
                          column="smiles")
    fitted_here = projection is None
    if fitted_here:
        _enough_chemicals(table, valid.height, n_components, "a valid SMILES")
    valid, x = _finite_rows(table, valid, featurize(valid, mols, settings), account)
    inputs: list[str | Path] = [table.path, *extra_inputs]
    if projection is None:
        _enough_chemicals(table, valid.height, n_components, "finite features")
        projection = fit_projection(x, blocks(settings), n_components, settings)
        projection.fitted_on = {"smiles_table": str(table.path),
                                "smiles_checksum": file_checksum(table.path),
                                "n_chemicals": int(valid.height)}
    else:
        inputs += list(_resolve_projection(project_with))  # type: ignore[arg-type]
    emb = projection.transform(x)
    frame = pl.DataFrame({
        "chem_id": valid["chem_id"],
        "smiles": valid["smiles"],
        EMBEDDING_COLUMN: pl.Series(EMBEDDING_COLUMN, emb.tolist(), dtype=pl.List(pl.Float64)),
    })
    account.rows_out = frame.height
    account.extra = {
        "n_components": projection.n_components,
        "explained_variance_ratio": [round(float(v), 6)
                                     for v in projection.explained_variance_ratio],
        "projection": "fitted here" if fitted_here else f"loaded from {project_with}",
    }
    _write_embeddings(out, frame, account, projection, fitted_here, inputs, project_with)
    log.info("%s: %s in %.1fs: %s", stage, account.funnel(), time.perf_counter() - t0, out)
    return account


def load_for_projection(
    project_with: str | Path, route: str, asked: Mapping[str, Any]
) -> Projection:
    """Load a saved projection for ``route``; explicit settings in ``asked`` (not None) must
    match the saved ones (including ``n_components``)."""
    proj = load_projection(project_with)
    saved = {**proj.settings, "n_components": proj.n_components}
    if saved.get("route") != route:
        raise RtprepError(f"{project_with}: this projection was fitted on "
                          f"{saved.get('route')!r} features, not {route!r}; use that route")
    merge_settings(saved, asked, str(project_with))
    return proj


def merge_settings(saved: Mapping[str, Any], asked: Mapping[str, Any], what: str) -> None:
    """Raise if a setting asked for explicitly (not None) differs from the saved projection's."""
    for key, value in asked.items():
        if value is not None and saved.get(key) != value:
            raise RtprepError(
                f"{what}: {key}={value!r} differs from the saved projection's "
                f"{key}={saved.get(key)!r}; projected chemicals must use the features the "
                "projection was fitted on (drop the option or refit)"
            )


# --- the RDKit route ----------------------------------------------------------------------------
def rdkit_embeddings(
    smiles_table: str | Path,
    out: str | Path,
    *,
    radius: int | None = None,
    n_bits: int | None = None,
    descriptors: bool | None = None,
    n_components: int | None = None,
    project_with: str | Path | None = None,
) -> RowAccount:
    """Embed the chemicals of ``smiles_table`` (CSV or Parquet: ``chem_id, smiles``) with RDKit.

    Writes ``out`` (``chem_id`` Int64, ``smiles`` String, ``embedding20`` List(Float64) of
    length ``n_components``; sorted by chem_id) atomically with its sidecars, and, when fitting,
    the projection files of :func:`projection_paths`. ``None`` means the default: ``radius=2``,
    ``n_bits=2048``, ``descriptors=True``, ``n_components=20``. With ``project_with`` (a saved
    ``.projection.json``) nothing is fitted: the saved settings and axes are used, and a setting
    given explicitly that differs from the saved one is an error. Invalid SMILES are dropped,
    counted and listed by chem_id (reason ``invalid_smiles``).
    """
    proj: Projection | None = None
    if project_with is not None:
        proj = load_for_projection(project_with, "rdkit", {
            "radius": radius, "n_bits": n_bits, "descriptors": descriptors,
            "n_components": n_components,
        })
        settings: dict[str, Any] = dict(proj.settings)
        n_components = proj.n_components
        from rdkit import __version__ as rdkit_version

        if settings.get("rdkit") != rdkit_version:
            # Fingerprint hashing has changed between RDKit releases; the axes may not fit.
            log.warning("%s was fitted with RDKit %s, this is RDKit %s: refit if the "
                        "fingerprints changed", project_with, settings.get("rdkit"),
                        rdkit_version)
    else:
        radius = DEFAULT_RADIUS if radius is None else radius
        n_bits = DEFAULT_N_BITS if n_bits is None else n_bits
        descriptors = True if descriptors is None else bool(descriptors)
        n_components = DEFAULT_N_COMPONENTS if n_components is None else n_components
        for name, v, lo in (("radius", radius, 0), ("n_bits", n_bits, 1)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
                raise RtprepError(f"{name} must be an integer >= {lo}, got {v!r}")
        from rdkit import __version__ as rdkit_version

        settings = {
            "route": "rdkit",
            "fingerprint": "morgan_count",
            "radius": int(radius),
            "n_bits": int(n_bits),
            "descriptors": bool(descriptors),
            "descriptor_names": list(DESCRIPTORS) if descriptors else [],
            "scaling": "blocks of total variance 1: morgan centred / sqrt(sum var); "
                       "descriptors standardised / sqrt(#varying)",
            "rdkit": rdkit_version,
        }

    def featurize(valid: pl.DataFrame, mols: list[Any], s: Mapping[str, Any]) -> np.ndarray:
        return rdkit_features(mols, radius=int(s["radius"]), n_bits=int(s["n_bits"]),
                              descriptors=bool(s["descriptors"]))

    def blocks(s: Mapping[str, Any]) -> list[Block]:
        return rdkit_blocks(int(s["radius"]), int(s["n_bits"]), bool(s["descriptors"]))

    return embed_table(
        smiles_table, out, stage="embed_rdkit", featurize=featurize, blocks=blocks,
        settings=settings, n_components=n_components, project_with=project_with,
        projection=proj,
    )
