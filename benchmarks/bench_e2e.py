"""The whole workflow end to end on a generated export (not a test).

    python benchmarks/bench_e2e.py --rows 4000000 --no-models     # the data rules, ~minutes
    python benchmarks/bench_e2e.py --rows 100000000               # production scale

Generates one export of ``--rows`` peaks in 5 libs, the largest ~35% of the rows (the wide shape
of ``bench_stages.py``: 36 predictors, ~600 peaks an injection, 40 species-matrix types), with
the side inputs a production config names (mapping and species CSVs in ``data_dir``, an
embeddings Parquet), writes a config (caps 5, 10 and 100; models for cap 5 with the production
settings, the schema's defaults: 20,000 ADVI steps, robust rounds, the random split), times
Snakemake's DAG building (``snakemake -n``), then runs ``snakemake --cores 2`` and reads every
job's Snakemake benchmark file (wall s, peak RSS, CPU s) into a table per rule. The export and
the outputs go under ``--work`` (deleted with ``--clean``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

import bench_stages as bs  # noqa: E402  (the wide shape's generator)

EXPORT = "e2e0000000000000000000000000beef"
CAPS = [5, 10, 100]


def make_inputs(work: Path, rows: int, seed: int = 7) -> Path:
    """Export, mapping and species CSVs in ``work/data``, embeddings in ``work/emb``."""
    import numpy as np
    import polars as pl

    data = work / "data"
    ready = data / ".ready"
    if ready.exists():
        print(f"  reusing {data}", flush=True)
        return data
    shutil.rmtree(data, ignore_errors=True)
    export, side = data / EXPORT, work / "side"
    for d in (export, side):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for lib, share in bs.WIDE_LIBS.items():
        bs._wide_lib(export, side, lib, int(rows * share), seed)
        shutil.move(str(side / f"lib_comp_chem_mapping_lib{lib}.csv"),
                    data / f"lib_comp_chem_mapping_lib{lib}.csv")
        shutil.move(str(side / f"species_mapping_lib{lib}.csv"),
                    data / f"merged_training_{EXPORT}_lib{lib}_species_mapping.csv")
    chem = 100_000 + np.arange(1, bs.WIDE_COMPOUNDS + 1)
    rng = np.random.default_rng(seed)
    keep = rng.uniform(size=chem.size) >= 0.01  # 1% of the chemicals without an embedding
    emb = rng.normal(size=(int(keep.sum()), 20))
    # One formula per two chemicals (an alcohol and its ether isomer), as isomer groups are
    # small in a real library; the isomer choice scores each held-out peak against its isomers.
    smiles = [("C" * (i // 2 + 1) + "O") if i % 2 == 0 or i < 2 else ("C" * (i // 2) + "OC")
              for i in range(int(keep.sum()))]
    (work / "emb").mkdir(exist_ok=True)
    pl.DataFrame({"chem_id": chem[keep], "smiles": smiles,
                  "embedding20": pl.Series(emb.tolist(), dtype=pl.Array(pl.Float64, 20))}
                 ).write_parquet(work / "emb" / "embeddings.parquet")
    ready.write_text("ok\n")
    print(f"  inputs written in {time.perf_counter() - t0:.0f} s", flush=True)
    return data


def write_config(work: Path, data: Path, models: bool, libs: str) -> Path:
    cfg = {
        "data_dir": str(data),
        "out_dir": str(work / "out"),
        "exports": [EXPORT],
        "libs": "all" if libs == "all" else [int(v) for v in libs.split(",")],
        "caps": CAPS,
        "embeddings": {"source": "file", "path": str(work / "emb" / "embeddings.parquet")},
        "rt_range": {"default": [0.0, 40.0]},
        "model": {"caps": [5], "train": models, "evaluate": models},
    }
    path = work / "e2e.yaml"
    path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML
    return path


def per_rule(log: Path, bench_dir: Path) -> dict[str, dict[str, Any]]:
    """Per rule, from Snakemake's log (each job's start and finish, to the second): jobs,
    summed and largest wall s; from the rules' benchmark files where they have one: summed CPU s
    and the largest peak RSS (MB)."""
    import re
    from datetime import datetime

    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"jobs": 0, "wall": 0.0, "max_wall": 0.0, "cpu": None, "max_rss": None})
    stamp: datetime | None = None
    started: dict[str, tuple[str, datetime]] = {}
    rule: str | None = None
    for line in log.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line.strip()):
            stamp = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y")
        elif m := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            rule = m[1]
        elif (m := re.fullmatch(r"jobid: (\d+)", line.strip())) and rule and stamp:
            started[m[1]] = (rule, stamp)
            rule = None
        elif ((m := re.match(r"Finished jobid: (\d+)", line.strip())) and stamp
              and m[1] in started):
            name, t0 = started.pop(m[1])
            wall = (stamp - t0).total_seconds()
            e = out[name]
            e["jobs"] += 1
            e["wall"] += wall
            e["max_wall"] = max(e["max_wall"], wall)
    for f in sorted(bench_dir.rglob("*.tsv")) if bench_dir.is_dir() else []:
        e = out[f.relative_to(bench_dir).parts[0]]
        with open(f) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        e["cpu"] = (e["cpu"] or 0.0) + float(row.get("cpu_time") or 0.0)
        rss = row.get("max_rss", "-")
        rss_mb = float(rss) if rss not in ("-", "NA", "") else 0.0
        e["max_rss"] = max(e["max_rss"] or 0.0, rss_mb)
    return dict(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"[{args.rows:,} rows] under {work}", flush=True)
    data = make_inputs(work, args.rows)
    cfg = write_config(work, data, args.models, args.libs)
    shutil.rmtree(work / "out", ignore_errors=True)
    repo = args.repo.resolve()
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(repo / "src")}
    base = ["snakemake", "--cores", "2", "--configfile", str(cfg), "-s", str(repo / "Snakefile"),
            "--directory", str(repo)]
    t0 = time.perf_counter()
    dry = subprocess.run([*base, "-n", "--quiet", "rules"], env=env, capture_output=True,
                         text=True, check=True)
    t_dag = time.perf_counter() - t0
    jobs = max((int(line.split()[-1]) for line in dry.stdout.splitlines()
                if line.split() and line.split()[0] == "total"), default=0)
    print(f"  dry run (DAG of {jobs} jobs): {t_dag:.1f} s", flush=True)
    log = work / "snakemake.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(base, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"snakemake failed; see {log}")
    rules = per_rule(log, work / "out" / "benchmarks")
    return {"rows": args.rows, "models": args.models, "dag_s": t_dag, "jobs": jobs,
            "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rules": rules,
            "disk_gb": sum(f.stat().st_size for f in (work / "out").rglob("*") if f.is_file())
            / 1e9}


def table(res: dict[str, Any]) -> str:
    lines = [f"{res['rows']:,} rows, models {'on' if res['models'] else 'off'}: "
             f"{res['jobs']} jobs, wall {res['wall_s']:.0f} s ({res['wall_s'] / 60:.1f} min), "
             f"CPU of every process {res['cpu_s']:.0f} s; DAG (snakemake -n) "
             f"{res['dag_s']:.1f} s; outputs {res['disk_gb']:.2f} GB",
             "| rule | jobs | wall s (sum; log, to the second) | wall s (largest job) | "
             "cpu s (sum; benchmark files) | peak RSS MB (largest) |", "|---|---|---|---|---|---|"]
    total = 0.0
    for rule, e in sorted(res["rules"].items(), key=lambda kv: -kv[1]["wall"]):
        total += e["wall"]
        cpu = "—" if e["cpu"] is None else f"{e['cpu']:.1f}"
        rss = "—" if e["max_rss"] is None else f"{e['max_rss']:.0f}"
        lines.append(f"| {rule} | {e['jobs']} | {e['wall']:.0f} | {e['max_wall']:.0f} | "
                     f"{cpu} | {rss} |")
    lines.append(f"| all jobs | {sum(e['jobs'] for e in res['rules'].values())} | {total:.1f} "
                 "| | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--work", type=Path, default=Path("/tmp/rtprep-e2e"))
    p.add_argument("--models", action=argparse.BooleanOptionalAction, default=True,
                   help="train and evaluate the cap-5 models (default on)")
    p.add_argument("--repo", type=Path, default=REPO,
                   help="the checkout whose Snakefile runs (default: this one); the code is "
                        "the one PYTHONPATH names, else <repo>/src")
    p.add_argument("--libs", default="all", help="all, or comma-separated lib ids (e.g. 501)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--clean", action="store_true")
    a = p.parse_args()
    res = run(a)
    print("\n" + table(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    if a.clean:
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
