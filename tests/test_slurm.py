"""The workflow on a real one-node SLURM cluster (slurmctld + slurmd from Debian's packages) through
`--profile profiles/slurm`: every non-local job is a SLURM job, and the outputs equal a local run's.

Skips with the reason where SLURM cannot start (not root, packages not installed); CI installs them
with `.ci/slurm_setup.sh install`.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import (
    NO_ACCOUNTING_SETTINGS,
    SlurmCluster,
    pid_alive,
    start_cluster,
    unavailable_reason,
)
from tests.workflow_util import REPO, copy_workflow, planned_jobs, snakemake

DATA = "demo/tiny/repo_export"
# Data stages only: the models have their own tests, and each SLURM job costs seconds of polling.
OVERLAY = {"model": {"train": False, "evaluate": False}}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
LOCALRULE = re.compile(r"^localrule (\w+):", re.M)


HEAVY_RULES = {"merge", "split", "cap", "test_rows", "train", "evaluate"}


def test_slurm_profile_is_complete() -> None:
    """What a user adapts is there: partition, memory, wall time, heavy rules, retries."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["jobs"] > 0
    assert set(profile["default-resources"]) >= {"slurm_partition", "mem_mb", "runtime"}
    assert set(profile["set-resources"]) == HEAVY_RULES
    for res in profile["set-resources"].values():
        assert res["mem_mb"] >= profile["default-resources"]["mem_mb"] and res["runtime"] > 0
    assert profile["retries"] >= 1 and profile["latency-wait"] > 0 and profile["rerun-incomplete"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    """A running cluster (started here, or reused); stopped by its pid files afterwards."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        c = start_cluster()
    except RuntimeError as e:
        pytest.fail(str(e))
    pids = c.pids()
    yield c
    c.stop()
    if c.started_here:
        alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        assert not alive, f"daemons still running after stop: {alive}"
        assert not any(p.exists() for p in c.state_dir.glob("**/*.pid"))


@pytest.mark.slow
def test_cluster_runs_a_job(cluster: SlurmCluster, tmp_path: Path) -> None:
    """sbatch on the test cluster: the job runs, and SLURM's own logs record it."""
    out = tmp_path / "out.txt"
    proc = subprocess.run(
        ["sbatch", "--parsable", "--wait", f"--output={tmp_path}/%j.log", "--wrap",
         f"echo job=$SLURM_JOB_ID > {out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    job = int(proc.stdout.strip().split(";")[0])
    assert out.read_text().strip() == f"job={job}"
    assert cluster.finished_jobs()[job]["JobState"] == "COMPLETED"


def _test_profile(cluster: SlurmCluster, dest: Path) -> Path:
    """A profile layered on profiles/slurm: the no-accounting flags, and each mem_mb capped to the
    node's memory (the shipped values are sized for production nodes)."""
    shipped = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    cap = cluster.node_memory_mb()
    default = dict(shipped["default-resources"], slurm_partition=cluster.partition)
    default["mem_mb"] = min(int(default["mem_mb"]), cap)
    rules = {rule: dict(res, mem_mb=min(int(res.get("mem_mb", cap)), cap))
             for rule, res in shipped["set-resources"].items()}
    profile = dict(NO_ACCOUNTING_SETTINGS, **{
        "default-resources": default,
        "set-resources": rules,
        "slurm-keep-successful-logs": True,  # SLURM's log of every job, checked below
        "latency-wait": 5,  # one machine: no shared-filesystem delay
        "jobs": 4,
    })
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = copy_workflow(tmp_path_factory.mktemp("local"))
    snakemake(wd, "--cores", "2", overlay=OVERLAY)
    return wd


def _compared_outputs(workdir: Path) -> list[str]:
    """The outputs the SLURM run must reproduce byte for byte: RT CSVs and capped Parquets."""
    data = workdir / DATA
    files = [*data.glob("*_rt_prod.csv"), *data.glob("*_cap*.parquet")]
    return sorted(str(f.relative_to(workdir)) for f in files)


@pytest.mark.slow
def test_workflow_on_slurm_equals_local_run(cluster: SlurmCluster, local_run: Path,
                                            tmp_path: Path) -> None:
    wd = copy_workflow(tmp_path / "wf")
    profile = _test_profile(cluster, tmp_path / "test_profile")
    plan = planned_jobs(snakemake(wd, "--dry-run", "--profile", "profiles/slurm", overlay=OVERLAY))
    t0 = time.monotonic()
    proc = snakemake(wd, "--profile", "profiles/slurm", "--profile", str(profile),
                     overlay=OVERLAY, timeout=1200)
    elapsed = time.monotonic() - t0
    log = proc.stdout + proc.stderr

    # Snakemake's side: every job but the local ones was submitted to SLURM, with a job id.
    submitted = {int(m[2]): Path(m[3]) for m in SUBMITTED.finditer(log)}
    local = LOCALRULE.findall(log)
    assert "all" in local
    assert len(submitted) + len(local) == sum(plan.values()), log[-4000:]
    rules = {p.parent.parent.name.removeprefix("rule_") for p in submitted.values()}
    assert {"merge", "split", "cap", "attach", "rt_csv"} <= rules

    # SLURM's side: each of those ids is a job that SLURM ran in our workdir, completed with exit
    # code 0, launched by slurmd and logged (its output kept under .snakemake/slurm_logs).
    finished = cluster.finished_jobs()
    slurmd_log = cluster.slurmd_log.read_text()
    ctld_log = cluster.slurmctld_log.read_text()
    for job, slurm_log in submitted.items():
        assert finished[job]["JobState"] == "COMPLETED", finished[job]
        assert finished[job]["ExitCode"] == "0:0"
        assert Path(finished[job]["WorkDir"]).resolve() == wd.resolve()
        assert f"Launching batch job {job} for UID" in slurmd_log
        assert f"_job_complete: JobId={job} done" in ctld_log
        assert slurm_log.is_file() and "Finished jobid" in slurm_log.read_text()

    # Same outputs as the local run, byte for byte (sidecars differ only in timings: not compared).
    compared = _compared_outputs(local_run)
    assert compared, "the local run wrote no RT CSV or capped Parquet"
    assert _compared_outputs(wd) == compared
    differ = [f for f in compared if (wd / f).read_bytes() != (local_run / f).read_bytes()]
    assert not differ, f"differ from the local run: {differ}"
    print(f"SLURM run: {len(submitted)} SLURM jobs, {len(local)} local, {elapsed:.0f} s; "
          f"cluster idle after {cluster.seconds_to_idle:.1f} s")
