"""Benchmark of the data stages at scale, beside the I/O floor and DuckDB (not a test).

    python benchmarks/bench_stages.py --rows 20000000                 # + the 5 M run, growth
    python benchmarks/bench_stages.py --rows 2000000 --base-rows 0    # quick, one size
    python benchmarks/bench_stages.py --rows 20000000 --reuse /tmp/rtprep-bench

For each size it generates (or, with ``--reuse``, finds) a scaled demo export (``rtprep demo
--rows N``, 5 libs) under ``<work>/rows_<N>/``, gathers its two exports into one export of 5 libs
(directories moved, not copied) and widens the predictor shards to 30 predictor columns (the demo
has 18; the shards hold one row per injection, so this is cheap). Then every stage and every
reference runs in its own child process; its peak RSS is the child's own high-water mark
(``VmHWM``, read by the child when its work is done: ``ru_maxrss`` from ``wait4`` would be at
least the parent's peak, which a forked child inherits) and its CPU time is from ``wait4``:

- merge: ``merge_export``; floor: copy of the peak shards (``diagonal_relaxed`` concat); DuckDB:
  DISTINCT peaks and predictors, the filters, the join, ``ORDER BY lib_id``. Beside it: a copy
  of the merged file, and a bound: writing the merged rows alone from memory (polars' parallel
  writer; its own wall and CPU time, the read excluded), which no merge writing that file beats.
- split: ``split_lib`` of the largest lib; floor: copy of that lib's rows of the merged file;
  DuckDB: ``COPY (SELECT`` the lib's valid rows``)``.
- split_all: ``split_lib`` for every lib; floor: copy of the merged file (and polars'
  ``sink_parquet(pl.PartitionBy(...))``); DuckDB: ``COPY ... (PARTITION_BY (lib_id))``.
- coverage: ``species_compound_coverage``; floor: copy of the lib file; DuckDB: GROUP BY pair.
- cap: ``cap_species_compounds`` (cap 5); floor: copy of the lib file; DuckDB: ``QUALIFY
  row_number() OVER (PARTITION BY species_matrix_type, comp_id ORDER BY hash(identity, seed))
  <= 5`` with DuckDB's native ``hash`` (``--duckdb-portable-hash``: rtprep's splitmix64 in SQL,
  the identical rows, but 64-bit modular arithmetic through HUGEINT is ~20x slower).
- test_rows: ``write_test_rows``; floor: copy of the lib file; DuckDB: test filter, mapping,
  classes and species joins, ``ORDER BY`` identity.

Wall time is measured in the child around the work (imports excluded). Files are hot in the page
cache (just written); the machine may be shared, so run it when it is quiet and read ratios, not
seconds. Outputs of each run are deleted right after it; ``--clean`` removes the demo too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CAP = 5
CAP_SEED = 42
FOLD_SEED = 1
TEST_FRACTION = 0.2
N_CLUSTERS = 32
RT_RANGE = (0.0, 40.0)
#: Predictor columns added to reach 30: IS9..IS16 and RS5..RS8 (the demo has IS1-8, RS1-4, 6 ES_).
EXTRA_PREDICTORS = [*(f"IS{i}" for i in range(9, 17)), *(f"RS{i}" for i in range(5, 9))]
IDENTITY = "sample_set_id, task_id, comp_id, apex_rt"


# =============================================================================================
# child side: one job per process
# =============================================================================================
def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    if path.is_dir():
        return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(path.rglob("*.parquet")))
    return pq.ParquetFile(path).metadata.num_rows


TWO64 = 2**64
GOLDEN = 0x9E3779B97F4A7C15
DUCKDB_MACROS = f"""
CREATE MACRO u64(x) AS (((x::HUGEINT % {TWO64}::HUGEINT) + {TWO64}::HUGEINT) % {TWO64}::HUGEINT)
    ::UBIGINT;
CREATE MACRO addmod(a, b) AS ((a::UHUGEINT + b::UHUGEINT) % {TWO64}::UHUGEINT)::UBIGINT;
CREATE MACRO mulmod(a, b) AS ((a::UHUGEINT * b::UHUGEINT) % {TWO64}::UHUGEINT)::UBIGINT;
CREATE MACRO exp2(x) AS floor(log2(abs(x)))::INTEGER
    - (pow(2.0, floor(log2(abs(x)))) > abs(x))::INTEGER
    + (pow(2.0, floor(log2(abs(x))) + 1) <= abs(x))::INTEGER;
CREATE MACRO f64bits(x) AS CASE WHEN x = 0 THEN 0::UBIGINT ELSE (
    (CASE WHEN x < 0 THEN 9223372036854775808 ELSE 0 END)::UHUGEINT
    + (exp2(x) + 1023)::UHUGEINT * 4503599627370496::UHUGEINT
    + ((abs(x) / pow(2.0, exp2(x)) - 1.0) * 4503599627370496.0)::UHUGEINT)::UBIGINT END;
