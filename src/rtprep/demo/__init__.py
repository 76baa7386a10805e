"""The embedded demo: a realistic, messy Pachyderm export with known truth (``rtprep demo``).

:func:`generate_demo` writes, under ``out_dir`` only::

    repo_export/<hash>/create_training_data/lib_id=<L>/group=<g>/part-<k>.parquet   peaks
    repo_export/<hash>/combine_predictors/lib_id=<L>/species_matrix_type=<smt>/part-0.parquet
    repo_export/lib_comp_chem_mapping_lib<L>.csv                  lib_id, comp_id, chemical_id
    repo_export/merged_training_<hash>_lib<L>_species_mapping.csv sample_set_id, species,
                                                                  species_cluster, tissue
    resources/metabolites/embeddings_chemberta_pca20.parquet      chem_id, smiles, embedding20
    truth/truth.json, truth/truth_peaks.parquet, truth/truth_compounds.parquet,
    truth/truth_injections.parquet, truth/truth_groups.parquet,
    truth/truth_table.parquet                                     task_id, compound, rt_true,
                                                                  noise_sd, misassigned
    manifest.json                                                 written last

Two exports with fixed hashes: ``5684639a28c04bc5af7c4fd1a75e62b5`` (libs 208, 305, 400) and
``de194c2cc2114efaa1075ccf7539d0cb`` (libs 209, 402; its peak shards call ``comp_id``
``correct``).

Generative model (per lib; all times in minutes)
------------------------------------------------
Compounds are real structures (``resources/metabolites/demo_structures.csv``). Chemistry sets the
compound effect: with Crippen logP ``x`` (RDKit), a reversed-phase gradient ``(t0, t_end, m, w)``
drawn per lib, a per-family offset ``f[family] ~ N(0, 0.6)`` and a compound residual
``e_c ~ N(0, 0.5)``::

    base_c = t0 + 0.3 + (t_end - t0) * sigmoid((x - m) / w) + f[family_c] + e_c   (clipped)

Conjugate compounds (mapped to chem ids >= 900000, absent from the embeddings) take their
parent's logP minus 1.5. Species sit in ~7 clusters; each cluster has a shift
``a_k ~ N(0, 0.15)``, each species ``b_s ~ N(0, 0.08)``, each (species, compound) group a
deviation ``g_sc ~ N(0, 0.05)``, so the group mean is ``mu_sc = base_c + a_k(s) + b_s + g_sc``.

The demo departs from the pooled model's own family in four ways (all relative to
``sigma = 0.07`` min; their draws come from a generator of their own, ``(seed, lib, 3)``):

- *matrix effects*: 30 % of the compounds get a species x compound term ``m_sc ~ N(0, 1.5
  sigma)`` (0 for the others), so that ``mu_sc = base_c + a_k(s) + b_s + g_sc + m_sc``;
- *noise per compound*: ``noise_sd_c = sigma * exp(N(0, 0.5))`` (log-normal around sigma);
- *a non-linear gradient warp*: a compound at gradient position ``u = clip((rt - t0) / (t_end -
  t0), 0, 1)`` moves by ``w_i * W(rt)``, ``W = 4u(1-u)`` (0 at the ends, 1 mid-gradient); the
  mid-gradient shift ``w_i`` is its worksheet's (worksheets in time order = their index) AR(1)
  walk (rho 0.9, step sd 0.2 sigma) around a level (U(2, 2.5) sigma) plus N(0, 0.1 sigma) per
  injection; a column change part-way (a worksheet between 30 % and 70 % of them) lowers the
  level by U(0.8, 1) sigma and jumps every later injection's offset by +-3 sigma;
- *near mis-assignments*: 1 % of the peaks lie 5-15 sigma off, or, when the compound has an
  isomer in the lib (same molecular formula, RDKit), carry that isomer's RT in the same
  injection; the far ones (0.5 %) as below.

Each injection ``i`` (a ``task_id``) drifts: ``d_i = D_w + N(0, 0.05) + jump * column_i``,
``s_i = S_w + N(0, 0.004)`` with worksheet terms ``D_w ~ N(0, 0.10)``, ``S_w ~ N(0, 0.008)``.
The drift and the warp move the standards and the peaks alike::

    standard j:  RT_ij = r_j * (1 + s_i) + d_i + w_i * W(r_j) + N(0, 0.02)   (IS1..IS8, RS1..RS4,
                                                                               ES_*)
    peak:        rt_true = mu_sc * (1 + s_i) + d_i + w_i * W(mu_sc)
                 apex_rt = rt_true + N(0, noise_sd_c)

ES_* standards are endogenous metabolites whose ``r_j`` follows the same chemistry model. A
fraction (0.5 %) of peaks is mis-assigned far: their ``apex_rt`` is at least 3 min away from
``rt_true`` (uniform on the gradient, wrapped); ``truth_peaks.misassignment`` says which kind
(``far``, ``near``, ``isomer``, ``none``) and ``is_misassigned`` is any of the first three.
Which compounds an injection shows is a Bernoulli draw with probability ``prevalence_c * load_i
* scale`` (``scale`` solved so that the lib gets about its share of ``rows``). Each injection has
an ``acquisition_date`` (a peak column; worksheets in order, 0-3 days apart), which merge and
split carry through and the RT CSV leaves out.

The truth table has one row per generated peak but those of chem id 0 (several comp_ids of an
injection carry it, and the pipeline drops it): ``compound`` is the chem id as text, as in the
RT CSV; ``rtprep evaluate --truth`` (and ``eval.truth``) read it.

Mess (each in known amounts, counted in ``manifest.json`` from the rows as written)
-------------------------------------------------------------------------------------
(a) re-processed datums: extra part files repeating rows of their own (lib, group) partition;
(b) shards written with Int32 ids and Float32 floats (their ``apex_rt`` is rounded: truth and
counts use the values as written, read back as Float64); (c) null predictor values; (d) injections
without a predictor row; (e) ``cpd_status`` "Incomplete"/"Not Found" and ``sample_type`` "PRCS";
(f) ``apex_rt`` null, NaN, +-inf, negative, and 50-60 min (valid range [0, 40]); (g) comp_ids
missing from the mapping CSV; (h) comp_ids mapped to two chem ids; (i) chem id 0 and conjugates
(>= 900000) without an embedding; (j) sample sets missing from the species mapping; (k) the
``correct`` column name.

The manifest gives, per lib, the drop counts of the pipeline's rules applied in order (merge:
``duplicate_row``, ``cpd_status_not_kept``, ``sample_type_excluded``, ``no_predictor_row``; split:
``apex_rt_invalid``, ``apex_rt_out_of_range``; attach: ``comp_id_unmapped``,
``comp_id_ambiguous``, ``chem_id_no_class``; rtcsv: ``sample_set_no_species``) on uncapped data.

Everything is drawn from ``numpy`` generators seeded by ``(seed, lib, purpose[, chunk])``: the
output depends only on ``(rows, seed, libs)``. Peaks are generated and written chunk by chunk of
sample sets (every row of a sample set is in one chunk), so memory stays bounded at any ``rows``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.core.artifacts import package_versions, write_text_atomic
from rtprep.core.errors import RtprepError, input_error
from rtprep.core.paths import Layout

log = logging.getLogger(__name__)

#: Export hash -> libs it holds (fixed, so that configs can name them).
EXPORTS: dict[str, tuple[int, ...]] = {
    "5684639a28c04bc5af7c4fd1a75e62b5": (208, 305, 400),
    "de194c2cc2114efaa1075ccf7539d0cb": (209, 402),
}
#: Name of the comp_id column in each export's peak shards.
COMP_COLUMN: dict[str, str] = {
    "5684639a28c04bc5af7c4fd1a75e62b5": "comp_id",
    "de194c2cc2114efaa1075ccf7539d0cb": "correct",
}
DEFAULT_LIBS: tuple[int, ...] = (208, 209, 305, 400, 402)
#: Share of ``rows`` per lib (normalised over the libs asked for); 209 is the biggest, as in
#: the seed.
LIB_WEIGHT: dict[int, float] = {208: 0.20, 209: 0.30, 305: 0.15, 400: 0.20, 402: 0.15}

MANIFEST = "manifest.json"
EMBEDDINGS_REL = Path("resources/metabolites/embeddings_chemberta_pca20.parquet")

STRUCTURES_NAME = "demo_structures.csv"
#: The truth table (``task_id, compound, rt_true, noise_sd, misassigned``) under truth/.
TRUTH_TABLE_NAME = "truth_table.parquet"

N_GROUPS = 4
CHUNK_ROWS = 125_000
MIN_CHUNKS = 3
MIN_SAMPLE_SETS = 150
RT_VALID_MAX = 40.0
NOISE_SD = 0.07
#: Log-sd of the per-compound noise sd, log-normal around NOISE_SD.
NOISE_LOG_SD = 0.5
STANDARD_SD = 0.02
MISASSIGNED_MIN_SHIFT = 3.0
#: Near mis-assignments: |apex_rt - rt_true| uniform in this range (units of NOISE_SD), unless
#: the compound has an isomer in the lib (same molecular formula): then the isomer's RT in the
#: same injection.
NEAR_MISASSIGNED_SHIFT = (5.0, 15.0)
#: Species x compound matrix effects: share of the compounds with one, its sd.
MATRIX_EFFECT_SHARE = 0.30
MATRIX_EFFECT_SD = 1.5 * NOISE_SD
#: Gradient warp (in units of NOISE_SD): the mid-gradient shift's level before the column change
#: (uniform), its drop at the change (uniform), its AR(1) walk over worksheets (rho, step sd),
#: the injection's scatter around its worksheet; the offset jump at the change.
WARP_LEVEL = (2.0, 2.5)
WARP_LEVEL_CHANGE = (0.8, 1.0)
WARP_RHO = 0.9
WARP_STEP = 0.2
WARP_INJECTION_SD = 0.1
COLUMN_JUMP = 3.0
#: The first worksheet's acquisition date.
ACQUISITION_START = "2021-01-04"
CONJUGATE_LOGP_SHIFT = -1.5
CPD_STATUS_KEEP = ("Complete", "Complete - NFS")
SAMPLE_TYPE_EXCLUDE = ("PRCS",)
MERGE_KEY = ("sample_set_id", "task_id", "species_matrix_type")
N_IS, N_RS = 8, 4
#: ES_<token> standards: endogenous metabolites (structure name in demo_structures.csv).
ES_STANDARDS: dict[str, str] = {
    "creatinine": "creatinine", "phenylalanine": "L-phenylalanine", "tryptophan": "L-tryptophan",
    "hippurate": "hippuric acid", "cholate": "cholic acid", "lpc_16_0": "LPC 16:0",
}
#: Row-level fractions of each kind of apex_rt (exclusive); the rest is a normal peak.
RT_KIND_P: dict[str, float] = {
    "misassigned": 0.005, "near_misassigned": 0.01, "null": 0.002, "nan": 0.0015,
    "negative": 0.0015, "inf": 0.0005,
    "out_of_range": 0.004,
}
CPD_STATUS_P: dict[str, float] = {
    "Complete": 0.78, "Complete - NFS": 0.17, "Incomplete": 0.03, "Not Found": 0.02,
}
SAMPLE_TYPE_P: dict[str, float] = {"Sample": 0.90, "QC": 0.07, "PRCS": 0.03}

#: Species (tokens) by cluster.
SPECIES_CLUSTERS: dict[str, tuple[str, ...]] = {
    "primate": ("human", "cynomolgus_monkey", "rhesus_monkey", "marmoset", "baboon", "chimpanzee",
                "african_green_monkey", "squirrel_monkey", "lemur", "gorilla", "orangutan"),
    "rodent": ("mouse", "rat", "hamster", "guinea_pig", "gerbil", "rabbit", "chinchilla",
               "deer_mouse", "naked_mole_rat", "vole", "squirrel", "degu"),
    "carnivore": ("dog", "cat", "ferret", "mink", "fox", "raccoon", "seal", "sea_lion",
                  "polar_bear", "wolf", "otter"),
    "ungulate": ("pig", "minipig", "cow", "sheep", "goat", "horse", "donkey", "camel", "alpaca",
                 "deer", "bison", "water_buffalo", "yak"),
    "bird": ("chicken", "duck", "turkey", "quail", "goose", "pigeon", "zebra_finch", "ostrich",
             "parrot"),
    "fish_amphibian": ("zebrafish", "salmon", "rainbow_trout", "medaka", "tilapia", "cod", "carp",
                       "xenopus", "axolotl", "catfish"),
    "invertebrate_microbe": ("drosophila", "c_elegans", "honeybee", "mosquito", "yeast", "e_coli",
                             "arabidopsis", "daphnia", "squid", "oyster"),
}
MATRICES: tuple[str, ...] = ("plasma", "serum", "urine", "liver", "brain", "kidney", "heart",
                             "muscle", "feces", "csf", "cells", "whole_blood", "milk", "adipose")
MATRIX_WEIGHT = np.array([8, 5, 5, 4, 2, 2, 1.5, 1.5, 2, 1, 2, 1.5, 0.5, 1], dtype=np.float64)

# Purposes for seeding (a generator per (seed, lib, purpose[, chunk])).
_P_DESIGN, _P_CHUNK, _P_EMBED, _P_REALISM = 0, 1, 2, 3

_PEAK_INT = ("sample_set_id", "task_id", "worksheet_id", "comp_id")
_PEAK_FLOAT = ("apex_rt", "peak_area", "fit_scores")


# ----------------------------------------------------------------------------------------------
# structures and embeddings
# ----------------------------------------------------------------------------------------------
def structures_path() -> Path:
    """The shipped demo structures CSV (``resources/metabolites/demo_structures.csv``)."""
    here = Path(__file__).resolve()
    candidates = [
        here.parents[3] / "resources" / "metabolites" / STRUCTURES_NAME,  # source checkout
        here.parents[1] / "data" / STRUCTURES_NAME,  # packaged copy, if any
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise RtprepError(
        f"demo structures not found (looked for {', '.join(str(c) for c in candidates)}); "
        "run from a source checkout of rtprep or pass structures=<csv>"
    )


def load_structures(path: str | Path | None = None) -> pl.DataFrame:
    """Read the demo structures (``chem_id, name, family, smiles``) and add RDKit Crippen ``logp``
    and the molecular ``formula``.

    Every SMILES must parse; a bad one raises :class:`RtprepError` naming the chem_id.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import Crippen
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    path = Path(path) if path is not None else structures_path()
    df = pl.read_csv(path, schema_overrides={"chem_id": pl.Int64})
    missing = [c for c in ("chem_id", "name", "family", "smiles") if c not in df.columns]
    if missing:
        raise input_error(path, f"missing column(s) {missing}")
    RDLogger.DisableLog("rdApp.*")
    logp, formula = [], []
    # One RDKit call per structure (a few hundred), not per row.
    for cid, smi in zip(df["chem_id"].to_list(), df["smiles"].to_list(), strict=True):
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            raise input_error(path, f"SMILES of chem_id {cid} does not parse: {smi!r}",
                              column="smiles")
        logp.append(Crippen.MolLogP(mol))
        formula.append(CalcMolFormula(mol))
    if df["chem_id"].n_unique() != df.height:
        raise input_error(path, "chem_id values are not unique", column="chem_id")
    return df.with_columns(pl.Series("logp", logp, dtype=pl.Float64),
                           pl.Series("formula", formula, dtype=pl.String))


