"""Test-suite settings."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Inside tests/test_readme.py the README's test command runs the suite once more, in a copy:
    # there the slow tests (real workflow runs, SLURM, the README test itself) are skipped.
    if os.environ.get("RTPREP_README_TEST") != "1":
        return
    skip = pytest.mark.skip(reason="slow test skipped inside the README test's nested run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
