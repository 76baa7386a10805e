"""The run-wide row-accounting table: every artifact's rows in, drops per reason and rows out,
gathered from the ``.meta.json`` sidecars."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from rtprep.core.artifacts import meta_path
from rtprep.core.frames import write_csv_atomic

log = logging.getLogger(__name__)

COLUMNS = ("artifact", "stage", "lib", "rows_in", "reason", "dropped", "rows_out")


def gather_accounting(artifacts: Iterable[str | Path], output: str | Path) -> pl.DataFrame:
    """One row per (artifact, drop reason) (a row with an empty reason when nothing was dropped),
    read from each artifact's sidecar; merge sidecars contribute one block per lib."""
    rows: list[dict[str, object]] = []
    for art in artifacts:
        mp = meta_path(art)
        if not mp.is_file():
            log.warning("no sidecar for %s; left out of the accounting table", art)
            continue
        meta = json.loads(mp.read_text(encoding="utf-8"))
        m = re.search(r"_lib(\d+)[_.]", Path(art).name)
        blocks: list[tuple[str | None, dict]] = [(m.group(1) if m else None, meta)]
        per_lib = (meta.get("extra") or {}).get("per_lib")
        if isinstance(per_lib, dict) and per_lib:
            blocks = [(str(lib), block) for lib, block in sorted(per_lib.items())]
        for lib, block in blocks:
            base = {"artifact": Path(art).name, "stage": meta.get("stage"), "lib": lib,
                    "rows_in": block.get("rows_in"), "rows_out": block.get("rows_out")}
            drops = block.get("drops") or {}
            if not drops:
                rows.append({**base, "reason": None, "dropped": 0})
            for reason, n in drops.items():
                rows.append({**base, "reason": reason, "dropped": int(n)})
    df = pl.DataFrame(rows, schema={"artifact": pl.String, "stage": pl.String, "lib": pl.String,
                                    "rows_in": pl.Int64, "reason": pl.String,
                                    "dropped": pl.Int64, "rows_out": pl.Int64})
    df = df.select(COLUMNS)
    write_csv_atomic(df, output)
    log.info("row accounting of %d artifacts written to %s", df["artifact"].n_unique(), output)
    return df