def rdkit_embeddings(structures: pl.DataFrame, n_components: int = 20) -> pl.DataFrame:
    """A deterministic stand-in for the ChemBERTa PCA-20 embeddings (which cannot be computed
    here): :mod:`~rtprep.chem.embed`'s RDKit route (Morgan count fingerprints radius 2 / 2048
    bits and its fixed descriptors, block-scaled, PCA) fitted on the demo's structures. Returns
    ``chem_id, smiles, embedding20``."""
    from rtprep.chem.embed import fit_projection, parse_smiles, rdkit_blocks, rdkit_features

    settings = {"route": "rdkit", "radius": 2, "n_bits": 2048, "descriptors": True}
    mols = parse_smiles(structures["smiles"].to_list())
    x = rdkit_features(mols, radius=2, n_bits=2048, descriptors=True)
    proj = fit_projection(x, rdkit_blocks(2, 2048, True), n_components, settings)
    scores = np.round(proj.transform(x), 12)
    return pl.DataFrame({
        "chem_id": structures["chem_id"].cast(pl.Int64),
        "smiles": structures["smiles"],
        "embedding20": pl.Series("embedding20", scores).cast(pl.List(pl.Float64)),
    })


# ----------------------------------------------------------------------------------------------
# per-lib design (small tables, held in memory)
# ----------------------------------------------------------------------------------------------
@dataclass
class _LibDesign:
    lib: int
    export: str
    rows_target: int
    params: dict[str, Any]
    compounds: pl.DataFrame  # comp_id, chem_id (truth), structure_chem_id, family, logp, ...
    comp_ids: np.ndarray
    comp_truth_chem: np.ndarray
    prevalence: np.ndarray
    mu: np.ndarray  # (n_species, n_comp) group means at zero drift
    species: pl.DataFrame  # species, species_cluster, cluster shift, species shift
    sample_sets: pl.DataFrame  # sample_set_id, worksheet_id, species_idx, smt, group, ...
    injections: pl.DataFrame  # task_id, ss index, sample_type, d, s, load, has_predictor
    mapping: pl.DataFrame  # lib_id, comp_id, chemical_id
    species_mapping: pl.DataFrame
    predictors: pl.DataFrame  # sample_set_id, task_id, species_matrix_type, IS*, RS*, ES_*
    standards: dict[str, float]
    n_chunks: int
    narrow: np.ndarray  # (n_chunks, N_GROUPS) bool
    dup: np.ndarray  # (n_chunks, N_GROUPS) bool
    scale: float
    noise: np.ndarray  # (n_comp,) noise sd of each compound's peaks
    matrix_effect: np.ndarray  # (n_species, n_comp) part of mu
    t0: float
    t_end: float
    isomers: list[np.ndarray]  # per compound: the other compounds of its molecular formula
    mess: dict[str, Any] = field(default_factory=dict)


