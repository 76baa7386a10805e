"""Thread limits, set before polars / numpy / PyMC are imported.

polars sizes its thread pool once, at import; BLAS and OpenMP read their variables at load. So a
workflow script calls :func:`limit_threads` with the rule's ``threads`` as its very first action.
"""

from __future__ import annotations

import os
import sys

_VARS = (
    "POLARS_MAX_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def limit_threads(n: int) -> None:
    """Limit every library's thread pool to ``n`` threads (n >= 1).

    Must run before polars is imported for polars to honour it; if polars is already loaded, the
    BLAS limit is still applied through threadpoolctl when numpy is loaded.
    """
    n = max(1, int(n))
    for var in _VARS:
        os.environ[var] = str(n)
    if "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(n)
        except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
            pass
