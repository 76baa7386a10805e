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
from dataclasses import dataclass, field
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
    "rt_csv": ("sample_set_no_species",),
}
STAGE_ROWS = {"merge": "merged_rows", "split": "split_rows", "attach": "attached_rows",
              "rt_csv": "rt_rows"}


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
@dataclass
class _Tally:
    """What one lib's writing counts, chunk by chunk, for its manifest entry."""

    part_files: list[int] = field(default_factory=lambda: [0] * N_GROUPS)
    drops: dict[str, int] = field(
        default_factory=lambda: {r: 0 for rs in DROP_REASONS.values() for r in rs})
    dropped_ids: dict[str, set[int]] = field(default_factory=lambda: {
        "comp_id_unmapped": set(), "comp_id_ambiguous": set(), "chem_id_no_class": set(),
        "sample_set_no_species": set()})
    written: int = 0
    narrow_shards: list[str] = field(default_factory=list)
    dup_shards: list[str] = field(default_factory=list)
    dup_rows: int = 0
    apex_rt: dict[str, int] = field(default_factory=lambda: {
        "null": 0, "nan": 0, "inf": 0, "negative": 0, "out_of_range": 0})
    status: dict[str, int] = field(default_factory=dict)
    sample_type: dict[str, int] = field(default_factory=dict)
    misassigned: int = 0
    mis_kinds: dict[str, int] = field(default_factory=dict)

    def add_chunk(self, written: pl.DataFrame, truth: pl.DataFrame, side: _Side) -> None:
        """Count a chunk: its rows as written (the pipeline's drops) and its peaks' truth."""
        self.written += written.height
        drops, ids = _apply_rules(written, side)
        for r, v in drops.items():
            self.drops[r] += v
        for r, v in ids.items():
            self.dropped_ids[r] |= v
        rt = truth["apex_rt"]
        self.apex_rt["null"] += rt.is_null().sum()
        self.apex_rt["nan"] += int(rt.is_nan().sum())
        self.apex_rt["inf"] += int(rt.is_infinite().sum())
        self.apex_rt["negative"] += int((rt < 0).sum())
        self.apex_rt["out_of_range"] += int(((rt > RT_VALID_MAX) & rt.is_finite()).sum())
        self.misassigned += int(truth["is_misassigned"].sum())
        for v, c in truth["misassignment"].value_counts().iter_rows():
            if v != "none":
                self.mis_kinds[v] = self.mis_kinds.get(v, 0) + int(c)
        for col, acc in (("cpd_status", self.status), ("sample_type", self.sample_type)):
            for v, c in truth[col].value_counts().iter_rows():
                acc[v] = acc.get(v, 0) + int(c)