def _rng(seed: int, lib: int, purpose: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, lib, purpose, *extra]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _warp_shape(rt: np.ndarray, t0: float, t_end: float) -> np.ndarray:
    """``4u(1-u)`` of the gradient position ``u = (rt - t0) / (t_end - t0)`` (clipped to [0,
    1]): 1 mid-gradient, 0 at either end."""
    u = np.clip((rt - t0) / (t_end - t0), 0.0, 1.0)
    return 4.0 * u * (1.0 - u)


def _export_of(lib: int) -> str:
    for h, libs in EXPORTS.items():
        if lib in libs:
            return h
    raise RtprepError(
        f"demo lib {lib} is not in any demo export; choose among "
        f"{sorted(x for v in EXPORTS.values() for x in v)}"
    )


def _force_min(mask: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Make sure at least ``k`` entries of a boolean mask are set (deterministic draw)."""
    have = int(mask.sum())
    if have >= k or mask.size == 0:
        return mask
    free = np.flatnonzero(~mask)
    pick = rng.choice(free, size=min(k - have, free.size), replace=False)
    mask = mask.copy()
    mask[pick] = True
    return mask


def _design_lib(lib: int, rows_target: int, seed: int, structures: pl.DataFrame) -> _LibDesign:
    rng = _rng(seed, lib, _P_DESIGN)
    export = _export_of(lib)
    n_struct = structures.height
    s_chem = structures["chem_id"].to_numpy()
    s_logp = structures["logp"].to_numpy()
    s_family = structures["family"].to_numpy()
    families = sorted(set(s_family.tolist()))

    # --- chromatography of this lib (reversed phase) and family offsets
    t0 = 0.6 + rng.uniform(0.0, 0.3)
    t_end = rng.uniform(24.0, 32.0)
    m_mid = rng.uniform(1.0, 3.0)
    width = rng.uniform(2.0, 3.0)
    fam_off = dict(zip(families, rng.normal(0.0, 0.6, len(families)).tolist(), strict=True))

    def chem_rt(logp: np.ndarray, fam: np.ndarray) -> np.ndarray:
        off = np.array([fam_off[f] for f in fam.tolist()], dtype=np.float64)
        return t0 + 0.3 + (t_end - t0) * _sigmoid((logp - m_mid) / width) + off

    # --- compounds: a few hundred real structures, lib-specific comp_ids
    n_comp = int(min(rng.integers(220, 321), n_struct - 20))
    perm = rng.permutation(n_struct)
    pick, spare = np.sort(perm[:n_comp]), perm[n_comp:]
    comp_ids = rng.choice(np.arange(1000, 60000), size=n_comp, replace=False).astype(np.int64)
    logp = s_logp[pick].copy()
    fam = s_family[pick]
    truth_chem = s_chem[pick].astype(np.int64)
    roles = np.array(["mapped"] * n_comp, dtype=object)
    order = rng.permutation(n_comp)
    n_unmapped = max(3, round(0.06 * n_comp))
    n_amb = 2
    n_zero = max(2, round(0.015 * n_comp))
    n_conj = max(3, round(0.035 * n_comp))
    cut = np.cumsum([n_unmapped, n_amb, n_zero, n_conj])
    roles[order[: cut[0]]] = "unmapped"
    roles[order[cut[0]: cut[1]]] = "ambiguous"
    roles[order[cut[1]: cut[2]]] = "chem_id_0"
    roles[order[cut[2]: cut[3]]] = "conjugate"
    is_conj = roles == "conjugate"
    logp[is_conj] += CONJUGATE_LOGP_SHIFT
    truth_chem[roles == "chem_id_0"] = 0
    conj_ids = 900000 + (lib % 1000) * 100 + np.arange(1, int(is_conj.sum()) + 1)
    truth_chem[is_conj] = conj_ids
    base = chem_rt(logp, fam) + rng.normal(0.0, 0.5, n_comp)
    # isomers (same molecular formula) among the lib's compounds; conjugates stand for another
    # structure, so they have none
    formula = structures["formula"].to_numpy()[pick].astype(str)
    by_formula: dict[str, list[int]] = {}
    for c, f in enumerate(formula.tolist()):
        if roles[c] != "conjugate":
            by_formula.setdefault(f, []).append(c)
    isomers = [np.array([o for o in by_formula.get(f, []) if o != c], dtype=np.int64)
               for c, f in enumerate(formula.tolist())]
    base = np.clip(base, t0 + 0.2, 36.0)
    prevalence = rng.beta(1.2, 1.5, n_comp)

    # --- mapping CSV: mapped + chem 0 + conjugates; ambiguous twice; unmapped absent;
    # a few extra comp_ids of the library that never show up in the peaks
    amb = roles == "ambiguous"
    second = s_chem[spare[: int(amb.sum())]].astype(np.int64)
    n_extra = 5
    extra_comp = rng.choice(np.setdiff1d(np.arange(60000, 70000), comp_ids), n_extra,
                            replace=False).astype(np.int64)
    extra_chem = s_chem[spare[int(amb.sum()): int(amb.sum()) + n_extra]].astype(np.int64)
    keep = roles != "unmapped"
    mapping = pl.DataFrame({
        "lib_id": np.full(int(keep.sum()) + int(amb.sum()) + n_extra, lib, dtype=np.int64),
        "comp_id": np.concatenate([comp_ids[keep], comp_ids[amb], extra_comp]),
        "chemical_id": np.concatenate([truth_chem[keep], second, extra_chem]),
    }).sort("comp_id", "chemical_id")

    # --- species, clusters, shifts
    clusters = list(SPECIES_CLUSTERS)
    all_sp = [(s, c) for c in clusters for s in SPECIES_CLUSTERS[c]]
    n_sp = int(rng.integers(30, 71))
    # human, mouse and rat are in every lib
    core = [0, len(SPECIES_CLUSTERS["primate"]), len(SPECIES_CLUSTERS["primate"]) + 1]
    rest = np.setdiff1d(np.arange(len(all_sp)), core)
    sp_idx = np.concatenate([core, np.sort(rng.choice(rest, n_sp - len(core), replace=False))])
    sp_names = [all_sp[i][0] for i in sp_idx]
    sp_clusters = [all_sp[i][1] for i in sp_idx]
    cl_shift = dict(zip(clusters, rng.normal(0.0, 0.15, len(clusters)).tolist(), strict=True))
    sp_shift = rng.normal(0.0, 0.08, n_sp)
    dev = rng.normal(0.0, 0.05, (n_sp, n_comp))
    cl_arr = np.array([cl_shift[c] for c in sp_clusters])
    mu = base[None, :] + (cl_arr + sp_shift)[:, None] + dev
    # --- departures from the model's own family, from their own generator (so that the draws
    # of `rng` keep their values): noise per compound, and species x compound matrix effects
    # on a share of the compounds
    rng_r = _rng(seed, lib, _P_REALISM)
    noise = NOISE_SD * np.exp(rng_r.normal(0.0, NOISE_LOG_SD, n_comp))
    matrix_hit = rng_r.random(n_comp) < MATRIX_EFFECT_SHARE
    matrix_effect = rng_r.normal(0.0, MATRIX_EFFECT_SD, (n_sp, n_comp)) * matrix_hit[None, :]
    mu = mu + matrix_effect
    # species popularity: human first, then a Zipf-like tail
    sp_w = 1.0 / np.arange(1, n_sp + 1) ** 0.9
    sp_w[0] = 4.0 * sp_w[1]
    sp_w /= sp_w.sum()
    # each species is measured in 1-3 matrices
    n_mat = 1 + rng.binomial(2, 0.3, n_sp)
    mat_p = MATRIX_WEIGHT / MATRIX_WEIGHT.sum()
    sp_mats = [rng.choice(len(MATRICES), k, replace=False, p=mat_p) for k in n_mat.tolist()]

    # --- sample sets, worksheets, groups
    mean_inj = 4.0
    peaks_per_inj = 0.45 * n_comp
    n_ss = max(MIN_SAMPLE_SETS, math.ceil(rows_target / (mean_inj * peaks_per_inj)))
    if n_ss >= 500_000:
        raise RtprepError(f"rows={rows_target:,} per lib is too many for the demo's id scheme")
    # every species has at least one sample set; the rest follow popularity
    ss_species = rng.permutation(np.concatenate(
        [np.arange(n_sp), rng.choice(n_sp, n_ss - n_sp, p=sp_w)]))
    mat_u = rng.random(n_ss)
    ss_matrix = np.array([sp_mats[s][int(u * len(sp_mats[s]))] for s, u in
                          zip(ss_species.tolist(), mat_u.tolist(), strict=True)])
    ws_sizes = rng.integers(2, 9, n_ss)  # 2-8 sample sets per worksheet
    ws_of_ss = np.repeat(np.arange(n_ss), ws_sizes)[:n_ss]
    n_ws = int(ws_of_ss.max()) + 1
    ss_ids = lib * 1_000_000 + 1 + np.arange(n_ss, dtype=np.int64)
    ws_ids = lib * 1_000_000 + 500_001 + ws_of_ss.astype(np.int64)
    ss_group = rng.integers(0, N_GROUPS, n_ss)
    ss_n_inj = rng.integers(2, 7, n_ss)
    sp_arr = np.array(sp_names, dtype=object)
    smt = np.char.add(np.char.add(sp_arr[ss_species].astype(str), "_"),
                      np.array(MATRICES, dtype=object)[ss_matrix].astype(str))
    no_species = _force_min(rng.random(n_ss) < 0.03, rng, 5)
    sample_sets = pl.DataFrame({
        "sample_set_id": ss_ids, "worksheet_id": ws_ids, "species_idx": ss_species,
        "species": sp_arr[ss_species].astype(str), "tissue": np.array(MATRICES)[ss_matrix],
        "species_matrix_type": smt, "group": ss_group, "n_inj": ss_n_inj,
        "in_species_mapping": ~no_species,
    })
    sp_cluster_arr = np.array(sp_clusters, dtype=object)
    species_mapping = pl.DataFrame({
        "sample_set_id": ss_ids[~no_species],
        "species": sp_arr[ss_species[~no_species]].astype(str),
        "species_cluster": sp_cluster_arr[ss_species[~no_species]].astype(str),
        "tissue": np.array(MATRICES)[ss_matrix[~no_species]],
    })

    # --- injections: drift, sample type, predictor row present or not
    inj_ss = np.repeat(np.arange(n_ss), ss_n_inj)
    n_inj = inj_ss.size
    ws_d = rng.normal(0.0, 0.10, n_ws)
    ws_s = rng.normal(0.0, 0.008, n_ws)
    d = ws_d[ws_of_ss[inj_ss]] + rng.normal(0.0, 0.05, n_inj)
    s = ws_s[ws_of_ss[inj_ss]] + rng.normal(0.0, 0.004, n_inj)
    # a non-linear gradient warp: worksheets are in time order (their index); the mid-gradient
    # shift a_w (of a compound at gradient position u: a * 4u(1-u)) random-walks over them
    # (AR(1) around a level); a column change part-way jumps the offset and the level
    ws_change = int(rng_r.integers(round(0.3 * n_ws), round(0.7 * n_ws) + 1))
    level1 = rng_r.uniform(*WARP_LEVEL) * NOISE_SD
    level2 = level1 - rng_r.uniform(*WARP_LEVEL_CHANGE) * NOISE_SD
    jump = (1.0 if rng_r.random() < 0.5 else -1.0) * COLUMN_JUMP * NOISE_SD
    steps = rng_r.normal(0.0, WARP_STEP * NOISE_SD, n_ws)
    walk = np.empty(n_ws)
    acc = 0.0
    for w in range(n_ws):
        acc = WARP_RHO * acc + float(steps[w])
        walk[w] = acc
    after = np.arange(n_ws) >= ws_change
    ws_warp = np.where(after, level2, level1) + walk
    inj_ws = ws_of_ss[inj_ss]
    warp = ws_warp[inj_ws] + rng_r.normal(0.0, WARP_INJECTION_SD * NOISE_SD, n_inj)
    column = after[inj_ws].astype(np.int64)
    d = d + jump * column
    # acquisition dates: worksheets in order, 0-3 days apart (all injections of a worksheet on
    # its day)
    ws_day = np.cumsum(rng_r.integers(0, 4, n_ws))
    acq = np.datetime64(ACQUISITION_START) + ws_day[inj_ws].astype("timedelta64[D]")
    st_names = list(SAMPLE_TYPE_P)
    st = rng.choice(len(st_names), n_inj, p=list(SAMPLE_TYPE_P.values()))
    prcs = _force_min(st == st_names.index("PRCS"), rng, 3)
    st[prcs] = st_names.index("PRCS")
    no_pred = _force_min(rng.random(n_inj) < 0.02, rng, 4)
    load = rng.uniform(0.7, 1.3, n_inj)
    task_ids = lib * 4_000_000 + 1 + np.arange(n_inj, dtype=np.int64)
    injections = pl.DataFrame({
        "task_id": task_ids, "ss_idx": inj_ss, "sample_set_id": ss_ids[inj_ss],
        "sample_type": np.array(st_names)[st], "drift_offset": d, "drift_scale": s,
        "warp_mid": warp, "column": column,
        "acquisition_date": pl.Series("acquisition_date", acq, dtype=pl.Date), "load": load,
        "has_predictor_row": ~no_pred,
    })

    # --- standards and the predictor table (one row per injection that has one)
    is_rt = np.sort(np.linspace(1.2, 0.9 * t_end, N_IS) + rng.normal(0.0, 0.3, N_IS))
    rs_rt = np.linspace(2.0, 0.95 * t_end, N_RS)
    by_name = {n: i for i, n in enumerate(structures["name"].to_list())}
    es_idx = np.array([by_name[v] for v in ES_STANDARDS.values()])
    es_rt = chem_rt(s_logp[es_idx], s_family[es_idx])
    std_names = ([f"IS{j + 1}" for j in range(N_IS)] + [f"RS{j + 1}" for j in range(N_RS)]
                 + [f"ES_{k}" for k in ES_STANDARDS])
    std_rt = np.concatenate([is_rt, rs_rt, es_rt])
    null_p = np.full(std_rt.size, 0.02)
    null_p[rng.choice(std_rt.size, 2, replace=False)] = [0.10, 0.25]  # two often missed
    pred_inj = np.flatnonzero(~no_pred)
    vals = (std_rt[None, :] * (1.0 + s[pred_inj, None]) + d[pred_inj, None]
            + warp[pred_inj, None] * _warp_shape(std_rt, t0, t_end)[None, :]
            + rng.normal(0.0, STANDARD_SD, (pred_inj.size, std_rt.size)))
    nulls = rng.random(vals.shape) < null_p[None, :]
    pred_cols: dict[str, Any] = {
        "sample_set_id": ss_ids[inj_ss[pred_inj]], "task_id": task_ids[pred_inj],
        "species_matrix_type": smt[inj_ss[pred_inj]],
    }
    for j, name in enumerate(std_names):
        pred_cols[name] = pl.Series(name, vals[:, j]).set(pl.Series(nulls[:, j]), None)
    predictors = pl.DataFrame(pred_cols)

    # --- detection scale: solve sum_i sum_c min(1, prev_c * load_i * k) = rows_target
    q = np.quantile(load, np.linspace(0.0025, 0.9975, 200))
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        expected = np.minimum(1.0, np.outer(q, prevalence) * mid).sum() * n_inj / q.size
        lo, hi = (mid, hi) if expected < rows_target else (lo, mid)
    scale = 0.5 * (lo + hi)

    n_chunks = max(MIN_CHUNKS, math.ceil(rows_target / CHUNK_ROWS))
    narrow = rng.random((n_chunks, N_GROUPS)) < 0.15
    narrow[1 % n_chunks, 1] = True
    dup = rng.random((n_chunks, N_GROUPS)) < 0.2
    dup[0, 2] = True

    compounds = pl.DataFrame({
        "lib_id": np.full(n_comp, lib, dtype=np.int64), "comp_id": comp_ids,
        "chem_id": truth_chem, "structure_chem_id": s_chem[pick].astype(np.int64),
        "name": structures["name"].to_numpy()[pick], "family": fam, "logp": logp,
        "base_rt": base, "prevalence": prevalence, "noise_sd": noise,
        "matrix_effect": matrix_hit, "formula": formula,
        "n_isomers": np.array([x.size for x in isomers], dtype=np.int64),
        "role": roles.astype(str),
    })
    species = pl.DataFrame({
        "lib_id": np.full(n_sp, lib, dtype=np.int64), "species": sp_names,
        "species_cluster": sp_clusters, "cluster_shift": cl_arr, "species_shift": sp_shift,
    })
    params = {
        "gradient": {"t0": t0, "t_end": t_end, "logp_mid": m_mid, "logp_width": width},
        "family_offset": fam_off, "cluster_shift": cl_shift,
        "species_shift": dict(zip(sp_names, sp_shift.tolist(), strict=True)),
        "standards_rt": dict(zip(std_names, std_rt.tolist(), strict=True)),
        "standards_null_probability": dict(zip(std_names, null_p.tolist(), strict=True)),
        "detection_scale": scale,
        "matrix_effect_compounds": int(matrix_hit.sum()),
        "warp": {"level_before": level1, "level_after": level2,
                 "column_change_worksheet_index": ws_change,
                 "column_change_worksheet_id": int(lib * 1_000_000 + 500_001 + ws_change),
                 "column_change_offset_jump": jump},
        "n_compounds": n_comp, "n_species": n_sp, "n_sample_sets": n_ss, "n_worksheets": n_ws,
        "n_injections": n_inj, "n_species_matrix_types": int(np.unique(smt).size),
    }
    mess = {
        "unmapped_comp_ids": sorted(comp_ids[roles == "unmapped"].tolist()),
        "ambiguous_comp_ids": sorted(comp_ids[amb].tolist()),
        "chem_id_0_comp_ids": sorted(comp_ids[roles == "chem_id_0"].tolist()),
        "conjugate_chem_ids": sorted(conj_ids.tolist()),
        "sample_sets_without_species": sorted(ss_ids[no_species].tolist()),
        "injections_without_predictor_row": int(no_pred.sum()),
        "prcs_injections": int(prcs.sum()),
        "null_predictor_values": {n: int(nulls[:, j].sum()) for j, n in enumerate(std_names)},
    }
    return _LibDesign(
        lib=lib, export=export, rows_target=rows_target, params=params, compounds=compounds,
        comp_ids=comp_ids, comp_truth_chem=truth_chem, prevalence=prevalence, mu=mu,
        species=species, sample_sets=sample_sets, injections=injections, mapping=mapping,
        species_mapping=species_mapping, predictors=predictors,
        standards=dict(zip(std_names, std_rt.tolist(), strict=True)), n_chunks=n_chunks,
        narrow=narrow, dup=dup, scale=scale, noise=noise, matrix_effect=matrix_effect,
        t0=t0, t_end=t_end, isomers=isomers, mess=mess,
    )


# ----------------------------------------------------------------------------------------------
# peaks, chunk by chunk
# ----------------------------------------------------------------------------------------------
def _chunk_peaks(des: _LibDesign, seed: int, chunk: int, ss_lo: int, ss_hi: int) -> pl.DataFrame:
    """All peaks of sample sets ``[ss_lo, ss_hi)``: one frame with truth columns and ``group``."""
    rng = _rng(seed, des.lib, _P_CHUNK, chunk)
    inj = des.injections
    inj_ss = inj["ss_idx"].to_numpy()
    i_lo, i_hi = np.searchsorted(inj_ss, [ss_lo, ss_hi])
    load = inj["load"].to_numpy()[i_lo:i_hi]
    p = np.minimum(1.0, np.outer(load, des.prevalence) * des.scale)
    hit_i, hit_c = np.nonzero(rng.random(p.shape) < p)
    n = hit_i.size
    gi = hit_i + i_lo
    ss = inj_ss[gi]
    ssf = des.sample_sets
    sp = ssf["species_idx"].to_numpy()[ss]
    d = inj["drift_offset"].to_numpy()[gi]
    s = inj["drift_scale"].to_numpy()[gi]
    mu = des.mu[sp, hit_c]
    warp = inj["warp_mid"].to_numpy()[gi]
    rt_true = mu * (1.0 + s) + d + warp * _warp_shape(mu, des.t0, des.t_end)
    noise_sd = des.noise[hit_c]
    apex = rt_true + rng.normal(0.0, 1.0, n) * noise_sd

    # apex_rt kinds: exclusive, each at least once per chunk when there is room
    kinds = np.zeros(n, dtype=np.int8)  # 0 = normal
    counts = [max(1, int(rng.binomial(n, pk))) for pk in RT_KIND_P.values()]
    if sum(counts) < n:
        pos = rng.choice(n, sum(counts), replace=False)
        kinds[pos] = np.repeat(np.arange(1, len(counts) + 1, dtype=np.int8), counts)
    kind_names = list(RT_KIND_P)
    k_mis = kinds == 1 + kind_names.index("misassigned")
    lo_rt, span = 0.5, 39.0
    shift = rng.uniform(MISASSIGNED_MIN_SHIFT, span - MISASSIGNED_MIN_SHIFT, n)
    wrapped = lo_rt + np.mod(rt_true + shift - lo_rt, span)
    apex = np.where(k_mis, wrapped, apex)
    # near mis-assignments: the RT of an isomer in the same injection when the compound has one,
    # else 5-15 sigma off
    k_near = kinds == 1 + kind_names.index("near_misassigned")
    near_shift = (np.where(rng.random(n) < 0.5, 1.0, -1.0)
                  * rng.uniform(*NEAR_MISASSIGNED_SHIFT, n) * NOISE_SD)
    near = np.where(rt_true + near_shift < 0.3, rt_true + np.abs(near_shift), rt_true + near_shift)
    apex = np.where(k_near, near, apex)
    mis_kind = np.where(k_mis, "far", np.where(k_near, "near", "none")).astype(object)
    near_pos = np.flatnonzero(k_near)
    pick_u = rng.random(near_pos.size)
    iso_z = rng.normal(0.0, 1.0, near_pos.size)
    for r, u, z in zip(near_pos.tolist(), pick_u.tolist(), iso_z.tolist(), strict=True):
        others = des.isomers[int(hit_c[r])]
        if others.size == 0:
            continue
        o = int(others[int(u * others.size)])
        mu_o = des.mu[sp[r], o]
        apex[r] = (mu_o * (1.0 + s[r]) + d[r] + warp[r] * _warp_shape(np.array(mu_o), des.t0,
                                                                      des.t_end)
                   + z * des.noise[o])
        mis_kind[r] = "isomer"
    apex = np.where(kinds == 1 + kind_names.index("nan"), np.nan, apex)
    apex = np.where(kinds == 1 + kind_names.index("negative"), -rng.uniform(0.01, 2.0, n), apex)
    inf_sign = np.where(rng.random(n) < 0.5, np.inf, -np.inf)
    apex = np.where(kinds == 1 + kind_names.index("inf"), inf_sign, apex)
    apex = np.where(kinds == 1 + kind_names.index("out_of_range"), rng.uniform(50.0, 60.0, n), apex)
    is_null = kinds == 1 + kind_names.index("null")

    cpd = rng.choice(len(CPD_STATUS_P), n, p=list(CPD_STATUS_P.values()))
    area = np.exp(rng.normal(12.0, 1.5, n))
    fit = rng.uniform(0.3, 1.0, n)
    return pl.DataFrame({
        "sample_set_id": ssf["sample_set_id"].to_numpy()[ss],
        "task_id": inj["task_id"].to_numpy()[gi],
        "worksheet_id": ssf["worksheet_id"].to_numpy()[ss],
        "sample_type": inj["sample_type"].to_numpy()[gi],
        "cpd_status": np.array(list(CPD_STATUS_P))[cpd],
        "comp_id": des.comp_ids[hit_c],
        "species_matrix_type": ssf["species_matrix_type"].to_numpy()[ss],
        "apex_rt": pl.Series("apex_rt", apex).set(pl.Series(is_null), None),
        "peak_area": area,
        "fit_scores": fit,
        "acquisition_date": inj["acquisition_date"].gather(pl.Series(gi)),
        # generation-only columns
        "group": ssf["group"].to_numpy()[ss].astype(np.int64),
        "rt_true": rt_true,
        "noise_sd": noise_sd,
        "species": ssf["species"].to_numpy()[ss],
        "chem_id": des.comp_truth_chem[hit_c],
        "is_misassigned": k_mis | k_near,
        "misassignment": mis_kind.astype(str),
    })


PEAK_COLUMNS = ("sample_set_id", "task_id", "worksheet_id", "sample_type", "cpd_status", "comp_id",
                "species_matrix_type", "apex_rt", "peak_area", "fit_scores", "acquisition_date")


def _narrow(df: pl.DataFrame) -> pl.DataFrame:
    """Int32 ids and Float32 floats, as some shards of a real export are written."""
    return df.with_columns(
        [pl.col(c).cast(pl.Int32) for c in df.columns if df.schema[c] == pl.Int64]
        + [pl.col(c).cast(pl.Float32) for c in df.columns if df.schema[c] == pl.Float64]
    )


def _as_written(df: pl.DataFrame, narrow: bool) -> pl.DataFrame:
    """The values a reader sees after normalising a shard to Int64/Float64."""
    if not narrow:
        return df
    return df.with_columns(
        [pl.col(c).cast(pl.Float32).cast(pl.Float64) for c in _PEAK_FLOAT]
    )


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path, compression="zstd", statistics=True)


# ----------------------------------------------------------------------------------------------
# the pipeline's drop rules, applied to rows as written (the manifest's counts)
# ----------------------------------------------------------------------------------------------
DROP_REASONS: dict[str, tuple[str, ...]] = {
    "merge": ("duplicate_row", "cpd_status_not_kept", "sample_type_excluded", "no_predictor_row"),
    "split": ("apex_rt_invalid", "apex_rt_out_of_range"),
    "attach": ("comp_id_unmapped", "comp_id_ambiguous", "chem_id_no_class"),
    "rtcsv": ("sample_set_no_species",),
}
STAGE_ROWS = {"merge": "merged_rows", "split": "split_rows", "attach": "attached_rows",
              "rtcsv": "rt_rows"}


@dataclass
class _Side:
    """Small side tables the drop rules need (per lib)."""

    pred_keys: pl.DataFrame
    mapped: pl.Series
    ambiguous: pl.Series
    comp_chem: pl.DataFrame  # unambiguous comp_id -> chemical_id
    embedded: pl.Series
    with_species: pl.Series


def _side_tables(des: _LibDesign, embedded: pl.Series) -> _Side:
    m = des.mapping.unique(["comp_id", "chemical_id"])
    n_chem = m.group_by("comp_id").agg(pl.len().alias("n"))
    amb = n_chem.filter(pl.col("n") > 1)["comp_id"]
    return _Side(
        pred_keys=des.predictors.select(MERGE_KEY).unique(),
        mapped=m["comp_id"].unique(),
        ambiguous=amb,
        comp_chem=m.filter(~pl.col("comp_id").is_in(amb.implode())).select("comp_id",
                                                                            "chemical_id"),
        embedded=embedded,
        with_species=des.species_mapping["sample_set_id"],
    )


def _apply_rules(written: pl.DataFrame, side: _Side) -> tuple[dict[str, int], dict[str, set[int]]]:
    """Drop counts (pipeline order) and dropped ids for rows as written (normalised frame with
    ``group``); every row of a sample set must be in ``written`` for the counts to add up."""
    drops: dict[str, int] = {}
    ids: dict[str, set[int]] = {}
    x = written.select([*PEAK_COLUMNS, "group"])
    n = x.height
    x = x.unique()
    drops["duplicate_row"] = n - x.height

    def step(reason: str, keep: pl.Expr, id_col: str | None = None) -> None:
        nonlocal x
        kept = x.filter(keep)
        drops[reason] = x.height - kept.height
        if id_col is not None:
            ids[reason] = set(x.filter(~keep)[id_col].unique().to_list())
        x = kept

    step("cpd_status_not_kept", pl.col("cpd_status").is_in(list(CPD_STATUS_KEEP)))
    step("sample_type_excluded", ~pl.col("sample_type").is_in(list(SAMPLE_TYPE_EXCLUDE)))
    kept = x.join(side.pred_keys, on=list(MERGE_KEY), how="semi")
    drops["no_predictor_row"] = x.height - kept.height
    x = kept
    rt = pl.col("apex_rt")
    step("apex_rt_invalid", ~(rt.is_null() | rt.is_nan() | rt.is_infinite() | (rt < 0)))
    step("apex_rt_out_of_range", rt <= RT_VALID_MAX)
    step("comp_id_unmapped", pl.col("comp_id").is_in(side.mapped.implode()), "comp_id")
    step("comp_id_ambiguous", ~pl.col("comp_id").is_in(side.ambiguous.implode()), "comp_id")
    x = x.join(side.comp_chem, on="comp_id", how="left")
    step("chem_id_no_class", pl.col("chemical_id").is_in(side.embedded.implode()), "chemical_id")
    step("sample_set_no_species", pl.col("sample_set_id").is_in(side.with_species.implode()),
         "sample_set_id")
    return drops, ids


# ----------------------------------------------------------------------------------------------
# writing one lib
# ----------------------------------------------------------------------------------------------
def _write_lib(des: _LibDesign, seed: int, stage: Path, embedded: pl.Series,
               truth_writer: Any, table_writer: Any) -> dict[str, Any]:
    """Write one lib's peak and predictor shards and side CSVs under ``stage``; return its
    manifest entry."""
    lib, export = des.lib, des.export
    comp_col = COMP_COLUMN[export]
    exp_dir = stage / "repo_export" / export
    peak_dir = exp_dir / "create_training_data" / f"lib_id={lib}"
    side = _side_tables(des, embedded)
    rng_mess = _rng(seed, lib, _P_DESIGN, 99)

    counters = [0] * N_GROUPS
    totals: dict[str, int] = {r: 0 for rs in DROP_REASONS.values() for r in rs}
    dropped_ids: dict[str, set[int]] = {"comp_id_unmapped": set(), "comp_id_ambiguous": set(),
                                        "chem_id_no_class": set(), "sample_set_no_species": set()}
    written_total = 0
    narrow_shards: list[str] = []
    dup_shards: list[str] = []
    dup_rows = 0
    kind_counts: dict[str, int] = {"null": 0, "nan": 0, "inf": 0, "negative": 0,
                                   "out_of_range": 0}
    status_counts: dict[str, int] = {}
    type_counts: dict[str, int] = {}
    n_mis = 0
    mis_kinds: dict[str, int] = {}
    bounds = np.linspace(0, des.sample_sets.height, des.n_chunks + 1).round().astype(int)
    for k in range(des.n_chunks):
        peaks = _chunk_peaks(des, seed, k, int(bounds[k]), int(bounds[k + 1]))
        written_parts: list[pl.DataFrame] = []
        truth_parts: list[pl.DataFrame] = []
        for g in range(N_GROUPS):
            part = peaks.filter(pl.col("group") == g)
            if part.height == 0:
                continue
            narrow = bool(des.narrow[k, g])
            part = _as_written(part, narrow)
            truth_parts.append(part)
            out = part.select(PEAK_COLUMNS).rename({"comp_id": comp_col})
            if narrow:
                out = _narrow(out)
            rel = f"group={g}/part-{counters[g]}.parquet"
            _write_parquet(out, peak_dir / rel)
            counters[g] += 1
            written_parts.append(part)
            if narrow:
                narrow_shards.append(f"{export}/create_training_data/lib_id={lib}/{rel}")
            if des.dup[k, g] and part["apex_rt"].is_finite().any():
                # a re-processed datum: an extra part repeating rows of this partition (some
                # more than once); only finite apex_rt rows, so that NaN equality never matters
                ok = np.flatnonzero(np.isfinite(part["apex_rt"].fill_null(np.nan).to_numpy()))
                n_dup = max(1, round(rng_mess.uniform(0.1, 0.4) * ok.size))
                idx = np.sort(rng_mess.choice(ok, n_dup, replace=True))
                again = part[idx]
                out = again.select(PEAK_COLUMNS).rename({"comp_id": comp_col})
                if narrow:
                    out = _narrow(out)
                rel = f"group={g}/part-{counters[g]}.parquet"
                _write_parquet(out, peak_dir / rel)
                counters[g] += 1
                written_parts.append(again)
                dup_shards.append(f"{export}/create_training_data/lib_id={lib}/{rel}")
                dup_rows += n_dup
        written = pl.concat(written_parts)
        written_total += written.height
        drops, ids = _apply_rules(written, side)
        for r, v in drops.items():
            totals[r] += v
        for r, v in ids.items():
            dropped_ids[r] |= v
        truth = pl.concat(truth_parts)
        rt = truth["apex_rt"]
        kind_counts["null"] += rt.is_null().sum()
        kind_counts["nan"] += int(rt.is_nan().sum())
        kind_counts["inf"] += int(rt.is_infinite().sum())
        kind_counts["negative"] += int((rt < 0).sum())
        kind_counts["out_of_range"] += int(((rt > RT_VALID_MAX) & rt.is_finite()).sum())
        n_mis += int(truth["is_misassigned"].sum())
        for v, c in truth["misassignment"].value_counts().iter_rows():
            if v != "none":
                mis_kinds[v] = mis_kinds.get(v, 0) + int(c)
        for col, acc in (("cpd_status", status_counts), ("sample_type", type_counts)):
            for v, c in truth[col].value_counts().iter_rows():
                acc[v] = acc.get(v, 0) + int(c)
        truth_writer.write_table(
            truth.select(
                pl.lit(lib, dtype=pl.Int64).alias("lib_id"), "sample_set_id", "task_id", "comp_id",
                "apex_rt", "rt_true", "noise_sd", "species", "chem_id", "is_misassigned",
                "misassignment",
            ).to_arrow()
        )
        # the truth table (one row per (task_id, compound)): chem id 0 is not a compound (the
        # pipeline drops it, and several comp_ids of an injection carry it)
        table_writer.write_table(
            truth.filter(pl.col("chem_id") != 0).select(
                "task_id", pl.col("chem_id").cast(pl.String).alias("compound"), "rt_true",
                "noise_sd", pl.col("is_misassigned").alias("misassigned"),
            ).to_arrow()
        )
        log.debug("lib %d chunk %d/%d: %d peaks", lib, k + 1, des.n_chunks, peaks.height)

    # predictor shards, one per species_matrix_type; a few narrow
    pred_dir = exp_dir / "combine_predictors" / f"lib_id={lib}"
    smts = des.predictors["species_matrix_type"].unique().sort().to_list()
    narrow_pred = _force_min(rng_mess.random(len(smts)) < 0.1, rng_mess, 1)
    for smt, nar in zip(smts, narrow_pred.tolist(), strict=True):
        df = des.predictors.filter(pl.col("species_matrix_type") == smt).drop(
            "species_matrix_type").sort("task_id")
        if nar:
            df = _narrow(df)
            narrow_shards.append(
                f"{export}/combine_predictors/lib_id={lib}/species_matrix_type={smt}/part-0.parquet")
        _write_parquet(df, pred_dir / f"species_matrix_type={smt}" / "part-0.parquet")

    # side CSVs
    staged = Layout(str(stage / "repo_export"))
    des.mapping.write_csv(staged.lib_mapping(lib))
    des.species_mapping.write_csv(staged.species_mapping(export, lib))

    stages: dict[str, Any] = {}
    left = written_total
    flat: dict[str, int] = {}
    for st, reasons in DROP_REASONS.items():
        rin = left
        dr = {r: totals[r] for r in reasons}
        left = rin - sum(dr.values())
        stages[st] = {"rows_in": rin, "drops": dr, "rows_out": left}
        flat.update(dr)
    entry: dict[str, Any] = {
        "export": export,
        "comp_id_column": comp_col,
        "rows_written": written_total,
        **{STAGE_ROWS[st]: stages[st]["rows_out"] for st in DROP_REASONS},
        "drops": flat,
        "stages": stages,
        "dropped_ids": {r: sorted(v) for r, v in dropped_ids.items()},
        "shape": {k: des.params[k] for k in ("n_compounds", "n_species", "n_sample_sets",
                                              "n_worksheets", "n_injections",
                                              "n_species_matrix_types")},
        "mess": {
            **des.mess,
            "duplicate_shards": dup_shards,
            "duplicate_copies_written": dup_rows,
            "narrow_shards": narrow_shards,
            "apex_rt_written": kind_counts,
            "misassigned_peaks": n_mis,
            "misassigned_by_kind": dict(sorted(mis_kinds.items())),
            "cpd_status_written": dict(sorted(status_counts.items())),
            "sample_type_written": dict(sorted(type_counts.items())),
            "peak_part_files_per_group": counters,
        },
    }
    log.info("demo lib %d (%s): %s rows written, %s after merge, %s after attach, %s RT rows",
             lib, export, f"{written_total:,}", f"{stages['merge']['rows_out']:,}",
             f"{stages['attach']['rows_out']:,}", f"{stages['rtcsv']['rows_out']:,}")
    return entry


# ----------------------------------------------------------------------------------------------
# the public function
# ----------------------------------------------------------------------------------------------
def _lib_rows(rows: int, libs: Sequence[int]) -> dict[int, int]:
    w = np.array([LIB_WEIGHT.get(lib, 0.2) for lib in libs], dtype=np.float64)
    share = np.floor(rows * w / w.sum()).astype(int)
    return dict(zip(libs, share.tolist(), strict=True))


def _replace(src: Path, dst: Path, trash: Path) -> None:
    """Move ``src`` to ``dst``, moving an existing ``dst`` into ``trash`` first."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        trash.mkdir(parents=True, exist_ok=True)
        os.replace(dst, trash / f"{len(list(trash.iterdir()))}_{dst.name}")
    os.replace(src, dst)


def generate_demo(
    out_dir: str | Path = "demo",
    *,
    rows: int = 200_000,
    seed: int = 7,
    libs: Sequence[int] = DEFAULT_LIBS,
    structures: str | Path | None = None,
) -> dict[str, Any]:
    """Write the demo Pachyderm export (with truth and a manifest) under ``out_dir``.

    ``rows`` is the approximate number of peak rows over all ``libs`` (each lib gets a fixed
    share; at least 150 sample sets per lib whatever ``rows``). The output depends only on
    ``(rows, seed, libs)``. Everything is generated in a hidden staging folder under ``out_dir``
    and moved into place at the end; ``manifest.json`` is removed first and written last, so a
    folder with a manifest is a finished demo. Memory is bounded: peaks are generated and written
    chunk by chunk. Returns the manifest (see the module docstring).
    """
    import pyarrow.parquet as pq

    t_start = time.perf_counter()
    if rows < 1:
        raise RtprepError(f"demo rows must be positive, got {rows}")
    libs = sorted({int(x) for x in libs})
    if not libs:
        raise RtprepError("demo libs: give at least one lib")
    for lib in libs:
        _export_of(lib)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    with contextlib.suppress(FileNotFoundError):
        manifest_path.unlink()  # from here on the folder is "not finished"
    stage = out / f".demo-staging-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        structs, emb = _structures_and_embeddings(structures)
        emb_path = stage / EMBEDDINGS_REL
        _write_parquet(emb, emb_path)
        embedded = emb["chem_id"]

        lib_rows = _lib_rows(rows, libs)
        truth_dir = stage / "truth"
        truth_dir.mkdir()
        designs = [_design_lib(lib, lib_rows[lib], seed, structs) for lib in libs]
        entries: dict[str, Any] = {}
        # truth_peaks is appended to chunk by chunk (bounded memory)
        writer = pq.ParquetWriter(truth_dir / "truth_peaks.parquet", _truth_peaks_schema(),
                                  compression="zstd")
        table_writer = pq.ParquetWriter(truth_dir / TRUTH_TABLE_NAME, _truth_table_schema(),
                                        compression="zstd")
        try:
            for des in designs:
                entries[str(des.lib)] = _write_lib(des, seed, stage, embedded, writer,
                                                   table_writer)
        finally:
            writer.close()
            table_writer.close()
        _write_truth(designs, truth_dir, seed, rows)

        exports: dict[str, Any] = {}
        for h, own in EXPORTS.items():
            mine = [lib for lib in libs if lib in own]
            if not mine:
                continue
            exports[h] = {
                "path": f"repo_export/{h}",
                "libs": mine,
                "comp_id_column": COMP_COLUMN[h],
                "rows_written": sum(entries[str(lib)]["rows_written"] for lib in mine),
                "merged_rows": sum(entries[str(lib)]["merged_rows"] for lib in mine),
            }

        # move into place: exports, side CSVs, embeddings, truth; stale demo outputs removed
        trash = stage / ".trash"
        for h in EXPORTS:
            dst = out / "repo_export" / h
            if h in exports:
                _replace(stage / "repo_export" / h, dst, trash)
            elif dst.exists():
                shutil.rmtree(dst)
        staged, final = Layout(str(stage / "repo_export")), Layout(str(out / "repo_export"))
        for h, own in EXPORTS.items():
            for lib in own:
                for name in (staged.lib_mapping(lib), staged.species_mapping(h, lib)):
                    src = Path(name)
                    dst = Path(final.data_dir) / src.name
                    if src.exists():
                        _replace(src, dst, trash)
                    elif dst.exists():
                        dst.unlink()
        _replace(emb_path, out / EMBEDDINGS_REL, trash)
        _replace(truth_dir, out / "truth", trash)

        manifest: dict[str, Any] = {
            "generator": "rtprep.demo.generate_demo",
            "params": {"rows": rows, "seed": seed, "libs": libs},
            "data_dir": "repo_export",
            "exports": exports,
            "embeddings": str(EMBEDDINGS_REL),
            "n_structures": structs.height,
            "n_embeddings": emb.height,
            "rules": {
                "cpd_status_keep": list(CPD_STATUS_KEEP),
                "sample_type_exclude": list(SAMPLE_TYPE_EXCLUDE),
                "merge_key": ["lib_id", *MERGE_KEY],
                "duplicate_scope": ["lib_id", "group"],
                "rt_range": [0.0, RT_VALID_MAX],
                "order": {st: list(r) for st, r in DROP_REASONS.items()},
            },
            "truth": {
                "json": "truth/truth.json", "peaks": "truth/truth_peaks.parquet",
                "compounds": "truth/truth_compounds.parquet",
                "injections": "truth/truth_injections.parquet",
                "groups": "truth/truth_groups.parquet",
                "table": f"truth/{TRUTH_TABLE_NAME}",
            },
            "libs": entries,
            "versions": {k: v for k, v in package_versions().items()
                         if k in ("rtprep", "polars", "numpy", "rdkit")},
        }
        write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("demo written to %s in %.1f s (%s peak rows)", out, time.perf_counter() - t_start,
             f"{sum(e['rows_written'] for e in entries.values()):,}")
    return manifest


@functools.lru_cache(maxsize=4)
def _cached_structures(path: str, mtime_ns: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    structs = load_structures(path)
    return structs, rdkit_embeddings(structs)


def _structures_and_embeddings(
    structures: str | Path | None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Structures (with logP) and their embeddings, computed once per process and file version."""
    path = Path(structures) if structures is not None else structures_path()
    if not path.is_file():
        raise RtprepError(f"{path}: demo structures file not found")
    return _cached_structures(str(path.resolve()), path.stat().st_mtime_ns)


def _truth_peaks_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("lib_id", pa.int64()), ("sample_set_id", pa.int64()), ("task_id", pa.int64()),
        ("comp_id", pa.int64()), ("apex_rt", pa.float64()), ("rt_true", pa.float64()),
        ("noise_sd", pa.float64()), ("species", pa.large_string()), ("chem_id", pa.int64()),
        ("is_misassigned", pa.bool_()), ("misassignment", pa.large_string()),
    ])


def _truth_table_schema() -> Any:
    """:data:`rtprep.models.calibration.TRUTH_TABLE_COLUMNS`, as ``rtprep evaluate --truth``
    reads them."""
    import pyarrow as pa

    return pa.schema([
        ("task_id", pa.int64()), ("compound", pa.large_string()), ("rt_true", pa.float64()),
        ("noise_sd", pa.float64()), ("misassigned", pa.bool_()),
    ])


def _write_truth(designs: list[_LibDesign], truth_dir: Path, seed: int, rows: int) -> None:
    """truth.json (parameters, documented) and the small truth tables."""
    pl.concat([d.compounds for d in designs]).write_parquet(truth_dir / "truth_compounds.parquet")
    pl.concat([
        d.injections.join(d.sample_sets.with_row_index("ss_idx").select(
            pl.col("ss_idx").cast(pl.Int64), "worksheet_id", "species", "species_matrix_type"),
            on="ss_idx")
        .select(pl.lit(d.lib, dtype=pl.Int64).alias("lib_id"), "sample_set_id", "task_id",
                "worksheet_id", "species", "species_matrix_type", "sample_type", "drift_offset",
                "drift_scale", "warp_mid", "column", "acquisition_date", "has_predictor_row")
        for d in designs
    ]).write_parquet(truth_dir / "truth_injections.parquet")
    groups = []
    for d in designs:
        sp = d.species
        n_sp, n_comp = d.mu.shape
        groups.append(pl.DataFrame({
            "lib_id": np.full(n_sp * n_comp, d.lib, dtype=np.int64),
            "species": np.repeat(sp["species"].to_numpy(), n_comp),
            "species_cluster": np.repeat(sp["species_cluster"].to_numpy(), n_comp),
            "comp_id": np.tile(d.comp_ids, n_sp),
            "chem_id": np.tile(d.comp_truth_chem, n_sp),
            "mu": d.mu.reshape(-1),
            "matrix_effect": d.matrix_effect.reshape(-1),
        }))
    pl.concat(groups).write_parquet(truth_dir / "truth_groups.parquet")
    doc = {
        "model": {
            "compound": "base_c = t0 + 0.3 + (t_end - t0) * sigmoid((logP_c - logp_mid) / "
                        "logp_width) + family_offset[family_c] + N(0, compound_sd), clipped to "
                        "[t0 + 0.2, 36]; conjugates use parent logP + conjugate_logp_shift",
            "group": "mu_sc = base_c + cluster_shift[cluster(s)] + species_shift[s] + "
                     "N(0, group_sd) + matrix_effect_sc   (truth_groups.parquet; "
                     "matrix_effect_sc ~ N(0, matrix_effect_sd) for a matrix_effect_share of "
                     "the compounds, 0 otherwise)",
            "injection": "d_i = worksheet_offset + N(0, injection_offset_sd) + column_i * "
                         "column_change_offset_jump; s_i = worksheet_scale + N(0, "
                         "injection_scale_sd); warp_mid_i = level[column_i] + AR(1) walk over "
                         "worksheets in order (warp_rho, warp_step_sd) + N(0, "
                         "warp_injection_sd)   (truth_injections.parquet; libs[].warp)",
            "warp": "W(rt) = 4u(1-u), u = clip((rt - t0) / (t_end - t0), 0, 1)",
            "standard": "RT_ij = standards_rt[j] * (1 + s_i) + d_i + warp_mid_i * "
                        "W(standards_rt[j]) + N(0, standard_sd)",
            "noise": "noise_sd_c = noise_sd * exp(N(0, noise_log_sd)) per compound "
                     "(truth_compounds.parquet; each peak's in truth_peaks/truth_table)",
            "peak": "rt_true = mu_sc * (1 + s_i) + d_i + warp_mid_i * W(mu_sc); "
                    "apex_rt = rt_true + N(0, noise_sd_c); "
                    "mis-assigned peaks (misassignment in truth_peaks): far, apex_rt >= 3 min "
                    "from rt_true; near, 5-15 noise_sd (0.07) off; isomer, a near one whose "
                    "compound has an isomer (same RDKit formula) in the lib: the isomer's "
                    "rt_true in the same injection + its noise",
            "logP": "RDKit Crippen MolLogP of the structure",
        },
        "noise_sd": NOISE_SD,
        "noise_log_sd": NOISE_LOG_SD,
        "matrix_effect_share": MATRIX_EFFECT_SHARE,
        "matrix_effect_sd": MATRIX_EFFECT_SD,
        "warp_level": [x * NOISE_SD for x in WARP_LEVEL],
        "warp_level_change": [x * NOISE_SD for x in WARP_LEVEL_CHANGE],
        "warp_rho": WARP_RHO,
        "warp_step_sd": WARP_STEP * NOISE_SD,
        "warp_injection_sd": WARP_INJECTION_SD * NOISE_SD,
        "column_change_offset_jump_abs": COLUMN_JUMP * NOISE_SD,
        "standard_sd": STANDARD_SD,
        "compound_sd": 0.5,
        "family_offset_sd": 0.6,
        "cluster_shift_sd": 0.15,
        "species_shift_sd": 0.08,
        "group_sd": 0.05,
        "worksheet_offset_sd": 0.10,
        "worksheet_scale_sd": 0.008,
        "injection_offset_sd": 0.05,
        "injection_scale_sd": 0.004,
        "conjugate_logp_shift": CONJUGATE_LOGP_SHIFT,
        "misassigned_fraction": RT_KIND_P["misassigned"],
        "misassigned_min_shift": MISASSIGNED_MIN_SHIFT,
        "near_misassigned_fraction": RT_KIND_P["near_misassigned"],
        "near_misassigned_shift": [x * NOISE_SD for x in NEAR_MISASSIGNED_SHIFT],
        "apex_rt_kind_fractions": RT_KIND_P,
        "cpd_status_p": CPD_STATUS_P,
        "sample_type_p": SAMPLE_TYPE_P,
        "rows": rows,
        "seed": seed,
        "libs": {str(d.lib): d.params for d in designs},
    }
    (truth_dir / "truth.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
