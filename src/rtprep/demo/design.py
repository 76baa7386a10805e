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


def design_lib(lib: int, rows_target: int, seed: int, structures: pl.DataFrame) -> LibDesign:
    rng = seeded_rng(seed, lib, P_DESIGN)
    export = export_of(lib)
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
    rng_r = seeded_rng(seed, lib, P_REALISM)
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
    no_species = force_min(rng.random(n_ss) < 0.03, rng, 5)
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
    prcs = force_min(st == st_names.index("PRCS"), rng, 3)
    st[prcs] = st_names.index("PRCS")
    no_pred = force_min(rng.random(n_inj) < 0.02, rng, 4)
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
    return LibDesign(
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