"""


def _splitmix_sql(inner: str, word: str | None) -> str:
    """One splitmix64 round on column h in SQL (as tests/test_hashing.py), one SELECT per step."""
    first = f"xor(h, {word})" if word else "h"
    steps = [
        f"addmod({first}, {GOLDEN}::UBIGINT)",
        f"mulmod(xor(h, h >> 30), {0xBF58476D1CE4E5B9}::UBIGINT)",
        f"mulmod(xor(h, h >> 27), {0x94D049BB133111EB}::UBIGINT)",
        "xor(h, h >> 31)",
    ]
    q = inner
    for s in steps:
        q = f"SELECT * REPLACE ({s} AS h) FROM ({q})"
    return q


def duckdb_row_hash_sql(source: str, seed: int) -> str:
    """A query adding ``h``, rtprep's portable row hash (rtprep.core.hashing), to ``source``."""
    q = f"SELECT *, u64({seed}) AS h FROM {source}"
    q = _splitmix_sql(q, None)
    for word in ("u64(sample_set_id)", "u64(task_id)", "u64(comp_id)", "f64bits(apex_rt)"):
        q = _splitmix_sql(q, word)
    return q


def _run_duckdb(sql: str, tmpdir: str, pre: str = "") -> int:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{tmpdir}'")
    if pre:
        con.execute(pre)
    row = con.execute(sql).fetchone()
    con.close()
    return int(row[0]) if row else 0


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(job: str, a: dict[str, Any]) -> dict[str, Any]:
    """Run one job (imports first, then the timed work); return its rows out and wall time."""
    import logging

    import polars as pl

    logging.basicConfig(level=logging.WARNING)
    out = Path(a["out"])
    t0 = time.perf_counter()
    rows: int
    if job == "merge":
        from rtprep.stages.merge import merge_export

        rows = merge_export(a["export"], out).rows_out
    elif job == "split":
        from rtprep.stages.split import split_lib

        rows = split_lib(a["merged"], a["lib"], out, rt_range=RT_RANGE).rows_out
    elif job == "split_all":
        from rtprep.stages.split import libs_in_merged, split_lib

        out.mkdir(parents=True, exist_ok=True)
        rows = 0
        for lib in libs_in_merged(a["merged"]):
            rows += split_lib(a["merged"], lib, out / f"lib{lib}.parquet",
                              rt_range=RT_RANGE).rows_out
    elif job == "coverage":
        from rtprep.stages.coverage import species_compound_coverage

        species_compound_coverage(a["lib_file"], out)
        rows = pl.read_csv(out).height
    elif job == "cap":
        from rtprep.stages.cap import cap_species_compounds

        rows = cap_species_compounds(a["lib_file"], out, cap_per_pair=CAP,
                                           seed=CAP_SEED).rows_out
    elif job == "test_rows":
        from rtprep.stages.rt_csv import write_test_rows

        rows = write_test_rows(a["lib_file"], a["folds"], a["mapping"], a["classes"],
                               a["species"], out).rows_out
    elif job == "copy":
        src = a["src"]
        lf = (pl.concat([pl.scan_parquet(f) for f in src], how="diagonal_relaxed")
              if isinstance(src, list) else pl.scan_parquet(src))
        if a.get("lib") is not None:
            lf = lf.filter(pl.col("lib_id") == a["lib"])
        lf.sink_parquet(out, compression="zstd", statistics=True)
        rows = _parquet_rows(out)
    elif job == "write_only":
        # A bound for merge: writing the merged rows alone, from memory (polars' parallel
        # writer), timed after the read; its own wall and CPU time.
        df = pl.read_parquet(a["src"])
        t0, c0 = time.perf_counter(), _cpu_seconds()
        df.write_parquet(out, compression="zstd", statistics=True)
        return {"wall": time.perf_counter() - t0, "cpu": _cpu_seconds() - c0,
                "rows": df.height}
    elif job == "polars_partition":
        rt = pl.col("apex_rt")
        (pl.scan_parquet(a["src"])
         .filter(rt.is_finite() & rt.is_between(*RT_RANGE))
         .sink_parquet(pl.PartitionBy(out, key="lib_id", include_key=True), mkdir=True,
                       compression="zstd", statistics=True))
        rows = _parquet_rows(out)
    elif job == "duckdb":
        rows = _run_duckdb(a["sql"].replace("@OUT@", str(out)), a["tmpdir"],
                           pre=DUCKDB_MACROS if a.get("macros") else "")
    else:
        raise SystemExit(f"unknown job {job}")
    return {"wall": time.perf_counter() - t0, "rows": int(rows)}


# =============================================================================================
# parent side
# =============================================================================================
def run_child(job: str, args: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """Run a job in a fresh Python process; add its peak RSS (GB, the child's VmHWM) and CPU."""
    out = Path(args["out"])
    _remove(out)
    with open(log_path, "a") as log:
        log.write(f"\n=== {job} {json.dumps(args)[:300]}\n")
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, str(HERE), "--child", job, json.dumps(args)],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        assert proc.stdout is not None
        text = proc.stdout.read()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{job} failed (exit {proc.returncode}); see {log_path}")
    res = json.loads(text.strip().splitlines()[-1])
    own_kb = res.pop("own_rss_kb", None)  # the child's VmHWM (ru_maxrss includes the parent's)
    res["rss_gb"] = (own_kb if own_kb is not None else ru.ru_maxrss) * 1024 / 1e9  # kilobytes
    # less disturbed than wall time on a shared machine (a job timing only part of its work
    # reports its own)
    res.setdefault("cpu", ru.ru_utime + ru.ru_stime)
    res["out_bytes"] = _size(out)
    return res


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
    for side in (Path(str(p) + ".meta.json"), Path(str(p) + ".dropped.csv")):
        side.unlink(missing_ok=True)


