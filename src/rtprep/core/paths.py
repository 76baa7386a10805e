"""Every file name and path of the workflow, in one place.

Data artifacts are written beside the inputs, in ``data_dir``, with the original scripts' names
(``merged_training_<hash>_lib<lib>_cap<N>_chemclass_rt_prod.csv``); models, evaluations,
figures, report tables and the row-accounting table under ``results/``; logs under ``logs/``;
Snakemake's per-job benchmark files under ``benchmarks/runs/``. With ``out_dir`` set, all of
them go under it instead (``<out_dir>/`` for the data artifacts and the compound classes,
``<out_dir>/results``, ``<out_dir>/logs``, ``<out_dir>/benchmarks``), and the inputs are only
read: an export on a read-only or shared mount works, and two configs with their own
``out_dir`` never share a file.

:class:`Layout` builds them from a config; the rules call it with wildcard names (``"{hash}"``)
to get patterns, the library and the demo with values. The functions below name what one stage
writes beside its input (the command line's default outputs) and the files inside a model or
evaluation folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Files inside a model folder (``rtprep train``): the manifest, and one folder per model kind
#: holding that model's summary (``model.json``), group table and, for pooled, its effects
#: (:class:`rtprep.models.fitted.FittedModel`).
MODEL_MANIFEST = "model.json"
MODEL_KINDS = ("ridge", "pooled")
MODEL_GROUPS = "groups.parquet"
MODEL_EFFECTS = "effects.parquet"
#: Beside the manifest: every training row (identity, rt) and whether the model left it out as
#: mis-assigned (``rt_outlier``).
MODEL_ROWS = "rows.parquet"
#: Files of an evaluation folder (``rtprep evaluate``; ``eval/<split>/`` of a model folder, one
#: per split of ``eval.splits``); the models it trains go under ``model/``.
EVAL_METRICS = "metrics.json"
EVAL_METRICS_CSV = "metrics.csv"
EVAL_SKIPPED = "skipped.csv"
EVAL_PREDICTIONS = "predictions.parquet"
EVAL_FILES = (EVAL_METRICS, EVAL_METRICS_CSV, EVAL_SKIPPED, EVAL_PREDICTIONS)
EVAL_TRUTH_JSON = "truth.json"
EVAL_TRUTH_CSV = "truth.csv"
EVAL_TRUTH_FILES = (EVAL_TRUTH_JSON, EVAL_TRUTH_CSV)
EVAL_MODEL_DIR = "model"
#: The demo's truth files under ``<demo.dir>/truth/`` (:mod:`rtprep.demo`).
DEMO_TRUTH_FILES = ("truth.json", "truth_peaks.parquet", "truth_compounds.parquet",
                    "truth_injections.parquet", "truth_groups.parquet", "truth_table.parquet")
#: Sidecars written beside an artifact by :func:`rtprep.core.artifacts.write_sidecars`.
SIDECAR_SUFFIXES = (".meta.json", ".dropped.csv")


def train_kind(split: Any) -> str:
    """The ``kind`` of a split's train-fold artifacts (``random_train_cap``:
    ``..._lib<lib>_random_train_cap<N>.parquet``, ``_chemclass.parquet``, ``_rt_prod.csv``)."""
    return f"{split}_train_cap"


def merged_name(export: str) -> str:
    """Stage merge's output name."""
    return f"merged_training_{export}.parquet"


def beside(path: str | Path, suffix: str) -> Path:
    """``x.parquet`` (or ``x.csv``) -> ``x<suffix>`` in the same folder: a stage's output named
    after its input, as the original scripts name them (``_lib209.parquet``, ``_cap5.parquet``,
    ``_chemclass.parquet``, ``_rt_prod.csv``, ``_random_folds.csv``, ``_species_compounds.csv``)."""
    p = Path(path)
    name = p.name
    for ext in (".parquet", ".csv"):
        name = name.removesuffix(ext)
    return p.with_name(name + suffix)


def classes_files(embeddings: str | Path, n_clusters: int) -> tuple[str, str]:
    """Where the compound classes are written: beside the embeddings they come from."""
    stem = Path(embeddings).parent / f"chem_classes_k{int(n_clusters)}"
    return f"{stem}.parquet", f"{stem}.csv"


