"""rtprep: Pachyderm LC-MS peak exports -> chemistry-aware retention-time training data and models.

Importing the package is cheap on purpose (no polars, numpy or PyMC here): workflow scripts call
:func:`rtprep.core.threads.limit_threads` before the heavy libraries are imported, because
polars and BLAS fix their thread pools at import time.
"""

__version__ = "0.1.0"
