"""The demo's fixed layout: its exports and their libs, and the names of the files it writes.
Plain Python (no polars or numpy): the workflow reads it while it builds the DAG."""

from __future__ import annotations

from pathlib import Path

#: Export hash -> libs it holds (fixed, so that configs can name them).
EXPORTS: dict[str, tuple[int, ...]] = {
    "5684639a28c04bc5af7c4fd1a75e62b5": (208, 305, 400),
    "de194c2cc2114efaa1075ccf7539d0cb": (209, 402),
}
#: Name of the comp_id column in each export's peak shards.
COMP_COLUMN: dict[str, str] = {
    "5684639a28c04bc5af7c4fd1a75e62b5": "comp_id",
    "de194c2cc2114efaa1075ccf7539d0cb": "correct",
}
DEFAULT_LIBS: tuple[int, ...] = (208, 209, 305, 400, 402)
#: Share of ``rows`` per lib (normalised over the libs asked for); 209 is the biggest, as in
#: the production exports.
LIB_WEIGHT: dict[int, float] = {208: 0.20, 209: 0.30, 305: 0.15, 400: 0.20, 402: 0.15}

MANIFEST = "manifest.json"
EMBEDDINGS_REL = Path("resources/metabolites/embeddings_chemberta_pca20.parquet")

STRUCTURES_NAME = "demo_structures.csv"
#: The truth table (``task_id, compound, rt_true, noise_sd, misassigned``) under truth/.
TRUTH_TABLE_NAME = "truth_table.parquet"
