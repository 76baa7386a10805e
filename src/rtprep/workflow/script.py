"""The glue every workflow script starts with: threads first, then logging, then one library call.

A script in ``workflow_scripts/`` reads::

    from rtprep.workflow.script import start

    start(snakemake)  # before anything imports polars
    from rtprep.stages.merge import merge_export

    merge_export(snakemake.input.export, snakemake.output.merged, ...)

:func:`start` limits threads to the rule's ``threads`` (polars sizes its pool at import), logs to
the rule's log file and stderr, and makes a :class:`~.errors.RtprepError` end the job with
one clear log line instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

from rtprep.core.threads import limit_threads


def start(smk: Any) -> logging.Logger:
    """Set threads, logging and error reporting for a workflow script; return its logger."""
    limit_threads(getattr(smk, "threads", 1))
    from rtprep.core.logs import setup_logging

    log_file = smk.log[0] if len(smk.log) else None
    setup_logging(log_file)
    log = logging.getLogger(f"rtprep.rule.{smk.rule}")
    t0 = time.perf_counter()
    log.info("rule %s (threads=%s): inputs %s", smk.rule, smk.threads, list(smk.input))

    failed: list[bool] = []

    def hook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        from rtprep.core.errors import RtprepError

        failed.append(True)
        if isinstance(value, RtprepError):
            log.error("%s", value)
        else:
            log.error("rule %s failed", smk.rule, exc_info=(etype, value, tb))
        # The interpreter then exits with status 1, and Snakemake removes the outputs.

    sys.excepthook = hook

    import atexit

    atexit.register(
        lambda: log.info("rule %s: %s after %.1f s", smk.rule,
                         "failed" if failed else "finished", time.perf_counter() - t0)
    )
    return log