def ensure_demo(root: Path, rows: int, log_path: Path) -> Path:
    """The demo of ``rows`` rows under ``root/demo`` (generated unless finished there), with its
    exports gathered into ``root/export`` and the predictors widened. Returns ``root``."""
    import polars as pl

    demo = root / "demo"
    export = root / "export"
    if (export / ".ready").exists() and (demo / "manifest.json").exists():
        print(f"  reusing {root}", flush=True)
        return root
    if not (demo / "manifest.json").exists():
        print(f"  generating the demo ({rows:,} rows) ...", flush=True)
        t0 = time.perf_counter()
        with open(log_path, "a") as log:
            subprocess.run(["rtprep", "demo", "--out", str(demo), "--rows", str(rows)],
                           check=True, stdout=log, stderr=log)
        print(f"  demo written in {time.perf_counter() - t0:.0f} s", flush=True)
    if export.exists():
        shutil.rmtree(export)
    # One export of all 5 libs: move each lib's folders (the demo's two exports differ only in
    # the name of comp_id, which merge's default renames handle per shard).
    for sub in ("create_training_data", "combine_predictors"):
        for lib_dir in sorted((demo / "repo_export").glob(f"*/{sub}/lib_id=*")):
            dest = export / sub / lib_dir.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(lib_dir), dest)
    # Widen: 12 more standards per injection, drawn near existing ones (deterministic).
    for f in sorted((export / "combine_predictors").rglob("*.parquet")):
        df = pl.read_parquet(f)
        base = [c for c in df.columns if c.startswith(("IS", "RS", "ES_"))]
        extra = [
            (pl.col(base[i % len(base)]) * (1.0 + 0.01 * (i + 1))
             + (pl.col("task_id").cast(pl.Float64) * (0.618 + i)) % 1.0 * 0.05).alias(name)
            for i, name in enumerate(EXTRA_PREDICTORS) if name not in df.columns
        ]
        df.with_columns(extra).write_parquet(f)
    (export / ".ready").write_text("ok\n")
    return root



# --- the wide shape: an export generated here ------------------------------------------------
#: The wide shape's libs and their shares of the rows (the largest ~35%, as the original's).
WIDE_LIBS = {501: 0.35, 502: 0.25, 503: 0.18, 504: 0.12, 505: 0.10}
WIDE_PEAKS_PER_INJECTION = 600
WIDE_SMTS = 40
WIDE_TASKS_PER_SET = 4
WIDE_COMPOUNDS = 3000
WIDE_SETS_PER_GROUP = 250
WIDE_ROWS_PER_SHARD = 200_000
#: 36 predictors: IS1-20, RS1-10, ES_1-6.
WIDE_PREDICTORS = [*(f"IS{i}" for i in range(1, 21)), *(f"RS{i}" for i in range(1, 11)),
                   *(f"ES_{i}" for i in range(1, 7))]


