"""The ``rtprep`` command line: every stage with explicit paths and the original scripts'
options, plus ``run``, which goes through Snakemake. A subcommand is named as its stage (rule
``rt_csv``: ``rtprep rt-csv``); ``summarize`` and ``sample``, the original scripts' names of
``coverage`` and ``cap``, still work.

Errors caused by input or configuration print one clear line (no traceback) and exit 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rtprep.core.paths import beside, merged_name
from rtprep.core.settings import choices, default

DESCRIPTION = """\
rtprep turns Pachyderm exports of LC-MS peak tables into compact, chemistry-aware retention-time
(RT) training data, and trains the ridge and partial-pooling RT models used for peak assignment.

The stages (each writes <output>.meta.json with its row accounting beside its output):
  merge          merge an export's shards        -> merged_training_<hash>.parquet
  split          split the merged file by lib    -> merged_training_<hash>_lib<lib>.parquet
  coverage       species x compound coverage     -> ..._lib<lib>_species_compounds.csv
                 (alias: summarize)
  cap            cap rows per (species_matrix_type, comp_id) -> ..._lib<lib>_cap<N>.parquet
                 (alias: sample)
  embed          RDKit (or local ChemBERTa) embeddings from SMILES: the input of chem-classes
  chem-classes   k-means compound classes        -> chem_classes_k<k>.parquet/.csv
  attach         attach CHEM_ID + compound_class -> ..._cap<N>_chemclass.parquet
  rt-csv         RT production CSV               -> ..._cap<N>_chemclass_rt_prod.csv
  folds          held-out sample sets per split  -> ..._lib<lib>_<split>_folds.csv
  train / evaluate / predict   RT models

