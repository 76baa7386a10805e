"""Benchmark of the stage-8 models at the large-library shape (not a test; run on demand).

    python benchmarks/bench_models.py                 # full: ~3.4 M rows, 50,000 groups
    python benchmarks/bench_models.py --scale 0.1     # a tenth of the compounds, groups, rows

Generates a synthetic library (100 species in 7 clusters, 2,600 compounds in 32 classes, 32
covariates; ``--scale`` scales the compounds and with them groups and rows), writes the RT CSV,
then in a fresh child process (so that its peak RSS is the fit's own): times one gradient of
the pooled model's log density (after the one-off sufficient statistics), then the whole
``rtprep.models.train`` (CSV read, statistics, ridge, pooled ADVI, summaries, files).
Prints a table: rows, groups, covariates, gradient time, pooled fit wall time, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
from rtprep.core.threads import limit_threads
limit_threads(int(sys.argv[4]))
from rtprep.core.memory import peak_rss_kb
from rtprep.models import ModelOptions, train
from rtprep.models.algebra import GroupAlgebra
from rtprep.models.data import Covariates, build_stats, read_rows
from rtprep.models.pooled import build_model, prepare

csv, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
df, names = read_rows(csv, ("IS", "RS", "ES_"))
covs = Covariates.fit(df, names)
stats = build_stats(df, covs, "species", csv)
del df
alg = GroupAlgebra.from_stats(stats, 1.0)
t_stats = time.perf_counter() - t0
d = prepare(stats, alg, "species", 0.05, None)
model = build_model(alg, d, covs)
t1 = time.perf_counter()
fn = model.logp_dlogp_function(ravel_inputs=True)
fn.set_extra_values({})
t_compile = time.perf_counter() - t1
x = np.concatenate([np.ravel(v) for v in model.initial_point().values()])
fn(x)
reps = 20
t2 = time.perf_counter()
for _ in range(reps):
    fn(x)
t_grad = (time.perf_counter() - t2) / reps
del model, fn, alg, stats, d
t3 = time.perf_counter()
manifest = train(csv, out, options=ModelOptions(advi_steps=steps, summary_draws=20))
t_train = time.perf_counter() - t3
print(json.dumps({"stats_s": t_stats, "compile_s": t_compile, "grad_ms": t_grad * 1e3,
                  "train_s": t_train, "train_parts": manifest["seconds"],
                  "fit": manifest["fit"], "screen": manifest["outlier_screen"],
                  "verdicts": manifest["fit_verdicts"], "groups": manifest["n_groups"],
                  "rows": manifest["input"]["rows"], "covariates": len(manifest["covariates"]),
                  "own_rss_kb": peak_rss_kb()}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the compounds")
    ap.add_argument("--steps", type=int, default=20_000, help="ADVI steps of the pooled fit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", help="keep the generated CSV and model here")
    args = ap.parse_args()

    from rtprep.models.synthetic import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_models_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = generate(n_species=100, n_clusters=7, n_compounds=max(50, int(2600 * args.scale)),
                    n_classes=32, n_covariates=32, n_sample_sets=9_000, n_test_sets=100,
                    max_injections=4, presence=0.2, detect=(0.6, 1.5), seed=2024)
    csv = work / "train_rt_prod.csv"
    data.train.write_csv(csv)
    t_gen = time.perf_counter() - t0
    n_rows = data.train.height
    del data
    print(f"generated {n_rows:,} training rows in {t_gen:.0f}s → {csv}", file=sys.stderr)
    env = dict(os.environ)
    t1 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(csv), str(work / "model"),
                           str(args.steps), str(args.threads)], capture_output=True, text=True,
                          env=env, check=False)
    wall = time.perf_counter() - t1
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return proc.returncode
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    screen = (res.get("screen") or {}).get("fit") or {}
    rounds = (res.get("screen") or {}).get("rounds") or []
    own_kb = res.get("own_rss_kb")  # the child's VmHWM; ru_maxrss includes the parent's peak
    peak_gb = (own_kb or resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024**2
    rows = [
        ("training rows", f"{res['rows']:,}"),
        ("groups (species, compound)", f"{res['groups']:,}"),
        ("covariates", f"{res['covariates']}"),
        ("pooled parameters", f"{res['fit'].get('parameters', '?')}"),
        ("sufficient statistics (read + reduce)", f"{res['stats_s']:.1f} s"),
        ("compile log density + gradient", f"{res['compile_s']:.1f} s"),
        ("one log-density gradient", f"{res['grad_ms']:.2f} ms"),
        (f"pooled ADVI ({res['fit'].get('steps')} steps)", f"{res['fit'].get('seconds', 0):.1f} s"),
        ("  of which fit checks (fixed draws)", f"{res['fit'].get('check_seconds', 0):.1f} s"),
        (f"robust fit ({len(rounds)} EM rounds, {sum(r.get('steps') or 0 for r in rounds)}"
         " ADVI steps)", f"{res['train_parts'].get('outlier_screen', 0):.1f} s"),
        ("  last round's fit checks (fixed draws)", f"{screen.get('check_seconds', 0):.1f} s"),
        ("  rows left out as mis-assigned", f"{(res.get('screen') or {}).get('outliers')}"),
        ("verdicts: pooled / last robust round", f"{res['verdicts'].get('pooled')} / "
         f"{res['verdicts'].get('outlier_screen')}"),
        ("train(): statistics / robust / ridge / pooled",
         "{statistics:.1f} / {outlier_screen:.1f} / {ridge:.1f} / {pooled:.1f} s"
         .format(**res["train_parts"])),
        ("train() wall time (whole fit, files)", f"{res['train_s']:.1f} s"),
        ("child process wall time", f"{wall:.1f} s"),
        ("peak RSS (child)", f"{peak_gb:.2f} GB"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"bench_models --scale {args.scale} --threads {args.threads}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
