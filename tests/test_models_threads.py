"""Models are reproducible across thread counts (docs/contracts.md: equal within 1e-6 relative
on one machine, whatever the thread count): the same training file fitted by the real CLI with
``--threads 1`` and ``--threads 2`` gives the same summaries and the same predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtprep.models.synthetic import generate

RTOL = 1e-6


def _fit(train: Path, out: Path, threads: int, cfg: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rtprep.cli", "--threads", str(threads), "train", "--input",
         str(train), "--out", str(out), "--quick", "--config", str(cfg)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _numbers(df: pl.DataFrame) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, dtype in df.schema.items():
        col = df[name]
        if isinstance(dtype, (pl.Array, pl.List)):  # null vectors (levels without slopes) too
            flat = col.cast(pl.List(pl.Float64)).explode()
            out[name] = flat.fill_null(np.nan).to_numpy()
        elif dtype.is_numeric():
            out[name] = col.cast(pl.Float64).to_numpy()
    return out


@pytest.mark.slow
def test_models_agree_across_thread_counts(tmp_path: Path) -> None:
    data = generate(seed=21, n_species=6, n_compounds=40, n_sample_sets=60, n_test_sets=8)
    paths = data.write(tmp_path / "d")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  quick_steps: 300\n  screen_steps: 150\n  seed: 5\n")
    _fit(paths["train"], tmp_path / "t1", 1, cfg)
    _fit(paths["train"], tmp_path / "t2", 2, cfg)
    for rel in ("ridge/groups.parquet", "pooled/groups.parquet", "pooled/effects.parquet"):
        a, b = pl.read_parquet(tmp_path / "t1" / rel), pl.read_parquet(tmp_path / "t2" / rel)
        assert a.height == b.height > 0, rel
        strings = [c for c, t in a.schema.items() if t == pl.String]
        assert a.select(strings).equals(b.select(strings)), rel
        na, nb = _numbers(a), _numbers(b)
        assert na.keys() == nb.keys()
        for name in na:
            np.testing.assert_allclose(na[name], nb[name], rtol=RTOL, atol=1e-12,
                                       err_msg=f"{rel}:{name}")
