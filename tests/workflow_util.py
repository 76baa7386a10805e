"""Helpers for tests that run the real Snakemake workflow in a copy of the checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = (
    "Snakefile", "rules", "workflow_scripts", "config", "envs", "profiles", "resources", "report",
)


def copy_workflow(dest: Path) -> Path:
    """Copy what a user checks out (the workflow files, not results) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dest / part)
    return dest


def snakemake(workdir: Path, *args: str, overlay: dict | None = None,
              check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """Run snakemake in ``workdir`` with the test config (plus an optional overlay)."""
    cmd = [sys.executable, "-m", "snakemake", "--configfile", "config/test.yaml"]
    if overlay:
        path = workdir / "overlay.yaml"
        path.write_text(yaml.safe_dump(overlay))
        cmd.append(str(path))
    cmd += list(args)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def planned_jobs(proc: subprocess.CompletedProcess[str]) -> Counter[str]:
    """Jobs per rule from a dry-run's 'Job stats' table (empty when nothing is to be done)."""
    text = proc.stdout + proc.stderr
    jobs: Counter[str] = Counter()
    m = re.search(r"Job stats:\n(.*?)\n\s*total\s+\d+", text, re.S)
    if not m:
        return jobs
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs
