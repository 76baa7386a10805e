"""Logging set-up shared by the CLI and the workflow scripts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, *, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (created with its folder)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    fmt = logging.Formatter(FORMAT, datefmt="%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(True)
    quiet_dependencies()


def quiet_dependencies() -> None:
    """Silence what dependencies print that says nothing about a run: ArviZ's notice of its
    coming refactor and its preview module's list of optional packages not installed (PyMC
    imports ArviZ; rtprep uses neither), and PyTensor's deprecation of ``batched_dot``, which
    the pooled model keeps on purpose: the per-cell quadratic form written as an elementwise
    product and sum measured 2× slower per gradient at the demo's shape and 3-5× at the largest
    library's."""
    import warnings

    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"batched_dot is deprecated",
                            category=FutureWarning)
    logging.getLogger("arviz.preview").setLevel(logging.WARNING)