def _wide_lib(export: Path, side: Path, lib: int, rows: int, seed: int) -> None:
    """One lib of the wide shape: peak shards per group, one predictor shard per
    species_matrix_type, the lib's mapping CSV and species mapping (numpy, vectorised)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng([seed, lib])
    n_inj = max(1, rows // WIDE_PEAKS_PER_INJECTION)
    n_sets = max(1, n_inj // WIDE_TASKS_PER_SET)
    n_inj = n_sets * WIDE_TASKS_PER_SET
    set_ids = lib * 10_000_000 + np.arange(n_sets)
    set_smt = rng.integers(0, WIDE_SMTS, n_sets)
    smt_names = np.array([f"species{i // 4:02d}_matrix{i % 4}" for i in range(WIDE_SMTS)])
    inj_set = np.repeat(np.arange(n_sets), WIDE_TASKS_PER_SET)
    task_ids = lib * 100_000_000 + np.arange(n_inj)
    worksheet = (inj_set // 12).astype(np.int64) + lib * 1_000_000
    comp_rt = rng.uniform(0.5, 38.0, WIDE_COMPOUNDS)
    drift = rng.normal(0.0, 0.05, n_inj)
    std_rt = np.sort(rng.uniform(0.5, 38.0, len(WIDE_PREDICTORS)))
    # Predictors: one row per injection (0.5% of the injections have none).
    has_pred = rng.uniform(size=n_inj) >= 0.005
    preds = {"sample_set_id": set_ids[inj_set], "task_id": task_ids}
    for j, name in enumerate(WIDE_PREDICTORS):
        v = std_rt[j] + drift + rng.normal(0.0, 0.01, n_inj)
        v = np.where(rng.uniform(size=n_inj) < 0.01, np.nan, v)  # a missing standard
        preds[name] = v
    pdf = pl.DataFrame(preds).with_columns(
        pl.Series("_smt", smt_names[set_smt[inj_set]]), pl.Series("_keep", has_pred)
    ).filter("_keep").drop("_keep").with_columns(
        pl.when(pl.col(c).is_nan()).then(None).otherwise(pl.col(c)).alias(c)
        for c in WIDE_PREDICTORS)
    for (smt,), g in pdf.partition_by("_smt", as_dict=True, maintain_order=True).items():
        d = export / "combine_predictors" / f"lib_id={lib}" / f"species_matrix_type={smt}"
        d.mkdir(parents=True, exist_ok=True)
        g.drop("_smt").sort("task_id").write_parquet(d / "part-0.parquet", compression="zstd")
    # Peaks, group by group (WIDE_SETS_PER_GROUP sample sets each), in shards.
    status = np.array(["Complete", "Complete - NFS", "Incomplete", "Not Found"])
    stype = np.array(["Sample", "QC", "PRCS"])
    for g0 in range(0, n_sets, WIDE_SETS_PER_GROUP):
        sets = np.arange(g0, min(n_sets, g0 + WIDE_SETS_PER_GROUP))
        inj = (sets[:, None] * WIDE_TASKS_PER_SET + np.arange(WIDE_TASKS_PER_SET)).ravel()
        n = inj.size * WIDE_PEAKS_PER_INJECTION
        gi = np.repeat(inj, WIDE_PEAKS_PER_INJECTION)
        comp = rng.integers(0, WIDE_COMPOUNDS, n)
        rt = np.round(comp_rt[comp] + drift[gi] + rng.normal(0.0, 0.07, n), 4)
        rt = np.where(rng.uniform(size=n) < 0.001, rt + 45.0, rt)  # out of range
        ist = rng.choice(3, inj.size, p=[0.96, 0.03, 0.01])[
            np.repeat(np.arange(inj.size), WIDE_PEAKS_PER_INJECTION)]
        df = pl.DataFrame({
            "sample_set_id": set_ids[inj_set[gi]], "task_id": task_ids[gi],
            "worksheet_id": worksheet[gi], "sample_type": stype[ist],
            "cpd_status": status[rng.choice(4, n, p=[0.9, 0.06, 0.03, 0.01])],
            "comp_id": comp.astype(np.int64) + 1, "species_matrix_type": smt_names[
                set_smt[inj_set[gi]]], "apex_rt": rt,
            "peak_area": np.round(rng.lognormal(10.0, 2.0, n), 1),
        })
        d = export / "create_training_data" / f"lib_id={lib}" / f"group={g0 // WIDE_SETS_PER_GROUP}"
        d.mkdir(parents=True, exist_ok=True)
        k = 0
        for k, lo in enumerate(range(0, n, WIDE_ROWS_PER_SHARD)):
            df.slice(lo, WIDE_ROWS_PER_SHARD).write_parquet(d / f"part-{k}.parquet",
                                                            compression="zstd")
        if g0 == 0:  # a re-processed datum: its last shard written twice
            df.slice(k * WIDE_ROWS_PER_SHARD, WIDE_ROWS_PER_SHARD).write_parquet(
                d / f"part-{k + 1}.parquet", compression="zstd")
    # Side tables of the test rows: mapping (1% unmapped), species.
    comps = np.arange(1, WIDE_COMPOUNDS + 1)
    mapped = comps[rng.uniform(size=comps.size) >= 0.01]
    pl.DataFrame({"lib_id": lib, "comp_id": mapped, "chemical_id": 100_000 + mapped}).write_csv(
        side / f"lib_comp_chem_mapping_lib{lib}.csv")
    species = np.array([s.split("_")[0] for s in smt_names])
    pl.DataFrame({"sample_set_id": set_ids, "species": species[set_smt],
                  "species_cluster": (set_smt // 8).astype(np.int64)}).write_csv(
        side / f"species_mapping_lib{lib}.csv")


def ensure_wide(root: Path, rows: int, log_path: Path, seed: int = 7) -> Path:
    """The wide shape of ``rows`` peaks under ``root/export`` (generated unless finished)."""
    import numpy as np
    import polars as pl

    export, side = root / "export", root / "side"
    if (export / ".ready").exists():
        print(f"  reusing {root}", flush=True)
        return root
    print(f"  generating the wide export ({rows:,} rows) ...", flush=True)
    t0 = time.perf_counter()
    for d in (export, side):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for lib, share in WIDE_LIBS.items():
        _wide_lib(export, side, lib, int(rows * share), seed)
    chem = 100_000 + np.arange(1, WIDE_COMPOUNDS + 1)
    keep = np.random.default_rng(seed).uniform(size=chem.size) >= 0.01  # 1% without class
    pl.DataFrame({"chem_id": chem[keep], "compound_class": (chem[keep] * 7919) % N_CLUSTERS}
                 ).write_parquet(side / "classes.parquet")
    (export / ".ready").write_text("ok\n")
    print(f"  wide export written in {time.perf_counter() - t0:.0f} s", flush=True)
    return root


def prepare_side_inputs(root: Path, lib_file: Path, lib: int, shape: str) -> dict[str, str]:
    """Folds, classes and the side CSVs the test-rows stage needs (not timed)."""
    from rtprep.chem.classes import build_chem_classes
    from rtprep.stages.cap import assign_folds

    demo = root / "demo"
    side = root / "side"
    side.mkdir(exist_ok=True)
    folds = side / f"lib{lib}_folds.csv"
    assign_folds(lib_file, folds, test_fraction=TEST_FRACTION, fold_seed=FOLD_SEED)
    if shape == "wide":
        return {"folds": str(folds), "classes": str(side / "classes.parquet"),
                "mapping": str(side / f"lib_comp_chem_mapping_lib{lib}.csv"),
                "species": str(side / f"species_mapping_lib{lib}.csv")}
    emb = demo / "resources/metabolites/embeddings_chemberta_pca20.parquet"
    classes = side / "classes.parquet"
    if not classes.exists():
        build_chem_classes(emb, n_clusters=N_CLUSTERS, seed=0, out_parquet=classes)
    mapping = next((demo / "repo_export").glob(f"lib_comp_chem_mapping_lib{lib}.csv"))
    species = next((demo / "repo_export").glob(f"merged_training_*_lib{lib}_species_mapping.csv"))
    return {"folds": str(folds), "classes": str(classes), "mapping": str(mapping),
            "species": str(species)}


def _gib(p: Path | list[Path]) -> float:
    if isinstance(p, list):
        return sum(_size(x) for x in p) / 2**30
    return _size(p) / 2**30


def _sql_test_rows(lib_file: Path, side: dict[str, str], lib: int) -> str:
    import polars as pl

    covs = [c for c in pl.read_parquet_schema(lib_file) if c.startswith(("IS", "RS", "ES_"))]
    from rtprep.core.frames import covariate_columns

    covs = covariate_columns(covs)
    cov_sql = ", ".join(f'l."{c}"' for c in covs)
    return f"""
