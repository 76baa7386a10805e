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

from rtprep.core.artifacts import atomic_output, meta_path
from rtprep.core.embeddings import embedding_matrix, read_embeddings
from rtprep.core.paths import (
    EVAL_METRICS_CSV,
    EVAL_MODEL_DIR,
    EVAL_PREDICTIONS,
    MODEL_EFFECTS,
    MODEL_GROUPS,
    MODEL_MANIFEST,
)

log = logging.getLogger(__name__)

#: Each model's and baseline's colour, the same in every panel (their order is the
#: evaluation's, :data:`rtprep.models.evaluate.MODEL_ORDER`).
MODEL_COLORS = {"pooled": "#4c72b0", "ridge": "#dd8452", "group_mean": "#55a868",
                "class_mean": "#c44e52", "global_mean": "#8172b3"}


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
    last artifact's rows out (the original scripts' "31,521 → 27,077 → 25,781")."""
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
    emb, _ = read_embeddings(embeddings)
    cls = pl.read_parquet(classes)
    df = emb.join(cls, on="chem_id", how="inner").sort("chem_id")
    x = embedding_matrix(df)
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


def fit_verdict_line(model_json: str | Path) -> tuple[str, bool] | None:
    """``pooled fit: converged; outlier screen: converged`` from a model folder's ``model.json``
    (None when it has no ADVI verdicts), and whether any fit ended ``not converged``."""
    path = Path(model_json)
    if not path.is_file():
        return None
    verdicts = json.loads(path.read_text(encoding="utf-8")).get("fit_verdicts") or {}
    verdicts = {k: v for k, v in verdicts.items() if v}
    if not verdicts:
        return None
    text = "; ".join(f"{k.replace('_', ' ')} fit: {v}" for k, v in verdicts.items())
    return text, any(v == "not converged" for v in verdicts.values())


def _verdict_banner(fig: Any, model_json: str | Path) -> None:
    """The fits' ADVI verdicts above a figure; red (and said twice) when one did not converge."""
    line = fit_verdict_line(model_json)
    if line is None:
        return
    text, bad = line
    if bad:
        text = f"NOT CONVERGED: {text} (model.allow_unconverged); do not trust these numbers"
    fig.text(0.5, 0.995, text, ha="center", va="top", fontsize=9,
             color="#c00000" if bad else "#333333", fontweight="bold" if bad else "normal")


def plot_model_quality(eval_dir: str | Path, out: str | Path, split: str | None = None) -> None:
    """Held-out model quality: predicted vs observed (pooled); RMSE and, beside it, the MAE (which
    a few peaks assigned to the wrong compound, minutes off, do not dominate) by support bin and
    by species cluster for every model and baseline, on a log axis (the mean baselines are ten
    to a hundred times worse); and 95% interval coverage, every bar visible with the target.
    ``split`` (``random``, ``time``) names the held-out fold in the first panel's title."""
    from rtprep.models.evaluate import MODEL_ORDER

    plt = _plt()
    eval_dir = Path(eval_dir)
    metrics = pl.read_csv(eval_dir / EVAL_METRICS_CSV)
    pred = pl.read_parquet(eval_dir / EVAL_PREDICTIONS)
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
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
    ax.set_title(f"held-out rows{f' ({split} split)' if split else ''}: predicted vs observed")

    def grouped(ax: Any, kind: str, title: str, value: str = "rmse", log: bool = True) -> None:
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
        ax.set_ylabel(f"{value} (min, log scale)" if log else value)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)

    grouped(axes[0, 1], "support_bin", "RMSE by training rows per group")
    grouped(axes[0, 2], "support_bin", "MAE by training rows per group", value="mae")
    grouped(axes[1, 0], "species_cluster", "RMSE by species cluster")
    grouped(axes[1, 1], "species_cluster", "MAE by species cluster", value="mae")
    grouped(axes[1, 2], "support_bin", "95% interval coverage by support", value="coverage95",
            log=False)
    cover = axes[1, 2]
    cover.axhline(0.95, color="black", lw=0.8, ls=":")
    low = metrics.filter(pl.col("slice_kind") == "support_bin")["coverage95"].drop_nulls().min()
    # every bar visible: the axis starts below the lowest coverage (at most at 0.8)
    floor = min(0.8, float(low) - 0.05) if low is not None else 0.8
    cover.set_ylim(max(0.0, floor), 1.0)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.94), h_pad=2.0)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.975),
               ncol=len(labels), fontsize=8)
    _verdict_banner(fig, eval_dir / EVAL_MODEL_DIR / MODEL_MANIFEST)
    _save(fig, out)



def shrinkage_tables(model_dir: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """How far the pooled fit pulls estimates toward their prior, from a trained model directory.

    Returns ``(compounds, groups)``. Compounds: the compound effect of the pooled fit against
    the compound's own estimate (the training-row-weighted mean of its groups' ridge intercepts
    less the global and species effects), both relative to the prior of a compound, its class
    mean (+ the regression on its embedding). Groups: the group's pooled intercept against its
    ridge intercept (the group alone), relative to global + species + compound effects. In both,
    ``shrink`` = (pooled − prior) / (own − prior): 1 keeps the own estimate, 0 is at the prior.
    With ``group_by: species_cluster`` the species level is the cluster's.
    """
    model_dir = Path(model_dir)
    pooled = pl.read_parquet(model_dir / "pooled" / MODEL_GROUPS)
    ridge = pl.read_parquet(model_dir / "ridge" / MODEL_GROUPS)
    eff = pl.read_parquet(model_dir / "pooled" / MODEL_EFFECTS)
    unit_level = "species" if eff.filter(pl.col("level") == "species").height else "cluster"
    unit = "species" if unit_level == "species" else "species_cluster"
    glob = float(eff.filter(pl.col("level") == "global")["intercept_mean"][0])

    def level(name: str, col: str, alias: str) -> pl.DataFrame:
        return eff.filter(pl.col("level") == name).select(
            pl.col("key").alias(col), pl.col("intercept_mean").alias(alias))

    keys = [unit, "compound"]
    groups = (
        pooled.select(*keys, "compound_class", "n_obs",
                      pl.col("mean").arr.get(0).alias("pooled"))
        .join(ridge.select(*keys, pl.col("mean").arr.get(0).alias("own")), on=keys,
              how="inner")
        .join(level(unit_level, unit, "_unit"), on=unit, how="left")
        .join(level("compound", "compound", "_cpd"), on="compound", how="left")
        .with_columns(_unit=pl.col("_unit").fill_null(0.0), _cpd=pl.col("_cpd").fill_null(0.0))
        .with_columns(prior=glob + pl.col("_unit") + pl.col("_cpd"))
    )
    compounds = (
        groups.group_by("compound", "compound_class")
        .agg(n_obs=pl.col("n_obs").sum(),
             own=((pl.col("own") - glob - pl.col("_unit")) * pl.col("n_obs")).sum()
             / pl.col("n_obs").sum(),
             pooled=pl.col("_cpd").first())
        .join(level("class", "compound_class", "_class"), on="compound_class", how="left")
        .join(level("embedding", "compound", "_emb"), on="compound", how="left")
        .with_columns(prior=pl.col("_class").fill_null(0.0) + pl.col("_emb").fill_null(0.0))
        .drop("_class", "_emb")
        .sort("compound")
    )
    groups = groups.drop("_unit", "_cpd")

    def factor(df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(
            ((pl.col("pooled") - pl.col("prior")) / (pl.col("own") - pl.col("prior")))
            .alias("shrink"))

    return factor(compounds), factor(groups)


def plot_shrinkage(model_dir: str | Path, out: str | Path) -> None:
    """Shrinkage toward class means (compounds) and toward species + compound (groups): the
    pooled estimates against each one's own, relative to its prior, and the median factor by
    training rows."""
    from rtprep.models.evaluate import SUPPORT_BINS, support_bin

    plt = _plt()
    compounds, groups = shrinkage_tables(model_dir)
    labels = [b[0] for b in SUPPORT_BINS]
    cmap = plt.get_cmap("viridis", len(labels))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))

    def scatter(ax: Any, tab: pl.DataFrame, title: str, xlabel: str, ylabel: str) -> None:
        tab = tab.with_columns(support_bin(pl.col("n_obs")).alias("bin"))
        dx = (tab["own"] - tab["prior"]).to_numpy()
        dy = (tab["pooled"] - tab["prior"]).to_numpy()
        for i, label in enumerate(labels):
            sel = (tab["bin"] == label).to_numpy()
            if sel.any():
                ax.scatter(dx[sel], dy[sel], s=5, alpha=0.5, color=cmap(i),
                           label=f"{label} rows (n={int(sel.sum()):,})")
        lim = float(np.nanpercentile(np.abs(dx), 99.5)) if dx.size else 1.0
        lim = lim if np.isfinite(lim) and lim > 0 else 1.0
        ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.8, ls=":")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, markerscale=3, loc="upper left")

    scatter(axes[0], compounds, "compounds: toward their class mean",
            "own estimate − class mean (min)", "pooled compound effect − class mean (min)")
    scatter(axes[1], groups, "groups: toward species + compound",
            "ridge intercept − (species + compound) (min)",
            "pooled intercept − (species + compound) (min)")

    ax = axes[2]
    width = 0.4
    order = {lab: i for i, lab in enumerate(labels)}
    for j, (name, tab, color) in enumerate((("compounds", compounds, "#c44e52"),
                                            ("groups", groups, "#4c72b0"))):
        # a factor needs an own estimate away from the prior (no 0/0)
        med = (tab.filter((pl.col("own") - pl.col("prior")).abs() > 1e-3)
               .with_columns(support_bin(pl.col("n_obs")).alias("bin"))
               .group_by("bin").agg(pl.col("shrink").median().alias("m"), pl.len().alias("n")))
        xs = np.array([order.get(b, len(labels)) for b in med["bin"]]) + j * width
        ax.bar(xs, med["m"].to_numpy(), width=width, color=color, label=name)
    ax.set_xticks(np.arange(len(labels)) + width / 2, labels, fontsize=8)
    ax.axhline(1.0, color="black", lw=0.8, ls=":")
    ax.set_ylim(0, 1.5)
    ax.set_xlabel("training rows (per compound / per group)")
    ax.set_ylabel("median (pooled − prior) / (own − prior)")
    ax.set_title("shrinkage by support (1 = own estimate kept, 0 = prior)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _verdict_banner(fig, Path(model_dir) / MODEL_MANIFEST)
    _save(fig, out)
