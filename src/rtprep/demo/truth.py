"""The demo's truth: ``truth/truth.json`` (the parameters, documented) and the truth tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.demo.design import (
    COLUMN_JUMP,
    CONJUGATE_LOGP_SHIFT,
    CPD_STATUS_P,
    MATRIX_EFFECT_SD,
    MATRIX_EFFECT_SHARE,
    MISASSIGNED_MIN_SHIFT,
    NEAR_MISASSIGNED_SHIFT,
    NOISE_LOG_SD,
    NOISE_SD,
    RT_KIND_P,
    SAMPLE_TYPE_P,
    STANDARD_SD,
    WARP_INJECTION_SD,
    WARP_LEVEL,
    WARP_LEVEL_CHANGE,
    WARP_RHO,
    WARP_STEP,
    LibDesign,
)

log = logging.getLogger(__name__)

def truth_peaks_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("lib_id", pa.int64()), ("sample_set_id", pa.int64()), ("task_id", pa.int64()),
        ("comp_id", pa.int64()), ("apex_rt", pa.float64()), ("rt_true", pa.float64()),
        ("noise_sd", pa.float64()), ("species", pa.large_string()), ("chem_id", pa.int64()),
        ("is_misassigned", pa.bool_()), ("misassignment", pa.large_string()),
    ])


def truth_table_schema() -> Any:
    """:data:`rtprep.models.calibration.TRUTH_TABLE_COLUMNS`, as ``rtprep evaluate --truth``
    reads them."""
    import pyarrow as pa

    return pa.schema([
        ("task_id", pa.int64()), ("compound", pa.large_string()), ("rt_true", pa.float64()),
        ("noise_sd", pa.float64()), ("misassigned", pa.bool_()),
    ])


def write_truth(designs: list[LibDesign], truth_dir: Path, seed: int, rows: int) -> None:
    """truth.json (parameters, documented) and the small truth tables."""
    _write_truth_tables(designs, truth_dir)
    doc = _truth_doc(designs, seed, rows)
    (truth_dir / "truth.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _write_truth_tables(designs: list[LibDesign], truth_dir: Path) -> None:
    """truth_compounds, truth_injections and truth_groups (every lib's rows)."""
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


def _truth_doc(designs: list[LibDesign], seed: int, rows: int) -> dict[str, Any]:
    """truth.json: the generative model in words and every parameter's value."""
    return {
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