COPY (
  WITH m AS (
    SELECT comp_id, min(chemical_id) AS chemical_id
    FROM (SELECT DISTINCT comp_id, chemical_id FROM read_csv('{side["mapping"]}')
          WHERE lib_id = {lib})
    GROUP BY comp_id HAVING count(DISTINCT chemical_id) = 1),
  t AS (SELECT sample_set_id FROM read_csv('{side["folds"]}') WHERE fold = 'test'),
  s AS (SELECT DISTINCT sample_set_id, species, species_cluster
        FROM read_csv('{side["species"]}'))
  SELECT l.sample_set_id AS sampleset_id, l.worksheet_id, l.task_id, s.species,
         s.species_cluster, m.chemical_id AS compound, c.compound_class, {cov_sql},
         l.apex_rt AS rt
  FROM read_parquet('{lib_file}') l
  JOIN t USING (sample_set_id)
  JOIN m USING (comp_id)
  JOIN read_parquet('{side["classes"]}') c ON c.chem_id = m.chemical_id
  JOIN s ON s.sample_set_id = l.sample_set_id
  ORDER BY l.sample_set_id, l.task_id, l.comp_id, l.apex_rt
) TO '@OUT@' (FORMAT parquet, COMPRESSION zstd)"""


def bench_size(rows: int, work: Path, stages: list[str], log_path: Path,
               portable_hash: bool = False, repeat: int = 1, shape: str = "demo"
               ) -> dict[str, Any]:
    """Run every stage and reference at one size; return the measurements."""
    import polars as pl

    if shape == "wide":
        root = ensure_wide(work / f"wide_{rows}", rows, log_path)
    else:
        root = ensure_demo(work / f"rows_{rows}", rows, log_path)
    export = root / "export"
    out = root / "out"
    out.mkdir(exist_ok=True)
    tmpdir = str(root / "duckdb_tmp")
    merged = out / "merged.parquet"
    peak_files = sorted(str(p) for p in (export / "create_training_data").rglob("*.parquet"))
    n_pred = len([c for c in pl.read_parquet_schema(
        next((export / "combine_predictors").rglob("*.parquet")))
        if c.startswith(("IS", "RS", "ES_"))])
    res: dict[str, Any] = {"rows": rows, "predictors": n_pred, "stages": {}, "shape": shape}
    has_correct = any("correct" in pl.read_parquet_schema(f) for f in peak_files[:50])
    comp_sql = "coalesce(pk.comp_id, pk.correct)" if has_correct else "pk.comp_id"
    area_sql = "pk.peak_area, " if "peak_area" in pl.read_parquet_schema(peak_files[0]) else ""

    def measure(stage: str, input_gib: float, ours: tuple[str, dict[str, Any]],
                refs: dict[str, tuple[str, dict[str, Any]]], keep: bool = False) -> None:
        entry: dict[str, Any] = {"input_gib": input_gib}
        jobs = {"ours": ours, **refs}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
        # Interleaved: ours, each reference, then again, so that a change of the machine's load
        # touches every job alike; the median of each job's runs (wall, cpu and peak RSS alike).
        for i in range(repeat):
            for name, (job, args) in jobs.items():
                print(f"  {stage:<10} {name:<8} run {i + 1}/{repeat} ...", end=" ", flush=True)
                r = run_child(job, args, log_path)
                print(f"{r['wall']:6.1f} s {r['cpu']:6.1f} cpu-s {r['rss_gb']:5.2f} GB "
                      f"{r['rows']:>12,} rows", flush=True)
                runs[name].append(r)
                if not (keep and name == "ours"):
                    _remove(Path(args["out"]))
        for name, rs in runs.items():
            med = dict(rs[0])
            for k in ("wall", "cpu", "rss_gb"):
                med[k] = sorted(x[k] for x in rs)[len(rs) // 2]
            med["runs"] = [{k: x[k] for k in ("wall", "cpu", "rss_gb")} for x in rs]
            entry[name] = med
        res["stages"][stage] = entry

    sink_bytes = _gib([Path(p) for p in peak_files])
    # The merged file is the input of everything else: always made (and kept).
    ours_merge = ("merge", {"export": str(export), "out": str(merged)})
    if "merge" in stages:
        join_sql = f"""
COPY (
  WITH pk AS (
    SELECT DISTINCT * FROM read_parquet('{export}/create_training_data/**/*.parquet',
                                        hive_partitioning = true, union_by_name = true)),
  pr AS (
    SELECT DISTINCT * FROM read_parquet('{export}/combine_predictors/**/*.parquet',
                                        hive_partitioning = true, union_by_name = true))
  SELECT pk.lib_id, pk.sample_set_id, pk.task_id, pk.worksheet_id, pk.sample_type,
         pk.cpd_status, {comp_sql} AS comp_id, pk.species_matrix_type,
         pk.apex_rt, {area_sql}pr.* EXCLUDE (lib_id, sample_set_id, task_id,
                                                 species_matrix_type)
  FROM pk JOIN pr USING (lib_id, sample_set_id, task_id, species_matrix_type)
  WHERE pk.cpd_status IN ('Complete', 'Complete - NFS') AND pk.sample_type <> 'PRCS'
  ORDER BY pk.lib_id
) TO '@OUT@' (FORMAT parquet, COMPRESSION zstd)"""
        measure("merge", sink_bytes, ours_merge, {
            "floor": ("copy", {"src": peak_files, "out": str(out / "floor.parquet")}),
            # the same copy of what merge writes (run after ours, which keeps its output)
            "floor_out": ("copy", {"src": str(merged), "out": str(out / "floor_out.parquet")}),
            "write_only": ("write_only", {"src": str(merged),
                                          "out": str(out / "write_only.parquet")}),
            "duckdb": ("duckdb", {"sql": join_sql, "out": str(out / "duck.parquet"),
                                  "tmpdir": tmpdir}),
        }, keep=True)
    elif not merged.exists():
        run_child(*ours_merge, log_path)

    from rtprep.stages.split import libs_in_merged

    libs = libs_in_merged(merged)
    lib_sizes = pl.scan_parquet(merged).group_by("lib_id").len().collect()
    lib = int(lib_sizes.sort("len", descending=True)["lib_id"][0])
    res["lib"] = lib
    res["merged_columns"] = len(pl.read_parquet_schema(merged))
    lib_file = out / f"lib{lib}.parquet"
    valid = f"isfinite(apex_rt) AND apex_rt BETWEEN {RT_RANGE[0]} AND {RT_RANGE[1]}"
    ours_split = ("split", {"merged": str(merged), "lib": lib, "out": str(lib_file)})
    if "split" in stages:
        measure("split", _gib(merged) * lib_sizes.filter(pl.col("lib_id") == lib)["len"][0]
                / lib_sizes["len"].sum(), ours_split, {
            "floor": ("copy", {"src": str(merged), "lib": lib, "out": str(out / "floor.parquet")}),
            "duckdb": ("duckdb", {
                "sql": f"COPY (SELECT * FROM read_parquet('{merged}') WHERE lib_id = {lib} "
                       f"AND {valid}) TO '@OUT@' (FORMAT parquet, COMPRESSION zstd)",
                "out": str(out / "duck.parquet"), "tmpdir": tmpdir}),
        }, keep=True)
    elif not lib_file.exists():
        run_child(*ours_split, log_path)
    if "split_all" in stages:
        measure("split_all", _gib(merged),
                ("split_all", {"merged": str(merged), "out": str(out / "split_all")}), {
            "floor": ("copy", {"src": str(merged), "out": str(out / "floor.parquet")}),
            "pl_part": ("polars_partition", {"src": str(merged), "out": str(out / "plpart")}),
            "duckdb": ("duckdb", {
                "sql": f"COPY (SELECT * FROM read_parquet('{merged}') WHERE {valid}) TO '@OUT@' "
                       "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (lib_id))",
                "out": str(out / "duckpart"), "tmpdir": tmpdir}),
        })
    res["libs"] = libs

    lib_gib = _gib(lib_file)
    def with_floor(stage: str, ours: tuple[str, dict[str, Any]], duck_sql: str,
                   macros: bool = False) -> None:
        measure(stage, lib_gib, ours, {
            "floor": ("copy", {"src": str(lib_file), "out": str(out / "floor.parquet")}),
            "duckdb": ("duckdb", {"sql": duck_sql, "out": str(out / "duck.out"),
                                  "tmpdir": tmpdir, "macros": macros})})

    if "coverage" in stages:
        with_floor("coverage", ("coverage", {"lib_file": str(lib_file),
                                             "out": str(out / "coverage.csv")}),
                   f"COPY (SELECT species_matrix_type, comp_id, count(*) AS n_rows "
                   f"FROM read_parquet('{lib_file}') GROUP BY ALL ORDER BY ALL) "
                   "TO '@OUT@' (FORMAT csv)")
    if "cap" in stages:
        src = f"read_parquet('{lib_file}')"
        if portable_hash:
            hashed = duckdb_row_hash_sql(src, CAP_SEED)
        else:
            hashed = f"SELECT *, hash({IDENTITY}, {CAP_SEED}) AS h FROM {src}"
        with_floor("cap", ("cap", {"lib_file": str(lib_file), "out": str(out / "cap.parquet")}),
                   f"COPY (SELECT * EXCLUDE (h) FROM ({hashed}) QUALIFY row_number() OVER "
                   f"(PARTITION BY species_matrix_type, comp_id ORDER BY h, {IDENTITY}) <= {CAP} "
                   f"ORDER BY {IDENTITY}) TO '@OUT@' (FORMAT parquet, COMPRESSION zstd)",
                   macros=portable_hash)
    if "test_rows" in stages:
        side = prepare_side_inputs(root, lib_file, lib, shape)
        with_floor("test_rows", ("test_rows", {"lib_file": str(lib_file), **side,
                                               "out": str(out / "test_rows.parquet")}),
                   _sql_test_rows(lib_file, side, lib))
    shutil.rmtree(tmpdir, ignore_errors=True)
    res["plans"] = show_plans(merged, lib_file)
    return res



# --- physical plans ---------------------------------------------------------------------------
_FLAGS = {"0.16 0.3 1.0": "potentially memory-intensive", "0.0 0.3 1.0": "in-memory fallback"}


def flagged_nodes(lf: Any) -> list[str]:
    """The nodes of ``lf``'s streaming physical plan that polars flags as holding data."""
    import re

    graph = lf.show_graph(engine="streaming", plan_stage="physical", raw_output=True)
    found = []
    for m in re.finditer(r'\[label="((?:[^"\\]|\\.)*)",style=filled,fillcolor="([^"]+)"\]',
                         graph):
        found.append(f"{m.group(1).split(chr(92) + 'n')[0]} ({_FLAGS.get(m.group(2), '?')})")
    return found


