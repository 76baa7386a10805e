"""Stage 8: ridge and partial-pooling (PyMC) RT models, leak-free evaluation, prediction.

Public API: :func:`train`, :func:`evaluate`, :func:`predict`, :class:`ModelOptions`,
:class:`FittedModel` (the saved/loaded fitted state of one model). Heavy imports (PyMC) happen
only when a pooled model is fitted.
"""

from rtprep.models.api import load_models, predict, train
from rtprep.models.evaluate import evaluate
from rtprep.models.fitted import FittedModel
from rtprep.models.options import ModelOptions

__all__ = ["FittedModel", "ModelOptions", "evaluate", "load_models", "predict", "train"]
