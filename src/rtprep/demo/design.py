"""The demo's design: its constants, the structures and their embeddings, each lib's design
(small tables held in memory) and the peaks drawn chunk by chunk of sample sets (the
generative model of :mod:`rtprep.demo`)."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.core.errors import RtprepError, input_error
from rtprep.demo.layout import EXPORTS, STRUCTURES_NAME

log = logging.getLogger(__name__)

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
P_DESIGN, P_CHUNK, P_EMBED, P_REALISM = 0, 1, 2, 3

PEAK_INT = ("sample_set_id", "task_id", "worksheet_id", "comp_id")
PEAK_FLOAT = ("apex_rt", "peak_area", "fit_scores")


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
class LibDesign:
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


def seeded_rng(seed: int, lib: int, purpose: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, lib, purpose, *extra]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _warp_shape(rt: np.ndarray, t0: float, t_end: float) -> np.ndarray:
    """``4u(1-u)`` of the gradient position ``u = (rt - t0) / (t_end - t0)`` (clipped to [0,
    1]): 1 mid-gradient, 0 at either end."""
    u = np.clip((rt - t0) / (t_end - t0), 0.0, 1.0)
    return 4.0 * u * (1.0 - u)


def export_of(lib: int) -> str:
    for h, libs in EXPORTS.items():
        if lib in libs:
            return h
    raise RtprepError(
        f"demo lib {lib} is not in any demo export; choose among "
        f"{sorted(x for v in EXPORTS.values() for x in v)}"
    )


def force_min(mask: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Make sure at least ``k`` entries of a boolean mask are set (deterministic draw)."""
    have = int(mask.sum())
    if have >= k or mask.size == 0:
        return mask
    free = np.flatnonzero(~mask)
    pick = rng.choice(free, size=min(k - have, free.size), replace=False)
    mask = mask.copy()
    mask[pick] = True
    return mask


@dataclass
class _Gradient:
    """A lib's reversed-phase gradient and its compound families' offsets."""

    t0: float
    t_end: float
    logp_mid: float
    logp_width: float
    family_offset: dict[str, float]

    def rt(self, logp: np.ndarray, fam: np.ndarray) -> np.ndarray:
        """A structure's RT from its logP and family (before the compound's own residual)."""
        off = np.array([self.family_offset[f] for f in fam.tolist()], dtype=np.float64)
        return (self.t0 + 0.3 + (self.t_end - self.t0)
                * _sigmoid((logp - self.logp_mid) / self.logp_width) + off)


def _draw_gradient(rng: np.random.Generator, families: list[str]) -> _Gradient:
    t0 = 0.6 + rng.uniform(0.0, 0.3)
    t_end = rng.uniform(24.0, 32.0)
    m_mid = rng.uniform(1.0, 3.0)
    width = rng.uniform(2.0, 3.0)
    fam_off = dict(zip(families, rng.normal(0.0, 0.6, len(families)).tolist(), strict=True))
    return _Gradient(t0, t_end, m_mid, width, fam_off)


@dataclass
class _Compounds:
    """A lib's compounds: real structures under lib-specific comp_ids, each with a role."""

    pick: np.ndarray  # the structures' rows
    spare: np.ndarray  # structures not picked (second chem ids of ambiguous comp_ids, extras)
    comp_ids: np.ndarray
    logp: np.ndarray
    family: np.ndarray
    truth_chem: np.ndarray
    roles: np.ndarray  # mapped, unmapped, ambiguous, chem_id_0, conjugate
    conj_ids: np.ndarray
    base: np.ndarray  # base RT
    formula: np.ndarray
    isomers: list[np.ndarray]
    prevalence: np.ndarray

    @property
    def n(self) -> int:
        return int(self.comp_ids.size)


