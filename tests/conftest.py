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


# Inside tests/test_readme.py the README's test command runs in a fresh copy of the checkout.
# There it collects every test (so every import resolves against the copy) but runs only these
# quick ones: the outer run, in the same environment, already runs all the others.
README_NESTED_RUNS = ("tests/test_config.py", "tests/test_hashing.py", "tests/test_readme.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RTPREP_README_TEST") != "1":
        return
    skip = pytest.mark.skip(reason="run by the outer test session, not inside the README test")
    for item in items:
        if "slow" in item.keywords or not item.nodeid.startswith(README_NESTED_RUNS):
            item.add_marker(skip)
