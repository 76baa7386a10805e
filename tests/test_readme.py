"""The README's two commands, as written, in a copy of the checkout.

The copy gets its own virtual environment (``--system-site-packages``: the dependencies are the
ones installed already, so ``pip install -e`` only links the copy), so the commands run exactly as
a new user types them without touching the environment the tests run in. The second command runs
the test suite; inside this test (``RTPREP_README_TEST``) it collects every test but runs only a
few quick ones (``tests/conftest.py``): the outer pytest run has all the others, and the nested
run would otherwise run this test again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflow_util import REPO

#: Left out of the copy anywhere, and (as in .gitignore) the run's output folders at the top only:
#: the package has a ``demo`` of its own (``src/rtprep/demo``).
SKIP_PARTS = {".git", ".snakemake", ".pytest_cache", ".ruff_cache", ".hypothesis", "__pycache__"}
SKIP_TOP = {"demo", "results", "logs", "benchmarks"}


def readme_commands() -> list[str]:
    """The shell commands of the README's 'The two commands' section, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_two_commands() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "snakemake --cores" in cmds[0]
    assert "pytest" in cmds[1]


def copy_checkout(dest: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == REPO
        return {n for n in names
                if n in SKIP_PARTS or (top and n in SKIP_TOP) or n.endswith(".egg-info")}

    shutil.copytree(REPO, dest, ignore=ignore)
    # benchmarks/ is not needed to run, but keep its files so the copy is a whole checkout
    if (REPO / "benchmarks").is_dir():
        shutil.copytree(REPO / "benchmarks", dest / "benchmarks",
                        ignore=shutil.ignore_patterns("out", "runs", "__pycache__"))
    return dest


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RTPREP_README_TEST") == "1", reason="already inside it")
def test_readme_commands_work_in_a_fresh_copy(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "rtprep")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(venv), "RTPREP_README_TEST": "1"}
    env.pop("PYTHONPATH", None)
    # `snakemake` must be the venv's so that its scripts import the copy's rtprep.
    shims = {"snakemake": "snakemake", "pytest": "pytest"}
    for name, module in shims.items():
        shim = venv / "bin" / name
        shim.write_text(f'#!/bin/sh\nexec "{venv / "bin" / "python"}" -m {module} "$@"\n')
        shim.chmod(0o755)
    outputs = []
    for cmd in readme_commands():
        proc = subprocess.run(["bash", "-c", cmd], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        outputs.append(proc.stdout)
    # the test command collected the whole suite in the copy and ran its quick part
    summary = re.search(r"(\d+) passed, (\d+) skipped", outputs[1])
    assert summary, outputs[1][-2000:]
    passed, skipped = int(summary[1]), int(summary[2])
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) tests? collected", collected)[1])
    assert passed >= 10 and passed + skipped == total, outputs[1][-2000:]
    # the demo command built every RT CSV, model and evaluation of the shipped config
    data = checkout / "demo/repo_export"
    # (the glob also matches the train-fold CSVs, `..._lib208_random_train_cap5_...`)
    rt_csvs = [p for p in data.glob("*_cap5_chemclass_rt_prod.csv") if "_train_cap" not in p.name]
    assert len(rt_csvs) == 5, sorted(p.name for p in rt_csvs)
    # the demo evaluates both splits (demo.eval): eval/random/ and eval/time/ per lib
    for split in ("random", "time"):
        found = list((checkout / "results/rt_prod").glob(f"*/*/eval/{split}/metrics.json"))
        assert len(found) == 5, split
    # on the demo, each evaluation is scored against the generator's truth too: the quick fits
    # stay near the true parameters on the rows not mis-assigned (a fit thrown out of its
    # basin, as one lib's was before the ADVI spike guard: 2.6x). The demo is not drawn from the
    # model's family (noise per compound, gradient warp, matrix effects, near mis-assignments):
    # measured 1.24-1.33x on four libs and 1.88x on lib 208 (its <=1-row groups), coverage
    # 0.915-0.951 (random split); the bounds keep a margin over those. Forward in time (the time
    # split, after the column change) lib 208's small groups fall further behind: 3.81x measured,
    # a known weakness of the backoff, bounded loosely so a fit thrown out is caught
    truths = sorted((checkout / "results/rt_prod").glob("*/*/eval/*/truth.json"))
    assert len(truths) == 10
    for path in truths:
        clean = json.loads(path.read_text())["clean"]
        bound = 2.2 if path.parent.name == "random" else 5.0
        assert clean["pooled_over_truth"] < bound, (path, clean["pooled_over_truth"])
        if path.parent.name == "random":
            assert 0.89 <= clean["models"]["pooled"]["coverage95"] <= 0.99, path
    linked = subprocess.run([str(venv / "bin/python"), "-c",
                             "import rtprep, sys; sys.stdout.write(rtprep.__file__)"],
                            capture_output=True, text=True, env=env, check=True)
    assert linked.stdout.startswith(str(checkout)), linked.stdout
