"""Writing the demo: peak shards as a real export writes them (with its mess), the pipeline's
drop rules applied to the rows as written (the manifest's counts), and :func:`generate_demo`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.core.artifacts import package_versions, write_text_atomic
from rtprep.core.errors import RtprepError
from rtprep.core.paths import Layout
from rtprep.demo.design import (
    CPD_STATUS_KEEP,
    MERGE_KEY,
    N_GROUPS,
    P_DESIGN,
    PEAK_FLOAT,
    RT_VALID_MAX,
    SAMPLE_TYPE_EXCLUDE,
    LibDesign,
    chunk_peaks,
    design_lib,
    export_of,
    force_min,
    seeded_rng,
    structures_and_embeddings,
)
from rtprep.demo.layout import (
    COMP_COLUMN,
    DEFAULT_LIBS,
    EMBEDDINGS_REL,
    EXPORTS,
    LIB_WEIGHT,
    MANIFEST,
    TRUTH_TABLE_NAME,
)
from rtprep.demo.truth import truth_peaks_schema, truth_table_schema, write_truth

log = logging.getLogger(__name__)

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
        [pl.col(c).cast(pl.Float32).cast(pl.Float64) for c in PEAK_FLOAT]
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


def _side_tables(des: LibDesign, embedded: pl.Series) -> _Side:
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
def _write_lib(des: LibDesign, seed: int, stage: Path, embedded: pl.Series,
               truth_writer: Any, table_writer: Any) -> dict[str, Any]:
    """Write one lib's peak and predictor shards and side CSVs under ``stage``; return its
    manifest entry."""
    lib, export = des.lib, des.export
    comp_col = COMP_COLUMN[export]
    exp_dir = stage / "repo_export" / export
    peak_dir = exp_dir / "create_training_data" / f"lib_id={lib}"
    side = _side_tables(des, embedded)
    rng_mess = seeded_rng(seed, lib, P_DESIGN, 99)

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
        peaks = chunk_peaks(des, seed, k, int(bounds[k]), int(bounds[k + 1]))
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
    narrow_pred = force_min(rng_mess.random(len(smts)) < 0.1, rng_mess, 1)
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
        export_of(lib)
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
        structs, emb = structures_and_embeddings(structures)
        emb_path = stage / EMBEDDINGS_REL
        _write_parquet(emb, emb_path)
        embedded = emb["chem_id"]

        lib_rows = _lib_rows(rows, libs)
        truth_dir = stage / "truth"
        truth_dir.mkdir()
        designs = [design_lib(lib, lib_rows[lib], seed, structs) for lib in libs]
        entries: dict[str, Any] = {}
        # truth_peaks is appended to chunk by chunk (bounded memory)
        writer = pq.ParquetWriter(truth_dir / "truth_peaks.parquet", truth_peaks_schema(),
                                  compression="zstd")
        table_writer = pq.ParquetWriter(truth_dir / TRUTH_TABLE_NAME, truth_table_schema(),
                                        compression="zstd")
        try:
            for des in designs:
                entries[str(des.lib)] = _write_lib(des, seed, stage, embedded, writer,
                                                   table_writer)
        finally:
            writer.close()
            table_writer.close()
        write_truth(designs, truth_dir, seed, rows)

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
