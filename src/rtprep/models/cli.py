"""``rtprep train | evaluate | predict``: the stage-8 subcommands (wired in by rtprep.cli)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _options(args: argparse.Namespace) -> Any:
    from rtprep.core.settings import load_files
    from rtprep.models.options import ModelOptions

    config = load_files(args.config) if getattr(args, "config", None) else {}
    opts = ModelOptions.from_config(config)
    overrides: dict[str, Any] = {}
    if getattr(args, "method", None):
        overrides["method"] = args.method
    if getattr(args, "group_by", None):
        overrides["group_by"] = args.group_by
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if getattr(args, "steps", None) is not None:
        overrides["advi_steps"] = args.steps
        overrides["quick_steps"] = args.steps
    if overrides:
        from dataclasses import replace

        opts = replace(opts, **overrides)
    return opts


def cmd_train(args: argparse.Namespace) -> int:
    """``rtprep train``: fit ridge + pooled models on an RT CSV."""
    from rtprep.core.memory import reuse_freed_memory
    from rtprep.models.api import train

    reuse_freed_memory()
    manifest = train(args.input, args.out, options=_options(args), quick=args.quick,
                     embeddings=args.embeddings)
    print(f"wrote {args.out}: {manifest['n_groups']:,} groups from "
          f"{manifest['input']['rows']:,} rows in {manifest['seconds']['total']:.1f}s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``rtprep evaluate``: score models on held-out test rows."""
    from rtprep.core.memory import reuse_freed_memory
    from rtprep.models.evaluate import evaluate

    reuse_freed_memory()
    result = evaluate(args.model, args.train, args.test, args.out, options=_options(args),
                      embeddings=args.embeddings, quick=args.quick, truth=args.truth)
    print(f"wrote {args.out}/metrics.json ({result['test_rows']:,} test rows)")
    from rtprep.models.evaluate import MODEL_ORDER

    for model in [m for m in MODEL_ORDER if m in result["overall"]]:
        m = result["overall"][model]
        rmse = "-" if m["rmse"] is None else f"{m['rmse']:.4g}"
        cov = "-" if m["coverage95"] is None else f"{m['coverage95']:.3f}"
        print(f"  {model:<12} RMSE {rmse:>8}  coverage95 {cov:>6}  scored {m['scored']:,}"
              f" / {m['rows']:,}")
    if "truth" in result and result["truth"].get("kind") == "truth_table":
        t = result["truth"]
        print(f"  against the truth ({t['same_rows']:,} clean rows every model scores; oracle "
              f"RMSE {t['oracle_rmse']:.4g}):")
        for model, s in t["models"].items():
            print(f"  {model:<12} RMSE/oracle {s['rmse_over_oracle']:.3f}  coverage95 "
                  f"{s['coverage95']:.3f}  per-compound 5th pct "
                  f"{s['coverage95_by_compound']['p05'] or float('nan'):.3f}  width/oracle "
                  f"{s['width_over_oracle']:.3f}")
    elif "truth" in result:
        for subset in ("all", "clean"):
            b = result["truth"][subset]
            pooled = b["models"].get("pooled", {})
            print(f"  truth ({subset} rows): truth RMSE {b['truth_rmse']:.4g}, pooled "
                  f"{pooled.get('rmse') or float('nan'):.4g} "
                  f"(x{b.get('pooled_over_truth') or float('nan'):.3f}), coverage95 "
                  f"{pooled.get('coverage95') or float('nan'):.3f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``rtprep predict``: RT and 95% interval per (injection, compound)."""
    from rtprep.core.artifacts import read_meta
    from rtprep.models.api import predict

    predict(args.model, args.injections, args.out, model=args.kind)
    meta = read_meta(args.out)
    print(f"wrote {args.out}: {meta['rows_out']:,} predictions for {meta['rows_in']:,} "
          f"injection(s); sources {json.dumps(meta.get('extra', {}).get('sources', {}))}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``train``, ``evaluate`` and ``predict`` to the rtprep CLI."""

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--config", help="YAML config; its `model:` block (and "
                       "`covariates.families`) set the options")
        s.add_argument("--method", choices=["advi", "nuts"], help="override model.method")
        s.add_argument("--group-by", choices=["species", "species_cluster"],
                       help="override model.group_by")
        s.add_argument("--seed", type=int, help="override model.seed")
        s.add_argument("--steps", type=int, help="ADVI steps (overrides advi/quick steps)")
        s.add_argument("--quick", action="store_true", help="few ADVI steps: a smoke run")
        s.add_argument("--embeddings", help="Parquet chem_id, embedding20 (optional: the "
                       "pooled model then regresses compound effects on embeddings)")

    s = subparsers.add_parser("train", help="train: fit ridge + partial-pooling RT models",
                              description=cmd_train.__doc__)
    s.add_argument("--input", required=True, help="..._chemclass_rt_prod.csv")
    s.add_argument("--out", required=True, help="output folder (ridge/, pooled/, model.json)")
    common(s)
    s.set_defaults(func=cmd_train)

    s = subparsers.add_parser("evaluate", help="score models on held-out sample sets",
                              description=cmd_evaluate.__doc__)
    s.add_argument("--model", help="folder written by `rtprep train --input <train csv>` "
                   "(default: train here, into <out>/model)")
    s.add_argument("--train", required=True,
                   help="..._<split>_train_cap<N>_chemclass_rt_prod.csv (a split's train fold)")
    s.add_argument("--test", required=True,
                   help="..._<split>_test_chemclass_rt_prod.parquet (the same split's test fold)")
    s.add_argument("--out", required=True, help="output folder (metrics.json, metrics.csv, ...)")
    s.add_argument("--truth", help="a truth table (task_id, compound, rt_true, noise_sd, "
                   "misassigned), or the demo's truth/truth_peaks.parquet: also score against it "
                   "(truth.json, truth.csv)")
    common(s)
    s.set_defaults(func=cmd_evaluate)

    s = subparsers.add_parser("predict", help="predict RT + 95%% interval for new injections",
                              description=cmd_predict.__doc__)
    s.add_argument("--model", required=True, help="folder written by `rtprep train`")
    s.add_argument("--injections", required=True,
                   help="CSV/Parquet: task_id, species, covariates")
    s.add_argument("--out", required=True, help="output .parquet or .csv")
    s.add_argument("--kind", choices=["pooled", "ridge"], default="pooled",
                   help="which model predicts (default: pooled)")
    s.set_defaults(func=cmd_predict)