def show_plans(merged: Path, lib_file: Path) -> str:
    """The stages' streamed plans (rebuilt here as the stages build them) and their flagged
    nodes: a node that holds its whole input would show as an in-memory fallback or a
    memory-intensive node on the big table."""
    import polars as pl

    from rtprep.core.hashing import with_row_hash
    from rtprep.stages.cap import _HASH, _KEY_COLUMNS, _THRESHOLD, PAIR_COLUMNS

    rt = pl.col("apex_rt")
    lf = pl.scan_parquet(lib_file)
    stats = pl.DataFrame({"species_matrix_type": ["a"], "comp_id": [1],
                          _THRESHOLD: pl.Series([1], dtype=pl.UInt64)}).lazy()
    chunks = pl.DataFrame({"sample_set_id": [1], "chunk": pl.Series([0], dtype=pl.UInt32)}).lazy()
    plans = {
        "split: sink of the lib's valid rows": pl.scan_parquet(merged)
        .filter(pl.col("lib_id") == 1).filter(rt.is_finite() & (rt >= 0)),
        "coverage: pair counts (2 columns)": lf.group_by(PAIR_COLUMNS).agg(pl.len()),
        "cap pass 1: pair counts on key columns": lf.select(_KEY_COLUMNS)
        .group_by(PAIR_COLUMNS).agg(pl.len()),
        "cap pass 2: rows under the pair threshold": with_row_hash(lf, CAP_SEED)
        .join(stats, on=PAIR_COLUMNS, how="inner", nulls_equal=True, build_side="force_right")
        .filter(pl.col(_HASH) <= pl.col(_THRESHOLD)),
        # the rows go to per-chunk scratch files; each chunk is then sorted on its own
        "test rows pass 1: filter, joins, chunk table": lf.filter(pl.col("sample_set_id") < 0)
        .join(stats.select("comp_id"), on="comp_id", maintain_order="left")
        .join(chunks, on="sample_set_id", maintain_order="left"),
    }
    lines = ["flagged nodes of the streaming physical plans (small side tables are fine):"]
    for name, plan in plans.items():
        lines.append(f"  {name}: {'; '.join(flagged_nodes(plan)) or 'none (fully streamed)'}")
    return "\n".join(lines)


# --- report -----------------------------------------------------------------------------------
def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    if not a or not b or not b.get(key):
        return "—"
    return f"{a[key] / b[key]:.2f}×"


