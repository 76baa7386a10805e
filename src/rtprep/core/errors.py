"""User-facing errors.

Anything a user can cause (bad input, bad config) raises :class:`RtprepError` with a message that
names the file, the column and the offending value and says what to do. The CLI prints such errors
without a traceback (unless ``--debug``); workflow scripts log them and exit non-zero.
"""

from __future__ import annotations

from pathlib import Path


class RtprepError(Exception):
    """An error caused by the input or the configuration, explained for the user."""


def input_error(path: str | Path, message: str, *, column: str | None = None) -> RtprepError:
    """Build an :class:`RtprepError` that starts with the file (and column) it is about."""
    where = f"{path}"
    if column is not None:
        where += f", column '{column}'"
    return RtprepError(f"{where}: {message}")