def _draw_compounds(rng: np.random.Generator, lib: int, structures: pl.DataFrame,
                    grad: _Gradient) -> _Compounds:
    n_struct = structures.height
    s_chem = structures["chem_id"].to_numpy()
    n_comp = int(min(rng.integers(220, 321), n_struct - 20))
    perm = rng.permutation(n_struct)
    pick, spare = np.sort(perm[:n_comp]), perm[n_comp:]
    comp_ids = rng.choice(np.arange(1000, 60000), size=n_comp, replace=False).astype(np.int64)
    logp = structures["logp"].to_numpy()[pick].copy()
    fam = structures["family"].to_numpy()[pick]
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
    base = grad.rt(logp, fam) + rng.normal(0.0, 0.5, n_comp)
    # isomers (same molecular formula) among the lib's compounds; conjugates stand for another
    # structure, so they have none
    formula = structures["formula"].to_numpy()[pick].astype(str)
    by_formula: dict[str, list[int]] = {}
    for c, f in enumerate(formula.tolist()):
        if roles[c] != "conjugate":
            by_formula.setdefault(f, []).append(c)
    isomers = [np.array([o for o in by_formula.get(f, []) if o != c], dtype=np.int64)
               for c, f in enumerate(formula.tolist())]
    base = np.clip(base, grad.t0 + 0.2, 36.0)
    prevalence = rng.beta(1.2, 1.5, n_comp)
    return _Compounds(pick, spare, comp_ids, logp, fam, truth_chem, roles, conj_ids, base,
                      formula, isomers, prevalence)


def _draw_mapping(rng: np.random.Generator, lib: int, structures: pl.DataFrame,
                  comps: _Compounds) -> pl.DataFrame:
    """The mapping CSV: mapped, chem 0 and conjugate comp_ids; ambiguous ones twice; unmapped
    ones absent; a few extra comp_ids of the library that never show up in the peaks."""
    s_chem = structures["chem_id"].to_numpy()
    amb = comps.roles == "ambiguous"
    n_amb = int(amb.sum())
    second = s_chem[comps.spare[:n_amb]].astype(np.int64)
    n_extra = 5
    extra_comp = rng.choice(np.setdiff1d(np.arange(60000, 70000), comps.comp_ids), n_extra,
                            replace=False).astype(np.int64)
    extra_chem = s_chem[comps.spare[n_amb: n_amb + n_extra]].astype(np.int64)
    keep = comps.roles != "unmapped"
    return pl.DataFrame({
        "lib_id": np.full(int(keep.sum()) + n_amb + n_extra, lib, dtype=np.int64),
        "comp_id": np.concatenate([comps.comp_ids[keep], comps.comp_ids[amb], extra_comp]),
        "chemical_id": np.concatenate([comps.truth_chem[keep], second, extra_chem]),
    }).sort("comp_id", "chemical_id")


@dataclass
class _Species:
    """A lib's species, their shifts, the group means and the matrices each is measured in."""

    names: list[str]
    clusters: list[str]
    cluster_shift: dict[str, float]
    shift: np.ndarray
    cluster_of: np.ndarray  # each species' cluster shift
    mu: np.ndarray  # (n_species, n_comp)
    noise: np.ndarray  # (n_comp,)
    matrix_hit: np.ndarray  # (n_comp,) bool
    matrix_effect: np.ndarray  # (n_species, n_comp)
    weight: np.ndarray  # popularity
    matrices: list[np.ndarray]


