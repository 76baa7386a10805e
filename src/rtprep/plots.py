"""Figures for Snakemake's HTML report (``snakemake --report report.html``).

One function per figure; each reads artifacts the pipeline already wrote (never recomputes a
stage) and writes one PNG atomically. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rtprep.artifacts import atomic_output, meta_path

log = logging.getLogger(__name__)

#: Models and baselines in a fixed order and colour, the same in every panel.
MODEL_ORDER = ("pooled", "ridge", "group_mean", "class_mean", "global_mean")
MODEL_COLORS = dict(zip(MODEL_ORDER, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"),
                        strict=True))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path) -> None:
    plt = _plt()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                    metadata={"Software": None})
    plt.close(fig)


def plot_coverage(species_compounds_csv: str | Path, caps: Sequence[int], out: str | Path) -> None:
    """Rows per (species_matrix_type, comp_id) pair: histogram on a log axis, caps marked, and
    the rows each cap keeps."""
    plt = _plt()
    df = pl.read_csv(species_compounds_csv)
    n = df["n_rows"].to_numpy()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if n.size:
        bins = np.unique(np.logspace(0, np.log10(max(n.max(), 2)) + 0.05, 40).astype(int))
        ax.hist(n, bins=bins, color="#4c72b0")
    ax.set_xscale("log")
    ax.set_xlabel("rows per (species_matrix_type, comp_id) pair")
    ax.set_ylabel("pairs")
    for cap in caps:
        # Between n = cap (kept whole) and n = cap + 1 (capped).
        ax.axvline(cap + 0.5, color="#c44e52", ls="--", lw=1)
        ax.text(cap + 0.5, ax.get_ylim()[1] * 0.95, f" cap {cap}", color="#c44e52", va="top",
                fontsize=8)
    ax.set_title(f"{len(n):,} pairs, {int(n.sum()):,} rows")
    kept = [int(np.minimum(n, c).sum()) for c in caps]
    ax2.bar([str(c) for c in caps], kept, color="#55a868")
    ax2.set_xlabel("cap per pair")
    ax2.set_ylabel("rows kept")
    total = max(int(n.sum()), 1)
    for i, k in enumerate(kept):
        ax2.text(i, k, f"{k:,} ({100 * k / total:.0f}%)", ha="center", va="bottom", fontsize=8)
    _save(fig, out)


def _lib_block(meta: dict[str, Any], lib: str) -> dict[str, Any]:
    per_lib = (meta.get("extra") or {}).get("per_lib") or {}
    return per_lib.get(lib, meta)


def plot_funnel(artifacts: Sequence[str | Path], lib: int | str, out: str | Path) -> None:
    """Row accounting from the first artifact's rows in, through each drop reason, to the
    last artifact's rows out (the seed's "31,521 → 27,077 → 25,781")."""
    plt = _plt()
    labels: list[str] = []
    values: list[int] = []
    colors: list[str] = []
    for i, art in enumerate(artifacts):
        mp = meta_path(art)
        if not mp.is_file():
            continue
        block = _lib_block(json.loads(mp.read_text()), str(lib))
        if i == 0:
            labels.append("rows in")
            values.append(int(block.get("rows_in", 0)))
            colors.append("#4c72b0")
        for reason, k in (block.get("drops") or {}).items():
            labels.append(f"− {reason}")
            values.append(-int(k))
            colors.append("#c44e52")
        name = Path(art).name
        labels.append("→ lib" + name.split("_lib")[-1] if "_lib" in name else "→ merged")
        values.append(int(block.get("rows_out", 0)))
        colors.append("#55a868")
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, np.abs(values), color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("rows")
    for yi, v in zip(y, values, strict=True):
        ax.text(abs(v), yi, f" {v:,}", va="center", fontsize=7)
    ax.set_title(f"lib {lib}: rows in, drops per reason, rows out")
    _save(fig, out)


def plot_classes(embeddings: str | Path, classes: str | Path, out: str | Path) -> None:
    """Compound classes: sizes, and a 2-D PCA projection of the embeddings coloured by class."""
    plt = _plt()
    emb = pl.read_parquet(embeddings, columns=["chem_id", "embedding20"])
    cls = pl.read_parquet(classes)
    df = emb.join(cls, on="chem_id", how="inner").sort("chem_id")
    x = np.asarray(df["embedding20"].to_list(), dtype=np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    labels = df["compound_class"].to_numpy()
    k = int(labels.max()) + 1 if labels.size else 0
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = np.bincount(labels, minlength=k)
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i % 20) for i in range(k)]
    ax.bar(np.arange(k), sizes, color=colors)
    ax.set_xlabel("compound_class")
    ax.set_ylabel("chemicals")
    ax.set_title(f"{df.height:,} chemicals in {k} classes")
    for c in range(k):
        pts = xy[labels == c]
        if not len(pts):
            continue
        ax2.scatter(pts[:, 0], pts[:, 1], color=colors[c], s=8)
        cx, cy = np.median(pts, axis=0)
        ax2.text(cx, cy, str(c), fontsize=8, weight="bold", ha="center", va="center",
                 bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0})
    ax2.set_xlabel("PC1 of embeddings")
    ax2.set_ylabel("PC2")
    ax2.set_title("embeddings (2-D PCA); numbers: class at its median")
    _save(fig, out)


def plot_model_quality(eval_dir: str | Path, out: str | Path) -> None:
    """Held-out model quality: predicted vs observed (pooled), RMSE by support bin and by species
    cluster for every model and baseline, and 95% interval coverage."""
    plt = _plt()
    eval_dir = Path(eval_dir)
    metrics = pl.read_csv(eval_dir / "metrics.csv")
    pred = pl.read_parquet(eval_dir / "predictions.parquet")
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    ax = axes[0, 0]
    obs_col = "rt" if "rt" in pred.columns else pred.columns[0]
    pcol = "pooled_pred" if "pooled_pred" in pred.columns else None
    if pcol is not None:
        sub = pred.select(obs_col, pcol).drop_nulls()
        ax.scatter(sub[obs_col], sub[pcol], s=3, alpha=0.4, color="#4c72b0")
        lo = float(min(sub[obs_col].min() or 0, sub[pcol].min() or 0))
        hi = float(max(sub[obs_col].max() or 1, sub[pcol].max() or 1))
        ax.plot([lo, hi], [lo, hi], color="#c44e52", lw=1)
    ax.set_xlabel("observed RT (min)")
    ax.set_ylabel("predicted RT, pooled (min)")
    ax.set_title("held-out rows: predicted vs observed")

    def grouped(ax: Any, kind: str, title: str, value: str = "rmse") -> None:
        sub = metrics.filter(pl.col("slice_kind") == kind, pl.col(value).is_not_null())
        slices = list(dict.fromkeys(sub["slice"].to_list()))
        present = set(sub["model"].to_list())
        models = [m for m in MODEL_ORDER if m in present]
        models += sorted(present - set(MODEL_ORDER))
        w = 0.8 / max(len(models), 1)
        every = metrics.filter(pl.col("slice_kind") == kind)
        for i, m in enumerate(models):
            color = MODEL_COLORS.get(m)
            vals = [sub.filter(pl.col("slice") == s, pl.col("model") == m)[value].to_list()
                    for s in slices]
            xs = np.arange(len(slices)) + i * w
            heights = [v[0] if v else np.nan for v in vals]
            ax.bar(xs, heights, width=w, label=m, color=color)
            for x, h in zip(xs, heights, strict=True):
                if np.isnan(h):  # this model cannot predict these rows (e.g. unseen groups)
                    ax.text(x, 0.02, "n/a", rotation=90, fontsize=6, ha="center", va="bottom",
                            transform=ax.get_xaxis_transform())
        rows = [every.filter(pl.col("slice") == s)["rows"].max() for s in slices]
        ticks = [f"{s}\nn={r:,}" if r is not None else s for s, r in zip(slices, rows, strict=True)]
        ax.set_xticks(np.arange(len(slices)) + 0.4 - w / 2, ticks, rotation=30, ha="right",
                      fontsize=7)
        ax.set_ylabel(value)
        ax.set_title(title)

    grouped(axes[0, 1], "support_bin", "RMSE by training rows per group")
    grouped(axes[1, 0], "species_cluster", "RMSE by species cluster")
    grouped(axes[1, 1], "support_bin", "95% interval coverage by support", value="coverage95")
    axes[1, 1].axhline(0.95, color="black", lw=0.8, ls=":")
    axes[1, 1].set_ylim(0.8, 1.0)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.96), h_pad=2.0)
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
    _save(fig, out)
