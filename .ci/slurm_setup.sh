#!/usr/bin/env bash
# A one-node SLURM cluster from Debian's packages, for testing the slurm profile against a real
# slurmctld + slurmd (no accounting database, no cgroups, everything under one state directory).
#
#   .ci/slurm_setup.sh            install (if needed) and start; waits for an idle node
#   .ci/slurm_setup.sh install    apt-get install slurmctld slurmd slurm-client munge (root only)
#   .ci/slurm_setup.sh start      start munged, slurmctld, slurmd (packages must be installed)
#   .ci/slurm_setup.sh stop       stop the daemons by their pid files, remove the /etc link
#   .ci/slurm_setup.sh status     exit 0 when the cluster is up and its node idle
#
# Environment: RTPREP_SLURM_DIR (state directory, default /tmp/rtprep-slurm), RTPREP_SLURM_PARTITION
# (default "main", the partition named in profiles/slurm/config.yaml), RTPREP_SLURM_CTLD_PORT and
# RTPREP_SLURM_D_PORT (default 6817 and 6818). tests/slurm_cluster.py drives this script.
#
# Facts this setup relies on (snakemake-executor-plugin-slurm 2.x, SLURM 22.05):
# - The batch job's step drops SLURM_CONF, so the config must be found at /etc/slurm/slurm.conf: we
#   link it there (and refuse to replace a file we did not put there).
# - Without slurmdbd the plugin must poll with `squeue` (--slurm-status-command squeue), which it
#   only does while MinJobAge >= 3 x --slurm-init-seconds-before-status-checks; below that it
#   silently goes back to `sacct`, which without accounting never reports a finished job, and the
#   run hangs. MinJobAge=300 covers the plugin's default 40 s delay (3 x 40 = 120) with room.
set -euo pipefail

STATE=${RTPREP_SLURM_DIR:-/tmp/rtprep-slurm}
PARTITION=${RTPREP_SLURM_PARTITION:-main}
CTLD_PORT=${RTPREP_SLURM_CTLD_PORT:-6817}
D_PORT=${RTPREP_SLURM_D_PORT:-6818}
ETC_CONF=/etc/slurm/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)
MIN_JOB_AGE=300

if [[ $STATE != /?* || $STATE == *..* ]]; then
    echo "slurm_setup: RTPREP_SLURM_DIR must be an absolute path" >&2
    exit 2
fi

say() { echo "slurm_setup: $*"; }
die() { echo "slurm_setup: error: $*" >&2; exit 1; }

installed() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null
}

do_install() {
    if installed; then
        say "packages already installed"
        return 0
    fi
    # Where we cannot install (not root, no apt), say so and let the SLURM test skip with reason.
    if [[ $(id -u) -ne 0 ]]; then
        say "not root: cannot install ${PACKAGES[*]}; the SLURM test will skip"
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        say "no apt-get: cannot install ${PACKAGES[*]}; the SLURM test will skip"
        return 0
    fi
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    # The packages' own services (if a service manager started them) would hold the default
    # ports and socket; our daemons use their own, but stop theirs so nothing is left behind.
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        systemctl stop slurmctld slurmd munge 2>/dev/null || true
    fi
    installed || die "packages installed but binaries missing"
}

pid_alive() {  # pid_alive FILE: the pid in FILE is a running process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
    local node_line node
    # The node line as slurmd sees the hardware (CPUs, sockets, cores, RealMemory): the node
    # registers with exactly what the config claims, so it does not drain.
    node_line=$(slurmd -C | head -n 1)
    node=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node_line")
    echo "$node" >"$STATE/nodename"
    cat >"$STATE/slurm.conf" <<EOF
# Written by .ci/slurm_setup.sh: a one-node test cluster, no accounting database, no cgroups.
ClusterName=rtprep
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${D_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${STATE}/munge/munge.socket
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/d
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${STATE}/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# Finished jobs stay visible to squeue this long: >= 3 x the plugin's first-status-check delay.
MinJobAge=${MIN_JOB_AGE}
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
${node_line} NodeAddr=127.0.0.1 State=UNKNOWN
# Up to 4 jobs share a CPU: a test job mostly waits on Python start-up, not on its CPUs.
PartitionName=${PARTITION} Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

wait_idle() {  # wait until sinfo reports the node idle (or fail after 60 s)
    local i state
    for i in $(seq 1 120); do
        state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
        if [[ $state == idle ]]; then
            return 0
        fi
        sleep 0.5
    done
    die "node not idle after 60 s (state: ${state:-none}); see $STATE/log/"
}

do_start() {
    installed || die "SLURM packages not installed (run: $0 install)"
    [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd launches jobs as their owner)"
    if pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" \
        && pid_alive "$STATE/munge/munged.pid"; then
        say "already running (state in $STATE)"
        wait_idle
        return 0
    fi
    if [[ -e $ETC_CONF || -L $ETC_CONF ]] \
        && [[ $(readlink -f "$ETC_CONF") != "$STATE/slurm.conf" ]]; then
        die "$ETC_CONF exists and is not ours; not replacing a real cluster's config"
    fi
    local t0=$SECONDS
    do_stop quiet
    # A fresh cluster: no state, spool or logs of an earlier one (job ids restart at 1).
    rm -rf "$STATE"/{ctld,d,log,munge}
    mkdir -p "$STATE"/{ctld,d,log,munge}
    chmod 0755 "$STATE"
    # munged insists on private directories and a private key owned by the user running it.
    # (0711: other users may reach the socket, as with /run/munge.)
    chmod 0711 "$STATE/munge"
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$STATE/munge/munge.key"
    munged --force \
        --key-file="$STATE/munge/munge.key" \
        --socket="$STATE/munge/munge.socket" \
        --pid-file="$STATE/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    write_conf
    mkdir -p /etc/slurm
    ln -sfn "$STATE/slurm.conf" "$ETC_CONF"
    # -c: start from a clean state (no jobs from an earlier cluster in this directory).
    slurmctld -c -f "$STATE/slurm.conf"
    slurmd -f "$STATE/slurm.conf" -N "$(cat "$STATE/nodename")"
    wait_idle
    say "node idle after $((SECONDS - t0)) s; state and logs in $STATE"
    say "stop with: $0 stop   (or kill the pids in $STATE/slurmd.pid," \
        "$STATE/slurmctld.pid, $STATE/munge/munged.pid)"
}

stop_pidfile() {  # stop_pidfile FILE NAME: TERM, wait up to 10 s, then KILL
    local file=$1 name=$2 pid i
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name ($pid) ignored TERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

do_stop() {
    stop_pidfile "$STATE/slurmd.pid" slurmd
    stop_pidfile "$STATE/slurmctld.pid" slurmctld
    stop_pidfile "$STATE/munge/munged.pid" munged
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$STATE/slurm.conf" ]]; then
        rm -f "$ETC_CONF"
    fi
    [[ ${1:-} == quiet ]] || say "stopped"
}

do_status() {
    pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" \
        && pid_alive "$STATE/munge/munged.pid" \
        && [[ $(sinfo -h -N -o '%T' 2>/dev/null | head -n 1) == idle ]]
}

case ${1:-all} in
    install) do_install ;;
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    all)
        do_install
        if installed && [[ $(id -u) -eq 0 ]]; then do_start; fi
        ;;
    *) die "usage: $0 [install|start|stop|status]" ;;
esac