@dataclass
class _LibWriter:
    """Where and how one lib's shards are written."""

    des: LibDesign
    stage: Path
    rng_mess: np.random.Generator
    tally: _Tally

    @property
    def comp_col(self) -> str:
        return COMP_COLUMN[self.des.export]

    @property
    def export_dir(self) -> Path:
        return self.stage / "repo_export" / self.des.export

    def peak_shard(self, rows: pl.DataFrame, g: int, narrow: bool) -> str:
        """Write the next part file of group ``g``; returns its path inside the export."""
        out = rows.select(PEAK_COLUMNS).rename({"comp_id": self.comp_col})
        if narrow:
            out = _narrow(out)
        n = self.tally.part_files[g]
        rel = f"create_training_data/lib_id={self.des.lib}/group={g}/part-{n}.parquet"
        _write_parquet(out, self.export_dir / rel)
        self.tally.part_files[g] += 1
        return f"{self.des.export}/{rel}"

    def chunk(self, k: int, peaks: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Write chunk ``k``'s shards, group by group (a few narrow, a few repeated in an extra
        part); returns the rows as written (with the repeats) and the chunk's peaks' truth."""
        written_parts: list[pl.DataFrame] = []
        truth_parts: list[pl.DataFrame] = []
        for g in range(N_GROUPS):
            part = peaks.filter(pl.col("group") == g)
            if part.height == 0:
                continue
            narrow = bool(self.des.narrow[k, g])
            part = _as_written(part, narrow)
            truth_parts.append(part)
            shard = self.peak_shard(part, g, narrow)
            written_parts.append(part)
            if narrow:
                self.tally.narrow_shards.append(shard)
            if self.des.dup[k, g] and part["apex_rt"].is_finite().any():
                # a re-processed datum: an extra part repeating rows of this partition (some
                # more than once); only finite apex_rt rows, so that NaN equality never matters
                ok = np.flatnonzero(np.isfinite(part["apex_rt"].fill_null(np.nan).to_numpy()))
                n_dup = max(1, round(self.rng_mess.uniform(0.1, 0.4) * ok.size))
                again = part[np.sort(self.rng_mess.choice(ok, n_dup, replace=True))]
                self.tally.dup_shards.append(self.peak_shard(again, g, narrow))
                written_parts.append(again)
                self.tally.dup_rows += n_dup
        return pl.concat(written_parts), pl.concat(truth_parts)

    def predictors(self) -> None:
        """One predictor shard per species_matrix_type; a few narrow."""
        des = self.des
        smts = des.predictors["species_matrix_type"].unique().sort().to_list()
        narrow_pred = force_min(self.rng_mess.random(len(smts)) < 0.1, self.rng_mess, 1)
        for smt, nar in zip(smts, narrow_pred.tolist(), strict=True):
            df = des.predictors.filter(pl.col("species_matrix_type") == smt).drop(
                "species_matrix_type").sort("task_id")
            rel = f"combine_predictors/lib_id={des.lib}/species_matrix_type={smt}/part-0.parquet"
            if nar:
                df = _narrow(df)
                self.tally.narrow_shards.append(f"{des.export}/{rel}")
            _write_parquet(df, self.export_dir / rel)


def _write_truth_rows(truth: pl.DataFrame, lib: int, truth_writer: Any,
                      table_writer: Any) -> None:
    """Append a chunk's peaks to truth_peaks.parquet and the truth table."""
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


def _manifest_entry(des: LibDesign, tally: _Tally) -> dict[str, Any]:
    """A lib's manifest entry: rows written, each stage's rows in, drops and rows out."""
    stages: dict[str, Any] = {}
    left = tally.written
    flat: dict[str, int] = {}
    for st, reasons in DROP_REASONS.items():
        rin = left
        dr = {r: tally.drops[r] for r in reasons}
        left = rin - sum(dr.values())
        stages[st] = {"rows_in": rin, "drops": dr, "rows_out": left}
        flat.update(dr)
    return {
        "export": des.export,
        "comp_id_column": COMP_COLUMN[des.export],
        "rows_written": tally.written,
        **{STAGE_ROWS[st]: stages[st]["rows_out"] for st in DROP_REASONS},
        "drops": flat,
        "stages": stages,
        "dropped_ids": {r: sorted(v) for r, v in tally.dropped_ids.items()},
        "shape": {k: des.params[k] for k in ("n_compounds", "n_species", "n_sample_sets",
                                              "n_worksheets", "n_injections",
                                              "n_species_matrix_types")},
        "mess": {
            **des.mess,
            "duplicate_shards": tally.dup_shards,
            "duplicate_copies_written": tally.dup_rows,
            "narrow_shards": tally.narrow_shards,
            "apex_rt_written": tally.apex_rt,
            "misassigned_peaks": tally.misassigned,
            "misassigned_by_kind": dict(sorted(tally.mis_kinds.items())),
            "cpd_status_written": dict(sorted(tally.status.items())),
            "sample_type_written": dict(sorted(tally.sample_type.items())),
            "peak_part_files_per_group": tally.part_files,
        },
    }


