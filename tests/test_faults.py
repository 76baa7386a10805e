"""Faults: a real `snakemake` run SIGKILLed mid-stage leaves nothing that looks finished; the
rerun redoes exactly the unfinished jobs, and its outputs equal an uninterrupted run's."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.workflow_util import copy_workflow, snakemake

# Data stages only: the faults are about files, and model fits would only slow the test down.
OVERLAY = {"model": {"train": False, "evaluate": False}, "demo": {"rows": 60000}}
DATA_SUFFIXES = (".parquet", ".csv", ".txt")


def outputs(wd: Path) -> dict[str, Path]:
    root = wd / "demo/tiny"
    files = [p for p in root.rglob("*") if p.is_file()]
    files += [p for p in (wd / "results").rglob("*") if p.is_file()] if (wd / "results").exists() \
        else []
    return {str(p.relative_to(wd)): p for p in files}


def planned_outputs(proc: subprocess.CompletedProcess[str]) -> set[str]:
    """The output files of the jobs a dry-run plans ('    output: a, b' lines)."""
    found: set[str] = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("    output: "):
            found.update(f.strip() for f in line[len("    output: "):].split(","))
    return found


def digest(p: Path) -> str:
    return hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()


def start_run(wd: Path) -> subprocess.Popen[bytes]:
    (wd / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--configfile", "config/test.yaml", "overlay.yaml",
         "--cores", "2"],
        cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    wd = copy_workflow(tmp_path_factory.mktemp("ref"))
    snakemake(wd, "--cores", "2", overlay=OVERLAY)
    return {k: digest(p) for k, p in outputs(wd).items()}


@pytest.mark.slow
@pytest.mark.parametrize("stage_log", ["logs/merge", "logs/cap", "logs/attach"])
def test_sigkill_mid_stage_then_rerun(tmp_path: Path, stage_log: str,
                                      reference: dict[str, str]) -> None:
    wd = copy_workflow(tmp_path)
    proc = start_run(wd)
    deadline = time.monotonic() + 300
    # Kill the whole process tree as soon as a job of this stage has started.
    while time.monotonic() < deadline and proc.poll() is None:
        if (wd / stage_log).is_dir() and any((wd / stage_log).iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the stage started; nothing was killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    # Nothing a user or Snakemake could take for finished: every data file present is complete
    # (it equals the uninterrupted run's); temporaries are hidden '.<name>.<pid>.tmp' files.
    after_kill = outputs(wd)
    for rel, p in after_kill.items():
        if p.name.endswith(".tmp"):
            assert p.name.startswith("."), rel
            continue
        if rel.endswith(DATA_SUFFIXES) and not rel.endswith("manifest.json"):
            assert rel in reference, rel
            assert digest(p) == reference[rel], f"{rel} is not the finished file"
    before = {rel: p.stat().st_mtime_ns for rel, p in after_kill.items()
              if rel.endswith(DATA_SUFFIXES) and not p.name.endswith(".tmp")}

    # A killed Snakemake leaves its lock (as after a power loss): the user unlocks, then reruns.
    # The rerun completes and redoes only what was unfinished: finished files are not rewritten.
    snakemake(wd, "--unlock", overlay=OVERLAY)
    # The jobs the rerun plans: the killed ones (some output missing, or all written but the
    # job not recorded as finished: Snakemake's incomplete marker) and what follows them. Their
    # outputs may be written again; every other finished file must stay untouched.
    plan = snakemake(wd, "--cores", "2", "--rerun-incomplete", "--dry-run", overlay=OVERLAY)
    redo = planned_outputs(plan)
    reasons = [line.strip() for line in (plan.stdout + plan.stderr).splitlines()
               if line.startswith("    reason: ")]
    allowed = ("Missing output files", "Incomplete output files",
               "Input files updated by another job", "Forced execution")  # the last: `all`
    assert not [r for r in reasons if not any(a in r for a in allowed)]
    snakemake(wd, "--cores", "2", "--rerun-incomplete", overlay=OVERLAY)
    final = outputs(wd)
    from rtprep.core.paths import SIDECAR_SUFFIXES

    for rel, mtime in before.items():
        # a sidecar is written by the job of the output it sits beside
        base = next((rel.removesuffix(x) for x in SIDECAR_SUFFIXES if rel.endswith(x)), rel)
        if rel in redo or base in redo:
            continue
        assert final[rel].stat().st_mtime_ns == mtime, f"{rel} was rebuilt although finished"
    assert not [k for k in final if k.endswith(".tmp")], "stale temporaries left after the rerun"
    got = {k: digest(p) for k, p in final.items()}
    data = {k for k in reference if k.endswith(DATA_SUFFIXES) and "/." not in k}
    # From cap onward files are byte-identical; merge/split too (deterministic writers).
    for rel in data:
        assert got.get(rel) == reference[rel], rel


@pytest.mark.slow
def test_one_core_gives_the_same_files(tmp_path: Path, reference: dict[str, str]) -> None:
    """Reproducibility (docs/contracts.md): the data stages on one core (Snakemake runs one job
    at a time, each job's libraries on one thread) write the same bytes as on two."""
    wd = copy_workflow(tmp_path)
    snakemake(wd, "--cores", "1", overlay=OVERLAY)
    got = {k: digest(p) for k, p in outputs(wd).items()}
    data = sorted(k for k in reference if k.endswith(DATA_SUFFIXES) and "/." not in k)
    assert data and [k for k in data if got.get(k) != reference[k]] == []
