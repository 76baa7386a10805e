"""The train, evaluate and predict stages: ridge and partial-pooling (PyMC) RT models,
leak-free evaluation, prediction.

Public API: :func:`train`, :func:`evaluate`, :func:`predict`, :class:`ModelOptions`,
:class:`FittedModel` (the saved/loaded fitted state of one model). Heavy imports (PyMC) happen
only when a pooled model is fitted. The names are imported on first use (PEP 562), so that
``rtprep <step> --help`` and the data stages do not pay for SciPy's import.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# PyTensor searches for a BLAS to link its C code against when it first compiles, and in a pip
# install (no BLAS headers and libraries it can link) warns on every run that it found none. Its
# BLAS ops then call numpy, whose wheels bring their own OpenBLAS: what the gradients use either
# way. Saying "no BLAS to link" explicitly skips the search and the warning (a user's own
# PYTENSOR_FLAGS with blas__ldflags wins).
if "blas__ldflags" not in os.environ.get("PYTENSOR_FLAGS", ""):
    os.environ["PYTENSOR_FLAGS"] = ",".join(
        f for f in (os.environ.get("PYTENSOR_FLAGS", ""), "blas__ldflags=") if f)

if TYPE_CHECKING:
    from rtprep.models.api import load_models, predict, train
    from rtprep.models.evaluate import evaluate
    from rtprep.models.fitted import FittedModel
    from rtprep.models.options import ModelOptions

_WHERE = {
    "train": "rtprep.models.api",
    "predict": "rtprep.models.api",
    "load_models": "rtprep.models.api",
    "evaluate": "rtprep.models.evaluate",
    "FittedModel": "rtprep.models.fitted",
    "ModelOptions": "rtprep.models.options",
}

__all__ = ["FittedModel", "ModelOptions", "evaluate", "load_models", "predict", "train"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rtprep.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