def _draw_species(rng: np.random.Generator, rng_r: np.random.Generator,
                  comps: _Compounds) -> _Species:
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
    dev = rng.normal(0.0, 0.05, (n_sp, comps.n))
    cl_arr = np.array([cl_shift[c] for c in sp_clusters])
    mu = comps.base[None, :] + (cl_arr + sp_shift)[:, None] + dev
    # departures from the model's own family, from their own generator (so that the draws of
    # `rng` keep their values): noise per compound, and species x compound matrix effects on a
    # share of the compounds
    noise = NOISE_SD * np.exp(rng_r.normal(0.0, NOISE_LOG_SD, comps.n))
    matrix_hit = rng_r.random(comps.n) < MATRIX_EFFECT_SHARE
    matrix_effect = rng_r.normal(0.0, MATRIX_EFFECT_SD, (n_sp, comps.n)) * matrix_hit[None, :]
    mu = mu + matrix_effect
    # species popularity: human first, then a Zipf-like tail
    sp_w = 1.0 / np.arange(1, n_sp + 1) ** 0.9
    sp_w[0] = 4.0 * sp_w[1]
    sp_w /= sp_w.sum()
    # each species is measured in 1-3 matrices
    n_mat = 1 + rng.binomial(2, 0.3, n_sp)
    mat_p = MATRIX_WEIGHT / MATRIX_WEIGHT.sum()
    sp_mats = [rng.choice(len(MATRICES), k, replace=False, p=mat_p) for k in n_mat.tolist()]
    return _Species(sp_names, sp_clusters, cl_shift, sp_shift, cl_arr, mu, noise, matrix_hit,
                    matrix_effect, sp_w, sp_mats)


@dataclass
class _SampleSets:
    """A lib's sample sets: species, matrix, worksheet, group, injections per set."""

    species_of: np.ndarray
    worksheet_of: np.ndarray  # worksheet index (time order) of each sample set
    n_worksheets: int
    ids: np.ndarray
    n_inj: np.ndarray
    smt: np.ndarray
    no_species: np.ndarray  # bool: missing from the species mapping
    frame: pl.DataFrame
    species_mapping: pl.DataFrame

    @property
    def n(self) -> int:
        return int(self.ids.size)


def _draw_sample_sets(rng: np.random.Generator, lib: int, rows_target: int, n_comp: int,
                      sp: _Species) -> _SampleSets:
    mean_inj = 4.0
    peaks_per_inj = 0.45 * n_comp
    n_ss = max(MIN_SAMPLE_SETS, math.ceil(rows_target / (mean_inj * peaks_per_inj)))
    if n_ss >= 500_000:
        raise RtprepError(f"rows={rows_target:,} per lib is too many for the demo's id scheme")
    n_sp = len(sp.names)
    # every species has at least one sample set; the rest follow popularity
    ss_species = rng.permutation(np.concatenate(
        [np.arange(n_sp), rng.choice(n_sp, n_ss - n_sp, p=sp.weight)]))
    mat_u = rng.random(n_ss)
    ss_matrix = np.array([sp.matrices[s][int(u * len(sp.matrices[s]))] for s, u in
                          zip(ss_species.tolist(), mat_u.tolist(), strict=True)])
    ws_sizes = rng.integers(2, 9, n_ss)  # 2-8 sample sets per worksheet
    ws_of_ss = np.repeat(np.arange(n_ss), ws_sizes)[:n_ss]
    n_ws = int(ws_of_ss.max()) + 1
    ss_ids = lib * 1_000_000 + 1 + np.arange(n_ss, dtype=np.int64)
    ws_ids = lib * 1_000_000 + 500_001 + ws_of_ss.astype(np.int64)
    ss_group = rng.integers(0, N_GROUPS, n_ss)
    ss_n_inj = rng.integers(2, 7, n_ss)
    sp_arr = np.array(sp.names, dtype=object)
    smt = np.char.add(np.char.add(sp_arr[ss_species].astype(str), "_"),
                      np.array(MATRICES, dtype=object)[ss_matrix].astype(str))
    no_species = force_min(rng.random(n_ss) < 0.03, rng, 5)
    frame = pl.DataFrame({
        "sample_set_id": ss_ids, "worksheet_id": ws_ids, "species_idx": ss_species,
        "species": sp_arr[ss_species].astype(str), "tissue": np.array(MATRICES)[ss_matrix],
        "species_matrix_type": smt, "group": ss_group, "n_inj": ss_n_inj,
        "in_species_mapping": ~no_species,
    })
    sp_cluster_arr = np.array(sp.clusters, dtype=object)
    species_mapping = pl.DataFrame({
        "sample_set_id": ss_ids[~no_species],
        "species": sp_arr[ss_species[~no_species]].astype(str),
        "species_cluster": sp_cluster_arr[ss_species[~no_species]].astype(str),
        "tissue": np.array(MATRICES)[ss_matrix[~no_species]],
    })
    return _SampleSets(ss_species, ws_of_ss, n_ws, ss_ids, ss_n_inj, smt, no_species, frame,
                       species_mapping)