`rtprep run --libs 209 --cap 100 --quick` runs the whole workflow through Snakemake (as the
original ./scripts/run_rt_prod.sh did). `rtprep demo` writes the embedded demo export.
"""

log = logging.getLogger("rtprep")

Handler = Callable[[argparse.Namespace], Any]


def _p(path: str) -> Path:
    return Path(path)


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({what})") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not >= {low} ({what})")
        return value

    return parse


_cap_type = _int_at_least(1, "rows kept per species_matrix_type x comp_id pair")
_lib_type = _int_at_least(0, "a lib id")


# --- stage commands ------------------------------------------------------------------------------
def cmd_demo(a: argparse.Namespace) -> None:
    from rtprep.demo import generate_demo

    manifest = generate_demo(a.out, rows=a.rows, seed=a.seed, libs=a.libs)
    rows = sum(e["rows_written"] for e in manifest["exports"].values())
    print(f"demo export written under {a.out}/ ({rows:,} peak rows)")


def cmd_merge(a: argparse.Namespace) -> None:
    from rtprep.stages.merge import MergeOptions, merge_export

    export = _p(a.input).resolve()
    out = _p(a.output) if a.output else export.parent / merged_name(export.name)
    acc = merge_export(export, out, MergeOptions())
    print(f"{out}: {acc.funnel()}")


def cmd_split(a: argparse.Namespace) -> None:
    from rtprep.stages.split import libs_in_merged, split_lib

    merged = _p(a.merged)
    libs = a.libs or libs_in_merged(merged)
    rt_range = tuple(a.rt_range) if a.rt_range else None
    for lib in libs:
        out = beside(merged, f"_lib{lib}.parquet")
        acc = split_lib(merged, lib, out, rt_range=rt_range)
        print(f"{out}: {acc.funnel()}")


def cmd_coverage(a: argparse.Namespace) -> None:
    from rtprep.stages.coverage import species_compound_coverage

    for f in a.files:
        f = _p(f)
        text = species_compound_coverage(
            f,
            beside(f, "_species_compounds.csv"),
            caps=tuple(a.caps),
            summary_out=beside(f, "_species_compounds_summary.txt"),
        )
        print(f"== {f}\n{text}")


def cmd_cap(a: argparse.Namespace) -> None:
    from rtprep.stages.cap import cap_species_compounds

    f = _p(a.input)
    out = _p(a.output) if a.output else beside(f, f"_cap{a.cap_per_pair}.parquet")
    acc = cap_species_compounds(f, out, cap_per_pair=a.cap_per_pair, seed=a.seed)
    print(f"{out}: {acc.funnel()}")


def cmd_folds(a: argparse.Namespace) -> None:
    from rtprep.stages.cap import assign_folds

    f = _p(a.input)
    out = _p(a.output) if a.output else beside(f, f"_{a.split}_folds.csv")
    acc = assign_folds(f, out, test_fraction=a.test_fraction, fold_seed=a.fold_seed,
                       split=a.split, time_column=a.time_column)
    print(f"{out}: {acc.extra or acc.funnel()}")


def cmd_chem_classes(a: argparse.Namespace) -> None:
    from rtprep.chem.classes import build_chem_classes, classes_paths

    pq, csv = classes_paths(_p(a.embeddings), a.n_clusters)
    acc = build_chem_classes(_p(a.embeddings), n_clusters=a.n_clusters, seed=a.seed,
                             out_parquet=pq, out_csv=csv)
    print(f"{pq}, {csv}: {acc.rows_out} chemicals in {a.n_clusters} classes")


def cmd_attach(a: argparse.Namespace) -> None:
    from rtprep.stages.attach import attach_chem_classes

    f = _p(a.input)
    out = _p(a.output) if a.output else beside(f, "_chemclass.parquet")
    acc = attach_chem_classes(f, _p(a.lib_mapping), _p(a.classes), out)
    print(f"{out}: {acc.funnel()}")


def cmd_rt_csv(a: argparse.Namespace) -> None:
    from rtprep.stages.rt_csv import write_rt_csv

    f = _p(a.input)
    out = _p(a.output) if a.output else beside(f, "_rt_prod.csv")
    acc = write_rt_csv(f, _p(a.species_mapping), out, families=tuple(a.families))
    print(f"{out}: {acc.funnel()}")


def cmd_embed(a: argparse.Namespace) -> None:
    """``rtprep embed``: RDKit (default) or ChemBERTa (``--chemberta-model``) embeddings."""
    from rtprep.chem.embed import projection_paths
    from rtprep.chem.routes import embed_smiles

    acc = embed_smiles(a.smiles, a.out, model_dir=a.chemberta_model, batch_size=a.batch_size,
                       radius=a.radius, n_bits=a.n_bits,
                       descriptors=False if a.no_descriptors else None,
                       n_components=a.n_components, project_with=a.project_with)
    print(f"{a.out}: {acc.funnel()}")
    if not a.project_with:
        pq, js = projection_paths(a.out)
        print(f"projection saved: {js} (+ {pq.name}); project new chemicals with "
              f"--project-with {js}")


# --- run: the whole workflow through Snakemake ---------------------------------------------------
def _repo_root() -> Path:
    """The workflow's root: the current folder if it holds a Snakefile, else the source checkout."""
    here = Path.cwd()
    if (here / "Snakefile").is_file():
        return here
    src = Path(__file__).resolve().parents[2]
    if (src / "Snakefile").is_file():
        return src
    from rtprep.core.errors import RtprepError

    raise RtprepError("no Snakefile here: run `rtprep run` from the rtprep workflow folder")


def build_overlay(a: argparse.Namespace) -> dict[str, Any]:
    """The config overlay ``run`` passes to Snakemake with ``--configfile``."""
    overlay: dict[str, Any] = {}
    if a.libs:
        overlay["libs"] = [int(x) for x in a.libs]
    if a.cap:
        overlay["caps"] = [int(x) for x in a.cap]
    model: dict[str, Any] = {}
    if a.cap:
        model["caps"] = overlay["caps"]  # models for the asked caps, whatever the config says
    if a.quick is not None:
        model["quick"] = bool(a.quick)
    if a.no_eval:
        model["evaluate"] = False
    if model:
        overlay["model"] = model
    return overlay


def cmd_run(a: argparse.Namespace) -> int:
    import yaml

    root = _repo_root()
    overlay = build_overlay(a)
    # Inside the workflow folder, not /tmp: SLURM jobs on other nodes read the config files too.
    (root / ".snakemake").mkdir(exist_ok=True)
    fd, overlay_path = tempfile.mkstemp(prefix="rtprep_run_", suffix=".yaml",
                                        dir=root / ".snakemake")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(overlay, fh)
    snakemake = shutil.which("snakemake") or "snakemake"
    cmd = [snakemake, "--snakefile", str(root / "Snakefile"), "--directory", str(root)]
    cmd += ["--configfile", str(Path(a.configfile).resolve()), overlay_path]
    if a.profile:
        prof = Path(a.profile)
        if not prof.exists() and (root / "profiles" / a.profile).is_dir():
            prof = root / "profiles" / a.profile
        cmd += ["--profile", str(prof)]
    else:
        cmd += ["--cores", str(a.cores)]
    if a.dry_run:
        cmd.append("--dry-run")
    cmd += list(a.snakemake_args or [])
    print("running:", " ".join(cmd), flush=True)
    try:
        return subprocess.call(cmd)
    finally:
        os.unlink(overlay_path)


