"""Test-suite settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.workflow_util import copy_workflow, snakemake


@pytest.fixture(scope="session")
def test_config_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `snakemake --cores 2` run of config/test.yaml in a copy of the checkout, shared by
    the workflow and report tests (each may add targets of its own to it, never remove any)."""
    wd = copy_workflow(tmp_path_factory.mktemp("test_config_run"))
    snakemake(wd, "--cores", "2")
    return wd


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Inside tests/test_readme.py the README's test command runs the suite once more, in a copy:
    # there the slow tests (real workflow runs, SLURM, the README test itself) are skipped.
    if os.environ.get("RTPREP_README_TEST") != "1":
        return
    skip = pytest.mark.skip(reason="slow test skipped inside the README test's nested run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