@dataclass
class _Injections:
    """A lib's injections: drift, gradient warp, sample type, predictor row present or not."""

    of_set: np.ndarray  # sample-set index of each injection
    task_ids: np.ndarray
    offset: np.ndarray  # d_i
    scale: np.ndarray  # s_i
    warp: np.ndarray  # w_i
    load: np.ndarray
    prcs: np.ndarray
    no_predictor: np.ndarray
    warp_params: dict[str, Any]
    frame: pl.DataFrame

    @property
    def n(self) -> int:
        return int(self.task_ids.size)


def _draw_warp(rng_r: np.random.Generator, n_ws: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The mid-gradient shift of each worksheet (in time order: their index): an AR(1) walk
    around a level, which a column change part-way lowers; and which worksheets come after the
    change. Returns ``(shift, after, params)``."""
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
    params = {"level_before": level1, "level_after": level2, "change": ws_change, "jump": jump}
    return np.where(after, level2, level1) + walk, after, params


def _draw_injections(rng: np.random.Generator, rng_r: np.random.Generator, lib: int,
                     ss: _SampleSets) -> _Injections:
    inj_ss = np.repeat(np.arange(ss.n), ss.n_inj)
    n_inj = inj_ss.size
    ws_d = rng.normal(0.0, 0.10, ss.n_worksheets)
    ws_s = rng.normal(0.0, 0.008, ss.n_worksheets)
    d = ws_d[ss.worksheet_of[inj_ss]] + rng.normal(0.0, 0.05, n_inj)
    s = ws_s[ss.worksheet_of[inj_ss]] + rng.normal(0.0, 0.004, n_inj)
    # a non-linear gradient warp (a compound at gradient position u moves by w * 4u(1-u)), and
    # a column change part-way that jumps the offset
    ws_warp, after, warp_params = _draw_warp(rng_r, ss.n_worksheets)
    inj_ws = ss.worksheet_of[inj_ss]
    warp = ws_warp[inj_ws] + rng_r.normal(0.0, WARP_INJECTION_SD * NOISE_SD, n_inj)
    column = after[inj_ws].astype(np.int64)
    d = d + warp_params["jump"] * column
    # acquisition dates: worksheets in order, 0-3 days apart (all injections of a worksheet on
    # its day)
    ws_day = np.cumsum(rng_r.integers(0, 4, ss.n_worksheets))
    acq = np.datetime64(ACQUISITION_START) + ws_day[inj_ws].astype("timedelta64[D]")
    st_names = list(SAMPLE_TYPE_P)
    st = rng.choice(len(st_names), n_inj, p=list(SAMPLE_TYPE_P.values()))
    prcs = force_min(st == st_names.index("PRCS"), rng, 3)
    st[prcs] = st_names.index("PRCS")
    no_pred = force_min(rng.random(n_inj) < 0.02, rng, 4)
    load = rng.uniform(0.7, 1.3, n_inj)
    task_ids = lib * 4_000_000 + 1 + np.arange(n_inj, dtype=np.int64)
    frame = pl.DataFrame({
        "task_id": task_ids, "ss_idx": inj_ss, "sample_set_id": ss.ids[inj_ss],
        "sample_type": np.array(st_names)[st], "drift_offset": d, "drift_scale": s,
        "warp_mid": warp, "column": column,
        "acquisition_date": pl.Series("acquisition_date", acq, dtype=pl.Date), "load": load,
        "has_predictor_row": ~no_pred,
    })
    return _Injections(inj_ss, task_ids, d, s, warp, load, prcs, no_pred, warp_params, frame)


@dataclass
class _Standards:
    names: list[str]
    rt: np.ndarray
    null_p: np.ndarray
    nulls: np.ndarray  # (injections with a predictor row, standards) bool
    predictors: pl.DataFrame  # sample_set_id, task_id, species_matrix_type, IS*, RS*, ES_*


def _draw_standards(rng: np.random.Generator, structures: pl.DataFrame, grad: _Gradient,
                    ss: _SampleSets, inj: _Injections) -> _Standards:
    """The standards' RTs and the predictor table (one row per injection that has one)."""
    is_rt = np.sort(np.linspace(1.2, 0.9 * grad.t_end, N_IS) + rng.normal(0.0, 0.3, N_IS))
    rs_rt = np.linspace(2.0, 0.95 * grad.t_end, N_RS)
    by_name = {n: i for i, n in enumerate(structures["name"].to_list())}
    es_idx = np.array([by_name[v] for v in ES_STANDARDS.values()])
    es_rt = grad.rt(structures["logp"].to_numpy()[es_idx], structures["family"].to_numpy()[es_idx])
    std_names = ([f"IS{j + 1}" for j in range(N_IS)] + [f"RS{j + 1}" for j in range(N_RS)]
                 + [f"ES_{k}" for k in ES_STANDARDS])
    std_rt = np.concatenate([is_rt, rs_rt, es_rt])
    null_p = np.full(std_rt.size, 0.02)
    null_p[rng.choice(std_rt.size, 2, replace=False)] = [0.10, 0.25]  # two often missed
    pred_inj = np.flatnonzero(~inj.no_predictor)
    vals = (std_rt[None, :] * (1.0 + inj.scale[pred_inj, None]) + inj.offset[pred_inj, None]
            + inj.warp[pred_inj, None] * _warp_shape(std_rt, grad.t0, grad.t_end)[None, :]
            + rng.normal(0.0, STANDARD_SD, (pred_inj.size, std_rt.size)))
    nulls = rng.random(vals.shape) < null_p[None, :]
    pred_cols: dict[str, Any] = {
        "sample_set_id": ss.ids[inj.of_set[pred_inj]], "task_id": inj.task_ids[pred_inj],
        "species_matrix_type": ss.smt[inj.of_set[pred_inj]],
    }
    for j, name in enumerate(std_names):
        pred_cols[name] = pl.Series(name, vals[:, j]).set(pl.Series(nulls[:, j]), None)
    return _Standards(std_names, std_rt, null_p, nulls, pl.DataFrame(pred_cols))


def _detection_scale(load: np.ndarray, prevalence: np.ndarray, rows_target: int) -> float:
    """The ``k`` that solves ``sum_i sum_c min(1, prev_c * load_i * k) = rows_target``."""
    q = np.quantile(load, np.linspace(0.0025, 0.9975, 200))
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        expected = np.minimum(1.0, np.outer(q, prevalence) * mid).sum() * load.size / q.size
        lo, hi = (mid, hi) if expected < rows_target else (lo, mid)
    return 0.5 * (lo + hi)


def _params(lib: int, grad: _Gradient, comps: _Compounds, sp: _Species, ss: _SampleSets,
            inj: _Injections, std: _Standards, scale: float) -> dict[str, Any]:
    """The design's parameters, for truth.json and the manifest."""
    w = inj.warp_params
    return {
        "gradient": {"t0": grad.t0, "t_end": grad.t_end, "logp_mid": grad.logp_mid,
                     "logp_width": grad.logp_width},
        "family_offset": grad.family_offset, "cluster_shift": sp.cluster_shift,
        "species_shift": dict(zip(sp.names, sp.shift.tolist(), strict=True)),
        "standards_rt": dict(zip(std.names, std.rt.tolist(), strict=True)),
        "standards_null_probability": dict(zip(std.names, std.null_p.tolist(), strict=True)),
        "detection_scale": scale,
        "matrix_effect_compounds": int(sp.matrix_hit.sum()),
        "warp": {"level_before": w["level_before"], "level_after": w["level_after"],
                 "column_change_worksheet_index": w["change"],
                 "column_change_worksheet_id": int(lib * 1_000_000 + 500_001 + w["change"]),
                 "column_change_offset_jump": w["jump"]},
        "n_compounds": comps.n, "n_species": len(sp.names), "n_sample_sets": ss.n,
        "n_worksheets": ss.n_worksheets, "n_injections": inj.n,
        "n_species_matrix_types": int(np.unique(ss.smt).size),
    }


def _mess(comps: _Compounds, ss: _SampleSets, inj: _Injections,
          std: _Standards) -> dict[str, Any]:
    """The mess the design put in, by kind (the manifest's ``mess``)."""
    return {
        "unmapped_comp_ids": sorted(comps.comp_ids[comps.roles == "unmapped"].tolist()),
        "ambiguous_comp_ids": sorted(comps.comp_ids[comps.roles == "ambiguous"].tolist()),
        "chem_id_0_comp_ids": sorted(comps.comp_ids[comps.roles == "chem_id_0"].tolist()),
        "conjugate_chem_ids": sorted(comps.conj_ids.tolist()),
        "sample_sets_without_species": sorted(ss.ids[ss.no_species].tolist()),
        "injections_without_predictor_row": int(inj.no_predictor.sum()),
        "prcs_injections": int(inj.prcs.sum()),
        "null_predictor_values": {n: int(std.nulls[:, j].sum())
                                  for j, n in enumerate(std.names)},
    }


def design_lib(lib: int, rows_target: int, seed: int, structures: pl.DataFrame) -> LibDesign:
    """One lib's design, drawn from the generators ``(seed, lib, P_DESIGN)`` and, for the
    departures from the model's own family, ``(seed, lib, P_REALISM)``, in a fixed order."""
    rng = seeded_rng(seed, lib, P_DESIGN)
    rng_r = seeded_rng(seed, lib, P_REALISM)
    export = export_of(lib)
    grad = _draw_gradient(rng, sorted(set(structures["family"].to_list())))
    comps = _draw_compounds(rng, lib, structures, grad)
    mapping = _draw_mapping(rng, lib, structures, comps)
    sp = _draw_species(rng, rng_r, comps)
    ss = _draw_sample_sets(rng, lib, rows_target, comps.n, sp)
    inj = _draw_injections(rng, rng_r, lib, ss)
    std = _draw_standards(rng, structures, grad, ss, inj)
    scale = _detection_scale(inj.load, comps.prevalence, rows_target)
    n_chunks = max(MIN_CHUNKS, math.ceil(rows_target / CHUNK_ROWS))
    narrow = rng.random((n_chunks, N_GROUPS)) < 0.15
    narrow[1 % n_chunks, 1] = True
    dup = rng.random((n_chunks, N_GROUPS)) < 0.2
    dup[0, 2] = True

    compounds = pl.DataFrame({
        "lib_id": np.full(comps.n, lib, dtype=np.int64), "comp_id": comps.comp_ids,
        "chem_id": comps.truth_chem,
        "structure_chem_id": structures["chem_id"].to_numpy()[comps.pick].astype(np.int64),
        "name": structures["name"].to_numpy()[comps.pick], "family": comps.family,
        "logp": comps.logp, "base_rt": comps.base, "prevalence": comps.prevalence,
        "noise_sd": sp.noise, "matrix_effect": sp.matrix_hit, "formula": comps.formula,
        "n_isomers": np.array([x.size for x in comps.isomers], dtype=np.int64),
        "role": comps.roles.astype(str),
    })
    species = pl.DataFrame({
        "lib_id": np.full(len(sp.names), lib, dtype=np.int64), "species": sp.names,
        "species_cluster": sp.clusters, "cluster_shift": sp.cluster_of,
        "species_shift": sp.shift,
    })
    return LibDesign(
        lib=lib, export=export, rows_target=rows_target,
        params=_params(lib, grad, comps, sp, ss, inj, std, scale), compounds=compounds,
        comp_ids=comps.comp_ids, comp_truth_chem=comps.truth_chem, prevalence=comps.prevalence,
        mu=sp.mu, species=species, sample_sets=ss.frame, injections=inj.frame, mapping=mapping,
        species_mapping=ss.species_mapping, predictors=std.predictors,
        standards=dict(zip(std.names, std.rt.tolist(), strict=True)), n_chunks=n_chunks,
        narrow=narrow, dup=dup, scale=scale, noise=sp.noise, matrix_effect=sp.matrix_effect,
        t0=grad.t0, t_end=grad.t_end, isomers=comps.isomers, mess=_mess(comps, ss, inj, std),
    )


# ----------------------------------------------------------------------------------------------
# peaks, chunk by chunk
# ----------------------------------------------------------------------------------------------
def _misassign(
    rng: np.random.Generator, des: LibDesign, apex: np.ndarray, rt_true: np.ndarray,
    kinds: np.ndarray, hit_c: np.ndarray, sp: np.ndarray,
    drift: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mis-assigned peaks: far ones (at least ``MISASSIGNED_MIN_SHIFT`` min off, wrapped on the
    gradient), near ones (5-15 sigma off) and, where the compound has an isomer in the lib, the
    isomer's RT in the same injection. Returns ``(apex, kind, far, near)``."""
    s, d, warp = drift
    n = apex.size
    kind_names = list(RT_KIND_P)
    k_mis = kinds == 1 + kind_names.index("misassigned")
    lo_rt, span = 0.5, 39.0
    shift = rng.uniform(MISASSIGNED_MIN_SHIFT, span - MISASSIGNED_MIN_SHIFT, n)
    wrapped = lo_rt + np.mod(rt_true + shift - lo_rt, span)
    apex = np.where(k_mis, wrapped, apex)
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
    return apex, mis_kind, k_mis, k_near


def _bad_apex(rng: np.random.Generator, apex: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """The invalid apex_rt kinds: NaN, negative, +-inf, outside the valid range."""
    n = apex.size
    kind_names = list(RT_KIND_P)
    apex = np.where(kinds == 1 + kind_names.index("nan"), np.nan, apex)
    apex = np.where(kinds == 1 + kind_names.index("negative"), -rng.uniform(0.01, 2.0, n), apex)
    inf_sign = np.where(rng.random(n) < 0.5, np.inf, -np.inf)
    apex = np.where(kinds == 1 + kind_names.index("inf"), inf_sign, apex)
    return np.where(kinds == 1 + kind_names.index("out_of_range"), rng.uniform(50.0, 60.0, n),
                    apex)


def chunk_peaks(des: LibDesign, seed: int, chunk: int, ss_lo: int, ss_hi: int) -> pl.DataFrame:
    """All peaks of sample sets ``[ss_lo, ss_hi)``: one frame with truth columns and ``group``."""
    rng = seeded_rng(seed, des.lib, P_CHUNK, chunk)
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
    apex, mis_kind, k_mis, k_near = _misassign(rng, des, apex, rt_true, kinds, hit_c, sp,
                                               (s, d, warp))
    apex = _bad_apex(rng, apex, kinds)
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


@functools.lru_cache(maxsize=4)
def _cached_structures(path: str, mtime_ns: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    structs = load_structures(path)
    return structs, rdkit_embeddings(structs)


def structures_and_embeddings(
    structures: str | Path | None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Structures (with logP) and their embeddings, computed once per process and file version."""
    path = Path(structures) if structures is not None else structures_path()
    if not path.is_file():
        raise RtprepError(f"{path}: demo structures file not found")
    return _cached_structures(str(path.resolve()), path.stat().st_mtime_ns)
