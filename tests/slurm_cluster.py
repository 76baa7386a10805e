"""A real one-node SLURM cluster for tests: started (or reused) through `.ci/slurm_setup.sh`.

The shell script owns the cluster (packages, munge key and socket, slurm.conf, daemons, pid files);
this module decides whether one can run here, starts or reuses it, reads its logs and stops it by
its pid files. A cluster that was already running (e.g. started by hand with the script) is reused
and left running; one started here is stopped by :meth:`SlurmCluster.stop`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.workflow_util import REPO

SETUP = REPO / ".ci" / "slurm_setup.sh"
STATE_DIR = Path(os.environ.get("RTPREP_SLURM_DIR", "/tmp/rtprep-slurm"))
ETC_CONF = Path("/etc/slurm/slurm.conf")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged")

# The plugin's first status check comes this many seconds after a submission; slurm.conf's
# MinJobAge (300 s, set by the script) must stay >= 3x this or the plugin falls back to sacct,
# which without an accounting database never reports a finished job.
INIT_SECONDS = 2

# Flags for a cluster without slurmdbd (sacct knows nothing), added to profiles/slurm by the test.
NO_ACCOUNTING_SETTINGS: dict[str, object] = {
    "slurm-no-account": True,
    "slurm-status-command": "squeue",
    "slurm-init-seconds-before-status-checks": INIT_SECONDS,
}

PIDFILES = {
    "slurmd": "slurmd.pid",
    "slurmctld": "slurmctld.pid",
    "munged": "munge/munged.pid",
}


def unavailable_reason() -> str | None:
    """Why a test SLURM cluster cannot start here, or None when it can."""
    if not SETUP.is_file():
        return f"{SETUP} is missing"
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "SLURM needs a POSIX system"
    # The daemons live in /usr/sbin, which a non-root PATH may lack.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [b for b in BINARIES if shutil.which(b, path=path) is None]
    if missing:
        return (f"SLURM packages not installed (no {', '.join(missing)}): run "
                "`.ci/slurm_setup.sh install` as root on Debian (apt-get install slurmctld slurmd "
                "slurm-client munge)")
    if _running(STATE_DIR):
        return None  # reusable whoever started it
    if os.geteuid() != 0:
        return "starting a SLURM cluster needs root (slurmd launches jobs as their owner)"
    if (ETC_CONF.exists() or ETC_CONF.is_symlink()) and \
            ETC_CONF.resolve() != (STATE_DIR / "slurm.conf").resolve():
        return f"{ETC_CONF} belongs to another SLURM installation; not starting a test cluster"
    return None


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a running (not zombie) process."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    # A zombie has exited; only its parent has not reaped it yet.
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def _running(state_dir: Path) -> bool:
    return all(pid_alive(_pid(state_dir / f)) for f in PIDFILES.values())


@dataclass
class SlurmCluster:
    """A running test cluster: its state directory, partition, daemons' pids and logs."""

    state_dir: Path
    partition: str
    started_here: bool
    seconds_to_idle: float

    @property
    def slurmctld_log(self) -> Path:
        return self.state_dir / "log" / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.state_dir / "log" / "slurmd.log"

    @property
    def jobcomp_log(self) -> Path:
        """One line per finished job (JobId, JobState, WorkDir, ExitCode...): jobcomp/filetxt."""
        return self.state_dir / "log" / "jobcomp.log"

    def pids(self) -> dict[str, int | None]:
        """The pid of each daemon, from its pid file (None when the file is gone)."""
        return {name: _pid(self.state_dir / f) for name, f in PIDFILES.items()}

    def node_memory_mb(self) -> int:
        """The node's RealMemory (MB), the most a job may ask for."""
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%m"], capture_output=True, text=True,
                             check=True).stdout
        return int(out.split()[0])

    def finished_jobs(self) -> dict[int, dict[str, str]]:
        """SLURM's own record of every finished job (jobcomp log): job id -> its fields."""
        jobs: dict[int, dict[str, str]] = {}
        if not self.jobcomp_log.exists():
            return jobs
        for line in self.jobcomp_log.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                jobs[int(fields["JobId"])] = fields
        return jobs

    def stop(self, timeout: float = 20) -> None:
        """Stop the daemons by their pid files (only if started here) and wait until they exit."""
        if not self.started_here:
            return
        pids = [p for p in self.pids().values() if p is not None]
        _setup("stop", self.state_dir)
        deadline = time.monotonic() + timeout
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def _setup(action: str, state_dir: Path, partition: str = "main",
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RTPREP_SLURM_DIR=str(state_dir), RTPREP_SLURM_PARTITION=partition)
    return subprocess.run(["bash", str(SETUP), action], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _log_tails(state_dir: Path) -> str:
    out = []
    for log in [*sorted(state_dir.glob("log/*.log")), state_dir / "munge" / "munged.log"]:
        if log.exists():
            out.append(f"--- {log}\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return "\n".join(out)


def start_cluster(state_dir: Path = STATE_DIR, partition: str = "main") -> SlurmCluster:
    """Reuse the cluster running in ``state_dir`` or start one; raise RuntimeError when it fails.

    Call :func:`unavailable_reason` first: this expects the packages installed and root.
    """
    t0 = time.monotonic()
    if _running(state_dir) and _setup("status", state_dir).returncode == 0:
        parts = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                               check=True).stdout.split()
        return SlurmCluster(state_dir, parts[0] if parts else partition, False, 0.0)
    proc = _setup("start", state_dir, partition)
    if proc.returncode != 0:
        _setup("stop", state_dir)  # leave nothing half-started behind
        raise RuntimeError(f"starting SLURM failed ({proc.returncode}):\n{proc.stdout}"
                           f"{proc.stderr}\n{_log_tails(state_dir)}")
    return SlurmCluster(state_dir, partition, True, time.monotonic() - t0)
