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
``comp_id_ambiguous``, ``chem_id_no_class``; rt_csv: ``sample_set_no_species``) on uncapped data.

Everything is drawn from ``numpy`` generators seeded by ``(seed, lib, purpose[, chunk])``: the
output depends only on ``(rows, seed, libs)``. Peaks are generated and written chunk by chunk of
sample sets (every row of a sample set is in one chunk), so memory stays bounded at any ``rows``.
"""

from __future__ import annotations

from typing import Any

from rtprep.demo.layout import EXPORTS

__all__ = ["EXPORTS", "generate_demo", "load_structures", "structures_path"]

# Imported on first use: the layout is read while the workflow builds its DAG, without polars.
_LAZY = {"generate_demo": "rtprep.demo.writing", "load_structures": "rtprep.demo.design",
         "structures_path": "rtprep.demo.design"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rtprep.demo' has no attribute {name!r}")