@dataclass(frozen=True)
class Layout:
    """The paths of one run. Arguments may be values or wildcard names (``"{hash}"``).

    ``data_dir`` holds the inputs; ``out`` the data artifacts (``data_dir`` unless ``out_dir``)."""

    data_dir: str
    results: str = "results"
    logs: str = "logs"
    benchmarks: str = "benchmarks/runs"
    out: str = ""

    def __post_init__(self) -> None:
        if not self.out:
            object.__setattr__(self, "out", self.data_dir)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Layout:
        data = str(config["data_dir"]).rstrip("/")
        out = config.get("out_dir")
        if not out:
            return cls(data_dir=data)
        out = str(out).rstrip("/")
        return cls(data_dir=data, out=out, results=f"{out}/results", logs=f"{out}/logs",
                   benchmarks=f"{out}/benchmarks")

    def classes(self, embeddings: str | Path, n_clusters: int) -> tuple[str, str]:
        """The compound classes: beside the embeddings, or in ``out_dir`` when one is set."""
        if self.out == self.data_dir:
            return classes_files(embeddings, n_clusters)
        stem = f"{self.out}/chem_classes_k{int(n_clusters)}"
        return f"{stem}.parquet", f"{stem}.csv"

    # -- inputs that no rule makes ----------------------------------------------------------
    def lib_mapping(self, lib: Any) -> str:
        return f"{self.data_dir}/lib_comp_chem_mapping_lib{lib}.csv"

    def species_mapping(self, export: Any, lib: Any) -> str:
        return f"{self.data_dir}/merged_training_{export}_lib{lib}_species_mapping.csv"

    def export(self, export: Any) -> str:
        return f"{self.data_dir}/{export}"

    # -- data artifacts, beside the inputs ----------------------------------------------------
    def merged_stem(self, export: Any) -> str:
        return f"{self.out}/merged_training_{export}"

    def merged(self, export: Any) -> str:
        return f"{self.out}/{merged_name(export)}"

    def lib_stem(self, export: Any, lib: Any) -> str:
        return f"{self.merged_stem(export)}_lib{lib}"

    def lib(self, export: Any, lib: Any) -> str:
        return f"{self.lib_stem(export, lib)}.parquet"

    def coverage(self, export: Any, lib: Any) -> tuple[str, str]:
        """Stage coverage's table and its summary."""
        stem = f"{self.lib_stem(export, lib)}_species_compounds"
        return f"{stem}.csv", f"{stem}_summary.txt"

    def folds(self, export: Any, lib: Any, split: Any) -> str:
        """The folds of one split (``random``, ``time``: ``eval.splits``)."""
        return f"{self.lib_stem(export, lib)}_{split}_folds.csv"

    def capped(self, export: Any, lib: Any, cap: Any, kind: Any = "cap") -> str:
        """Stage cap's output; ``kind`` :func:`train_kind` of a split: its train fold only."""
        return f"{self.lib_stem(export, lib)}_{kind}{cap}.parquet"

    def chemclass(self, export: Any, lib: Any, cap: Any, kind: Any = "cap") -> str:
        return f"{self.lib_stem(export, lib)}_{kind}{cap}_chemclass.parquet"

    def rt_csv(self, export: Any, lib: Any, cap: Any, kind: Any = "cap") -> str:
        return f"{self.lib_stem(export, lib)}_{kind}{cap}_chemclass_rt_prod.csv"

    def test_rows(self, export: Any, lib: Any, split: Any) -> str:
        """Every row of a split's test fold, attached and filtered like the training rows."""
        return f"{self.lib_stem(export, lib)}_{split}_test_chemclass_rt_prod.parquet"

    # -- results -------------------------------------------------------------------------------
    def model_dir(self, export: Any, lib: Any, cap: Any) -> str:
        return f"{self.results}/rt_prod/{export}/lib{lib}_cap{cap}"

    def model_file(self, export: Any, lib: Any, cap: Any, name: str = MODEL_MANIFEST) -> str:
        """A file of the trained models (``pooled/groups.parquet``; default: the manifest)."""
        return f"{self.model_dir(export, lib, cap)}/{name}"

    def eval_dir(self, export: Any, lib: Any, cap: Any, *, split: Any) -> str:
        """The evaluation of one split: models trained on its train fold, scored on its test."""
        return f"{self.model_dir(export, lib, cap)}/eval/{split}"

    def eval_file(self, export: Any, lib: Any, cap: Any, *, split: Any,
                  name: str = EVAL_METRICS) -> str:
        """A file of a split's evaluation (:data:`EVAL_FILES`; default: ``metrics.json``)."""
        return f"{self.eval_dir(export, lib, cap, split=split)}/{name}"

    @property
    def accounting(self) -> str:
        return f"{self.results}/row_accounting.csv"

    def figure(self, name: str, export: Any = None, lib: Any = None, cap: Any = None) -> str:
        """A report figure: ``<results>/report/[<hash>/]lib<lib>[_cap<N>]_<name>.png``, or
        ``<results>/report/<name>.png`` for one of the whole run."""
        if export is None:
            return f"{self.results}/report/{name}.png"
        stem = f"lib{lib}" if cap is None else f"lib{lib}_cap{cap}"
        return f"{self.results}/report/{export}/{stem}_{name}.png"

    def table(self, name: str, export: Any) -> str:
        """A report table of one export: ``<results>/report/<hash>/<name>.html``."""
        return f"{self.results}/report/{export}/{name}.html"

    def log(self, name: str) -> str:
        """``logs/<name>.log`` (``name``: ``<rule>/<wildcards>``, e.g. ``cap/{hash}_lib{lib}``)."""
        return f"{self.logs}/{name}.log"

    def benchmark(self, name: str) -> str:
        """Snakemake's per-job benchmark file ``benchmarks/runs/<name>.tsv``."""
        return f"{self.benchmarks}/{name}.tsv"