# --- parser --------------------------------------------------------------------------------------
Add = Callable[..., argparse.ArgumentParser]


def _subcommands(sub: Any) -> Add:
    """``add(name, func, help, aliases=())``: a subcommand that runs ``func``."""

    def add(name: str, func: Handler, help_: str,
            aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, aliases=list(aliases))
        sp.set_defaults(func=func)
        return sp

    return add


def _add_demo(add: Add) -> None:
    s = add("demo", cmd_demo, "write the embedded demo export (only under --out)")
    s.add_argument("--out", default=default("demo", "dir"),
                   help="folder to write (default: %(default)s)")
    s.add_argument("--rows", type=int, default=default("demo", "rows"),
                   help="about how many peak rows in all (default: %(default)s)")
    s.add_argument("--seed", type=int, default=default("demo", "seed"))
    s.add_argument("--libs", type=int, nargs="+", default=default("demo", "libs"))


def _add_export_stages(add: Add) -> None:
    """merge, split, coverage and cap: the stages on the export's peak rows."""
    s = add("merge", cmd_merge, "stage merge: merge a Pachyderm export's training shards")
    s.add_argument("-i", "--input", required=True, help="export folder repo_export/<export_hash>")
    s.add_argument("-o", "--output", help="default: merged_training_<hash>.parquet beside it")

    s = add("split", cmd_split, "stage split: one Parquet per lib_id from a merged Parquet")
    s.add_argument("merged", help="merged_training_<hash>.parquet")
    s.add_argument("--libs", type=_lib_type, nargs="+", help="only these libs (default: all)")
    s.add_argument("--rt-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="valid apex_rt range in minutes; rows outside are dropped (counted)")

    s = add("coverage", cmd_coverage, "stage coverage: species x compound coverage per lib file",
            aliases=["summarize"])
    s.add_argument("files", nargs="+", help="merged_training_<hash>_lib<lib>.parquet files")
    s.add_argument("--caps", type=int, nargs="+", default=default("coverage_caps"))

    s = add("cap", cmd_cap, "stage cap: cap rows per (species_matrix_type, comp_id) pair",
            aliases=["sample"])
    s.add_argument("input", help="merged_training_<hash>_lib<lib>.parquet")
    s.add_argument("--cap-per-pair", "--cap", dest="cap_per_pair", type=_cap_type,
                   required=True, help="N rows at most per pair")
    s.add_argument("--seed", type=int, default=default("cap_seed"))
    s.add_argument("-o", "--output", help="default: ..._lib<lib>_cap<N>.parquet beside it")

    s = add("folds", cmd_folds, "hold out whole sample sets for evaluation")
    s.add_argument("input", help="merged_training_<hash>_lib<lib>.parquet")
    s.add_argument("--split", choices=choices("eval", "splits"), default="random",
                   help="random: sample sets drawn with --fold-seed; time: the latest worksheets "
                   "in --time-column order (default: %(default)s)")
    s.add_argument("--test-fraction", type=float, default=default("eval", "test_fraction"),
                   help="share of the sample sets (random) or worksheets (time) held out")
    s.add_argument("--fold-seed", type=int, default=default("fold_seed"),
                   help="the random split's seed")
    s.add_argument("--time-column", default=default("eval", "time_column"),
                   help="the column whose order the time split follows (default: %(default)s)")
    s.add_argument("-o", "--output", help="default: ..._lib<lib>_<split>_folds.csv beside it")


def _add_embed(add: Add) -> None:
    help_ = "stage embed: chemistry embeddings (chem_id, smiles, embedding20) from SMILES"
    s = add("embed", cmd_embed, help_)
    s.description = help_ + (
        ". RDKit Morgan count fingerprints (+ 2-D descriptors), scaled, PCA; or a local "
        "ChemBERTa model (--chemberta-model). The fitted scaling + PCA are saved beside --out "
        "(<stem>.projection.json/.parquet) for --project-with.")
    s.add_argument("--smiles", required=True, help="CSV or Parquet with chem_id, smiles")
    s.add_argument("--out", required=True,
                   help="output Parquet, e.g. resources/metabolites/embeddings_rdkit_pca20.parquet")
    s.add_argument("--project-with", default=None, metavar="SAVED",
                   help="project onto a saved projection (<stem>.projection.json) instead of "
                        "fitting a new one")
    s.add_argument("--radius", type=int, default=None, help="Morgan radius (default 2)")
    s.add_argument("--n-bits", type=int, default=None, help="fingerprint size (default 2048)")
    s.add_argument("--no-descriptors", action="store_true",
                   help="fingerprints only (no RDKit 2-D descriptors)")
    s.add_argument("--n-components", type=int, default=None,
                   help="PCA components, the vectors' width (default 20)")
    s.add_argument("--chemberta-model", default=None, metavar="DIR",
                   help="local transformers model folder (needs: pip install -e '.[chemberta]')")
    s.add_argument("--batch-size", type=int, default=32, help="ChemBERTa batch size")


def _add_chem_stages(add: Add) -> None:
    """chem-classes, attach and rt-csv: classes, then the rows that get them."""
    s = add("chem-classes", cmd_chem_classes,
            "stage chem_classes: k-means compound classes from embeddings")
    s.add_argument("--embeddings", required=True,
                   help="Parquet: chem_id, smiles, embedding20 (classes are written beside it)")
    s.add_argument("--n-clusters", type=_int_at_least(1, "number of compound classes"),
                   default=default("n_clusters"))
    s.add_argument("--seed", type=int, default=default("kmeans_seed"))

    s = add("attach", cmd_attach, "stage attach: attach CHEM_ID + compound_class, drop unmapped")
    s.add_argument("--input", required=True, help="..._cap<N>.parquet")
    s.add_argument("--lib-mapping", required=True, help="lib_comp_chem_mapping_lib<lib>.csv")
    s.add_argument("--classes", required=True, help="chem_classes_k<k>.parquet")
    s.add_argument("-o", "--output", help="default: ..._cap<N>_chemclass.parquet")

    s = add("rt-csv", cmd_rt_csv, "stage rt_csv: build the RT production CSV")
    s.add_argument("--input", required=True, help="..._cap<N>_chemclass.parquet")
    s.add_argument("--species-mapping", required=True,
                   help="CSV: sample_set_id, species, species_cluster")
    s.add_argument("--families", nargs="+", default=default("covariates", "families"))
    s.add_argument("-o", "--output", help="default: ..._chemclass_rt_prod.csv")


def _add_run(add: Add) -> None:
    s = add("run", cmd_run, "run the whole workflow through Snakemake "
            "(like the original ./scripts/run_rt_prod.sh --libs 209 --cap 100 --quick)")
    s.add_argument("--libs", nargs="+", type=_lib_type,
                   help="lib ids (default: the config's libs)")
    s.add_argument("--cap", nargs="+", type=_cap_type,
                   help="cap(s) per pair (default: the config's caps)")
    s.add_argument("--quick", action=argparse.BooleanOptionalAction, default=None,
                   help="few ADVI steps (model.quick_steps): a smoke run; --no-quick: full "
                   "production fits (default: the config's model.quick; on the demo, quick)")
    s.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    s.add_argument("--configfile", default="config/config.yaml")
    s.add_argument("--profile", help="Snakemake profile: slurm, local or a folder")
    s.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    s.add_argument("-n", "--dry-run", action="store_true", help="show the jobs, run nothing")
    s.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                   help="after --: passed to snakemake as they are")


def build_parser() -> argparse.ArgumentParser:
    from rtprep.models.cli import register as register_models

    p = argparse.ArgumentParser(
        prog="rtprep", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    p.add_argument("--threads", type=int, default=None, help="limit threads (default: all cores)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = _subcommands(sub)
    _add_demo(add)
    _add_export_stages(add)
    _add_embed(add)
    _add_chem_stages(add)
    register_models(sub)
    _add_run(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        from rtprep.core.threads import limit_threads

        limit_threads(args.threads)
    from rtprep.core.errors import RtprepError
    from rtprep.core.logs import setup_logging

    setup_logging(level=logging.INFO if args.verbose else logging.WARNING)
    if getattr(args, "snakemake_args", None) and args.snakemake_args[0] == "--":
        args.snakemake_args = args.snakemake_args[1:]
    try:
        rc = args.func(args)
    except RtprepError as exc:
        if args.debug:
            raise
        print(f"rtprep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc) if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