def table(res: dict[str, Any]) -> str:
    head = ("stage", "in GiB", "rows out", "ours s", "ours cpu-s", "ours GB", "floor s",
            "floor cpu-s", "duck s", "duck cpu-s", "duck GB", "duck rows", "÷floor",
            "cpu÷floor", "÷duck", "cpu÷duck", "mem÷duck")
    n_runs = len(next(iter(res["stages"].values()))["ours"].get("runs", [0]))
    lines = [f"{res['rows']:,} rows, {res.get('shape', 'demo')} shape; merged: "
             f"{res.get('merged_columns', '?')} columns, {res['predictors']} predictors; largest "
             f"lib {res.get('lib')}; medians of {n_runs} interleaved runs",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage, e in res["stages"].items():
        o, f, d = e.get("ours"), e.get("floor"), e.get("duckdb")
        cells = [
            stage, f"{e['input_gib']:.2f}", f"{o['rows']:,}", f"{o['wall']:.1f}",
            f"{o['cpu']:.1f}", f"{o['rss_gb']:.2f}",
            f"{f['wall']:.1f}" if f else "—", f"{f['cpu']:.1f}" if f else "—",
            f"{d['wall']:.1f}" if d else "—", f"{d['cpu']:.1f}" if d else "—",
            f"{d['rss_gb']:.2f}" if d else "—", f"{d['rows']:,}" if d else "—",
            _ratio(o, f, "wall"), _ratio(o, f, "cpu"), _ratio(o, d, "wall"), _ratio(o, d, "cpu"),
            _ratio(o, d, "rss_gb"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if "floor_out" in e:
            p = e["floor_out"]
            lines.append(f"| ↳ floor: copy of the merged file | | {p['rows']:,} | "
                         f"{p['wall']:.1f} | {p['cpu']:.1f} | {p['rss_gb']:.2f} | | | | | | | "
                         f"{_ratio(o, p, 'wall')} (ours ÷ it) | {_ratio(o, p, 'cpu')} | | | |")
        if "write_only" in e and f:
            p = e["write_only"]
            lines.append(f"| ↳ bound: writing the merged rows alone (polars, from memory) | | "
                         f"{p['rows']:,} | {p['wall']:.1f} | {p['cpu']:.1f} | {p['rss_gb']:.2f}"
                         f" | | | | | | | {_ratio(p, f, 'wall')} (it ÷ floor) | "
                         f"{_ratio(p, f, 'cpu')} | | | |")
        if "pl_part" in e:
            p = e["pl_part"]
            lines.append(f"| ↳ polars PartitionBy | | {p['rows']:,} | {p['wall']:.1f} | "
                         f"{p['cpu']:.1f} | {p['rss_gb']:.2f} | | | | | | | "
                         f"{_ratio(p, f, 'wall')} | {_ratio(p, f, 'cpu')} | "
                         f"{_ratio(p, d, 'wall')} | {_ratio(p, d, 'cpu')} | |")
    return "\n".join(lines)


def growth(small: dict[str, Any], big: dict[str, Any]) -> str:
    lines = [f"growth {small['rows']:,} → {big['rows']:,} rows",
             "| stage | in GiB | peak GB | peak GB | growth | wall s | wall s | time × |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, b in big["stages"].items():
        s = small["stages"].get(stage)
        if not s:
            continue
        g = b["ours"]["rss_gb"] / s["ours"]["rss_gb"] - 1.0
        lines.append(
            f"| {stage} | {s['input_gib']:.2f} → {b['input_gib']:.2f} | "
            f"{s['ours']['rss_gb']:.2f} | {b['ours']['rss_gb']:.2f} | {100 * g:+.0f}% | "
            f"{s['ours']['wall']:.1f} | {b['ours']['wall']:.1f} | "
            f"{b['ours']['wall'] / s['ours']['wall']:.2f} |")
    return "\n".join(lines)


def resources(small: dict[str, Any] | None, big: dict[str, Any]) -> str:
    """Per stage: peak MB and seconds as a line in the input size (GiB), from two sizes (or one
    point through a 300 MB / 0 s intercept), then the suggested Snakemake resources."""
    lines = ["resources (fit: peak_MB = a + b·GiB_in, wall_s = c + d·GiB_in)",
             "| stage | a MB | b MB/GiB | c s | d s/GiB |", "|---|---|---|---|---|"]
    for stage, b in big["stages"].items():
        s = small["stages"].get(stage) if small else None
        x1, m1, t1 = b["input_gib"], b["ours"]["rss_gb"] * 1000, b["ours"]["wall"]
        if s and abs(x1 - s["input_gib"]) > 1e-6:
            x0, m0, t0 = s["input_gib"], s["ours"]["rss_gb"] * 1000, s["ours"]["wall"]
            bm = max(0.0, (m1 - m0) / (x1 - x0))
            dt = max(0.0, (t1 - t0) / (x1 - x0))
            am, ct = m1 - bm * x1, max(0.0, t1 - dt * x1)
        else:
            am, bm, ct, dt = min(m1, 300.0), max(0.0, m1 - 300.0) / x1, 0.0, t1 / x1
        lines.append(f"| {stage} | {am:.0f} | {bm:.0f} | {ct:.1f} | {dt:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000_000, help="demo rows (default 20 M)")
    p.add_argument("--base-rows", type=int, default=5_000_000,
                   help="the smaller size for the growth table (0: skip; default 5 M)")
    p.add_argument("--reuse", type=Path, default=None,
                   help="work folder holding rows_<N>/ from an earlier run (reused if finished)")
    p.add_argument("--work", type=Path, default=Path("/tmp/rtprep-bench"),
                   help="work folder when not --reuse (default /tmp/rtprep-bench)")
    p.add_argument("--stages", default="merge,split,split_all,coverage,cap,test_rows",
                   help="comma-separated subset")
    p.add_argument("--repeat", type=int, default=3,
                   help="run each measurement N times, interleaved: medians (default 3)")
    p.add_argument("--shape", choices=("demo", "wide"), default="demo",
                   help="demo: the scaled demo, widened to 30 predictors; wide: an export "
                        "generated here (36 predictors, 600 peaks an injection, 40 "
                        "species-matrix types)")
    p.add_argument("--duckdb-portable-hash", action="store_true",
                   help="DuckDB's cap with rtprep's splitmix64 in SQL (same rows as ours; slow)")
    p.add_argument("--clean", action="store_true", help="delete the demos and outputs at the end")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    p.add_argument("--child", nargs=2, metavar=("JOB", "ARGS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        from rtprep.core.memory import peak_rss_kb

        res = child(a.child[0], json.loads(a.child[1]))
        res["own_rss_kb"] = peak_rss_kb()
        print(json.dumps(res))
        return
    work = (a.reuse or a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "bench.log"
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    sizes = [n for n in (a.base_rows, a.rows) if n]
    load = os.getloadavg()
    print(f"rtprep stage benchmark: sizes {', '.join(f'{n:,}' for n in sizes)}; "
          f"{os.cpu_count()} cores; load average before {load[0]:.2f} (a shared machine: other "
          f"work may run); log {log_path}", flush=True)
    results = []
    for n in sizes:
        print(f"\n[{n:,} rows]", flush=True)
        results.append(bench_size(n, work, stages, log_path, a.duckdb_portable_hash,
                                  max(1, a.repeat), a.shape))
    print()
    for r in results:
        print(table(r) + "\n")
    print(results[-1]["plans"] + "\n")
    small = results[0] if len(results) > 1 else None
    if small:
        print(growth(small, results[-1]) + "\n")
    print(resources(small, results[-1]))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    prefix = "wide" if a.shape == "wide" else "rows"
    if a.clean:
        for n in sizes:
            shutil.rmtree(work / f"{prefix}_{n}", ignore_errors=True)
    else:
        for n in sizes:
            shutil.rmtree(work / f"{prefix}_{n}" / "out", ignore_errors=True)
        print(f"demos kept under {work} (reuse with --reuse {work}; delete when done)")


if __name__ == "__main__":
    main()