def _write_lib(des: LibDesign, seed: int, stage: Path, embedded: pl.Series,
               truth_writer: Any, table_writer: Any) -> dict[str, Any]:
    """Write one lib's peak and predictor shards and side CSVs under ``stage``; return its
    manifest entry."""
    side = _side_tables(des, embedded)
    lib_writer = _LibWriter(des, stage, seeded_rng(seed, des.lib, P_DESIGN, 99), _Tally())
    bounds = np.linspace(0, des.sample_sets.height, des.n_chunks + 1).round().astype(int)
    for k in range(des.n_chunks):
        peaks = chunk_peaks(des, seed, k, int(bounds[k]), int(bounds[k + 1]))
        written, truth = lib_writer.chunk(k, peaks)
        lib_writer.tally.add_chunk(written, truth, side)
        _write_truth_rows(truth, des.lib, truth_writer, table_writer)
        log.debug("lib %d chunk %d/%d: %d peaks", des.lib, k + 1, des.n_chunks, peaks.height)
    lib_writer.predictors()
    staged = Layout(str(stage / "repo_export"))
    des.mapping.write_csv(staged.lib_mapping(des.lib))
    des.species_mapping.write_csv(staged.species_mapping(des.export, des.lib))
    entry = _manifest_entry(des, lib_writer.tally)
    stages = entry["stages"]
    log.info("demo lib %d (%s): %s rows written, %s after merge, %s after attach, %s RT rows",
             des.lib, des.export, f"{entry['rows_written']:,}",
             f"{stages['merge']['rows_out']:,}", f"{stages['attach']['rows_out']:,}",
             f"{stages['rt_csv']['rows_out']:,}")
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


def _exports_entry(entries: dict[str, Any], libs: Sequence[int]) -> dict[str, Any]:
    """The manifest's ``exports``: each export that holds one of ``libs``, with its rows."""
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
    return exports


def _write_staged(stage: Path, structs: pl.DataFrame, embedded: pl.Series,
                  libs: Sequence[int], rows: int, seed: int) -> dict[str, Any]:
    """Every lib's shards and side CSVs, and the truth, under ``stage``; returns the libs'
    manifest entries."""
    import pyarrow.parquet as pq

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
            entries[str(des.lib)] = _write_lib(des, seed, stage, embedded, writer, table_writer)
    finally:
        writer.close()
        table_writer.close()
    write_truth(designs, truth_dir, seed, rows)
    return entries


def _move_into_place(stage: Path, out: Path, exports: dict[str, Any]) -> None:
    """Exports, side CSVs, embeddings and truth from ``stage`` to ``out``; a demo output of an
    earlier run that this one does not write again is removed."""
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
    _replace(stage / EMBEDDINGS_REL, out / EMBEDDINGS_REL, trash)
    _replace(stage / "truth", out / "truth", trash)


def _manifest(params: dict[str, Any], exports: dict[str, Any], entries: dict[str, Any],
              n_structures: int, n_embeddings: int) -> dict[str, Any]:
    return {
        "generator": "rtprep.demo.generate_demo",
        "params": params,
        "data_dir": "repo_export",
        "exports": exports,
        "embeddings": str(EMBEDDINGS_REL),
        "n_structures": n_structures,
        "n_embeddings": n_embeddings,
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
    chunk by chunk. Returns the manifest (see :mod:`rtprep.demo`).
    """
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
        _write_parquet(emb, stage / EMBEDDINGS_REL)
        entries = _write_staged(stage, structs, emb["chem_id"], libs, rows, seed)
        exports = _exports_entry(entries, libs)
        _move_into_place(stage, out, exports)
        manifest = _manifest({"rows": rows, "seed": seed, "libs": libs}, exports, entries,
                             structs.height, emb.height)
        write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("demo written to %s in %.1f s (%s peak rows)", out, time.perf_counter() - t_start,
             f"{sum(e['rows_written'] for e in entries.values()):,}")
    return manifest
